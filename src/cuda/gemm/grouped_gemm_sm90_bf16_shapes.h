#pragma once
// The two instantiations of the Hopper bf16 grouped GEMM (grouped_gemm_sm90_bf16_gemm.cuh), one
// translation unit each: wide tiles, and swapped operands for experts with few rows.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cuda/gemm/expert_rows.h"
#include "cuda/gemm/grouped_gemm_sm90.h"

namespace ironmoe::cuda::gemm::sm90_bf16 {

size_t problem_list_bytes_wide(int64_t num_experts);
size_t workspace_bytes_wide(int sm_count);
void write_problem_lists_wide(const ExpertRows& rows, const Sm90GemmOperands* gemms,
                              void* const* lists, int count, void* workspace,
                              size_t workspace_bytes, cudaStream_t stream);
void grouped_gemm_wide(int64_t num_experts, const void* list, void* workspace, int device_index,
                       int sm_count, cudaStream_t stream);

size_t problem_list_bytes_few_rows(int64_t num_experts);
size_t workspace_bytes_few_rows(int sm_count);
void write_problem_lists_few_rows(const ExpertRows& rows, const Sm90GemmOperands* gemms,
                                  void* const* lists, int count, void* workspace,
                                  size_t workspace_bytes, cudaStream_t stream);
void grouped_gemm_few_rows(int64_t num_experts, const void* list, void* workspace, int device_index,
                           int sm_count, cudaStream_t stream);

}  // namespace ironmoe::cuda::gemm::sm90_bf16
