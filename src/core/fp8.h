#pragma once
// FP8 E4M3 ("e4m3fn": no infinities, one NaN pattern per sign, largest finite 448) <-> fp32 for
// host code: the CPU backend's emulation of FP8 experts and the references the CUDA kernels are
// tested against (issue 6, docs/formats.md "FP8"); the dynamic scale rule serves the device too.
//
// Encoding rounds to nearest, ties to even, and saturates: a magnitude above 448 (infinity
// included) becomes +-448, as the "satfinite" conversions of Hopper and the quantisation kernels
// of vLLM and DeepGEMM do (they clamp to +-448 first). NaN stays NaN. Scales are chosen so that
// amax / scale <= 448, so saturation only meets values a static scale did not foresee.
#include <cmath>
#include <cstdint>

#include "core/host_device.h"

namespace ironmoe::core {

inline constexpr float kFp8E4m3Max = 448.0f;
inline constexpr uint8_t kFp8E4m3Nan = 0x7f;

inline float fp8_e4m3_to_float(uint8_t bits) {
  const bool negative = (bits & 0x80u) != 0;
  const int exponent = (bits >> 3) & 0x0f;
  const int mantissa = bits & 0x07;
  if (exponent == 0x0f && mantissa == 0x07) return std::nanf("");
  // Subnormals: mantissa * 2^-9; normals: (8 + mantissa) * 2^(exponent - 10). Both exact in fp32.
  const float magnitude = exponent == 0
                              ? std::ldexp(static_cast<float>(mantissa), -9)
                              : std::ldexp(static_cast<float>(8 + mantissa), exponent - 10);
  return negative ? -magnitude : magnitude;
}

inline uint8_t float_to_fp8_e4m3(float value) {
  if (std::isnan(value)) return kFp8E4m3Nan;
  const uint8_t sign = std::signbit(value) ? 0x80u : 0x00u;
  const double magnitude = std::fabs(static_cast<double>(value));
  if (magnitude >= kFp8E4m3Max) return static_cast<uint8_t>(sign | 0x7eu);  // 448
  // Below the smallest normal (2^-6) the step is 2^-9 and the code is the step count; a count of
  // 8 rounds up to exactly the smallest normal, whose code is also 8.
  if (magnitude < std::ldexp(1.0, -6)) {
    const double steps = std::nearbyint(std::ldexp(magnitude, 9));  // ties to even
    return static_cast<uint8_t>(sign | static_cast<uint8_t>(steps));
  }
  int exponent = 0;  // magnitude = fraction * 2^exponent, fraction in [0.5, 1)
  std::frexp(magnitude, &exponent);
  int unbiased = exponent - 1;                                         // in [-6, 8]
  double steps = std::nearbyint(std::ldexp(magnitude, 3 - unbiased));  // in [8, 16]
  if (steps == 16.0) {
    steps = 8.0;
    ++unbiased;
  }
  // magnitude < 448 rounds to at most 448 (exponent 8, mantissa 6): never into the NaN code.
  const int code = ((unbiased + 7) << 3) | (static_cast<int>(steps) - 8);
  return static_cast<uint8_t>(sign | static_cast<uint8_t>(code));
}

// The dynamic scale of a group of values (a token's row, or 128 of its elements along K) whose
// largest magnitude is amax: amax / 448, so the largest value encodes as +-448, and never below
// 1 / (448 * 512), so an all-zero group gets a finite scale (vLLM's per-token floor). A NaN in
// the group makes the scale NaN and the group's values NaN: the same token-local result as NaN in
// a bf16 layer.
inline constexpr float kFp8MinScale = 1.0f / (kFp8E4m3Max * 512.0f);

// Host and device (cuda/fp8.cuh): one IEEE division, so both backends choose the same scale.
IRONMOE_HD float fp8_dynamic_scale(float amax) {
  if (amax != amax) return amax;  // NaN
  const float scale = amax / kFp8E4m3Max;
  return scale > kFp8MinScale ? scale : kFp8MinScale;
}

// q = e4m3(x / scale) with an IEEE division (the CUDA kernels must divide, not multiply by a
// reciprocal, to give the same codes).
inline uint8_t fp8_quantize(float value, float scale) { return float_to_fp8_e4m3(value / scale); }

}  // namespace ironmoe::core
