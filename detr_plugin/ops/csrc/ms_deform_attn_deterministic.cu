// Multi-scale deformable attention: a deterministic backward (the same gradients, bit for bit, on
// every run) with no floating-point atomics. Shapes as in ms_deform_attn.h; same sampling semantics
// as the kernels of ms_deform_attn_cuda.cu (grid_sample bilinear, zeros padding,
// align_corners=False; or discrete nearest cells), same accumulation types (fp32 for float, half
// and bfloat16; double for double).
//
// Per batch element (value rows of different batch elements are disjoint):
// 1. point kernel: one group of G lanes per (query, head). A lane sums its channels of
//    grad_output . value per corner in channel order; the group reduces with xor shuffles (a fixed
//    tree); lane 0 writes the point's location and attention-weight gradients (no atomics, each
//    group owns its points). Lane k lists corner k as an entry: key = the value row it reads
//    (token * heads + head, or `rows` when the corner is off the map or the point is not sampled),
//    coefficient = attention weight x bilinear weight.
// 2. CUB's radix sort of (key, entry index) pairs: stable, so each row's entries form one segment
//    in entry order, whatever the scheduling.
// 3. segment starts: searchsorted of 0..rows in the sorted keys.
// 4. row kernel: one group per (value row, slab of G channels) sums coefficient x grad_output row
//    over its segment in order, in fp32 (double) registers, and writes grad_value once in the
//    storage dtype: no value-sized accumulation buffer.
// Extra memory (reused across batch elements): per corner entry two uint32 keys, two uint32
// indices (the sort's double buffers) and one coefficient (float; double for double), i.e. 20
// bytes (24) per entry; entries per batch element = queries x heads x sum(P_l) x 4 corners (1 for
// discrete sampling); plus 4 bytes per value row and CUB's small scratch space. Deformable DETR's
// encoder (19,947 queries, 8 heads, 4 levels x 4 points): 10.2 M entries, 204 MB.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>
#include <type_traits>

#include "ms_deform_attn.h"
#include "ms_deform_attn_common.cuh"

namespace detr_plugin {
namespace {

// Sizes of one batch element; tokens x heads x dim < INT_MAX and corner entries <= INT_MAX
// (checked), so rows and entries are 32-bit.
struct Sizes {
  int num_value, num_query, heads, dim, levels;
  int points_per_head;  // sum of level_points
  int level_points[kMaxLevels];
};

// Lanes of a group within a warp.
template <int G>
__device__ __forceinline__ unsigned group_mask() {
  return G == 32 ? 0xffffffffu : ((1u << G) - 1u) << (threadIdx.x % 32 / G * G);
}

// Step 1 (one batch element; pointers offset to it). keys / order / coefs: one entry per corner,
// entry e = (query_head * points_per_head + point) * kCorners + corner.
template <typename T, int G, bool kDiscrete>
__global__ void __launch_bounds__(kThreads) msda_det_point_kernel(
    const T* __restrict__ value, const int64_t* __restrict__ spatial_shapes,
    const int64_t* __restrict__ level_start_index, const T* __restrict__ sampling_locations,
    const T* __restrict__ attention_weights, const T* __restrict__ grad_output,
    T* __restrict__ grad_loc, T* __restrict__ grad_weight, uint32_t* __restrict__ keys,
    uint32_t* __restrict__ order, Acc<T>* __restrict__ coefs, const Sizes s) {
  using A = Acc<T>;
  constexpr int kCorners = kDiscrete ? 1 : 4;
  const int64_t query_head = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / G;
  if (query_head >= static_cast<int64_t>(s.num_query) * s.heads) return;  // whole groups leave
  const int lane = threadIdx.x % G;
  const unsigned mask = group_mask<G>();
  const int head = static_cast<int>(query_head % s.heads);
  const int token_stride = s.heads * s.dim;
  const uint32_t off_map_key = static_cast<uint32_t>(s.num_value) * s.heads;  // sorts last
  const T* grad = grad_output + query_head * s.dim;
  int64_t point_index = query_head * s.points_per_head;

  for (int level = 0; level < s.levels; ++level) {
    const int height = static_cast<int>(__ldg(spatial_shapes + 2 * level));
    const int width = static_cast<int>(__ldg(spatial_shapes + 2 * level + 1));
    const int start = static_cast<int>(__ldg(level_start_index + level));
    const T* value_level = value + static_cast<int64_t>(start) * token_stride + head * s.dim;
#pragma unroll 1
    for (int point = 0; point < s.level_points[level]; ++point, ++point_index) {
      Footprint<A> f;
      const bool on_map = point_footprint<kDiscrete>(sampling_locations[2 * point_index],
                                                     sampling_locations[2 * point_index + 1],
                                                     height, width, f);
      const A a = on_map ? to_acc<A>(attention_weights[point_index]) : A(0);
      A corner_weight[4] = {A(0), A(0), A(0), A(0)};
      A sum_w = A(0), sum_x = A(0), sum_y = A(0);  // this lane's channels
      if (on_map) {
        const A fx = f.fx, fy = f.fy, hx = A(1) - fx, hy = A(1) - fy;
        corner_weight[0] = hy * hx;
        corner_weight[1] = hy * fx;
        corner_weight[2] = fy * hx;
        corner_weight[3] = fy * fx;
        const A d_dx[4] = {-hy, hy, -fy, fy};  // d corner_weight / d fx
        const A d_dy[4] = {-hx, -fx, hx, fx};  // d corner_weight / d fy
        A dot[kCorners];  // grad_output . value per corner, over this lane's channels
#pragma unroll
        for (int k = 0; k < kCorners; ++k) dot[k] = A(0);
        for (int c = lane; c < s.dim; c += G) {
          const A g = to_acc<A>(grad[c]);
#pragma unroll
          for (int k = 0; k < kCorners; ++k) {
            if (f.inside[k]) {
              dot[k] = fma(g, to_acc<A>(value_level[f.offset[k] * token_stride + c]), dot[k]);
            }
          }
        }
#pragma unroll
        for (int k = 0; k < kCorners; ++k) {
          sum_w = fma(corner_weight[k], dot[k], sum_w);
          if constexpr (!kDiscrete) {
            sum_x = fma(d_dx[k], dot[k], sum_x);
            sum_y = fma(d_dy[k], dot[k], sum_y);
          }
        }
      }
#pragma unroll
      for (int offset = G / 2; offset > 0; offset /= 2) {
        sum_w += __shfl_xor_sync(mask, sum_w, offset);
        if constexpr (!kDiscrete) {
          sum_x += __shfl_xor_sync(mask, sum_x, offset);
          sum_y += __shfl_xor_sync(mask, sum_y, offset);
        }
      }
      if (lane == 0) {
        // d pixel / d loc = size; points off the map have a = 0 and zero sums
        grad_weight[point_index] = from_acc<T>(sum_w);
        grad_loc[2 * point_index] = from_acc<T>(kDiscrete ? A(0) : a * width * sum_x);
        grad_loc[2 * point_index + 1] = from_acc<T>(kDiscrete ? A(0) : a * height * sum_y);
      }
#pragma unroll
      for (int k = 0; k < kCorners; ++k) {
        if (lane != k) continue;
        const int64_t entry = point_index * kCorners + k;
        const bool read = on_map && f.inside[k];
        keys[entry] = read ? static_cast<uint32_t>(start + f.offset[k]) * s.heads + head
                           : off_map_key;
        order[entry] = static_cast<uint32_t>(entry);
        coefs[entry] = read ? a * corner_weight[k] : A(0);
      }
    }
  }
}

// Step 4: grad_value[row, channel] = sum over the row's segment (sorted order) of
// coef[entry] * grad_output[query_head(entry), channel]; every row written (0 for no entries).
// Several entries are loaded before they are summed; the sum's order stays the segment's.
template <typename T, int G>
__global__ void __launch_bounds__(kThreads) msda_det_row_kernel(
    const T* __restrict__ grad_output, const uint32_t* __restrict__ sorted_order,
    const Acc<T>* __restrict__ coefs, const int* __restrict__ segment_start,
    T* __restrict__ grad_value, const int rows, const int dim, const int num_slabs,
    const uint32_t entries_per_query_head) {
  using A = Acc<T>;
  constexpr int kBatch = 8;  // entries in flight per lane (the chain entry -> coef, grad_output)
  const int64_t group = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / G;
  if (group >= static_cast<int64_t>(rows) * num_slabs) return;
  const int row = static_cast<int>(group / num_slabs);
  const int channel = static_cast<int>(group % num_slabs) * G + threadIdx.x % G;
  if (channel >= dim) return;
  const int end = segment_start[row + 1];
  A acc = A(0);
  int i = segment_start[row];
  for (; i + kBatch <= end; i += kBatch) {
    A coef[kBatch], g[kBatch];
#pragma unroll
    for (int j = 0; j < kBatch; ++j) {
      const uint32_t entry = sorted_order[i + j];
      coef[j] = coefs[entry];
      g[j] = to_acc<A>(grad_output[static_cast<int64_t>(entry / entries_per_query_head) * dim +
                                   channel]);
    }
#pragma unroll
    for (int j = 0; j < kBatch; ++j) acc = fma(coef[j], g[j], acc);
  }
  for (; i < end; ++i) {
    const uint32_t entry = sorted_order[i];
    acc = fma(coefs[entry],
              to_acc<A>(grad_output[static_cast<int64_t>(entry / entries_per_query_head) * dim +
                                    channel]),
              acc);
  }
  grad_value[static_cast<int64_t>(row) * dim + channel] = from_acc<T>(acc);
}

// Calls fn(integral_constant G): groups of 8, 16 or 32 lanes, one channel per lane.
template <typename Fn>
void with_group_size(int dim, Fn&& fn) {
  if (dim <= 8) return fn(std::integral_constant<int, 8>{});
  if (dim <= 16) return fn(std::integral_constant<int, 16>{});
  return fn(std::integral_constant<int, 32>{});
}

template <typename Fn>
void with_method(bool discrete, Fn&& fn) {
  if (discrete) return fn(std::true_type{});
  return fn(std::false_type{});
}

int64_t blocks_for(int64_t groups, int group_size) {
  return (groups * group_size + kThreads - 1) / kThreads;
}

int key_bits(uint32_t max_key) {
  int bits = 1;
  while (bits < 32 && (max_key >> bits) != 0) ++bits;
  return bits;
}

}  // namespace

std::vector<at::Tensor> ms_deform_attn_backward_deterministic(
    const at::Tensor& value_in, const at::Tensor& spatial_shapes_in,
    const at::Tensor& level_start_index_in, const at::Tensor& sampling_locations_in,
    const at::Tensor& attention_weights_in, const at::Tensor& grad_output_in,
    const std::vector<int64_t>& level_points, bool discrete) {
  check_backward_inputs(value_in, spatial_shapes_in, level_start_index_in, sampling_locations_in,
                        attention_weights_in, grad_output_in, level_points);
  const c10::cuda::CUDAGuard guard(value_in.device());
  const at::Tensor value = value_in.contiguous();
  const at::Tensor spatial_shapes = spatial_shapes_in.to(at::kLong).contiguous();
  const at::Tensor level_start_index = level_start_index_in.to(at::kLong).contiguous();
  const at::Tensor sampling_locations = sampling_locations_in.contiguous();
  const at::Tensor attention_weights = attention_weights_in.contiguous();
  const at::Tensor grad_output = grad_output_in.contiguous();

  Sizes s{};
  const int64_t batch = value.size(0);
  s.num_value = static_cast<int>(value.size(1));
  s.num_query = static_cast<int>(sampling_locations.size(1));
  s.heads = static_cast<int>(value.size(2));
  s.dim = static_cast<int>(value.size(3));
  s.levels = static_cast<int>(level_points.size());
  s.points_per_head = static_cast<int>(sampling_locations.size(3));
  for (int level = 0; level < s.levels; ++level) {
    s.level_points[level] = static_cast<int>(level_points[level]);
  }
  const int corners = discrete ? 1 : 4;
  const int64_t query_heads = sampling_locations.size(1) * s.heads;
  const int64_t entries = query_heads * s.points_per_head * corners;  // per batch element
  TORCH_CHECK(entries <= INT_MAX, "ms_deform_attn_backward_deterministic: ", entries,
              " sampling corners per batch element, at most ", INT_MAX);
  const int rows = s.num_value * s.heads;  // per batch element

  at::Tensor grad_value = at::empty(value.sizes(), value.options());
  at::Tensor grad_loc = at::empty(sampling_locations.sizes(), value.options());
  at::Tensor grad_weight = at::empty(attention_weights.sizes(), value.options());
  if (grad_value.numel() == 0 || entries == 0) {
    return {grad_value.zero_(), grad_loc.zero_(), grad_weight.zero_()};
  }
  const auto acc_dtype = value.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto index_options = value.options().dtype(at::kInt);
  at::Tensor keys = at::empty({2, entries}, index_options);  // uint32 bits; keys <= rows < 2^31
  at::Tensor order = at::empty({2, entries}, index_options);
  at::Tensor coefs = at::empty({entries}, value.options().dtype(acc_dtype));
  const at::Tensor row_ids = at::arange(rows + 1, index_options);
  const int end_bit = key_bits(static_cast<uint32_t>(rows));
  auto* keys0 = reinterpret_cast<uint32_t*>(keys[0].data_ptr());
  auto* keys1 = reinterpret_cast<uint32_t*>(keys[1].data_ptr());
  auto* order0 = reinterpret_cast<uint32_t*>(order[0].data_ptr());
  auto* order1 = reinterpret_cast<uint32_t*>(order[1].data_ptr());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  size_t scratch_bytes = 0;
  {
    cub::DoubleBuffer<uint32_t> k(keys0, keys1), o(order0, order1);
    C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, scratch_bytes, k, o,
                                                   static_cast<int>(entries), 0, end_bit, stream));
  }
  // never empty: CUB reads a null scratch pointer as a size query and would not sort
  at::Tensor scratch = at::empty({static_cast<int64_t>(scratch_bytes) + 1},
                                 value.options().dtype(at::kByte));

  const int64_t value_stride = value[0].numel();
  const int64_t point_stride = query_heads * s.points_per_head;
  const int64_t out_stride = query_heads * s.dim;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, value.scalar_type(),
                                  "msda_backward_deterministic", [&] {
    using T = typename CudaType<scalar_t>::type;
    using A = Acc<T>;
    const T* value_ptr = reinterpret_cast<const T*>(value.data_ptr());
    const T* loc_ptr = reinterpret_cast<const T*>(sampling_locations.data_ptr());
    const T* weight_ptr = reinterpret_cast<const T*>(attention_weights.data_ptr());
    const T* grad_out_ptr = reinterpret_cast<const T*>(grad_output.data_ptr());
    T* grad_value_ptr = reinterpret_cast<T*>(grad_value.data_ptr());
    T* grad_loc_ptr = reinterpret_cast<T*>(grad_loc.data_ptr());
    T* grad_weight_ptr = reinterpret_cast<T*>(grad_weight.data_ptr());
    A* coef_ptr = reinterpret_cast<A*>(coefs.data_ptr());
    with_group_size(s.dim, [&](auto group_size) {
      constexpr int G = decltype(group_size)::value;
      const int num_slabs = (s.dim + G - 1) / G;
      for (int64_t b = 0; b < batch; ++b) {
        with_method(discrete, [&](auto discrete_flag) {
          constexpr bool kDiscrete = decltype(discrete_flag)::value;
          msda_det_point_kernel<T, G, kDiscrete><<<blocks_for(query_heads, G), kThreads, 0,
                                                   stream>>>(
              value_ptr + b * value_stride, spatial_shapes.data_ptr<int64_t>(),
              level_start_index.data_ptr<int64_t>(), loc_ptr + 2 * b * point_stride,
              weight_ptr + b * point_stride, grad_out_ptr + b * out_stride,
              grad_loc_ptr + 2 * b * point_stride, grad_weight_ptr + b * point_stride, keys0,
              order0, coef_ptr, s);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
        cub::DoubleBuffer<uint32_t> k(keys0, keys1), o(order0, order1);
        C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(scratch.data_ptr(), scratch_bytes, k, o,
                                                       static_cast<int>(entries), 0, end_bit,
                                                       stream));
        const at::Tensor sorted_keys = keys[k.selector];
        const at::Tensor segment_start =
            at::searchsorted(sorted_keys, row_ids, /*out_int32=*/true);  // (rows + 1,)
        msda_det_row_kernel<T, G><<<blocks_for(static_cast<int64_t>(rows) * num_slabs, G),
                                    kThreads, 0, stream>>>(
            grad_out_ptr + b * out_stride,
            reinterpret_cast<const uint32_t*>(order[o.selector].data_ptr()), coef_ptr,
            segment_start.data_ptr<int>(), grad_value_ptr + b * value_stride, rows, s.dim,
            num_slabs, static_cast<uint32_t>(s.points_per_head * corners));
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
    });
  });
  return {grad_value, grad_loc, grad_weight};
}

}  // namespace detr_plugin
