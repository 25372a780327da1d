// Register-tiled micro-kernel (kRows x kCols accumulators) over a packed panel of B, as BLAS
// libraries do. The micro-kernel is compiled for several instruction sets and picked at load time
// (target_clones), because the floor must reflect the hardware, not the portable baseline the
// library happens to be compiled for.
#include "bench/cpu_matmul.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace ironmoe::tools {
namespace {

constexpr int kRows = 8;
constexpr int kCols = 32;
constexpr int64_t kDepth = 256;  // K-block: a packed B panel of kDepth x kCols stays in L1

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define IRONMOE_SIMD_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define IRONMOE_SIMD_CLONES
#endif

// c[kRows, kCols] (row stride ldc) += a[kRows, depth] (row stride lda) * panel[depth, kCols].
IRONMOE_SIMD_CLONES
void micro_kernel(int64_t depth, const float* a, int64_t lda, const float* panel, float* c,
                  int64_t ldc) {
  float acc[kRows][kCols] = {};
  for (int64_t p = 0; p < depth; ++p) {
    const float* b = panel + p * kCols;
    for (int r = 0; r < kRows; ++r) {
      const float av = a[r * lda + p];
      for (int j = 0; j < kCols; ++j) acc[r][j] += av * b[j];
    }
  }
  for (int r = 0; r < kRows; ++r) {
    for (int j = 0; j < kCols; ++j) c[r * ldc + j] += acc[r][j];
  }
}

}  // namespace

void cpu_matmul(int64_t n, const float* a, const float* b, float* c, ThreadPool& pool) {
  // Each task owns a contiguous range of kRows-row panels of C and packs its own B panels.
  pool.parallel_for(n / kRows, [&](int64_t first_panel, int64_t end_panel) {
    std::vector<float> packed(static_cast<size_t>(kDepth * kCols));
    for (int64_t k0 = 0; k0 < n; k0 += kDepth) {
      const int64_t depth = std::min(kDepth, n - k0);
      for (int64_t j0 = 0; j0 < n; j0 += kCols) {
        for (int64_t p = 0; p < depth; ++p) {
          std::memcpy(&packed[static_cast<size_t>(p * kCols)], b + (k0 + p) * n + j0,
                      kCols * sizeof(float));
        }
        for (int64_t panel = first_panel; panel < end_panel; ++panel) {
          const int64_t i = panel * kRows;
          micro_kernel(depth, a + i * n + k0, n, packed.data(), c + i * n + j0, n);
        }
      }
    }
  });
}

}  // namespace ironmoe::tools
