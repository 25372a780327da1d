// ThreadPool: size() - 1 background workers plus the calling thread share each parallel_for.
// Chunks are claimed from an atomic counter; which thread runs a chunk never changes a result
// because bodies write disjoint outputs.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "core/check.h"
#include "ironmoe/stream.h"

namespace ironmoe {
namespace {

// The pool whose worker runs on this thread, so a nested parallel_for runs inline instead of
// waiting for workers that are busy with the outer one.
thread_local const void* current_pool = nullptr;

// Chunks per thread: enough to balance uneven bodies, few enough to keep scheduling cheap.
constexpr int64_t kChunksPerThread = 4;

}  // namespace

struct ThreadPool::Impl {
  int size = 1;
  std::vector<std::thread> workers;

  std::mutex call_mutex;  // one parallel_for at a time per pool
  std::mutex mutex;
  std::condition_variable work_ready;
  std::condition_variable work_done;
  uint64_t generation = 0;  // bumped for every parallel_for that wakes the workers
  bool stopping = false;

  // The current job (valid while a parallel_for runs).
  const RangeBody* body = nullptr;
  int64_t n = 0;
  int64_t chunk = 1;
  int64_t num_chunks = 0;
  std::atomic<int64_t> next_chunk{0};
  int workers_busy = 0;
  std::exception_ptr error;

  // Runs chunks until none is left; the first exception is kept for the caller.
  void run_chunks() {
    for (;;) {
      const int64_t index = next_chunk.fetch_add(1, std::memory_order_relaxed);
      if (index >= num_chunks) return;
      const int64_t begin = index * chunk;
      const int64_t end = std::min(n, begin + chunk);
      try {
        (*body)(begin, end);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex);
        if (!error) error = std::current_exception();
      }
    }
  }

  void worker_loop(const void* owner) {
    current_pool = owner;
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex);
    for (;;) {
      work_ready.wait(lock, [&] { return stopping || generation != seen; });
      if (stopping) return;
      seen = generation;
      lock.unlock();
      run_chunks();
      lock.lock();
      if (--workers_busy == 0) work_done.notify_one();
    }
  }
};

ThreadPool::ThreadPool(int num_threads) : impl_(std::make_unique<Impl>()) {
  IRONMOE_CHECK(num_threads >= 0 && num_threads <= kMaxThreads, "ThreadPool",
                "num_threads: expected 0 (all cores) to ", kMaxThreads, ", got ", num_threads);
  int size = num_threads;
  if (size == 0) size = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  size = std::min(size, kMaxThreads);
  impl_->size = size;
  impl_->workers.reserve(static_cast<size_t>(size - 1));
  for (int i = 1; i < size; ++i) {
    try {
      impl_->workers.emplace_back([impl = impl_.get()] { impl->worker_loop(impl); });
    } catch (const std::system_error& error) {
      // Joinable threads must not outlive the pool: stop the ones started, then report.
      stop_workers();
      core::fail("ThreadPool", "num_threads: could not start worker thread ", i, " of ", size - 1,
                 " (", error.what(), ")");
    }
  }
}

void ThreadPool::stop_workers() {
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->stopping = true;
  }
  impl_->work_ready.notify_all();
  for (std::thread& worker : impl_->workers) worker.join();
  impl_->workers.clear();
}

ThreadPool::~ThreadPool() { stop_workers(); }

int ThreadPool::size() const { return impl_->size; }

void ThreadPool::parallel_for(int64_t n, RangeBody body) {
  if (n <= 0) return;
  Impl& impl = *impl_;
  if (impl.size == 1 || n == 1 || current_pool == &impl) {
    body(0, n);
    return;
  }
  std::lock_guard<std::mutex> call_lock(impl.call_mutex);
  const int64_t wanted_chunks = std::min<int64_t>(n, impl.size * kChunksPerThread);
  {
    std::lock_guard<std::mutex> lock(impl.mutex);
    impl.body = &body;
    impl.n = n;
    impl.chunk = (n + wanted_chunks - 1) / wanted_chunks;
    impl.num_chunks = (n + impl.chunk - 1) / impl.chunk;
    impl.next_chunk.store(0, std::memory_order_relaxed);
    impl.workers_busy = static_cast<int>(impl.workers.size());
    impl.error = nullptr;
    ++impl.generation;
  }
  impl.work_ready.notify_all();
  // The caller runs chunks too, as a thread of this pool: a body that calls parallel_for on the
  // pool again must run inline here as well (taking call_mutex a second time would deadlock).
  const void* outer = current_pool;
  current_pool = &impl;
  impl.run_chunks();
  current_pool = outer;
  std::exception_ptr error;
  {
    std::unique_lock<std::mutex> lock(impl.mutex);
    impl.work_done.wait(lock, [&] { return impl.workers_busy == 0; });
    impl.body = nullptr;
    error = impl.error;
    impl.error = nullptr;
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace ironmoe
