#pragma once
// Where a stage runs: the caller's cudaStream_t on CUDA, a caller-owned thread pool on the CPU.
#include <cstdint>
#include <memory>
#include <type_traits>

#include "ironmoe/types.h"

namespace ironmoe {

// A non-owning reference to a callable body(begin, end), valid while the callable lives (a
// lambda passed to parallel_for lives until the call returns). std::function would copy a lambda
// with more than two captures to the heap on every call, and forward() allocates nothing
// (docs/contract.md L4).
class RangeBody {
 public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, RangeBody>>>
  RangeBody(F&& body) noexcept  // NOLINT(google-explicit-constructor): binds lambdas in place
      : object_(const_cast<void*>(static_cast<const void*>(&body))),
        call_([](void* object, int64_t begin, int64_t end) {
          (*static_cast<std::remove_reference_t<F>*>(object))(begin, end);
        }) {}
  // A plain function (or function pointer) is held by value.
  RangeBody(void (*function)(int64_t, int64_t)) noexcept  // NOLINT(google-explicit-constructor)
      : function_(function), call_(nullptr) {}
  void operator()(int64_t begin, int64_t end) const {
    if (call_ == nullptr) {
      function_(begin, end);
    } else {
      call_(object_, begin, end);
    }
  }

 private:
  union {
    void* object_;
    void (*function_)(int64_t, int64_t);
  };
  void (*call_)(void*, int64_t, int64_t);
};

// A fixed set of worker threads for the CPU backend. Owned by the caller (no global state).
class ThreadPool {
 public:
  // num_threads: 0 (std::thread::hardware_concurrency()) to kMaxThreads; throws ironmoe::Error
  // past that, or when the system cannot start a worker thread.
  static constexpr int kMaxThreads = 1024;
  explicit ThreadPool(int num_threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const;
  // Runs body(begin, end) over [0, n) split into contiguous chunks, and waits for all of them.
  // How the range is split never changes a result: bodies write disjoint outputs.
  void parallel_for(int64_t n, RangeBody body);

 private:
  void stop_workers();
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
