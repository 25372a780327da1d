#pragma once
// Small helpers every CPU stage uses: run over a range on the caller's pool (or inline), and add
// to the optional diagnostics counters.
#include <atomic>
#include <cstdint>

#include "core/diagnostic_count.h"
#include "ironmoe/stream.h"

namespace ironmoe::cpu {

// body(begin, end) over [0, n): on `threads` when given, else on the calling thread.
inline void parallel_for(ThreadPool* threads, int64_t n, RangeBody body) {
  if (n <= 0) return;
  if (threads == nullptr) {
    body(0, n);
  } else {
    threads->parallel_for(n, body);
  }
}

// Counting is the only shared write of the CPU stages, hence the atomic (no result depends on it);
// the add saturates at INT32_MAX like the kernels' (core/diagnostic_count.h).
inline void add_diagnostic(int32_t* diagnostics, DiagnosticCounter counter, int64_t count) {
  if (diagnostics == nullptr || count <= 0) return;
  std::atomic_ref<int32_t> word(diagnostics[counter]);
  int32_t seen = word.load(std::memory_order_relaxed);
  while (!word.compare_exchange_weak(seen, core::saturated_count(seen, count),
                                     std::memory_order_relaxed)) {
  }
}

}  // namespace ironmoe::cpu
