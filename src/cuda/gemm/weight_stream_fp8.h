#pragma once
// Weight-streaming expert GEMMs on E4M3 codes (FP8 experts, decode): the weight_stream.h shape
// (a warp per output column or two, each weight row read once per 2 token rows, 16-byte loads)
// reading 16 codes per load, so an expert's weights cost one byte each. Both GEMMs take their
// activations already quantised (codes + scales, cuda/fp8_quantize.h); each group of 16
// products sums code x code in fp32 and is scaled by (activation scale x weight scale) of its K
// position, which one 16-group never straddles (16 divides the 128 of the block scheme).
//   gate_up:  h[r][n] = act(a[r] . gate[n]) * (a[r] . up[n]) in fp32 (quantised afterwards)
//   down:     out[r][n] = h[r] . w2[n], rounded to the storage dtype
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/gemm/expert_rows.h"
#include "cuda/gemm/fp8_gemm_args.h"

namespace ironmoe::cuda::gemm {

// K a multiple of 16, 16-byte aligned codes: what the kernels need (else the CUDA-core GEMM).
bool stream_fp8_supports(int64_t hidden, int64_t intermediate, const void* w13, const void* w2,
                         int64_t local_experts);
// One GEMM (args.gated: gate/up, else down).
void stream_fp8_gemm(const ExpertRows& rows, const Fp8GemmArgs& args, cudaStream_t stream);

}  // namespace ironmoe::cuda::gemm
