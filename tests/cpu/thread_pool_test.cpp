// ThreadPool::parallel_for: every index exactly once, for lambdas, std::function objects and
// plain functions (RangeBody binds all three without copying them); a nested call runs inline;
// an exception thrown by a body reaches the caller after every chunk has finished; thread counts
// out of range are errors.
#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "ironmoe/error.h"
#include "ironmoe/stream.h"

namespace ironmoe::test {
namespace {

constexpr int64_t kItems = 1000;
std::vector<std::atomic<int>> function_hits(kItems);

void count_in_function(int64_t begin, int64_t end) {
  for (int64_t i = begin; i < end; ++i) function_hits[static_cast<size_t>(i)].fetch_add(1);
}

TEST(ThreadPool, EveryIndexRunsOnceForEveryKindOfBody) {
  for (const int threads : {1, 2, 5}) {
    SCOPED_TRACE(std::to_string(threads) + " threads");
    ThreadPool pool(threads);
    std::vector<std::atomic<int>> hits(kItems);
    pool.parallel_for(kItems, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
    });
    const std::function<void(int64_t, int64_t)> as_function = [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) hits[static_cast<size_t>(i)].fetch_add(10);
    };
    pool.parallel_for(kItems, as_function);
    for (auto& hit : function_hits) hit.store(0);
    pool.parallel_for(kItems, count_in_function);
    pool.parallel_for(kItems, &count_in_function);
    for (int64_t i = 0; i < kItems; ++i) {
      ASSERT_EQ(hits[static_cast<size_t>(i)].load(), 11) << "index " << i;
      ASSERT_EQ(function_hits[static_cast<size_t>(i)].load(), 2) << "index " << i;
    }
  }
}

TEST(ThreadPool, NestedCallsRunInlineAndExceptionsReachTheCaller) {
  ThreadPool pool(3);
  std::atomic<int64_t> inner{0};
  pool.parallel_for(8, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      pool.parallel_for(4, [&](int64_t b, int64_t e) { inner.fetch_add(e - b); });
    }
  });
  EXPECT_EQ(inner.load(), 32);

  std::atomic<int64_t> done{0};
  EXPECT_THROW(pool.parallel_for(100,
                                 [&](int64_t begin, int64_t end) {
                                   if (begin <= 50 && 50 < end) throw std::runtime_error("body");
                                   done.fetch_add(end - begin);
                                 }),
               std::runtime_error);
  EXPECT_GT(done.load(), 0);
  EXPECT_LT(done.load(), 100);
  // The pool is usable after an exception.
  std::atomic<int64_t> after{0};
  pool.parallel_for(100, [&](int64_t begin, int64_t end) { after.fetch_add(end - begin); });
  EXPECT_EQ(after.load(), 100);
}

TEST(ThreadPool, ThreadCountsOutOfRangeAreClearErrors) {
  for (const int threads : {-1, ThreadPool::kMaxThreads + 1, 1 << 30}) {
    try {
      const ThreadPool pool(threads);
      ADD_FAILURE() << "ThreadPool(" << threads << ") was accepted";
    } catch (const Error& error) {
      EXPECT_NE(std::string(error.what()).find("num_threads"), std::string::npos) << error.what();
    }
  }
  const ThreadPool all_cores(0);
  EXPECT_GE(all_cores.size(), 1);
  EXPECT_LE(all_cores.size(), ThreadPool::kMaxThreads);
}

}  // namespace
}  // namespace ironmoe::test
