#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "bench/cuda_check.h"
#include "bench/timing.h"

namespace ironmoe::tools {

Timing time_cuda_graph(const std::function<void()>& enqueue, void* stream, int iters) {
  constexpr int kDefaultIters = 100;
  constexpr int kWarmup = 5;
  const int count = iters > 0 ? iters : kDefaultIters;
  const auto cuda_stream = static_cast<cudaStream_t>(stream);

  cudaGraph_t graph = nullptr;
  IRONMOE_CUDA_CHECK(cudaStreamBeginCapture(cuda_stream, cudaStreamCaptureModeThreadLocal));
  try {
    enqueue();
  } catch (...) {
    // End the capture so the stream is usable again before reporting the error.
    static_cast<void>(cudaStreamEndCapture(cuda_stream, &graph));
    if (graph != nullptr) static_cast<void>(cudaGraphDestroy(graph));
    throw;
  }
  IRONMOE_CUDA_CHECK(cudaStreamEndCapture(cuda_stream, &graph));
  cudaGraphExec_t exec = nullptr;
  IRONMOE_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  IRONMOE_CUDA_CHECK(cudaGraphUpload(exec, cuda_stream));
  const Timing timing = time_cuda_stream(
      [&] { IRONMOE_CUDA_CHECK(cudaGraphLaunch(exec, cuda_stream)); }, stream, kWarmup, count);
  IRONMOE_CUDA_CHECK(cudaGraphExecDestroy(exec));
  IRONMOE_CUDA_CHECK(cudaGraphDestroy(graph));
  return timing;
}

Timing time_cuda_stream(const std::function<void()>& enqueue, void* stream, int warmup, int iters) {
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  for (int i = 0; i < warmup; ++i) enqueue();
  std::vector<cudaEvent_t> events(static_cast<size_t>(2 * iters));
  for (cudaEvent_t& event : events) IRONMOE_CUDA_CHECK(cudaEventCreate(&event));
  for (int i = 0; i < iters; ++i) {
    IRONMOE_CUDA_CHECK(cudaEventRecord(events[2 * i], cuda_stream));
    enqueue();
    IRONMOE_CUDA_CHECK(cudaEventRecord(events[2 * i + 1], cuda_stream));
  }
  IRONMOE_CUDA_CHECK(cudaStreamSynchronize(cuda_stream));
  std::vector<double> seconds;
  for (int i = 0; i < iters; ++i) {
    float ms = 0.0f;
    IRONMOE_CUDA_CHECK(cudaEventElapsedTime(&ms, events[2 * i], events[2 * i + 1]));
    seconds.push_back(1e-3 * ms);
  }
  for (cudaEvent_t event : events) IRONMOE_CUDA_CHECK(cudaEventDestroy(event));

  Timing timing;
  timing.iters = iters;
  timing.min_s = *std::min_element(seconds.begin(), seconds.end());
  std::nth_element(seconds.begin(), seconds.begin() + iters / 2, seconds.end());
  timing.median_s = seconds[static_cast<size_t>(iters / 2)];
  return timing;
}

}  // namespace ironmoe::tools
