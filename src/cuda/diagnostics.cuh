#pragma once
// Adds to one diagnostics counter from a kernel, saturating at INT32_MAX (core/diagnostic_count.h).
// One thread per warp or block calls it, and only where something was counted, so the CAS loop
// costs nothing on good input.
#include <cstdint>

#include "core/diagnostic_count.h"

namespace ironmoe::cuda {

__device__ inline void add_diagnostic(int32_t* counter, int64_t added) {
  if (added <= 0) return;
  auto* word = reinterpret_cast<int*>(counter);
  int seen = *reinterpret_cast<volatile int*>(word);
  while (true) {
    const int next = core::saturated_count(seen, added);
    if (next == seen) return;
    const int before = atomicCAS(word, seen, next);
    if (before == seen) return;
    seen = before;
  }
}

}  // namespace ironmoe::cuda
