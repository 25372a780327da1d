#pragma once
// out[r][n] *= scales[e][n] for the rows r of each local expert e, in place on bf16 rows:
// fp8_channel's per-channel down-projection scale, applied after the Hopper FP8 GEMM ran with
// unit weight scales (its scale layout has no per-channel form). One more bf16 rounding of the
// output than the CPU backend's single one.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/gemm/expert_rows.h"

namespace ironmoe::cuda::gemm {

// out: [R, n] bf16, row stride out_stride (n, out_stride multiples of 8, out 16-byte aligned);
// scales: [E_local, n] f32.
void scale_expert_columns(const ExpertRows& rows, void* out, int64_t out_stride, int64_t n,
                          const float* scales, cudaStream_t stream);

}  // namespace ironmoe::cuda::gemm
