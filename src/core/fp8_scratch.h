#pragma once
// The expert stage's FP8 scratch for R permuted rows, carved from ExpertArgs::scratch: the E4M3
// codes and dynamic scales of both GEMM inputs, and GEMM1's fp32 result (h is quantised straight
// from it, never rounded to the storage dtype first). Each buffer starts on a 256-byte boundary.
#include <cstddef>
#include <cstdint>

#include "core/fp8_scales.h"

namespace ironmoe::core {

struct Fp8Scratch {
  size_t a_codes = 0;        // u8 [R, H]
  size_t a_scales = 0;       // f32 [R, fp8_activation_scales_per_row(H)]
  size_t h_values = 0;       // f32 [R, I]
  size_t h_codes = 0;        // u8 [R, I]
  size_t h_scales = 0;       // f32 [R, fp8_activation_scales_per_row(I)]
  size_t tensor_scales = 0;  // f32 [2]: fp8_tensor's GEMM1 and GEMM2 input scales
  size_t total_bytes = 0;
};

inline Fp8Scratch fp8_scratch(QuantScheme quant, int64_t rows, int64_t hidden,
                              int64_t intermediate) {
  constexpr size_t kAlign = 256;
  size_t end = 0;
  auto take = [&](int64_t count, size_t element) {
    const size_t offset = end;
    end = (offset + static_cast<size_t>(count) * element + kAlign - 1) / kAlign * kAlign;
    return offset;
  };
  Fp8Scratch s;
  s.a_codes = take(rows * hidden, 1);
  s.a_scales = take(rows * fp8_activation_scales_per_row(quant, hidden), sizeof(float));
  s.h_values = take(rows * intermediate, sizeof(float));
  s.h_codes = take(rows * intermediate, 1);
  s.h_scales = take(rows * fp8_activation_scales_per_row(quant, intermediate), sizeof(float));
  s.tensor_scales = take(2, sizeof(float));
  s.total_bytes = end;
  return s;
}

}  // namespace ironmoe::core
