// The Hopper bf16 grouped GEMM with wide tiles over 1 x 2 clusters (sm90_shape.h's wide_paired,
// grouped_gemm_sm90_bf16_gemm.cuh): one heavy CUTLASS instantiation in a translation unit of its
// own. It runs on problem lists written by the wide shape's writer.
#include <type_traits>

#include "cuda/gemm/grouped_gemm_sm90_bf16_gemm.cuh"
#include "cuda/gemm/grouped_gemm_sm90_bf16_shapes.h"

namespace ironmoe::cuda::gemm::sm90_bf16 {

using WidePairedGemm = Sm90Bf16Gemm<false, 2>;
using WideGemm = Sm90Bf16Gemm<false>;
static_assert(std::is_same_v<WidePairedGemm::StrideA, WideGemm::StrideA> &&
                  std::is_same_v<WidePairedGemm::StrideB, WideGemm::StrideB> &&
                  std::is_same_v<WidePairedGemm::StrideD, WideGemm::StrideD>,
              "wide's problem lists serve wide_paired");

size_t workspace_bytes_wide_paired(int sm_count) {
  return WidePairedGemm::workspace_bytes(sm_count);
}

void grouped_gemm_wide_paired(int64_t num_experts, const void* list, void* workspace,
                              int device_index, int sm_count, cudaStream_t stream) {
  WidePairedGemm::run(num_experts, list, workspace, device_index, sm_count, stream);
}

}  // namespace ironmoe::cuda::gemm::sm90_bf16
