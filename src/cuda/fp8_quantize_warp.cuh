#pragma once
// A warp's share of FP8 activation quantisation: the largest magnitude of a row and the encoding
// of one scale group of a row. The warp-per-row kernels of fp8_quantize.cu and the fused decode
// kernels (fused_decode_fp8.cu) both use these, so they find the same scales and codes (as do the
// 16-byte-chunk kernels of fp8_quantize_vector.cuh: the amax is a max, order-free, and the
// encoding is the same function).
#include <cstdint>

#include "cuda/fp8.cuh"

namespace ironmoe::cuda {

inline constexpr unsigned kFp8FullMask = 0xffffffffu;

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(kFp8FullMask, v, offset));
  return v;
}

// Largest magnitude of row r's columns [0, k) over the warp, NaN skipped (fmaxf drops NaN).
template <class Rows>
__device__ float row_amax_skipping_nan(const Rows& values, int64_t expert, int64_t r, int64_t k,
                                       int lane) {
  float amax = 0.0f;
  for (int64_t c = lane; c < k; c += 32) amax = fmaxf(amax, fabsf(values(expert, r, c)));
  return warp_max(amax);
}

// Encodes row r's columns [first, first + count) with the group's scale: the given one
// (fp8_tensor) or the group's own, NaN when the group holds a NaN; returns the scale.
template <class Rows>
__device__ float quantize_group(const Rows& values, int64_t expert, int64_t r, uint8_t* codes,
                                int64_t first, int64_t count, const float* tensor_scale, int lane) {
  float scale = 0.0f;
  if (tensor_scale != nullptr) {
    scale = *tensor_scale;
  } else {
    float amax = 0.0f;
    bool nan = false;
    for (int64_t c = first + lane; c < first + count; c += 32) {
      const float v = values(expert, r, c);
      nan = nan || isnan(v);
      amax = fmaxf(amax, fabsf(v));
    }
    amax = warp_max(amax);
    scale = fp8_dynamic_scale(__any_sync(kFp8FullMask, nan) ? __int_as_float(0x7fc00000) : amax);
  }
  for (int64_t c = first + lane; c < first + count; c += 32) {
    codes[c] = fp8_quantize(values(expert, r, c), scale);
  }
  return scale;
}

}  // namespace ironmoe::cuda
