#pragma once
// A plain tiled grouped GEMM on CUDA cores, for every storage dtype and any shape or alignment:
//   for each local expert e and its rows r:  d[r] = a[r] @ B_e^T
// or, gated (GEMM1 with the activation fused):
//   d[r] = act(a[r] @ B_e[:N]^T) * (a[r] @ B_e[N:2N]^T)
// with B_e = b + e * b_expert_stride holding [N or 2N, K] row-major, fp32 accumulation and one
// rounding to the storage dtype at the end (exactly the semantics of ironmoe::experts). It is
// the f32/f16 path of the expert stage and the bf16 path for shapes the Hopper kernel cannot
// take (TMA alignment); it needs no scratch and no host knowledge of the row counts.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/gemm/expert_rows.h"
#include "cuda/gemm/fp8_gemm_args.h"
#include "ironmoe/types.h"

namespace ironmoe::cuda::gemm {

struct SimtGemmArgs {
  const void* a = nullptr;  // [R, K], row stride a_stride
  int64_t a_stride = 0;
  const void* b = nullptr;  // [E_local, N or 2N, K], contiguous rows of K
  int64_t b_expert_stride = 0;
  void* d = nullptr;  // [R, N], row stride d_stride
  int64_t d_stride = 0;
  int64_t n = 0;
  int64_t k = 0;
  DType dtype = DType::f32;  // of a, b and d
  bool gated = false;
  Activation activation = Activation::silu_and_mul;  // used when gated
};

void grouped_gemm_simt(const ExpertRows& rows, const SimtGemmArgs& args, cudaStream_t stream);

// The same GEMM on E4M3 codes (FP8 experts, gemm/fp8_gemm_args.h).
void grouped_gemm_simt_fp8(const ExpertRows& rows, const Fp8GemmArgs& args, cudaStream_t stream);

}  // namespace ironmoe::cuda::gemm
