// The Hopper bf16 grouped GEMM with wide tiles, 128 expert rows x 256 columns
// (grouped_gemm_sm90_bf16_gemm.cuh): one heavy CUTLASS instantiation in a translation unit of its
// own.
#include "cuda/gemm/grouped_gemm_sm90_bf16_gemm.cuh"
#include "cuda/gemm/grouped_gemm_sm90_bf16_shapes.h"

namespace ironmoe::cuda::gemm::sm90_bf16 {

using WideGemm = Sm90Bf16Gemm<false>;

size_t problem_list_bytes_wide(int64_t num_experts) {
  return WideGemm::problem_list_bytes(num_experts);
}

size_t workspace_bytes_wide(int sm_count) { return WideGemm::workspace_bytes(sm_count); }

void write_problem_lists_wide(const ExpertRows& rows, const Sm90GemmOperands* gemms,
                              void* const* lists, int count, void* workspace,
                              size_t workspace_bytes, cudaStream_t stream) {
  WideGemm::write_problem_lists(rows, gemms, lists, count, workspace, workspace_bytes, stream);
}

void grouped_gemm_wide(int64_t num_experts, const void* list, void* workspace, int device_index,
                       int sm_count, cudaStream_t stream) {
  WideGemm::run(num_experts, list, workspace, device_index, sm_count, stream);
}

}  // namespace ironmoe::cuda::gemm::sm90_bf16
