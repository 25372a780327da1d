#pragma once
// The instantiations of the Hopper FP8 grouped GEMM, by output type (bf16: GEMM2 into
// permuted_out; f32: GEMM1 into gate_up, so h is quantised from fp32 as on the CPU backend) and
// tile shape.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace ironmoe::cuda::gemm::sm90_fp8 {

size_t workspace_bytes_out_bf16(int sm_count);
size_t workspace_bytes_out_f32(int sm_count);
void grouped_gemm_out_bf16(int64_t num_experts, const void* list, void* workspace, int device_index,
                           int sm_count, cudaStream_t stream);
void grouped_gemm_out_f32(int64_t num_experts, const void* list, void* workspace, int device_index,
                          int sm_count, cudaStream_t stream);

// The same with the few_rows tile shape (sm90_shape.h).
size_t workspace_bytes_out_bf16_few_rows(int sm_count);
size_t workspace_bytes_out_f32_few_rows(int sm_count);
void grouped_gemm_out_bf16_few_rows(int64_t num_experts, const void* list, void* workspace,
                                    int device_index, int sm_count, cudaStream_t stream);
void grouped_gemm_out_f32_few_rows(int64_t num_experts, const void* list, void* workspace,
                                   int device_index, int sm_count, cudaStream_t stream);

// The same with the wide_pingpong tile shape (sm90_shape.h).
size_t workspace_bytes_out_bf16_pingpong(int sm_count);
size_t workspace_bytes_out_f32_pingpong(int sm_count);
void grouped_gemm_out_bf16_pingpong(int64_t num_experts, const void* list, void* workspace,
                                    int device_index, int sm_count, cudaStream_t stream);
void grouped_gemm_out_f32_pingpong(int64_t num_experts, const void* list, void* workspace,
                                   int device_index, int sm_count, cudaStream_t stream);

}  // namespace ironmoe::cuda::gemm::sm90_fp8
