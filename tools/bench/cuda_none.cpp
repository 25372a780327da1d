// Builds without CUDA: the CUDA entry points of the bench exist but cannot be reached, since
// resolve_device() never yields a CUDA device there; they throw if called anyway.
#include <stdexcept>

#include "bench/peak.h"
#include "bench/timing.h"

namespace ironmoe::tools {

MachinePeak measure_cuda_peak(int, void*) {
  throw std::logic_error("measure_cuda_peak: this build has no CUDA backend");
}

Timing time_cuda_graph(const std::function<void()>&, void*, int) {
  throw std::logic_error("time_cuda_graph: this build has no CUDA backend");
}

Timing time_cuda_stream(const std::function<void()>&, void*, int, int) {
  throw std::logic_error("time_cuda_stream: this build has no CUDA backend");
}

}  // namespace ironmoe::tools
