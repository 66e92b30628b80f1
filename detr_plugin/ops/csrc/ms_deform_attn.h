// Multi-scale deformable attention (MSDA): CUDA entry points of detr_plugin._ext.
//
// Shapes (any strides; made contiguous inside):
//   value              (bs, num_value, heads, dim)                 float / half / bfloat16 / double
//   spatial_shapes     (levels, 2) integer, (H_l, W_l) per level
//   level_start_index  (levels,) integer, first token of each level in value
//   level_points       levels (at most 32) positive ints P_l, sampling points of level l
//   sampling_locations (bs, num_query, heads, sum(P_l), 2)         (x, y) in [0, 1], value's dtype;
//                      level l's P_l points contiguous, levels in order
//   attention_weights  (bs, num_query, heads, sum(P_l))            value's dtype
//   output             (bs, num_query, heads * dim)                value's dtype
// Sampling (discrete == false) is grid_sample(bilinear, zeros padding, align_corners=False):
// pixel = loc * size - 0.5. Discrete sampling reads the one cell (floor(x * W + 0.5),
// floor(y * H + 0.5)), clamped to the map (RT-DETRv2's nearest-cell mode).
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace detr_plugin {

at::Tensor ms_deform_attn_forward(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                  const at::Tensor& level_start_index,
                                  const at::Tensor& sampling_locations,
                                  const at::Tensor& attention_weights,
                                  const std::vector<int64_t>& level_points, bool discrete);

// Returns {grad_value, grad_sampling_locations, grad_attention_weights}, each shaped and typed like
// its input; the location gradient is zero for discrete sampling.
std::vector<at::Tensor> ms_deform_attn_backward(const at::Tensor& value,
                                                const at::Tensor& spatial_shapes,
                                                const at::Tensor& level_start_index,
                                                const at::Tensor& sampling_locations,
                                                const at::Tensor& attention_weights,
                                                const at::Tensor& grad_output,
                                                const std::vector<int64_t>& level_points,
                                                bool discrete);

// As ms_deform_attn_backward, with the same gradients bit for bit on every run: no floating-point
// atomics (ms_deform_attn_deterministic.cu). Extra memory: about 20 bytes per sampling corner of
// one batch element.
std::vector<at::Tensor> ms_deform_attn_backward_deterministic(
    const at::Tensor& value, const at::Tensor& spatial_shapes, const at::Tensor& level_start_index,
    const at::Tensor& sampling_locations, const at::Tensor& attention_weights,
    const at::Tensor& grad_output, const std::vector<int64_t>& level_points, bool discrete);

}  // namespace detr_plugin
