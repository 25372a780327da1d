#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <string>
#include <vector>

#include "bench/cpu_matmul.h"
#include "bench/peak.h"

namespace ironmoe::tools {
namespace {

std::string cpu_model_name() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown CPU";
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Each array is at least 512 MiB and twice the last-level cache, so no pass is served from cache.
size_t stream_array_elements() {
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  const size_t cache = l3 > 0 ? static_cast<size_t>(l3) : 0;
  const size_t bytes = std::max<size_t>(size_t{512} << 20, 2 * cache);
  return bytes / sizeof(float);
}

double measure_bandwidth(ThreadPool& pool, std::string* method) {
  const size_t n = stream_array_elements();
  std::vector<float> a(n), b(n), c(n);
  const auto count = static_cast<int64_t>(n);
  // First touch from the pool's threads, as the timed passes will touch them.
  pool.parallel_for(count, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      a[i] = 0.0f;
      b[i] = 1.0f;
      c[i] = 2.0f;
    }
  });
  double best_copy = 0.0;
  double best_triad = 0.0;
  constexpr int kPasses = 4;
  for (int pass = 0; pass < kPasses; ++pass) {
    auto start = std::chrono::steady_clock::now();
    pool.parallel_for(count, [&](int64_t begin, int64_t end) {
      std::copy(b.begin() + begin, b.begin() + end, a.begin() + begin);
    });
    best_copy =
        std::max(best_copy, 2.0 * static_cast<double>(n * sizeof(float)) / seconds_since(start));
    start = std::chrono::steady_clock::now();
    const float scale = 0.5f + static_cast<float>(pass);
    pool.parallel_for(count, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) a[i] = b[i] + scale * c[i];
    });
    best_triad =
        std::max(best_triad, 3.0 * static_cast<double>(n * sizeof(float)) / seconds_since(start));
  }
  const std::string size = std::to_string(n * sizeof(float) >> 20) + " MiB arrays";
  *method = best_triad >= best_copy ? "stream triad, " + size : "copy, " + size;
  return std::max(best_copy, best_triad);
}

double measure_gemm(ThreadPool& pool, std::string* method) {
  // n grows until one matmul takes >= 0.2 s; sizes avoid powers of two (cache-set conflicts).
  // The best rate of any size tried counts, so a burst of load from elsewhere on the machine
  // during the last size does not lower the floor.
  const int64_t sizes[] = {1056, 1504, 2016, 2528, 3040, 4000, 5024, 6016};
  double best_rate = 0.0;
  for (int64_t n : sizes) {
    const auto elements = static_cast<size_t>(n * n);
    std::vector<float> a(elements, 0.5f), b(elements, 0.25f), c(elements, 0.0f);
    double fastest = 1e30;
    for (int rep = 0; rep < 2; ++rep) {
      const auto start = std::chrono::steady_clock::now();
      cpu_matmul(n, a.data(), b.data(), c.data(), pool);
      fastest = std::min(fastest, seconds_since(start));
    }
    const double flops =
        2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n);
    if (flops / fastest > best_rate) {
      best_rate = flops / fastest;
      *method = "fp32 blocked matmul " + std::to_string(n) + "^3";
    }
    if (fastest >= 0.2) break;
  }
  return best_rate;
}

}  // namespace

MachinePeak measure_cpu_peak(ThreadPool& pool) {
  MachinePeak peak;
  peak.device_name = cpu_model_name() + ", " + std::to_string(pool.size()) + " threads";
  peak.bandwidth_bytes_per_s = measure_bandwidth(pool, &peak.bandwidth_method);
  peak.gemm_flops_per_s = measure_gemm(pool, &peak.gemm_method);
  // No FP8 arithmetic on the CPU: the FP8 layer computes in fp32 like the rest.
  peak.fp8_gemm_flops_per_s = peak.gemm_flops_per_s;
  peak.fp8_gemm_method = peak.gemm_method;
  return peak;
}

}  // namespace ironmoe::tools
