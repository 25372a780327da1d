#pragma once
// Hopper FP8 grouped GEMM over local experts (sm_90a, E4M3 tensor cores with fp32 accumulation
// promoted per 128-deep K block, so scales may change along K):
//   for each local expert e and its rows r:  d[r][n] = sum_k a[r][k] sa(r, k) * b_e[n][k] sb_e(n,
//   k)
// a [R, K] E4M3 codes row-major, b_e = b + e * b_expert_stride [N, K] codes (K-major), d [R, N]
// bf16 or f32. The scales live in the kernel's layouts:
//   sa: one fp32 per (row, 128-column K block), grouped by expert and K-block major inside each
//       expert: row r of expert e (rows [begin, begin + count)) at
//       a_scales[begin * KB + kb * count + (r - begin)], KB = ceil(K / 128)
//       (sm90_fp8_activation_scale_index; the quantising kernels write it);
//   sb: one fp32 per (128-row N block, 128-column K block) of each expert, [E, NB, KB] row-major:
//       vLLM's block-scale layout as is; b_scales_expert_stride 0 shares one [NB, KB] block.
// Schemes with coarser scales expand to these (experts_fp8.cu). Like the bf16 GEMM
// (grouped_gemm_sm90.h), the problem list is written on the device, nothing syncs with the host,
// and rows outside every expert's range are never read or written. Three tile shapes
// (sm90_shape.h): wide (128 rows x 128 columns), wide_pingpong (64 rows x 128 columns, ping-pong)
// and few_rows (128 weight rows x 32 rows).
//
// Requirements (sm90_fp8_supports): K a multiple of 16, 16-byte aligned code and output pointers
// and row strides.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/host_device.h"
#include "cuda/gemm/expert_rows.h"
#include "cuda/gemm/sm90_shape.h"
#include "ironmoe/types.h"

namespace ironmoe::cuda::gemm {

inline constexpr int64_t kSm90Fp8ScaleBlock = 128;

// The tile shape by the permuted rows per local expert on average: few_rows up to
// kSm90Fp8FewRowsMaxAverage, wide_pingpong up to kSm90Fp8PingpongMaxAverage, wide above.
// Measured on an H200 with the shapes forced (docs/performance.md, sessions 22 and 23,
// fp8-block): few_rows 25%, 25% and 20% faster than wide for qwen3-30b-a3b at 1, 4 and 16 rows per
// expert, 32%, 28% and 17% for deepseek-v3 at 0.5, 2 and 8 rows, and 23-84% slower from 32 rows
// on; wide_pingpong 10.0% and 10.9% faster than wide at 32 rows (deepseek-v3, 1024 tokens), 2.6%
// and 4.0% at 64 (qwen3-30b-a3b, 1024 tokens), 6.0% slower at 128 and 3.4% at 256, and at 16 rows
// (qwen3-30b-a3b, 256 tokens) 13% faster than wide where few_rows is 20% faster.
inline constexpr int64_t kSm90Fp8FewRowsMaxAverage = 16;
inline constexpr int64_t kSm90Fp8PingpongMaxAverage = 64;
inline Sm90Shape sm90_fp8_shape_for(int64_t rows_total, int64_t local_experts) {
  const Sm90Shape shape = sm90_shape_for(rows_total, local_experts, kSm90Fp8FewRowsMaxAverage);
  const bool pingpong = rows_total <= kSm90Fp8PingpongMaxAverage * local_experts;
  return shape == Sm90Shape::wide && pingpong ? Sm90Shape::wide_pingpong : shape;
}

// Where the activation scale of (row `r` of an expert whose rows start at `begin` and number
// `count`, K block `kb`) lies, for K blocks `kb_count`.
IRONMOE_HD int64_t sm90_fp8_activation_scale_index(int64_t begin, int64_t count, int64_t r,
                                                   int64_t kb, int64_t kb_count) {
  return begin * kb_count + kb * count + (r - begin);
}

struct Sm90Fp8GemmOperands {
  const uint8_t* a = nullptr;  // [R, K] codes, row stride a_stride
  int64_t a_stride = 0;
  const float* a_scales = nullptr;  // R * KB floats, grouped (above)
  const uint8_t* b = nullptr;       // [E_local, N, K] codes
  int64_t b_expert_stride = 0;
  const float* b_scales = nullptr;  // [E_local, NB, KB], or one [NB, KB] (stride 0)
  int64_t b_scales_expert_stride = 0;
  void* d = nullptr;  // [R, N] in d_dtype (bf16 or f32), row stride d_stride elements
  DType d_dtype = DType::bf16;
  int64_t d_stride = 0;
  int64_t n = 0;
  int64_t k = 0;
};

bool sm90_fp8_supports(const Sm90Fp8GemmOperands& operands);

// Device bytes of one GEMM's problem list for `num_experts` groups.
size_t sm90_fp8_problem_list_bytes(int64_t num_experts);
// Device bytes of the GEMM kernel's own workspace (a TMA descriptor set per SM).
size_t sm90_fp8_workspace_bytes(int sm_count);

// Writes the problem lists of the two GEMMs of the expert stage in one launch (lists[i] of
// sm90_fp8_problem_list_bytes each, 16-byte aligned), zeroes the GEMM workspace, and sets
// ones[0, ones_count) to 1.0f (the shared weight scales of the per-tensor scheme; null: none).
// The lists are written for, and only valid with, one tile shape (sm90_shape.h).
void sm90_fp8_write_problem_lists(Sm90Shape shape, const ExpertRows& rows,
                                  const Sm90Fp8GemmOperands* gemms, void* const* lists,
                                  void* workspace, size_t workspace_bytes, float* ones,
                                  int64_t ones_count, cudaStream_t stream);

// Runs one grouped GEMM from a problem list written above; GEMMs on one stream may share the
// workspace (sm90_fp8_workspace_bytes(sm_count), 64-byte aligned). out_dtype: the d_dtype the
// list was written with.
void sm90_fp8_grouped_gemm(Sm90Shape shape, int64_t num_experts, const void* list, DType out_dtype,
                           void* workspace, int device_index, int sm_count, cudaStream_t stream);

}  // namespace ironmoe::cuda::gemm
