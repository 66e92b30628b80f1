// Multi-scale deformable attention: CUDA forward and backward kernels (shapes in ms_deform_attn.h).
//
// Layout of the work (docs/msda_notes.md has the versions tried and their timings):
// - a group of G consecutive lanes serves one (batch, query, head, channel slab); each lane owns
//   VEC contiguous channels. On the fast paths (dim 32 and 64, 16-byte aligned) the forward moves
//   16 bytes per lane per corner (4 floats or 8 halves) and the backward 4 channels per lane, so a
//   group covers one head's whole channel row; the generic path (any dim) has VEC = 1 and slabs
//   of G channels. For float32 the groups are numbered head-major (a block serves consecutive
//   queries of one head, which share value rows in L1), for 16-bit types query-major.
// - every lane of a group computes the corners and bilinear weights of a point itself: the group
//   reads the same location (one broadcast transaction), and the arithmetic is done once per
//   lane, not once per channel.
// - backward: per corner, a lane dots grad_output with the value vector once; the gradients of
//   the location and of the attention weight are weighted sums of those dots, reduced over the
//   group's lanes with xor shuffles (no shared memory, no barriers). grad_value is accumulated
//   with atomics (float4 vector atomics on sm_90) in fp32: for float in the gradient itself, in
//   one kernel with the other two gradients; for half / bfloat16 in an fp32 scratch that holds a
//   chunk of value's rows at a time and is converted chunk by chunk (a first kernel per chunk, only
//   the grad_value atomics), then a second kernel computes the location and weight gradients, so
//   that the peak memory is that of the 16-bit gradients (Grads). These atomics bound the
//   backward's speed (docs/msda_notes.md).
// - levels may have different point counts (Problem::level_points, kernel parameters: no device
//   array, nothing to copy per call); a head's points are contiguous, level by level.
// - discrete sampling (RT-DETRv2) is a template flag: one corner, the nearest cell, with weight 1,
//   through the same code (the compiler drops the other three corners); no location gradient.
// Accumulation is fp32 for float, half and bfloat16 storage, and double for double.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "ms_deform_attn.h"
#include "ms_deform_attn_common.cuh"

namespace detr_plugin {
namespace {

// Two 16-bit values packed in a 32-bit word <-> float2.
template <typename T>
__device__ __forceinline__ float2 unpack2(uint32_t word) {
  if constexpr (std::is_same_v<T, __half>) {
    __half2 h;
    *reinterpret_cast<uint32_t*>(&h) = word;
    return __half22float2(h);
  } else {
    __nv_bfloat162 h;
    *reinterpret_cast<uint32_t*>(&h) = word;
    return __bfloat1622float2(h);
  }
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t word;
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 h = __floats2half2_rn(lo, hi);
    word = *reinterpret_cast<const uint32_t*>(&h);
  } else {
    const __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
    word = *reinterpret_cast<const uint32_t*>(&h);
  }
  return word;
}

// Reads VEC contiguous elements with one load: 16 bytes for float (VEC 4), 8 or 16 bytes for
// half / bfloat16 (VEC 4 or 8); the caller checked alignment.
template <int VEC, typename T, typename A>
__device__ __forceinline__ void load_vec(const T* __restrict__ p, A (&out)[VEC]) {
  if constexpr (VEC == 1) {
    out[0] = to_acc<A>(__ldg(p));
  } else if constexpr (std::is_same_v<T, float>) {
    static_assert(VEC == 4, "float vector path moves 16 bytes");
    const float4 v = __ldg(reinterpret_cast<const float4*>(p));
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
  } else if constexpr (VEC == 4) {
    static_assert(sizeof(T) == 2, "16-bit types only");
    const uint2 raw = __ldg(reinterpret_cast<const uint2*>(p));
    const float2 lo = unpack2<T>(raw.x), hi = unpack2<T>(raw.y);
    out[0] = lo.x;
    out[1] = lo.y;
    out[2] = hi.x;
    out[3] = hi.y;
  } else {
    static_assert(VEC == 8 && sizeof(T) == 2, "16-bit types move 8 values in 16 bytes");
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
    const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = unpack2<T>(words[i]);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
}

template <int VEC, typename T, typename A>
__device__ __forceinline__ void store_vec(T* __restrict__ p, const A (&v)[VEC]) {
  if constexpr (VEC == 1) {
    p[0] = from_acc<T>(v[0]);
  } else if constexpr (std::is_same_v<T, float>) {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
  } else if constexpr (VEC == 4) {
    *reinterpret_cast<uint2*>(p) = make_uint2(pack2<T>(v[0], v[1]), pack2<T>(v[2], v[3]));
  } else {
    static_assert(VEC == 8 && sizeof(T) == 2, "16-bit types store 8 values in 16 bytes");
    *reinterpret_cast<uint4*>(p) = make_uint4(pack2<T>(v[0], v[1]), pack2<T>(v[2], v[3]),
                                              pack2<T>(v[4], v[5]), pack2<T>(v[6], v[7]));
  }
}

// p[i] += scale * v[i] with atomics; 16-byte vector atomics where the GPU has them (sm_90).
template <int VEC, typename A>
__device__ __forceinline__ void atomic_add_vec(A* p, const A (&v)[VEC], A scale) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  constexpr bool kVector = std::is_same_v<A, float> && VEC % 4 == 0;
#else
  constexpr bool kVector = false;
#endif
  if constexpr (kVector) {
#pragma unroll
    for (int i = 0; i < VEC; i += 4) {
      atomicAdd(reinterpret_cast<float4*>(p + i),
                make_float4(scale * v[i], scale * v[i + 1], scale * v[i + 2], scale * v[i + 3]));
    }
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) atomicAdd(p + i, scale * v[i]);
  }
}

// Sizes of one call; value tokens per batch element times heads * dim fit in int (checked).
struct Problem {
  int batch, num_value, num_query, heads, dim, levels;
  int points_per_head;  // sum of level_points
  int level_points[kMaxLevels];  // sampling points of each level
};

// Which (batch, query, head, channels) a lane serves. Groups are numbered query-major (the groups
// of a block serve all heads of a few queries) or head-major (consecutive queries of one head:
// encoder queries that are neighbours on the image sample neighbouring value rows, which the
// block then shares in L1; see head_major_order).
template <int VEC, int G>
struct LaneWork {
  int64_t query_head;  // (batch * num_query + query) * heads + head
  int64_t value_offset;  // of value[batch, 0, head, channel]
  int64_t first_token;  // batch * num_value: the lane's batch element's first row of value
  int channel;
  int lane;  // within the group

  __device__ __forceinline__ LaneWork(int64_t group, int num_slabs, const Problem& p,
                                      bool head_major) {
    const int slab = static_cast<int>(group % num_slabs);
    const int64_t rest = group / num_slabs;
    int head;
    int64_t batch;
    if (head_major) {  // rest = (batch * heads + head) * num_query + query
      const int64_t batch_head = rest / p.num_query;
      head = static_cast<int>(batch_head % p.heads);
      batch = batch_head / p.heads;
      query_head = (batch * p.num_query + rest % p.num_query) * p.heads + head;
    } else {  // rest = (batch * num_query + query) * heads + head
      query_head = rest;
      head = static_cast<int>(query_head % p.heads);
      batch = query_head / p.heads / p.num_query;
    }
    lane = threadIdx.x % G;
    channel = slab * (G * VEC) + lane * VEC;
    first_token = batch * p.num_value;
    value_offset = (first_token * p.heads + head) * p.dim + channel;
  }
};

// The backward takes the points of a level kBackwardChunk at a time (the last chunk predicated):
// a chunk's locations, weights and corner values are all requested before any is used, and its
// sums are reduced over the group in one round of independent shuffles. (The forward does one
// point at a time: chunking it raised its registers to 78 and made it slower, docs/msda_notes.md.)
// Chunks of 2 (64 registers, 4 blocks per SM) beat chunks of 4 (110 registers, 2 blocks) by 5-9%
// and single points by 2-7% on an H100 (v5 in the notes).
constexpr int kBackwardChunk = 2;

// Which gradients a backward kernel computes: all three (float and double), or, for half and
// bfloat16, grad_value alone (into an fp32 scratch holding a chunk of value's rows) in one kernel
// per chunk and then the location and weight gradients in another.
enum class Grads { kAll, kValue, kLocationWeight };

template <typename T, int VEC, int G, bool kDiscrete>
__global__ void __launch_bounds__(kThreads)
    msda_forward_kernel(const T* __restrict__ value, const int64_t* __restrict__ spatial_shapes,
                        const int64_t* __restrict__ level_start_index,
                        const T* __restrict__ sampling_locations,
                        const T* __restrict__ attention_weights, T* __restrict__ output,
                        const Problem p, const int64_t num_groups, const int num_slabs,
                        const bool head_major) {
  using A = typename AccType<T>::type;
  const int64_t group = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / G;
  if (group >= num_groups) return;
  const LaneWork<VEC, G> w(group, num_slabs, p, head_major);
  if (w.channel >= p.dim) return;  // generic path: dim not a multiple of the slab width
  const int token_stride = p.heads * p.dim;
  const T* loc = sampling_locations + w.query_head * p.points_per_head * 2;
  const T* weight = attention_weights + w.query_head * p.points_per_head;

  A acc[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) acc[i] = A(0);
  for (int level = 0; level < p.levels; ++level) {
    const int height = static_cast<int>(__ldg(spatial_shapes + 2 * level));
    const int width = static_cast<int>(__ldg(spatial_shapes + 2 * level + 1));
    const T* value_level = value + w.value_offset + __ldg(level_start_index + level) * token_stride;
    const int points = p.level_points[level];
#pragma unroll 1
    for (int point = 0; point < points; ++point, loc += 2, ++weight) {
      Footprint<A> f;
      if (!point_footprint<kDiscrete>(loc[0], loc[1], height, width, f)) continue;
      const A a = to_acc<A>(*weight);
      const A hx = A(1) - f.fx, hy = A(1) - f.fy;
      const A corner_weight[4] = {a * hy * hx, a * hy * f.fx, a * f.fy * hx, a * f.fy * f.fx};
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (!f.inside[k]) continue;
        A v[VEC];
        load_vec<VEC>(value_level + f.offset[k] * token_stride, v);
#pragma unroll
        for (int i = 0; i < VEC; ++i) acc[i] = fma(corner_weight[k], v[i], acc[i]);
      }
    }
  }
  store_vec<VEC>(output + w.query_head * p.dim + w.channel, acc);
}

// grad_value_acc: zeroed accumulation buffer (fp32; double for double) for the acc_tokens rows of
// value (bs * num_value rows of heads * dim, flattened over the batch) from row acc_first_token;
// kAll: the whole of value (acc_first_token 0). kValue adds only corners in those rows; the launch
// covers the groups [group_begin, group_end), those of the batch elements that own the rows.
// With one slab per head (fast paths, dim <= 32) each group owns its points' gradients and writes
// grad_loc / grad_weight; with several slabs they are summed atomically into the zeroed buffers
// grad_loc_acc / grad_weight_acc instead. Discrete sampling writes zero location gradients (or
// leaves the zeroed buffer).
template <typename T, int VEC, int G, bool kDiscrete, Grads kGrads>
__global__ void __launch_bounds__(kThreads) msda_backward_kernel(
    const T* __restrict__ value, const int64_t* __restrict__ spatial_shapes,
    const int64_t* __restrict__ level_start_index, const T* __restrict__ sampling_locations,
    const T* __restrict__ attention_weights, const T* __restrict__ grad_output,
    typename AccType<T>::type* __restrict__ grad_value_acc, T* __restrict__ grad_loc,
    T* __restrict__ grad_weight, typename AccType<T>::type* __restrict__ grad_loc_acc,
    typename AccType<T>::type* __restrict__ grad_weight_acc, const Problem p,
    const int64_t group_begin, const int64_t group_end, const int64_t acc_first_token,
    const int64_t acc_tokens, const int num_slabs, const bool head_major) {
  using A = typename AccType<T>::type;
  constexpr bool kValueGrad = kGrads != Grads::kLocationWeight;
  constexpr bool kLocationWeightGrad = kGrads != Grads::kValue;
  const int64_t group =
      group_begin + (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / G;
  if (group >= group_end) return;  // whole groups leave together: the shuffles below stay legal
  const LaneWork<VEC, G> w(group, num_slabs, p, head_major);
  const unsigned group_mask =
      G == 32 ? 0xffffffffu : ((1u << G) - 1u) << (threadIdx.x % 32 / G * G);
  const bool active = w.channel < p.dim;  // generic path: idle lanes past dim
  const int token_stride = p.heads * p.dim;
  int64_t level_first_point = w.query_head * p.points_per_head;  // of (query_head, level, 0)

  A grad[VEC];
  if (active) {
    load_vec<VEC>(grad_output + w.query_head * p.dim + w.channel, grad);
  } else {
#pragma unroll
    for (int i = 0; i < VEC; ++i) grad[i] = A(0);
  }
  for (int level = 0; level < p.levels; ++level) {
    const int points = p.level_points[level];
    const int height = static_cast<int>(__ldg(spatial_shapes + 2 * level));
    const int width = static_cast<int>(__ldg(spatial_shapes + 2 * level + 1));
    const int64_t level_offset = w.value_offset + __ldg(level_start_index + level) * token_stride;
    const T* value_level = value + level_offset;
    // grad_value_acc's row of the level's token 0 (outside [0, acc_tokens) in other chunks)
    const int64_t acc_level_row =
        w.first_token + __ldg(level_start_index + level) - acc_first_token;
    const int64_t acc_level_offset = level_offset - acc_first_token * token_stride;
    const T* loc = sampling_locations + 2 * level_first_point;
    const T* weight = attention_weights + level_first_point;
    for (int first = 0; first < points; first += kBackwardChunk) {
      Footprint<A> f[kBackwardChunk];
      bool on_map[kBackwardChunk];  // the same on every lane of the group
      A a[kBackwardChunk];
#pragma unroll
      for (int j = 0; j < kBackwardChunk; ++j) {
        const int point = first + j;
        on_map[j] = point < points && point_footprint<kDiscrete>(loc[2 * point], loc[2 * point + 1],
                                                                 height, width, f[j]);
        a[j] = on_map[j] ? to_acc<A>(weight[point]) : A(0);
      }
      // per point: d loss / d attention weight, and d loss / d fx, d fy over a; this lane's part
      A sum_w[kBackwardChunk], sum_x[kBackwardChunk], sum_y[kBackwardChunk];
#pragma unroll
      for (int j = 0; j < kBackwardChunk; ++j) {
        sum_w[j] = sum_x[j] = sum_y[j] = A(0);
        if (!on_map[j] || !active) continue;
        const A fx = f[j].fx, fy = f[j].fy, hx = A(1) - fx, hy = A(1) - fy;
        const A corner_weight[4] = {hy * hx, hy * fx, fy * hx, fy * fx};
        const A d_dx[4] = {-hy, hy, -fy, fy};  // d corner_weight / d fx
        const A d_dy[4] = {-hx, -fx, hx, fx};  // d corner_weight / d fy
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          if (!f[j].inside[k]) continue;
          if constexpr (kLocationWeightGrad) {
            A v[VEC];
            load_vec<VEC>(value_level + f[j].offset[k] * token_stride, v);
            A dot = A(0);  // grad_output . value at this corner
#pragma unroll
            for (int i = 0; i < VEC; ++i) dot = fma(grad[i], v[i], dot);
            sum_w[j] = fma(corner_weight[k], dot, sum_w[j]);
            if constexpr (!kDiscrete) {
              sum_x[j] = fma(d_dx[k], dot, sum_x[j]);
              sum_y[j] = fma(d_dy[k], dot, sum_y[j]);
            }
          }
          if constexpr (kValueGrad) {
            const int64_t acc_row = acc_level_row + f[j].offset[k];
            if (kGrads == Grads::kAll || (acc_row >= 0 && acc_row < acc_tokens)) {
              atomic_add_vec<VEC>(
                  grad_value_acc + acc_level_offset + f[j].offset[k] * token_stride, grad,
                  a[j] * corner_weight[k]);
            }
          }
        }
      }
      if constexpr (kLocationWeightGrad) {  // (the kValue kernel has no sums to reduce)
        // sum over the group's lanes: 3 * kBackwardChunk independent shuffle chains
#pragma unroll
        for (int offset = G / 2; offset > 0; offset /= 2) {
#pragma unroll
          for (int j = 0; j < kBackwardChunk; ++j) {
            sum_w[j] += __shfl_xor_sync(group_mask, sum_w[j], offset);
            if constexpr (!kDiscrete) {
              sum_x[j] += __shfl_xor_sync(group_mask, sum_x[j], offset);
              sum_y[j] += __shfl_xor_sync(group_mask, sum_y[j], offset);
            }
          }
        }
        if (w.lane == 0) {
#pragma unroll
          for (int j = 0; j < kBackwardChunk; ++j) {
            const int64_t point = level_first_point + first + j;
            if (first + j >= points) break;
            // d pixel / d loc = size; points off the map have a = 0 and zero sums
            const A grad_x = kDiscrete ? A(0) : a[j] * static_cast<A>(width) * sum_x[j];
            const A grad_y = kDiscrete ? A(0) : a[j] * static_cast<A>(height) * sum_y[j];
            if (num_slabs == 1) {
              grad_loc[2 * point] = from_acc<T>(grad_x);
              grad_loc[2 * point + 1] = from_acc<T>(grad_y);
              grad_weight[point] = from_acc<T>(sum_w[j]);
            } else if (on_map[j]) {
              if constexpr (!kDiscrete) {
                atomicAdd(grad_loc_acc + 2 * point, grad_x);
                atomicAdd(grad_loc_acc + 2 * point + 1, grad_y);
              }
              atomicAdd(grad_weight_acc + point, sum_w[j]);
            }
          }
        }
      }
    }
    level_first_point += points;
  }
}

// Calls fn(integral_constant VEC, integral_constant G) for the layout that suits dim. On the fast
// paths (dim 32 or 64, 16-byte aligned) a lane owns kFastVec channels: the forward uses 16 bytes
// per lane (4 floats, 8 halves); the backward 4 channels in every type, so that a group's
// grad_value atomics (float4) cover whole 32-byte sectors. Otherwise one channel per lane.
template <typename T, int kFastVec, typename Fn>
void with_layout(int dim, bool aligned16, Fn&& fn) {
  if constexpr (!std::is_same_v<T, double>) {
    if (aligned16 && dim == 32) {
      return fn(std::integral_constant<int, kFastVec>{},
                std::integral_constant<int, 32 / kFastVec>{});
    }
    if (aligned16 && dim == 64) {
      return fn(std::integral_constant<int, kFastVec>{},
                std::integral_constant<int, 64 / kFastVec>{});
    }
  }
  if (dim <= 8) return fn(std::integral_constant<int, 1>{}, std::integral_constant<int, 8>{});
  if (dim <= 16) return fn(std::integral_constant<int, 1>{}, std::integral_constant<int, 16>{});
  return fn(std::integral_constant<int, 1>{}, std::integral_constant<int, 32>{});
}

// Head-major group order for float32; query-major for half / bfloat16 (and double, not timed).
// Measured on an H100 (docs/msda_notes.md, v4), Deformable DETR encoder: head-major made the
// float32 forward 12-19% faster and its backward 3-18% faster, but both 16-bit kernels 2-5% slower.
template <typename T>
constexpr bool head_major_order() {
  return std::is_same_v<T, float>;
}

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

Problem problem_of(const at::Tensor& value, const at::Tensor& sampling_locations,
                   const std::vector<int64_t>& level_points) {
  Problem p{};
  p.batch = static_cast<int>(value.size(0));
  p.num_value = static_cast<int>(value.size(1));
  p.num_query = static_cast<int>(sampling_locations.size(1));
  p.heads = static_cast<int>(value.size(2));
  p.dim = static_cast<int>(value.size(3));
  p.levels = static_cast<int>(level_points.size());
  p.points_per_head = static_cast<int>(sampling_locations.size(3));
  for (int level = 0; level < p.levels; ++level) {
    p.level_points[level] = static_cast<int>(level_points[level]);
  }
  return p;
}

// Calls fn(integral_constant discrete) for the sampling method.
template <typename Fn>
void with_method(bool discrete, Fn&& fn) {
  if (discrete) return fn(std::true_type{});
  return fn(std::false_type{});
}

// Number of groups (one per batch, query, head and channel slab) and blocks for G-lane groups.
struct Launch {
  int64_t groups;
  int64_t blocks;
  int slabs;
};

Launch launch_of(const Problem& p, int vec, int group_size) {
  const int slab_width = vec * group_size;
  const int slabs = (p.dim + slab_width - 1) / slab_width;
  const int64_t groups = static_cast<int64_t>(p.batch) * p.num_query * p.heads * slabs;
  return Launch{groups, (groups * group_size + kThreads - 1) / kThreads, slabs};
}

// A 16-bit grad_value's fp32 scratch may always take 1/kScratchParts of a whole fp32 buffer, so
// that few-query calls (decoders: the location and weight gradients are small) need at most
// about kScratchParts chunks.
constexpr int64_t kScratchParts = 8;

// Rows of value (over the flattened batch) in one chunk of a 16-bit backward's fp32 scratch: as
// many as fit in grad_bytes (the location and weight gradients, allocated once the scratch is
// freed, so that the scratch adds nothing to the peak) or 1/kScratchParts of value's rows, if
// more; whole batch elements when one fits (no batch element is then visited twice), else equal
// pieces of one.
int64_t scratch_rows(const Problem& p, int64_t grad_bytes) {
  const int64_t rows = static_cast<int64_t>(p.batch) * p.num_value;
  const int64_t row_bytes = static_cast<int64_t>(p.heads) * p.dim * sizeof(float);
  const int64_t budget =
      std::max<int64_t>({grad_bytes / row_bytes, (rows + kScratchParts - 1) / kScratchParts, 1});
  if (budget >= p.num_value) return std::min(rows, budget / p.num_value * p.num_value);
  const int64_t pieces = (p.num_value + budget - 1) / budget;
  return (p.num_value + pieces - 1) / pieces;
}

// grad_value of a 16-bit backward (grad_value: 16-bit, contiguous, like value), accumulated in
// fp32 one chunk of rows at a time: zero the scratch, add the chunk's corner updates (only the
// chunk's batch elements are launched), convert the chunk into grad_value.
template <typename T, int VEC, int G, bool kDiscrete>
void grad_value_in_chunks(const at::Tensor& value, const at::Tensor& spatial_shapes,
                          const at::Tensor& level_start_index,
                          const at::Tensor& sampling_locations,
                          const at::Tensor& attention_weights, const at::Tensor& grad_output,
                          const at::Tensor& grad_value, const Problem& p, const Launch& l,
                          int64_t chunk_rows, cudaStream_t stream) {
  const int64_t rows = static_cast<int64_t>(p.batch) * p.num_value;
  const int64_t row_size = static_cast<int64_t>(p.heads) * p.dim;
  const int64_t groups_per_batch = l.groups / p.batch;
  const at::Tensor scratch = at::empty({chunk_rows, row_size}, value.options().dtype(at::kFloat));
  const at::Tensor grad_rows = grad_value.view({rows, row_size});
  for (int64_t first = 0, n = 0; first < rows; first += n) {
    // a piece of one batch element ends with it; whole batch elements start aligned
    const int64_t end = chunk_rows < p.num_value ? (first / p.num_value + 1) * p.num_value : rows;
    n = std::min(chunk_rows, end - first);
    const at::Tensor acc = scratch.narrow(0, 0, n);
    acc.zero_();
    const int64_t group_begin = first / p.num_value * groups_per_batch;
    const int64_t group_end = ((first + n - 1) / p.num_value + 1) * groups_per_batch;
    const int64_t blocks = ((group_end - group_begin) * G + kThreads - 1) / kThreads;
    msda_backward_kernel<T, VEC, G, kDiscrete, Grads::kValue><<<blocks, kThreads, 0, stream>>>(
        reinterpret_cast<const T*>(value.data_ptr()), spatial_shapes.data_ptr<int64_t>(),
        level_start_index.data_ptr<int64_t>(),
        reinterpret_cast<const T*>(sampling_locations.data_ptr()),
        reinterpret_cast<const T*>(attention_weights.data_ptr()),
        reinterpret_cast<const T*>(grad_output.data_ptr()), acc.data_ptr<float>(), nullptr,
        nullptr, nullptr, nullptr, p, group_begin, group_end, first, n, l.slabs,
        head_major_order<T>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    grad_rows.narrow(0, first, n).copy_(acc);
  }
}

}  // namespace

at::Tensor ms_deform_attn_forward(const at::Tensor& value_in, const at::Tensor& spatial_shapes_in,
                                  const at::Tensor& level_start_index_in,
                                  const at::Tensor& sampling_locations_in,
                                  const at::Tensor& attention_weights_in,
                                  const std::vector<int64_t>& level_points, bool discrete) {
  check_inputs(value_in, spatial_shapes_in, level_start_index_in, sampling_locations_in,
               attention_weights_in, level_points);
  const c10::cuda::CUDAGuard guard(value_in.device());
  const at::Tensor value = value_in.contiguous();
  const at::Tensor spatial_shapes = spatial_shapes_in.to(at::kLong).contiguous();
  const at::Tensor level_start_index = level_start_index_in.to(at::kLong).contiguous();
  const at::Tensor sampling_locations = sampling_locations_in.contiguous();
  const at::Tensor attention_weights = attention_weights_in.contiguous();
  const Problem p = problem_of(value, sampling_locations, level_points);
  at::Tensor output = at::empty({p.batch, p.num_query, p.heads * p.dim}, value.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto dtype = value.scalar_type();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "msda_forward", [&] {
    using T = typename CudaType<scalar_t>::type;
    constexpr int kFastVec = std::is_same_v<T, double> ? 1 : 16 / sizeof(T);
    const bool aligned = aligned16(value) && aligned16(output);
    with_layout<T, kFastVec>(p.dim, aligned, [&](auto vec, auto group_size) {
      constexpr int VEC = decltype(vec)::value;
      constexpr int G = decltype(group_size)::value;
      const Launch l = launch_of(p, VEC, G);
      if (l.groups == 0) return;
      with_method(discrete, [&](auto discrete_flag) {
        constexpr bool kDiscrete = decltype(discrete_flag)::value;
        msda_forward_kernel<T, VEC, G, kDiscrete><<<l.blocks, kThreads, 0, stream>>>(
            reinterpret_cast<const T*>(value.data_ptr()), spatial_shapes.data_ptr<int64_t>(),
            level_start_index.data_ptr<int64_t>(),
            reinterpret_cast<const T*>(sampling_locations.data_ptr()),
            reinterpret_cast<const T*>(attention_weights.data_ptr()),
            reinterpret_cast<T*>(output.data_ptr()), p, l.groups, l.slabs,
            head_major_order<T>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return output;
}

std::vector<at::Tensor> ms_deform_attn_backward(const at::Tensor& value_in,
                                                const at::Tensor& spatial_shapes_in,
                                                const at::Tensor& level_start_index_in,
                                                const at::Tensor& sampling_locations_in,
                                                const at::Tensor& attention_weights_in,
                                                const at::Tensor& grad_output_in,
                                                const std::vector<int64_t>& level_points,
                                                bool discrete) {
  check_backward_inputs(value_in, spatial_shapes_in, level_start_index_in, sampling_locations_in,
                        attention_weights_in, grad_output_in, level_points);
  const c10::cuda::CUDAGuard guard(value_in.device());
  const at::Tensor value = value_in.contiguous();
  const at::Tensor spatial_shapes = spatial_shapes_in.to(at::kLong).contiguous();
  const at::Tensor level_start_index = level_start_index_in.to(at::kLong).contiguous();
  const at::Tensor sampling_locations = sampling_locations_in.contiguous();
  const at::Tensor attention_weights = attention_weights_in.contiguous();
  const at::Tensor grad_output = grad_output_in.contiguous();
  const Problem p = problem_of(value, sampling_locations, level_points);

  const auto acc_dtype = value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto acc_options = value.options().dtype(acc_dtype);
  const auto dtype = value.scalar_type();
  // 16-bit: the gradient itself, every row written chunk by chunk from an fp32 scratch; else the
  // zeroed accumulator
  const bool chunked = c10::elementSize(dtype) == 2;
  at::Tensor grad_value =
      chunked ? at::empty(value.sizes(), value.options()) : at::zeros(value.sizes(), acc_options);
  at::Tensor grad_loc, grad_weight;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "msda_backward", [&] {
    using T = typename CudaType<scalar_t>::type;
    using A = typename AccType<T>::type;
    constexpr Grads kGrads = sizeof(T) == 2 ? Grads::kLocationWeight : Grads::kAll;
    // (the fp32 scratch of the 16-bit path is allocated aligned)
    const bool aligned =
        aligned16(value) && aligned16(grad_output) && (chunked || aligned16(grad_value));
    with_layout<T, 4>(p.dim, aligned, [&](auto vec, auto group_size) {
      constexpr int VEC = decltype(vec)::value;
      constexpr int G = decltype(group_size)::value;
      const Launch l = launch_of(p, VEC, G);
      if constexpr (kGrads == Grads::kLocationWeight) {  // grad_value first, before grad_loc
        if (l.groups > 0) {
          const int64_t grad_bytes = (sampling_locations.numel() + attention_weights.numel()) *
                                     static_cast<int64_t>(c10::elementSize(dtype));
          with_method(discrete, [&](auto discrete_flag) {
            grad_value_in_chunks<T, VEC, G, decltype(discrete_flag)::value>(
                value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                grad_output, grad_value, p, l, scratch_rows(p, grad_bytes), stream);
          });
        }
      }
      // One slab per head: the kernel writes every point's gradient. Several: it adds into zeros.
      if (l.slabs == 1) {
        grad_loc = at::empty(sampling_locations.sizes(), value.options());
        grad_weight = at::empty(attention_weights.sizes(), value.options());
      } else {
        grad_loc = at::zeros(sampling_locations.sizes(), acc_options);
        grad_weight = at::zeros(attention_weights.sizes(), acc_options);
      }
      if (l.groups == 0) {
        grad_value.zero_();
        grad_loc.zero_();
        grad_weight.zero_();
        return;
      }
      T* loc_out = l.slabs == 1 ? reinterpret_cast<T*>(grad_loc.data_ptr()) : nullptr;
      T* weight_out = l.slabs == 1 ? reinterpret_cast<T*>(grad_weight.data_ptr()) : nullptr;
      A* loc_acc = l.slabs == 1 ? nullptr : reinterpret_cast<A*>(grad_loc.data_ptr());
      A* weight_acc = l.slabs == 1 ? nullptr : reinterpret_cast<A*>(grad_weight.data_ptr());
      A* value_acc = chunked ? nullptr : reinterpret_cast<A*>(grad_value.data_ptr());
      with_method(discrete, [&](auto discrete_flag) {
        constexpr bool kDiscrete = decltype(discrete_flag)::value;
        msda_backward_kernel<T, VEC, G, kDiscrete, kGrads><<<l.blocks, kThreads, 0, stream>>>(
            reinterpret_cast<const T*>(value.data_ptr()), spatial_shapes.data_ptr<int64_t>(),
            level_start_index.data_ptr<int64_t>(),
            reinterpret_cast<const T*>(sampling_locations.data_ptr()),
            reinterpret_cast<const T*>(attention_weights.data_ptr()),
            reinterpret_cast<const T*>(grad_output.data_ptr()), value_acc, loc_out, weight_out,
            loc_acc, weight_acc, p, 0, l.groups, 0, static_cast<int64_t>(p.batch) * p.num_value,
            l.slabs, head_major_order<T>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
  return {grad_value.to(dtype), grad_loc.to(dtype), grad_weight.to(dtype)};
}

}  // namespace detr_plugin
