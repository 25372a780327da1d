// The Hopper FP8 grouped GEMM with bf16 output and the wide_pingpong tile shape
// (grouped_gemm_sm90_fp8_gemm.cuh, sm90_shape.h): one heavy CUTLASS instantiation in a translation
// unit of its own.
#include "cuda/gemm/grouped_gemm_sm90_fp8_gemm.cuh"
#include "cuda/gemm/grouped_gemm_sm90_fp8_out.h"

namespace ironmoe::cuda::gemm::sm90_fp8 {

using WidePingpong = Sm90Fp8Gemm<cutlass::bfloat16_t, false, true>;

size_t workspace_bytes_out_bf16_pingpong(int sm_count) {
  return WidePingpong::workspace_bytes(sm_count);
}

void grouped_gemm_out_bf16_pingpong(int64_t num_experts, const void* list, void* workspace,
                                    int device_index, int sm_count, cudaStream_t stream) {
  WidePingpong::run(num_experts, list, workspace, device_index, sm_count, stream);
}

}  // namespace ironmoe::cuda::gemm::sm90_fp8
