#pragma once
// CPU FP8 quantisation of activation rows (the reference semantics of the device kernels):
// dynamic scales per row or per 128 columns, E4M3 codes with core/fp8.h's rounding.
#include <cstdint>

#include "ironmoe/types.h"

namespace ironmoe::cpu {

// Largest magnitude of values[0, n): with_nan propagates NaN (a group's scale), else NaN values
// are skipped (a per-tensor scale).
float amax(const float* values, int64_t n, bool with_nan);

// Encodes one row of k values: fp8_tensor with `tensor_scale`; fp8_channel one dynamic scale for
// the row (row_scales[0]); fp8_block one per 128 values (row_scales[0, ceil(k / 128))).
void quantize_row(QuantScheme quant, const float* values, int64_t k, float tensor_scale,
                  uint8_t* codes, float* row_scales);

}  // namespace ironmoe::cpu
