#pragma once
// Hopper grouped GEMM over local experts (sm_90a: TMA loads and stores, wgmma, a persistent
// tile scheduler that walks the groups on the device), bf16 in and out, fp32 accumulation:
//   for each local expert e and its rows r:  d[r] = a[r] @ B_e^T
// a [R, K] and d [R, N] row-major, B_e = b + e * b_expert_stride [N, K] row-major (K-major).
//
// The per-expert problem list (shapes, pointers, strides) lives on the device. It is written by
// a small kernel from the expert offsets/counts, and the GEMM kernel reads the shapes there, so
// the host never learns a row count: nothing synchronises and the launches can be captured in a
// CUDA graph. An expert without rows gets no tiles. TMA never touches a row past an expert's
// count (loads are zero-filled, stores clipped), so rows outside every range stay untouched.
//
// Requirements (checked by sm90_bf16_supports): 16-byte aligned pointers and row strides, i.e.
// N, K and the strides multiples of 8 elements.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/gemm/expert_rows.h"
#include "cuda/gemm/sm90_shape.h"

namespace ironmoe::cuda::gemm {

// The kernel's tile shape (sm90_shape.h) is chosen by sm90_bf16_shape_for.
// few_rows up to this many permuted rows per local expert on average. Measured on an H200 with
// either shape forced (docs/performance.md, session 21): few_rows 5-14% faster at 0.3-5 rows per
// expert on average, every preset; at 16-20 faster for qwen3-30b-a3b, mixtral-8x7b and
// qwen3-next-80b-a3b (3-11%) but 4% slower for deepseek-v3 already at 8 (not yet understood; a
// likely cause: its grouped routing gives some experts more than one 32-row tile, and a second row
// tile re-reads weights that have left L2); 39-289% slower at 32-64.
inline constexpr int64_t kSm90FewRowsMaxAverage = 6;
inline Sm90Shape sm90_bf16_shape_for(int64_t rows_total, int64_t local_experts) {
  return sm90_shape_for(rows_total, local_experts, kSm90FewRowsMaxAverage);
}

struct Sm90GemmOperands {
  const void* a = nullptr;  // [R, K] bf16, row stride a_stride
  int64_t a_stride = 0;
  const void* b = nullptr;  // [E_local, N, K] bf16
  int64_t b_expert_stride = 0;
  void* d = nullptr;  // [R, N] bf16, row stride d_stride
  int64_t d_stride = 0;
  int64_t n = 0;
  int64_t k = 0;
};

bool sm90_bf16_supports(const Sm90GemmOperands& operands);

// Device bytes of one GEMM's problem list for `num_experts` groups, either shape.
size_t sm90_bf16_problem_list_bytes(int64_t num_experts);
// Device bytes of the GEMM kernel's own workspace (a TMA descriptor set per SM), either shape.
size_t sm90_bf16_workspace_bytes(int sm_count);

// Writes the problem lists of `count` GEMMs (1 or 2) over the same experts in one launch;
// lists[i] (sm90_bf16_problem_list_bytes each, 16-byte aligned) receives GEMM i. The same launch
// zeroes the GEMM workspace (sm90_bf16_workspace_bytes) that the following GEMMs will use.
// The lists are written for, and only valid with, one shape.
void sm90_bf16_write_problem_lists(Sm90Shape shape, const ExpertRows& rows,
                                   const Sm90GemmOperands* gemms, void* const* lists, int count,
                                   void* workspace, size_t workspace_bytes, cudaStream_t stream);

// Runs one grouped GEMM from a problem list written above for the same shape. `workspace` holds
// sm90_bf16_workspace_bytes(sm_count) bytes, 64-byte aligned; GEMMs on one stream may share it.
void sm90_bf16_grouped_gemm(Sm90Shape shape, int64_t num_experts, const void* list, void* workspace,
                            int device_index, int sm_count, cudaStream_t stream);

}  // namespace ironmoe::cuda::gemm
