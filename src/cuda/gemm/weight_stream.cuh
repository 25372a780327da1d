#pragma once
// Device building blocks of the weight-streaming kernels (weight_stream.cu) and of the fused
// decode kernels (cuda/fused_decode.cu). Both compute every dot product with these functions, in
// the same order (each lane sums its own 8-element groups in increasing k, then a butterfly over
// the warp), so a fused layer and the staged one give the same bits.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/gemm/expert_rows.cuh"
#include "cuda/gemm/gated_activation.cuh"
#include "cuda/storage.cuh"
#include "ironmoe/types.h"

namespace ironmoe::cuda::gemm::streaming {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
// Four blocks of 256 threads per SM (64 registers a thread): enough warps, each with
// kStepsPerLoad * (weight rows) 16-byte loads in flight, to keep HBM busy (ncu on an H100: at 80
// registers and one column per warp, 3 blocks per SM, two waves and 2.1 TB/s for gate/up).
constexpr int kMinBlocksPerSm = 4;
// Gate/up output columns per warp: two weight rows (gate, up) per column, so a warp reading four
// at a time has 8 loads in flight and the grid fits in about one wave.
constexpr int kGateUpColumns = 2;
constexpr int kVec = 8;  // 16-bit elements per 16-byte access
constexpr int kWarpStride = 32 * kVec;
constexpr int kStepsPerLoad = 2;  // warp strides of K whose weights are loaded before any use
constexpr int kRowsPerPass = 4;   // token rows that share one read of a weight row

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

// Every lane gets the same bits: each exchange adds the same two partial sums (a + b == b + a).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Nothing to do between a warp's first weight loads and its first activation loads.
struct NoHook {
  __device__ void operator()() const {}
};

// acc[w][r] += weights[w] . x[r] over K for kRows weight rows and rows_here (<= kXRows) token
// rows. A (weight row, token row) sum does not depend on the other rows of the call, nor on
// kXRows. `before_x` runs once, after the first weight loads are issued and before any x is read
// (the fused decode path waits there for the kernel that writes x).
template <class T, int kRows, int kXRows = kRowsPerPass, class BeforeX = NoHook>
__device__ __forceinline__ void stream_rows(const T* const (&weights)[kRows],
                                            const T* const (&x)[kXRows], int rows_here,
                                            int64_t k_size, float (&acc)[kRows][kXRows],
                                            BeforeX before_x = {}) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  bool first = true;
  for (int64_t k0 = lane * kVec; k0 < k_size; k0 += kStepsPerLoad * kWarpStride) {
    uint4 w[kStepsPerLoad][kRows];
#pragma unroll
    for (int step = 0; step < kStepsPerLoad; ++step) {
      const int64_t k = k0 + step * kWarpStride;
#pragma unroll
      for (int row = 0; row < kRows; ++row)
        w[step][row] = k < k_size ? load16(weights[row] + k) : make_uint4(0, 0, 0, 0);
    }
    if (first) before_x();
    first = false;
#pragma unroll
    for (int step = 0; step < kStepsPerLoad; ++step) {
      const int64_t k = k0 + step * kWarpStride;
      if (k >= k_size) break;
#pragma unroll
      for (int r = 0; r < kXRows; ++r) {
        if (r < rows_here) {
          const uint4 xr = load16(x[r] + k);
#pragma unroll
          for (int row = 0; row < kRows; ++row)
            acc[row][r] = dot8<T>(acc[row][r], w[step][row], xr);
        }
      }
    }
  }
}

// One warp's share of gate/up for one expert: for token rows r < count,
//   h_row(r)[n] = act(x_row(r) . gate[n]) * (x_row(r) . up[n])   for n in [first, first + kColumns)
// where gate[n] = w13 + n * hidden and up[n] = gate[n + intermediate] (the expert's [2I, H]
// weights). Each weight row is read once per kRowsPerPass token rows; gate and up stay fp32 until
// the activation, h is rounded once. Every column in [first, first + kColumns) must exist.
template <class T, int kColumns, class XRow, class HRow>
__device__ __forceinline__ void gate_up_columns(const T* w13, int64_t first, int64_t intermediate,
                                                int64_t hidden, int64_t count, XRow x_row,
                                                HRow h_row, Activation activation) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const T* weights[2 * kColumns];
#pragma unroll
  for (int c = 0; c < kColumns; ++c) {
    weights[c] = w13 + (first + c) * hidden;
    weights[kColumns + c] = weights[c] + intermediate * hidden;
  }
  for (int64_t pass = 0; pass < count; pass += kRowsPerPass) {
    const int rows_here =
        static_cast<int>(count - pass < kRowsPerPass ? count - pass : kRowsPerPass);
    const T* x[kRowsPerPass];
#pragma unroll
    for (int r = 0; r < kRowsPerPass; ++r) x[r] = x_row(pass + min(r, rows_here - 1));
    float acc[2 * kColumns][kRowsPerPass] = {};
    stream_rows<T, 2 * kColumns>(weights, x, rows_here, hidden, acc);
#pragma unroll
    for (int c = 0; c < kColumns; ++c) {
#pragma unroll
      for (int r = 0; r < kRowsPerPass; ++r) {
        if (r < rows_here) {
          const float g = warp_sum(acc[c][r]);
          const float u = warp_sum(acc[kColumns + c][r]);
          if (lane == r * kColumns + c)
            h_row(pass + r)[first + c] = from_float<T>(gated_activation(g, u, activation));
        }
      }
    }
  }
}

// One warp's share of down for one expert: for token rows r < count and c < kColumns,
//   store(r, c, h_row(r) . w2[first + c])
// (the fp32 sum, identical in every lane, stored by one lane) where w2 is the expert's [H, I]
// weights. Each weight row is read once per kXRows token rows. Every column in
// [first, first + kColumns) must exist.
template <class T, int kColumns, int kXRows, class HRow, class Store, class BeforeX = NoHook>
__device__ __forceinline__ void down_columns(const T* w2, int64_t first, int64_t intermediate,
                                             int64_t count, HRow h_row, Store store,
                                             BeforeX before_x = {}) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const T* weights[kColumns];
#pragma unroll
  for (int c = 0; c < kColumns; ++c) weights[c] = w2 + (first + c) * intermediate;
  for (int64_t pass = 0; pass < count; pass += kXRows) {
    const int rows_here = static_cast<int>(count - pass < kXRows ? count - pass : kXRows);
    const T* x[kXRows];
#pragma unroll
    for (int r = 0; r < kXRows; ++r) x[r] = h_row(pass + min(r, rows_here - 1));
    float acc[kColumns][kXRows] = {};
    stream_rows<T, kColumns, kXRows>(weights, x, rows_here, intermediate, acc, before_x);
#pragma unroll
    for (int c = 0; c < kColumns; ++c) {
#pragma unroll
      for (int r = 0; r < kXRows; ++r) {
        if (r < rows_here) {
          const float v = warp_sum(acc[c][r]);
          if (lane == r * kColumns + c) store(pass + r, c, v);
        }
      }
    }
  }
}

// Writes the ids of the local experts that own rows, in increasing order, to `active` (shared,
// rows.num_experts entries) and returns how many there are. Every thread of the block calls it.
__device__ __forceinline__ int list_active_experts(const ExpertRows& rows, int* active) {
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

}  // namespace ironmoe::cuda::gemm::streaming
