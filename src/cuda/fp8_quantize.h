#pragma once
// Activation quantisation for FP8 experts on CUDA (the CPU backend's cpu/quantize.h rules):
// per-tensor amax passes, and the quantisation of the rows that belong to the local experts.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/gemm/expert_rows.h"
#include "ironmoe/types.h"

namespace ironmoe::cuda {

// *scale = fp8 dynamic scale of the largest magnitude (NaN ignored) over the experts' rows of
// src ([R, k] in `dtype`, row stride `stride`); *scale holds the amax's bits in between.
void fp8_tensor_scale_of_rows(const gemm::ExpertRows& rows, const void* src, DType dtype,
                              int64_t stride, int64_t k, float* scale, cudaStream_t stream);

// codes[r] and row_scales[r] for the experts' rows r of src, per `quant` (fp8_tensor reads
// *tensor_scale on the device; codes [R, k] and row_scales [R, per row] contiguous).
void fp8_quantize_rows(const gemm::ExpertRows& rows, const void* src, DType dtype, int64_t stride,
                       int64_t k, QuantScheme quant, const float* tensor_scale, uint8_t* codes,
                       float* row_scales, cudaStream_t stream);

// The layer's per-tensor GEMM1 input scale over x's valid rows (include/ironmoe/quantize.h).
void fp8_tensor_scale_of_tokens(const void* x, DType dtype, int64_t stride, int64_t tokens,
                                int64_t hidden, const int32_t* num_valid_tokens, float* scale,
                                cudaStream_t stream);

}  // namespace ironmoe::cuda
