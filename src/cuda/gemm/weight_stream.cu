// Weight-streaming expert kernels (weight_stream.h).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "cuda/cuda_check.h"
#include "cuda/gemm/expert_rows.cuh"
#include "cuda/gemm/gated_activation.cuh"
#include "cuda/gemm/weight_stream.h"
#include "cuda/launch.cuh"
#include "cuda/storage.cuh"

namespace ironmoe::cuda::gemm {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
// Four blocks of 256 threads per SM (64 registers a thread): enough warps, each with
// kStepsPerLoad * (weight rows) 16-byte loads in flight, to keep HBM busy (ncu on an H100: at 80
// registers and one column per warp, 3 blocks per SM, two waves and 2.1 TB/s for gate/up).
constexpr int kMinBlocksPerSm = 4;
constexpr int kRowsPerPass = 4;    // token rows that share one read of a weight row
constexpr int kVec = 8;            // 16-bit elements per 16-byte access
constexpr int kWarpStride = 32 * kVec;
constexpr int kStepsPerLoad = 2;   // warp strides of K whose weights are loaded before any use
// Output columns per warp: gate/up reads two weight rows per column, down one; both read four
// rows at a time, so a warp has 8 loads in flight and the grid fits in about one wave.
constexpr int kGateUpColumns = 2;
constexpr int kDownColumns = 4;

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

// acc[w][r] += weights[w] . x[r] over K for kRows weight rows and rows_here (<= kRowsPerPass) rows
// of x. Each lane sums its own elements in increasing k (as before this was unrolled over
// columns), so a row's result does not depend on the other rows or columns of its warp.
template <class T, int kRows>
__device__ __forceinline__ void stream_rows(const T* const (&weights)[kRows], const T* x,
                                            int64_t x_stride, int64_t rows_here, int64_t k_size,
                                            float (&acc)[kRows][kRowsPerPass]) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  for (int64_t k0 = lane * kVec; k0 < k_size; k0 += kStepsPerLoad * kWarpStride) {
    uint4 w[kStepsPerLoad][kRows];
#pragma unroll
    for (int step = 0; step < kStepsPerLoad; ++step) {
      const int64_t k = k0 + step * kWarpStride;
#pragma unroll
      for (int row = 0; row < kRows; ++row)
        w[step][row] = k < k_size ? load16(weights[row] + k) : make_uint4(0, 0, 0, 0);
    }
#pragma unroll
    for (int step = 0; step < kStepsPerLoad; ++step) {
      const int64_t k = k0 + step * kWarpStride;
      if (k >= k_size) break;
#pragma unroll
      for (int r = 0; r < kRowsPerPass; ++r) {
        if (r < rows_here) {
          const uint4 xr = load16(x + r * x_stride + k);
#pragma unroll
          for (int row = 0; row < kRows; ++row) acc[row][r] = dot8<T>(acc[row][r], w[step][row], xr);
        }
      }
    }
  }
}

// The expert, row range and first output column of this warp (kColumns columns from there), or
// false when the block or warp has nothing to do.
template <int kColumns>
__device__ __forceinline__ bool warp_task(const ExpertRows& rows, int64_t columns, int* active,
                                          int64_t* expert, RowRange* range, int64_t* column) {
  const int count = list_active_experts(rows, active);
  if (static_cast<int>(blockIdx.y) >= count) return false;
  *expert = active[blockIdx.y];
  *range = expert_row_range(rows, *expert);
  *column = (static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5)) * kColumns;
  return *column < columns;
}

template <class T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    stream_gate_up(ExpertRows rows, const T* __restrict__ a, int64_t a_stride,
                   const T* __restrict__ w13, int64_t w13_expert_stride, T* __restrict__ h,
                   int64_t h_stride, int64_t intermediate, int64_t hidden, Activation activation) {
  wait_for_previous_kernel();
  extern __shared__ int active[];
  constexpr int kColumns = kGateUpColumns;
  int64_t expert = 0, first = 0;
  RowRange range;
  if (!warp_task<kColumns>(rows, intermediate, active, &expert, &range, &first)) return;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  // Weight rows gate[first + c] then up[first + c]; a column past the end reads the last one
  // (in bounds) and is not stored.
  const T* weights[2 * kColumns];
#pragma unroll
  for (int c = 0; c < kColumns; ++c) {
    const int64_t column = min(first + c, intermediate - 1);
    weights[c] = w13 + expert * w13_expert_stride + column * hidden;
    weights[kColumns + c] = weights[c] + intermediate * hidden;
  }
  for (int64_t pass = 0; pass < range.count; pass += kRowsPerPass) {
    const int64_t rows_here = min(static_cast<int64_t>(kRowsPerPass), range.count - pass);
    float acc[2 * kColumns][kRowsPerPass] = {};
    stream_rows<T, 2 * kColumns>(weights, a + (range.begin + pass) * a_stride, a_stride,
                                 rows_here, hidden, acc);
#pragma unroll
    for (int c = 0; c < kColumns; ++c) {
#pragma unroll
      for (int r = 0; r < kRowsPerPass; ++r) {
        if (r < rows_here) {
          const float g = warp_sum(acc[c][r]);
          const float u = warp_sum(acc[kColumns + c][r]);
          if (lane == r * kColumns + c && first + c < intermediate) {
            h[(range.begin + pass + r) * h_stride + first + c] =
                from_float<T>(gated_activation(g, u, activation));
          }
        }
      }
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    stream_down(ExpertRows rows, const T* __restrict__ h, int64_t h_stride,
                const T* __restrict__ w2, int64_t w2_expert_stride, T* __restrict__ out,
                int64_t out_stride, int64_t hidden, int64_t intermediate) {
  wait_for_previous_kernel();
  extern __shared__ int active[];
  constexpr int kColumns = kDownColumns;
  int64_t expert = 0, first = 0;
  RowRange range;
  if (!warp_task<kColumns>(rows, hidden, active, &expert, &range, &first)) return;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const T* weights[kColumns];
#pragma unroll
  for (int c = 0; c < kColumns; ++c) {
    const int64_t column = min(first + c, hidden - 1);
    weights[c] = w2 + expert * w2_expert_stride + column * intermediate;
  }
  for (int64_t pass = 0; pass < range.count; pass += kRowsPerPass) {
    const int64_t rows_here = min(static_cast<int64_t>(kRowsPerPass), range.count - pass);
    float acc[kColumns][kRowsPerPass] = {};
    stream_rows<T, kColumns>(weights, h + (range.begin + pass) * h_stride, h_stride, rows_here,
                             intermediate, acc);
#pragma unroll
    for (int c = 0; c < kColumns; ++c) {
#pragma unroll
      for (int r = 0; r < kRowsPerPass; ++r) {
        if (r < rows_here) {
          const float v = warp_sum(acc[c][r]);
          if (lane == r * kColumns + c && first + c < hidden)
            out[(range.begin + pass + r) * out_stride + first + c] = from_float<T>(v);
        }
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
  constexpr int64_t kGateUpBlockColumns = kWarps * kGateUpColumns;
  constexpr int64_t kDownBlockColumns = kWarps * kDownColumns;
  const dim3 gate_up_grid(
      static_cast<unsigned>((args.intermediate + kGateUpBlockColumns - 1) / kGateUpBlockColumns),
      expert_slots);
  launch_overlapped(stream_gate_up<T>, gate_up_grid, dim3(kThreads), list_bytes, stream, rows,
                    static_cast<const T*>(args.a), args.a_stride, static_cast<const T*>(args.w13),
                    args.w13_expert_stride, static_cast<T*>(args.h), args.h_stride,
                    args.intermediate, args.hidden, args.activation);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
  const dim3 down_grid(
      static_cast<unsigned>((args.hidden + kDownBlockColumns - 1) / kDownBlockColumns),
      expert_slots);
  launch_overlapped(stream_down<T>, down_grid, dim3(kThreads), list_bytes, stream, rows,
                    static_cast<const T*>(args.h), args.h_stride, static_cast<const T*>(args.w2),
                    args.w2_expert_stride, static_cast<T*>(args.out), args.out_stride,
                    args.hidden, args.intermediate);
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
