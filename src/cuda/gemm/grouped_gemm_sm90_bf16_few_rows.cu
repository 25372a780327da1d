// The Hopper bf16 grouped GEMM with swapped operands, 128 weight rows x 32 expert rows
// (grouped_gemm_sm90_bf16_gemm.cuh): one heavy CUTLASS instantiation in a translation unit of its
// own.
#include "cuda/gemm/grouped_gemm_sm90_bf16_gemm.cuh"
#include "cuda/gemm/grouped_gemm_sm90_bf16_shapes.h"

namespace ironmoe::cuda::gemm::sm90_bf16 {

using FewRowsGemm = Sm90Bf16Gemm<true>;

size_t problem_list_bytes_few_rows(int64_t num_experts) {
  return FewRowsGemm::problem_list_bytes(num_experts);
}

size_t workspace_bytes_few_rows(int sm_count) { return FewRowsGemm::workspace_bytes(sm_count); }

void write_problem_lists_few_rows(const ExpertRows& rows, const Sm90GemmOperands* gemms,
                                  void* const* lists, int count, void* workspace,
                                  size_t workspace_bytes, cudaStream_t stream) {
  FewRowsGemm::write_problem_lists(rows, gemms, lists, count, workspace, workspace_bytes, stream);
}

void grouped_gemm_few_rows(int64_t num_experts, const void* list, void* workspace, int device_index,
                           int sm_count, cudaStream_t stream) {
  FewRowsGemm::run(num_experts, list, workspace, device_index, sm_count, stream);
}

}  // namespace ironmoe::cuda::gemm::sm90_bf16
