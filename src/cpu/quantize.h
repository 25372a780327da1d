#pragma once
// CPU FP8 quantisation of activation rows (the reference semantics of the device kernels):
// dynamic scales per row or per 128 columns, E4M3 codes with core/fp8.h's rounding. Values are
// read through a callable value(i) -> float, so rows are quantised where they lie (storage dtype
// or fp32) without a copy: forward() allocates nothing.
#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "core/fp8.h"
#include "core/fp8_scales.h"
#include "ironmoe/types.h"

namespace ironmoe::cpu {

// Largest magnitude of value(first .. first + n - 1): with_nan propagates NaN (a group's scale),
// else NaN values are skipped (a per-tensor scale).
template <class Value>
float amax(Value value, int64_t first, int64_t n, bool with_nan) {
  float largest = 0.0f;
  for (int64_t i = first; i < first + n; ++i) {
    const float v = value(i);
    if (std::isnan(v)) {
      if (with_nan) return std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    largest = std::max(largest, std::fabs(v));
  }
  return largest;
}

// *largest = max(*largest, amax) for an amax >= 0 that is not NaN, from any thread: such floats
// order as their bits do, and a maximum does not depend on the order of the updates.
inline void raise_amax(uint32_t* largest, float amax) {
  std::atomic_ref<uint32_t> word(*largest);
  const auto bits = std::bit_cast<uint32_t>(amax);
  uint32_t seen = word.load(std::memory_order_relaxed);
  while (bits > seen && !word.compare_exchange_weak(seen, bits, std::memory_order_relaxed)) {
  }
}

// Encodes one row of k values: fp8_tensor with `tensor_scale`; fp8_channel one dynamic scale for
// the row (row_scales[0]); fp8_block one per 128 values (row_scales[0, ceil(k / 128))).
template <class Value>
void quantize_row(QuantScheme quant, Value value, int64_t k, float tensor_scale, uint8_t* codes,
                  float* row_scales) {
  const int64_t group = quant == QuantScheme::fp8_block ? core::kFp8Block : k;
  for (int64_t first = 0, g = 0; first < k; first += group, ++g) {
    const int64_t count = std::min(group, k - first);
    float scale = tensor_scale;
    if (quant != QuantScheme::fp8_tensor) {
      scale = core::fp8_dynamic_scale(amax(value, first, count, true));
      row_scales[g] = scale;
    }
    for (int64_t i = first; i < first + count; ++i) codes[i] = core::fp8_quantize(value(i), scale);
  }
}

}  // namespace ironmoe::cpu
