// Grouped GEMM on CUDA cores: 64x64 output tiles, K in steps of 16 through shared memory, 256
// threads each holding a 4x4 fp32 accumulator (two for the gated form). Blocks are laid out as
// (expert, row split) x column tile; a block walks the row tiles of its expert with stride
// row_splits, so the grid never depends on row counts the host does not know.
#include <algorithm>

#include "core/fp8_scales.h"
#include "cuda/cuda_check.h"
#include "cuda/fp8.cuh"
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

// Operands: at(row, k) is element (row, k) as fp32; for_expert(e) is expert e's matrix of a
// [E_local, rows, K] operand (B). Storage rows read the dtype; FP8 rows decode an E4M3 code and
// multiply by its scale (core/fp8_scales.h).
template <class T>
struct StorageRows {
  const T* data;
  int64_t row_stride;
  int64_t expert_stride;

  __device__ float at(int64_t row, int64_t k) const { return to_float(data[row * row_stride + k]); }
  __device__ StorageRows for_expert(int64_t e) const {
    return {data + e * expert_stride, row_stride, 0};
  }
};

struct Fp8Rows {
  const uint8_t* codes;
  int64_t row_stride;
  int64_t expert_stride;
  core::Fp8ScaleMap scales;  // activations: the map; weights: filled in by for_expert
  QuantScheme quant;         // weights: the scheme of `weight_scales` ([E_local, ...])
  const float* weight_scales;
  int64_t rows;  // weights: rows and columns of one expert's matrix
  int64_t cols;

  __device__ float at(int64_t row, int64_t k) const {
    return fp8_to_float(codes[row * row_stride + k]) * scales.at(row, k);
  }
  __device__ Fp8Rows for_expert(int64_t e) const {
    Fp8Rows expert = *this;
    expert.codes = codes + e * expert_stride;
    expert.scales = core::fp8_weight_scale_map(quant, weight_scales, e, rows, cols);
    return expert;
  }
};

// Loads rows [row0, row0 + 64) x k [k0, k0 + 16) of an operand into smem as [k][row]; rows >=
// row0 + row_limit and k >= k_limit read as zero (they are never fetched).
template <class Operand>
__device__ __forceinline__ void load_tile(float (*tile)[kTileM + 1], const Operand& matrix,
                                          int64_t row0, int64_t row_limit, int64_t k0,
                                          int64_t k_limit) {
#pragma unroll
  for (int i = 0; i < kLoadsPerThread; ++i) {
    const int index = static_cast<int>(threadIdx.x) + i * kThreads;
    const int row = index / kTileK;
    const int kk = index % kTileK;
    float value = 0.0f;
    if (row < row_limit && k0 + kk < k_limit) value = matrix.at(row0 + row, k0 + kk);
    tile[kk][row] = value;
  }
}

template <class AOperand, class BOperand, class Out, bool Gated>
__global__ void __launch_bounds__(kThreads)
    grouped_gemm_simt_kernel(ExpertRows rows, AOperand a, BOperand b, Out* __restrict__ d,
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
  if (range.count == 0) return;
  const BOperand b_expert = b.for_expert(expert);  // gate rows [0, N), gated: up rows [N, 2N)

  for (int64_t m0 = static_cast<int64_t>(split) * kTileM; m0 < range.count;
       m0 += static_cast<int64_t>(row_splits) * kTileM) {
    float gate_acc[kPerThread][kPerThread] = {};
    float up_acc[Gated ? kPerThread : 1][kPerThread] = {};

    for (int64_t k0 = 0; k0 < k; k0 += kTileK) {
      load_tile(a_tile, a, range.begin + m0, range.count - m0, k0, k);
      load_tile(gate_tile, b_expert, n0, n - n0, k0, k);
      if constexpr (Gated) load_tile(up_tile, b_expert, n + n0, n - n0, k0, k);
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
      Out* d_row = d + (range.begin + row) * d_stride;
#pragma unroll
      for (int j = 0; j < kPerThread; ++j) {
        const int64_t column = n0 + tx + j * kThreadsX;
        if (column >= n) continue;
        float value = gate_acc[i][j];
        if constexpr (Gated) value = gated_activation(value, up_acc[i][j], activation);
        d_row[column] = from_float<Out>(value);
      }
    }
  }
}

// Grid: (expert, row split) x column tile, with row splits so that an expert with the average
// number of rows spreads over its own blocks.
template <class AOperand, class BOperand, class Out, bool Gated>
void launch(const ExpertRows& rows, const AOperand& a, const BOperand& b, Out* d, int64_t d_stride,
            int64_t n, int64_t k, Activation activation, cudaStream_t stream) {
  const int64_t average_rows = rows.num_rows / std::max<int64_t>(rows.num_experts, 1);
  const int64_t row_splits = std::clamp<int64_t>((average_rows + kTileM - 1) / kTileM, 1, 1024);
  const int64_t column_tiles = (n + kTileN - 1) / kTileN;
  IRONMOE_CHECK(rows.num_experts * row_splits <= 0x7fffffff && column_tiles <= 65535, "experts",
                "N = ", n, " columns or the number of experts exceed the launch limits of ",
                "the CUDA backend");
  const dim3 grid(static_cast<unsigned>(rows.num_experts * row_splits),
                  static_cast<unsigned>(column_tiles));
  grouped_gemm_simt_kernel<AOperand, BOperand, Out, Gated><<<grid, kThreads, 0, stream>>>(
      rows, a, b, d, d_stride, n, k, static_cast<int>(row_splits), activation);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
}

}  // namespace

void grouped_gemm_simt(const ExpertRows& rows, const SimtGemmArgs& args, cudaStream_t stream) {
  if (rows.num_experts == 0 || rows.num_rows == 0 || args.n == 0) return;
  dispatch_float_dtype("experts", args.dtype, [&](auto element) {
    using T = decltype(element);
    const StorageRows<T> a{static_cast<const T*>(args.a), args.a_stride, 0};
    const StorageRows<T> b{static_cast<const T*>(args.b), args.k, args.b_expert_stride};
    auto* d = static_cast<T*>(args.d);
    if (args.gated) {
      launch<StorageRows<T>, StorageRows<T>, T, true>(rows, a, b, d, args.d_stride, args.n, args.k,
                                                      args.activation, stream);
    } else {
      launch<StorageRows<T>, StorageRows<T>, T, false>(rows, a, b, d, args.d_stride, args.n,
                                                       args.k, args.activation, stream);
    }
  });
}

void grouped_gemm_simt_fp8(const ExpertRows& rows, const Fp8GemmArgs& args, cudaStream_t stream) {
  if (rows.num_experts == 0 || rows.num_rows == 0 || args.n == 0) return;
  const Fp8Rows a{args.a, args.k, 0, args.a_scales, args.quant, nullptr, 0, 0};
  const int64_t w_rows = args.gated ? 2 * args.n : args.n;
  const Fp8Rows w{args.w, args.k, w_rows * args.k, {}, args.quant, args.w_scales, w_rows, args.k};
  if (args.gated) {
    launch<Fp8Rows, Fp8Rows, float, true>(rows, a, w, static_cast<float*>(args.out),
                                          args.out_stride, args.n, args.k, args.activation, stream);
    return;
  }
  dispatch_float_dtype("experts", args.out_dtype, [&](auto element) {
    using T = decltype(element);
    launch<Fp8Rows, Fp8Rows, T, false>(rows, a, w, static_cast<T*>(args.out), args.out_stride,
                                       args.n, args.k, args.activation, stream);
  });
}

}  // namespace ironmoe::cuda::gemm
