#pragma once
// Where a stage runs: the caller's cudaStream_t on CUDA, a caller-owned thread pool on the CPU.
#include <cstdint>
#include <functional>
#include <memory>

#include "ironmoe/types.h"

namespace ironmoe {

// A fixed set of worker threads for the CPU backend. Owned by the caller (no global state).
class ThreadPool {
 public:
  explicit ThreadPool(int num_threads = 0);  // 0: std::thread::hardware_concurrency()
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const;
  // Runs body(begin, end) over [0, n) split into contiguous chunks, and waits for all of them.
  // How the range is split never changes a result: bodies write disjoint outputs.
  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& body);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct Stream {
  Device device = Device::cpu();
  void* cuda_stream = nullptr;    // cudaStream_t when device is CUDA (nullptr: legacy stream)
  ThreadPool* threads = nullptr;  // CPU: pool to run on; nullptr: the calling thread alone

  static Stream cpu(ThreadPool* threads = nullptr) { return {Device::cpu(), nullptr, threads}; }
  static Stream cuda(void* cuda_stream, int device_index = 0) {
    return {Device::cuda(device_index), cuda_stream, nullptr};
  }
};

// Whether this build of ironmoe has the CUDA backend, and whether a CUDA GPU is visible now.
bool cuda_compiled();
bool cuda_available();

}  // namespace ironmoe
