#pragma once
// A blocked fp32 matmul, C[n, n] += A[n, n] * B[n, n] (row-major), used only to measure the CPU's
// dense GEMM rate for the floor. n must be a multiple of kCpuMatmulMultiple.
#include <cstdint>

#include "ironmoe/stream.h"

namespace ironmoe::tools {

inline constexpr int64_t kCpuMatmulMultiple = 32;

void cpu_matmul(int64_t n, const float* a, const float* b, float* c, ThreadPool& pool);

}  // namespace ironmoe::tools
