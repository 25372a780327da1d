// scale_columns.h: blocks laid out as (expert, row split) x column chunk, 8 bf16 per thread.
#include <cuda_bf16.h>

#include <algorithm>

#include "core/check.h"
#include "cuda/cuda_check.h"
#include "cuda/gemm/expert_rows.cuh"
#include "cuda/gemm/scale_columns.h"

namespace ironmoe::cuda::gemm {
namespace {

constexpr int kThreads = 256;
constexpr int kVec = 8;  // bf16 per 16 bytes

__global__ void __launch_bounds__(kThreads)
    scale_expert_columns_kernel(ExpertRows rows, __nv_bfloat16* out, int64_t out_stride, int64_t n,
                                const float* __restrict__ scales, int row_splits) {
  const int64_t expert = blockIdx.x / row_splits;
  const int split = static_cast<int>(blockIdx.x % row_splits);
  const int64_t column = (static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x) * kVec;
  if (column >= n) return;
  const RowRange range = expert_row_range(rows, expert);
  if (range.count == 0) return;
  float factor[kVec];
  const float* expert_scales = scales + expert * n + column;
#pragma unroll
  for (int i = 0; i < kVec; ++i) factor[i] = expert_scales[i];
  for (int64_t row = range.begin + split; row < range.begin + range.count; row += row_splits) {
    auto* p = reinterpret_cast<uint4*>(out + row * out_stride + column);
    alignas(16) __nv_bfloat16 values[kVec];
    *reinterpret_cast<uint4*>(values) = *p;
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      values[i] = __float2bfloat16_rn(__bfloat162float(values[i]) * factor[i]);
    }
    *p = *reinterpret_cast<const uint4*>(values);
  }
}

}  // namespace

void scale_expert_columns(const ExpertRows& rows, void* out, int64_t out_stride, int64_t n,
                          const float* scales, cudaStream_t stream) {
  if (rows.num_experts == 0 || rows.num_rows == 0 || n == 0) return;
  IRONMOE_CHECK(
      n % kVec == 0 && out_stride % kVec == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0,
      "experts", "internal: scale_expert_columns needs 16-byte aligned bf16 rows");
  // About four rows per block on average: enough blocks for large R, few idle ones for small R.
  const int64_t average_rows = rows.num_rows / std::max<int64_t>(rows.num_experts, 1);
  const int64_t row_splits = std::clamp<int64_t>((average_rows + 3) / 4, 1, 4096);
  const int64_t column_blocks = (n + kThreads * kVec - 1) / (kThreads * kVec);
  IRONMOE_CHECK(rows.num_experts * row_splits <= 0x7fffffff && column_blocks <= 65535, "experts",
                "hidden: ", n, " columns or the number of experts exceed the launch limits");
  const dim3 grid(static_cast<unsigned>(rows.num_experts * row_splits),
                  static_cast<unsigned>(column_blocks));
  scale_expert_columns_kernel<<<grid, kThreads, 0, stream>>>(
      rows, static_cast<__nv_bfloat16*>(out), out_stride, n, scales, static_cast<int>(row_splits));
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
}

}  // namespace ironmoe::cuda::gemm
