#pragma once
// The diagnostics counters add up across calls until the caller zeroes them. An engine that never
// does (NaN padding rows at every decode step, say) must not see a count wrap to a negative
// number, so every backend adds with saturation at INT32_MAX.
#include <cstdint>

#include "core/host_device.h"

namespace ironmoe::core {

inline constexpr int64_t kDiagnosticCountMax = INT32_MAX;

// The counter's next value: old + added, at most INT32_MAX (added >= 0; a negative old value,
// left there by the caller, counts up from where it is).
IRONMOE_HD int32_t saturated_count(int32_t old, int64_t added) {
  const int64_t sum =
      static_cast<int64_t>(old) + (added < kDiagnosticCountMax ? added : kDiagnosticCountMax);
  return static_cast<int32_t>(sum < kDiagnosticCountMax ? sum : kDiagnosticCountMax);
}

}  // namespace ironmoe::core
