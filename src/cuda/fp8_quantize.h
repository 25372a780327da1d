#pragma once
// Activation quantisation for FP8 experts on CUDA (the CPU backend's cpu/quantize.h rules):
// per-tensor amax passes, and the quantisation of the rows that belong to the local experts.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/gemm/expert_rows.h"
#include "ironmoe/types.h"

namespace ironmoe::cuda {

// The values quantised: row r of src ([R, k] in `dtype`, row stride `stride`); when `row_to_slot`
// is given, token row row_to_slot[r] / top_k of src ([T, k], the gather fused in; zeros where the
// entry is not one of the T * top_k slots); or, when `gated`, act(gate) * up of row r of a
// gate_up buffer ([R, 2k] in `dtype`, gate first; the Hopper GEMM's fp32 output), computed in
// fp32 as the CPU backend does.
struct Fp8RowSource {
  const void* data = nullptr;
  DType dtype = DType::bf16;
  int64_t stride = 0;
  int64_t k = 0;
  bool gated = false;
  Activation activation = Activation::silu_and_mul;
  // Gated only: per-channel weight scales [E_local, 2k] that multiply gate and up first (the
  // Hopper GEMM computes fp8_channel's GEMM1 with unit weight scales).
  const float* channel_scales = nullptr;
  // Not gated: rows gathered from the tokens.
  const int32_t* row_to_slot = nullptr;
  int64_t top_k = 1;
  int64_t slots = 0;  // T * top_k
};

// Where the scales go: `row_scales` [R, core::fp8_activation_scales_per_row] (the streaming and
// CUDA-core GEMMs) and/or `grouped` in the Hopper FP8 GEMM's layout (gemm/grouped_gemm_sm90_fp8.h:
// every scheme written as one scale per row and 128-column block, fp8_tensor's times
// grouped_factor[expert] when that is given, the expert's weight scale).
struct Fp8ScaleTarget {
  float* row_scales = nullptr;
  float* grouped = nullptr;
  const float* grouped_factor = nullptr;
};

// *scale = fp8 dynamic scale of the largest magnitude (NaN ignored) over the experts' rows of the
// source; *scale holds the amax's bits in between.
void fp8_tensor_scale_of_rows(const gemm::ExpertRows& rows, const Fp8RowSource& source,
                              float* scale, cudaStream_t stream);

// codes[r] ([R, k] contiguous) and the scales of the experts' rows r, per `quant` (fp8_tensor
// reads *tensor_scale on the device).
void fp8_quantize_rows(const gemm::ExpertRows& rows, const Fp8RowSource& source, QuantScheme quant,
                       const float* tensor_scale, uint8_t* codes, const Fp8ScaleTarget& scales,
                       cudaStream_t stream);

// The layer's per-tensor GEMM1 input scale over x's valid rows (include/ironmoe/quantize.h).
void fp8_tensor_scale_of_tokens(const void* x, DType dtype, int64_t stride, int64_t tokens,
                                int64_t hidden, const int32_t* num_valid_tokens, float* scale,
                                cudaStream_t stream);

}  // namespace ironmoe::cuda
