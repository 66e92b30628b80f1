// Multi-scale deformable attention (MSDA): CUDA entry points of detr_plugin._ext.
//
// Shapes (any strides; made contiguous inside):
//   value              (bs, num_value, heads, dim)                 float / half / bfloat16 / double
//   spatial_shapes     (levels, 2) integer, (H_l, W_l) per level
//   level_start_index  (levels,) integer, first token of each level in value
//   sampling_locations (bs, num_query, heads, levels, points, 2)   (x, y) in [0, 1], value's dtype
//   attention_weights  (bs, num_query, heads, levels, points)      value's dtype
//   output             (bs, num_query, heads * dim)                value's dtype
// Sampling is grid_sample(bilinear, zeros padding, align_corners=False): pixel = loc * size - 0.5.
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace detr_plugin {

at::Tensor ms_deform_attn_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                  const at::Tensor& level_start_index,
                                  const at::Tensor& sampling_locations,
                                  const at::Tensor& attention_weights);

// Returns {grad_value, grad_sampling_locations, grad_attention_weights}, each shaped and typed like
// its input.
std::vector<at::Tensor> ms_deform_attn_backward(const at::Tensor& value,
                                                const at::Tensor& spatial_shapes,
                                                const at::Tensor& level_start_index,
                                                const at::Tensor& sampling_locations,
                                                const at::Tensor& attention_weights,
                                                const at::Tensor& grad_output);

}  // namespace detr_plugin
