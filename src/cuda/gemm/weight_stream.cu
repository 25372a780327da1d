// Weight-streaming expert kernels (weight_stream.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "cuda/cuda_check.h"
#include "cuda/gemm/expert_rows.cuh"
#include "cuda/gemm/gated_activation.cuh"
#include "cuda/gemm/weight_stream.h"
#include "cuda/storage.cuh"

namespace ironmoe::cuda::gemm {
namespace {

constexpr int kWarps = 8;  // output columns per block, one per warp
constexpr int kThreads = kWarps * 32;
constexpr int kRowsPerPass = 8;  // token rows that share one read of a weight row
constexpr int kVec = 8;          // 16-bit elements per 16-byte access
constexpr int kWarpStride = 32 * kVec;

// Writes the ids of the local experts that own rows, in increasing order, to `active` (shared,
// rows.num_experts entries) and returns how many there are. Every thread of the block calls it.
__device__ int list_active_experts(const ExpertRows& rows, int* active) {
  __shared__ int warp_counts[kWarps];
  __shared__ int listed;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  if (threadIdx.x == 0) listed = 0;
  __syncthreads();
  for (int64_t first = 0; first < rows.num_experts; first += kThreads) {
    const int64_t expert = first + threadIdx.x;
    const bool owns_rows = expert < rows.num_experts && expert_row_range(rows, expert).count > 0;
    const unsigned ballot = __ballot_sync(0xffffffffu, owns_rows);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int position = listed;
    for (int w = 0; w < warp; ++w) position += warp_counts[w];
    if (owns_rows)
      active[position + __popc(ballot & ((1u << lane) - 1u))] = static_cast<int>(expert);
    __syncthreads();  // every thread has read `listed` and the warp counts
    if (threadIdx.x == 0) {
      for (int w = 0; w < kWarps; ++w) listed += warp_counts[w];
    }
    __syncthreads();
  }
  return listed;
}

template <class T>
__device__ __forceinline__ uint4 load16(const T* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

// sum += w . x over 8 elements, in element order.
template <class T>
__device__ __forceinline__ float dot8(float sum, const uint4& w, const uint4& x) {
  const T* wv = reinterpret_cast<const T*>(&w);
  const T* xv = reinterpret_cast<const T*>(&x);
#pragma unroll
  for (int i = 0; i < kVec; ++i) sum = fmaf(to_float(wv[i]), to_float(xv[i]), sum);
  return sum;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// The (expert, column) of this warp, or false when the block or warp has nothing to do.
__device__ __forceinline__ bool warp_task(const ExpertRows& rows, int64_t columns, int* active,
                                          int64_t* expert, RowRange* range, int64_t* column) {
  const int count = list_active_experts(rows, active);
  if (static_cast<int>(blockIdx.y) >= count) return false;
  *expert = active[blockIdx.y];
  *range = expert_row_range(rows, *expert);
  *column = static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  return *column < columns;
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    stream_gate_up(ExpertRows rows, const T* __restrict__ a, int64_t a_stride,
                   const T* __restrict__ w13, int64_t w13_expert_stride, T* __restrict__ h,
                   int64_t h_stride, int64_t intermediate, int64_t hidden, Activation activation) {
  extern __shared__ int active[];
  int64_t expert = 0, column = 0;
  RowRange range;
  if (!warp_task(rows, intermediate, active, &expert, &range, &column)) return;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const T* gate_w = w13 + expert * w13_expert_stride + column * hidden;
  const T* up_w = gate_w + intermediate * hidden;
  for (int64_t pass = 0; pass < range.count; pass += kRowsPerPass) {
    const int64_t rows_here = min(static_cast<int64_t>(kRowsPerPass), range.count - pass);
    const T* x = a + (range.begin + pass) * a_stride;
    float gate[kRowsPerPass] = {};
    float up[kRowsPerPass] = {};
#pragma unroll 4
    for (int64_t k = lane * kVec; k < hidden; k += kWarpStride) {
      const uint4 wg = load16(gate_w + k);
      const uint4 wu = load16(up_w + k);
#pragma unroll
      for (int r = 0; r < kRowsPerPass; ++r) {
        if (r < rows_here) {
          const uint4 xr = load16(x + r * a_stride + k);
          gate[r] = dot8<T>(gate[r], wg, xr);
          up[r] = dot8<T>(up[r], wu, xr);
        }
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerPass; ++r) {
      if (r < rows_here) {
        const float g = warp_sum(gate[r]);
        const float u = warp_sum(up[r]);
        if (lane == r) {
          h[(range.begin + pass + r) * h_stride + column] =
              from_float<T>(gated_activation(g, u, activation));
        }
      }
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    stream_down(ExpertRows rows, const T* __restrict__ h, int64_t h_stride,
                const T* __restrict__ w2, int64_t w2_expert_stride, T* __restrict__ out,
                int64_t out_stride, int64_t hidden, int64_t intermediate) {
  extern __shared__ int active[];
  int64_t expert = 0, column = 0;
  RowRange range;
  if (!warp_task(rows, hidden, active, &expert, &range, &column)) return;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const T* w = w2 + expert * w2_expert_stride + column * intermediate;
  for (int64_t pass = 0; pass < range.count; pass += kRowsPerPass) {
    const int64_t rows_here = min(static_cast<int64_t>(kRowsPerPass), range.count - pass);
    const T* x = h + (range.begin + pass) * h_stride;
    float sum[kRowsPerPass] = {};
#pragma unroll 4
    for (int64_t k = lane * kVec; k < intermediate; k += kWarpStride) {
      const uint4 wk = load16(w + k);
#pragma unroll
      for (int r = 0; r < kRowsPerPass; ++r) {
        if (r < rows_here) sum[r] = dot8<T>(sum[r], wk, load16(x + r * h_stride + k));
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsPerPass; ++r) {
      if (r < rows_here) {
        const float v = warp_sum(sum[r]);
        if (lane == r) out[(range.begin + pass + r) * out_stride + column] = from_float<T>(v);
      }
    }
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <class T>
void launch(const ExpertRows& rows, const WeightStreamArgs& args, cudaStream_t stream) {
  // One grid row per expert that can own rows: never more than the rows themselves.
  const auto expert_slots = static_cast<unsigned>(std::min(rows.num_experts, rows.num_rows));
  const size_t list_bytes = static_cast<size_t>(rows.num_experts) * sizeof(int);
  const dim3 gate_up_grid(static_cast<unsigned>((args.intermediate + kWarps - 1) / kWarps),
                          expert_slots);
  stream_gate_up<T><<<gate_up_grid, kThreads, list_bytes, stream>>>(
      rows, static_cast<const T*>(args.a), args.a_stride, static_cast<const T*>(args.w13),
      args.w13_expert_stride, static_cast<T*>(args.h), args.h_stride, args.intermediate,
      args.hidden, args.activation);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
  const dim3 down_grid(static_cast<unsigned>((args.hidden + kWarps - 1) / kWarps), expert_slots);
  stream_down<T><<<down_grid, kThreads, list_bytes, stream>>>(
      rows, static_cast<const T*>(args.h), args.h_stride, static_cast<const T*>(args.w2),
      args.w2_expert_stride, static_cast<T*>(args.out), args.out_stride, args.hidden,
      args.intermediate);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
}

}  // namespace

bool weight_stream_supports(const WeightStreamArgs& args, int64_t local_experts) {
  const bool dtype = args.dtype == DType::bf16 || args.dtype == DType::f16;
  const bool shapes = args.hidden % kVec == 0 && args.intermediate % kVec == 0 &&
                      args.a_stride % kVec == 0 && args.h_stride % kVec == 0 &&
                      args.w13_expert_stride % kVec == 0 && args.w2_expert_stride % kVec == 0;
  const bool pointers =
      aligned16(args.a) && aligned16(args.h) && aligned16(args.w13) && aligned16(args.w2);
  return dtype && shapes && pointers && local_experts <= kWeightStreamMaxExperts;
}

void weight_stream_experts(const ExpertRows& rows, const WeightStreamArgs& args,
                           cudaStream_t stream) {
  if (rows.num_experts == 0 || rows.num_rows == 0) return;
  IRONMOE_CHECK(weight_stream_supports(args, rows.num_experts), "experts",
                "internal: weight-stream kernels called with unsupported operands");
  if (args.dtype == DType::bf16) {
    launch<__nv_bfloat16>(rows, args, stream);
  } else {
    launch<__half>(rows, args, stream);
  }
}

}  // namespace ironmoe::cuda::gemm
