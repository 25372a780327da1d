#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "bench/timing.h"

namespace ironmoe::tools {
namespace {

double median(std::vector<double> values) {
  const auto middle = values.begin() + static_cast<std::ptrdiff_t>(values.size() / 2);
  std::nth_element(values.begin(), middle, values.end());
  return *middle;
}

}  // namespace

Timing time_cpu(const std::function<void()>& call, int iters,
                const std::function<void()>& before_each) {
  constexpr int kMinAuto = 3;
  constexpr int kMaxAuto = 50;
  constexpr double kAutoBudgetS = 1.0;
  if (before_each) before_each();
  call();
  std::vector<double> seconds;
  double total = 0.0;
  while (true) {
    const bool done =
        iters > 0 ? static_cast<int>(seconds.size()) >= iters
                  : static_cast<int>(seconds.size()) >= kMaxAuto ||
                        (static_cast<int>(seconds.size()) >= kMinAuto && total >= kAutoBudgetS);
    if (done) break;
    if (before_each) before_each();
    const auto start = std::chrono::steady_clock::now();
    call();
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    seconds.push_back(s);
    total += s;
  }
  Timing timing;
  timing.iters = static_cast<int>(seconds.size());
  timing.min_s = *std::min_element(seconds.begin(), seconds.end());
  timing.median_s = median(seconds);
  return timing;
}

CacheFlusher::CacheFlusher() {
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  const size_t cache = l3 > 0 ? static_cast<size_t>(l3) : size_t{64} << 20;
  bytes_ = (2 * cache + 4095) / 4096 * 4096;
  buffer_ = static_cast<char*>(std::aligned_alloc(4096, bytes_));
  if (buffer_ == nullptr) throw std::bad_alloc();
}

CacheFlusher::~CacheFlusher() { std::free(buffer_); }

void CacheFlusher::flush() {
  // A different value each round, so the writes cannot be skipped as redundant.
  std::memset(buffer_, ++round_, bytes_);
}

}  // namespace ironmoe::tools
