#pragma once
// Timing one layer call: wall-clock medians on the CPU, CUDA-graph replays timed with events on
// the GPU.
#include <cstdint>
#include <functional>

namespace ironmoe::tools {

struct Timing {
  double median_s = 0.0;
  double min_s = 0.0;
  int iters = 0;
};

// One untimed warm-up call, then `iters` timed calls (iters <= 0: at least 3, at most 50, until
// about a second has passed). `before_each` runs untimed before every call (the cache flush).
Timing time_cpu(const std::function<void()>& call, int iters,
                const std::function<void()>& before_each);

// Captures `enqueue` (which must only enqueue work on `stream`) into a CUDA graph once, replays it
// a few times to warm up, then times `iters` replays (iters <= 0: 100), each between two events.
// Defined in builds with IRONMOE_WITH_CUDA (timing_cuda.cpp).
Timing time_cuda_graph(const std::function<void()>& enqueue, void* stream, int iters);

// Runs `enqueue` (work on `stream`) `warmup` times untimed, then `iters` times, each between two
// CUDA events; the median and the fastest of those. Defined in builds with IRONMOE_WITH_CUDA.
Timing time_cuda_stream(const std::function<void()>& enqueue, void* stream, int warmup, int iters);

// Evicts the last-level cache before a timed CPU call by writing a buffer twice its size, so every
// call reads its weights from memory, as it would between two layers of a model.
class CacheFlusher {
 public:
  CacheFlusher();
  ~CacheFlusher();
  CacheFlusher(const CacheFlusher&) = delete;
  CacheFlusher& operator=(const CacheFlusher&) = delete;
  void flush();

 private:
  char* buffer_ = nullptr;
  size_t bytes_ = 0;
  uint8_t round_ = 0;
};

}  // namespace ironmoe::tools
