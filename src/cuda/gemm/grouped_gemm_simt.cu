// Grouped GEMM on CUDA cores: 64x64 output tiles, K in steps of 16 through shared memory, 256
// threads each holding a 4x4 fp32 accumulator (two for the gated form). Blocks are laid out as
// (expert, row split) x column tile; a block walks the row tiles of its expert with stride
// row_splits, so the grid never depends on row counts the host does not know.
#include <algorithm>

#include "cuda/cuda_check.h"
#include "cuda/gemm/expert_rows.cuh"
#include "cuda/gemm/gated_activation.cuh"
#include "cuda/gemm/grouped_gemm_simt.h"
#include "cuda/storage.cuh"

namespace ironmoe::cuda::gemm {
namespace {

constexpr int kTileM = 64;
constexpr int kTileN = 64;
constexpr int kTileK = 16;
constexpr int kThreadsX = 16;  // along N
constexpr int kThreadsY = 16;  // along M
constexpr int kThreads = kThreadsX * kThreadsY;
constexpr int kPerThread = 4;  // outputs per thread along M and along N
constexpr int kLoadsPerThread = kTileM * kTileK / kThreads;
static_assert(kTileM == kThreadsY * kPerThread && kTileN == kThreadsX * kPerThread);
static_assert(kTileM == kTileN, "one loop loads the A and B tiles");

// Loads a [64 rows, 16 k] tile of a row-major matrix into smem as [k][row]; rows >= row_limit and
// k >= k_limit read as zero (they are never fetched).
template <class T>
__device__ __forceinline__ void load_tile(float (*tile)[kTileM + 1], const T* matrix,
                                          int64_t row_stride, int64_t row_limit, int64_t k0,
                                          int64_t k_limit) {
#pragma unroll
  for (int i = 0; i < kLoadsPerThread; ++i) {
    const int index = static_cast<int>(threadIdx.x) + i * kThreads;
    const int row = index / kTileK;
    const int kk = index % kTileK;
    float value = 0.0f;
    if (row < row_limit && k0 + kk < k_limit) value = to_float(matrix[row * row_stride + k0 + kk]);
    tile[kk][row] = value;
  }
}

template <class T, bool Gated>
__global__ void __launch_bounds__(kThreads)
    grouped_gemm_simt_kernel(ExpertRows rows, const T* __restrict__ a, int64_t a_stride,
                             const T* __restrict__ b, int64_t b_expert_stride, T* __restrict__ d,
                             int64_t d_stride, int64_t n, int64_t k, int row_splits,
                             Activation activation) {
  __shared__ float a_tile[kTileK][kTileM + 1];
  __shared__ float gate_tile[kTileK][kTileN + 1];
  __shared__ float up_tile[Gated ? kTileK : 1][kTileN + 1];

  const int64_t expert = blockIdx.x / row_splits;
  const int split = static_cast<int>(blockIdx.x % row_splits);
  const int64_t n0 = static_cast<int64_t>(blockIdx.y) * kTileN;
  const RowRange range = expert_row_range(rows, expert);
  const int tx = static_cast<int>(threadIdx.x) % kThreadsX;
  const int ty = static_cast<int>(threadIdx.x) / kThreadsX;
  const T* gate_rows = b + expert * b_expert_stride + n0 * k;
  const T* up_rows = gate_rows + n * k;  // gated only: rows [N, 2N) of B_e

  for (int64_t m0 = static_cast<int64_t>(split) * kTileM; m0 < range.count;
       m0 += static_cast<int64_t>(row_splits) * kTileM) {
    const T* a_rows = a + (range.begin + m0) * a_stride;
    float gate_acc[kPerThread][kPerThread] = {};
    float up_acc[Gated ? kPerThread : 1][kPerThread] = {};

    for (int64_t k0 = 0; k0 < k; k0 += kTileK) {
      load_tile(a_tile, a_rows, a_stride, range.count - m0, k0, k);
      load_tile(gate_tile, gate_rows, k, n - n0, k0, k);
      if constexpr (Gated) load_tile(up_tile, up_rows, k, n - n0, k0, k);
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kTileK; ++kk) {
        float a_frag[kPerThread];
        float gate_frag[kPerThread];
#pragma unroll
        for (int i = 0; i < kPerThread; ++i) {
          a_frag[i] = a_tile[kk][ty + i * kThreadsY];
          gate_frag[i] = gate_tile[kk][tx + i * kThreadsX];
        }
#pragma unroll
        for (int i = 0; i < kPerThread; ++i) {
#pragma unroll
          for (int j = 0; j < kPerThread; ++j) gate_acc[i][j] += a_frag[i] * gate_frag[j];
        }
        if constexpr (Gated) {
          float up_frag[kPerThread];
#pragma unroll
          for (int j = 0; j < kPerThread; ++j) up_frag[j] = up_tile[kk][tx + j * kThreadsX];
#pragma unroll
          for (int i = 0; i < kPerThread; ++i) {
#pragma unroll
            for (int j = 0; j < kPerThread; ++j) up_acc[i][j] += a_frag[i] * up_frag[j];
          }
        }
      }
      __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < kPerThread; ++i) {
      const int64_t row = m0 + ty + i * kThreadsY;
      if (row >= range.count) continue;
      T* d_row = d + (range.begin + row) * d_stride;
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const int64_t column = n0 + tx + j * kThreadsX;
        if (column >= n) continue;
        float value = gate_acc[i][j];
        if constexpr (Gated) value = gated_activation(value, up_acc[i][j], activation);
        d_row[column] = from_float<T>(value);
      }
    }
  }
}

template <class T, bool Gated>
void launch(const ExpertRows& rows, const SimtGemmArgs& args, cudaStream_t stream) {
  // Row splits so that an expert with the average number of rows spreads over its own blocks.
  const int64_t average_rows = rows.num_rows / std::max<int64_t>(rows.num_experts, 1);
  const int64_t row_splits = std::clamp<int64_t>((average_rows + kTileM - 1) / kTileM, 1, 1024);
  const int64_t column_tiles = (args.n + kTileN - 1) / kTileN;
  IRONMOE_CHECK(rows.num_experts * row_splits <= 0x7fffffff && column_tiles <= 65535, "experts",
                "N = ", args.n, " columns or the number of experts exceed the launch limits of ",
                "the CUDA backend");
  const dim3 grid(static_cast<unsigned>(rows.num_experts * row_splits),
                  static_cast<unsigned>(column_tiles));
  grouped_gemm_simt_kernel<T, Gated><<<grid, kThreads, 0, stream>>>(
      rows, static_cast<const T*>(args.a), args.a_stride, static_cast<const T*>(args.b),
      args.b_expert_stride, static_cast<T*>(args.d), args.d_stride, args.n, args.k,
      static_cast<int>(row_splits), args.activation);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
}

}  // namespace

void grouped_gemm_simt(const ExpertRows& rows, const SimtGemmArgs& args, cudaStream_t stream) {
  if (rows.num_experts == 0 || rows.num_rows == 0 || args.n == 0) return;
  dispatch_float_dtype("experts", args.dtype, [&](auto element) {
    using T = decltype(element);
    if (args.gated) {
      launch<T, true>(rows, args, stream);
    } else {
      launch<T, false>(rows, args, stream);
    }
  });
}

}  // namespace ironmoe::cuda::gemm
