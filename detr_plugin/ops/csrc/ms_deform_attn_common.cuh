// Shared by the MSDA kernels (ms_deform_attn_cuda.cu, ms_deform_attn_deterministic.cu): CUDA
// scalar types and accumulation types, conversions, and where a sampling point reads the value map
// (grid_sample's bilinear footprint or the discrete nearest cell).
#pragma once

#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

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

}  // namespace
}  // namespace detr_plugin
