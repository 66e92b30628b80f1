// Shared by the MSDA kernels (ms_deform_attn_cuda.cu, ms_deform_attn_deterministic.cu): CUDA
// scalar types and accumulation types, conversions, and where a sampling point reads the value map
// (grid_sample's bilinear footprint or the discrete nearest cell), and the checks of the inputs.
#pragma once

#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace detr_plugin {
namespace {

constexpr int kThreads = 256;

// At most this many levels (their point counts travel in the kernel parameters).
constexpr int kMaxLevels = 32;

// at:: scalar types -> CUDA's own, so that the conversion intrinsics apply.
template <typename T> struct CudaType { using type = T; };
template <> struct CudaType<at::Half> { using type = __half; };
template <> struct CudaType<at::BFloat16> { using type = __nv_bfloat16; };

template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

template <typename A, typename T>
__device__ __forceinline__ A to_acc(T x) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(x);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat162float(x);
  } else {
    return static_cast<A>(x);
  }
}

template <typename T, typename A>
__device__ __forceinline__ T from_acc(A x) {
  if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(x);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16_rn(x);
  } else {
    return static_cast<T>(x);
  }
}

template <typename T>
using Acc = typename AccType<T>::type;

// The bilinear footprint of one sampling point on a (height, width) map, with grid_sample's
// semantics (align_corners=False, zeros padding): pixel = loc * size - 0.5.
template <typename A>
struct Footprint {
  int offset[4];  // token offsets y * width + x of corners (y0,x0), (y0,x1), (y1,x0), (y1,x1)
  bool inside[4];  // the corner lies on the map; corners off the map read as zero
  A fx, fy;  // position inside the cell, in [0, 1)
};

// Returns false when no corner can matter (and for NaN locations). x == -1 is kept, as grid_sample
// keeps it: the corner at 0 has weight 0 there but a gradient.
template <typename A, typename T>
__device__ __forceinline__ bool footprint(T loc_x, T loc_y, int height, int width,
                                          Footprint<A>& f) {
  // float locations go through double: loc * size - 0.5 is then exact, as in a float64 reference.
  using P = std::conditional_t<std::is_same_v<T, float>, double, A>;
  const P x = fma(static_cast<P>(to_acc<A>(loc_x)), static_cast<P>(width), P(-0.5));
  const P y = fma(static_cast<P>(to_acc<A>(loc_y)), static_cast<P>(height), P(-0.5));
  if (!(x >= P(-1) && y >= P(-1) && x < P(width) && y < P(height))) return false;
  const P x0 = floor(x);
  const P y0 = floor(y);
  f.fx = static_cast<A>(x - x0);
  f.fy = static_cast<A>(y - y0);
  const int ix = static_cast<int>(x0);
  const int iy = static_cast<int>(y0);
  const bool x0_in = ix >= 0, x1_in = ix + 1 < width, y0_in = iy >= 0, y1_in = iy + 1 < height;
  const int base = iy * width + ix;
  f.offset[0] = base;
  f.offset[1] = base + 1;
  f.offset[2] = base + width;
  f.offset[3] = base + width + 1;
  f.inside[0] = y0_in && x0_in;
  f.inside[1] = y0_in && x1_in;
  f.inside[2] = y1_in && x0_in;
  f.inside[3] = y1_in && x1_in;
  return true;
}

// Discrete sampling's cell index along one axis: floor(loc * size + 0.5) clamped to [0, size - 1],
// with loc * size and + 0.5 each rounded in T, as the PyTorch path (and RT-DETRv2) computes them,
// so that both pick the same cell. Clamping before the cast gives the same index (and 0 for NaN).
template <typename T>
__device__ __forceinline__ int nearest_index(T loc, int size) {
  using A = typename AccType<T>::type;
  A x;
  if constexpr (std::is_same_v<T, float>) {
    x = __fadd_rn(__fmul_rn(loc, static_cast<float>(size)), 0.5f);  // no fused multiply-add
  } else if constexpr (std::is_same_v<T, double>) {
    x = __dadd_rn(__dmul_rn(loc, static_cast<double>(size)), 0.5);
  } else {  // 16-bit: float arithmetic rounded to T after each step, as torch does
    const T scaled = from_acc<T>(to_acc<float>(loc) * static_cast<float>(size));
    x = to_acc<float>(from_acc<T>(to_acc<float>(scaled) + 0.5f));
  }
  if (!(x >= A(0))) return 0;
  if (x >= static_cast<A>(size - 1)) return size - 1;
  return static_cast<int>(x);
}

// The footprint of a point under discrete sampling: corner 0 is the nearest cell, with weight 1
// (fx = fy = 0); the other corners are off. Always on the map (clamped).
template <typename A, typename T>
__device__ __forceinline__ bool nearest_footprint(T loc_x, T loc_y, int height, int width,
                                                  Footprint<A>& f) {
  f.offset[0] = nearest_index(loc_y, height) * width + nearest_index(loc_x, width);
  f.offset[1] = f.offset[2] = f.offset[3] = f.offset[0];
  f.inside[0] = true;
  f.inside[1] = f.inside[2] = f.inside[3] = false;
  f.fx = f.fy = A(0);
  return true;
}

template <bool kDiscrete, typename A, typename T>
__device__ __forceinline__ bool point_footprint(T loc_x, T loc_y, int height, int width,
                                                Footprint<A>& f) {
  if constexpr (kDiscrete) {
    return nearest_footprint(loc_x, loc_y, height, width, f);
  } else {
    return footprint(loc_x, loc_y, height, width, f);
  }
}

// The op's inputs (shapes in ms_deform_attn.h); a one-line error names what is wrong.
inline void check_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                  const at::Tensor& level_start_index, const at::Tensor& sampling_locations,
                  const at::Tensor& attention_weights, const std::vector<int64_t>& level_points) {
  for (const at::Tensor* t : {&value, &spatial_shapes, &level_start_index, &sampling_locations,
                              &attention_weights}) {
    TORCH_CHECK(t->is_cuda(), "ms_deform_attn: every input must be a CUDA tensor");
    TORCH_CHECK(t->device() == value.device(), "ms_deform_attn: inputs on different devices");
  }
  TORCH_CHECK(value.dim() == 4, "value must be (bs, num_value, heads, dim)");
  TORCH_CHECK(sampling_locations.dim() == 5 && sampling_locations.size(4) == 2,
              "sampling_locations must be (bs, num_query, heads, sum(num_points), 2)");
  TORCH_CHECK(attention_weights.dim() == 4,
              "attention_weights must be (bs, num_query, heads, sum(num_points))");
  TORCH_CHECK(spatial_shapes.dim() == 2 && spatial_shapes.size(1) == 2,
              "spatial_shapes must be (levels, 2)");
  TORCH_CHECK(level_start_index.dim() == 1, "level_start_index must be (levels,)");
  TORCH_CHECK(sampling_locations.scalar_type() == value.scalar_type() &&
                  attention_weights.scalar_type() == value.scalar_type(),
              "value, sampling_locations and attention_weights must share a dtype");
  const int64_t levels = spatial_shapes.size(0);
  TORCH_CHECK(level_start_index.size(0) == levels &&
                  static_cast<int64_t>(level_points.size()) == levels,
              "number of levels differs between spatial_shapes, level_start_index, num_points");
  TORCH_CHECK(levels <= kMaxLevels, "ms_deform_attn: at most ", kMaxLevels, " levels, got ",
              levels);
  int64_t total_points = 0;
  for (const int64_t n : level_points) {
    TORCH_CHECK(n > 0 && n < INT_MAX, "num_points must be positive, got ", n);
    total_points += n;
  }
  TORCH_CHECK(sampling_locations.size(3) == total_points,
              "sampling_locations has ", sampling_locations.size(3), " points, num_points sum to ",
              total_points);
  for (int d = 0; d < 4; ++d) {
    TORCH_CHECK(attention_weights.size(d) == sampling_locations.size(d),
                "attention_weights and sampling_locations disagree in dimension ", d);
  }
  TORCH_CHECK(value.size(0) == sampling_locations.size(0), "batch sizes differ");
  TORCH_CHECK(value.size(2) == sampling_locations.size(2), "numbers of heads differ");
  TORCH_CHECK(value.size(1) * value.size(2) * value.size(3) < INT_MAX,
              "value is too large per batch element for 32-bit offsets");
  TORCH_CHECK(sampling_locations.numel() < INT64_MAX / 2 && value.size(0) < INT_MAX &&
                  sampling_locations.size(1) < INT_MAX && total_points < INT_MAX,
              "inputs too large");
}

// The backward's inputs: the op's, and grad_output (bs, num_query, heads * dim) on value's device
// in its dtype.
inline void check_backward_inputs(const at::Tensor& value, const at::Tensor& spatial_shapes,
                                  const at::Tensor& level_start_index,
                                  const at::Tensor& sampling_locations,
                                  const at::Tensor& attention_weights,
                                  const at::Tensor& grad_output,
                                  const std::vector<int64_t>& level_points) {
  check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
               level_points);
  TORCH_CHECK(grad_output.device() == value.device() &&
                  grad_output.scalar_type() == value.scalar_type(),
              "grad_output must match value's device and dtype");
  TORCH_CHECK(grad_output.numel() == sampling_locations.size(0) * sampling_locations.size(1) *
                                         value.size(2) * value.size(3),
              "grad_output must be (bs, num_query, heads * dim)");
}

}  // namespace
}  // namespace detr_plugin
