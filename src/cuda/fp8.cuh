#pragma once
// E4M3 on the device, with the rules of src/core/fp8.h (the CPU backend's): decoding is exact;
// encoding divides by the scale (IEEE, not a reciprocal multiply), rounds to nearest even and
// saturates to +-448 (Hopper's satfinite conversion), NaN staying NaN; a dynamic group scale is
// max(amax / 448, 1 / (448 * 512)), NaN when the group holds a NaN.
#include <cuda_fp8.h>

#include <cstdint>

#include "core/fp8.h"

namespace ironmoe::cuda {

__device__ __forceinline__ float fp8_to_float(uint8_t code) {
  __nv_fp8_e4m3 value;
  value.__x = code;
  return static_cast<float>(value);
}

__device__ __forceinline__ uint8_t fp8_quantize(float value, float scale) {
  return static_cast<uint8_t>(
      __nv_cvt_float_to_fp8(__fdiv_rn(value, scale), __NV_SATFINITE, __NV_E4M3));
}

using core::fp8_dynamic_scale;

}  // namespace ironmoe::cuda
