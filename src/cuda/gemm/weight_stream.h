#pragma once
// The decode expert path: weight-streaming kernels on CUDA cores for few rows per expert, where the
// work is reading each selected expert's weights once at full bandwidth and a tensor-core tile
// (128 rows and up) would be almost all padding.
//   kernel 1, per (local expert with rows, intermediate column n):
//       h[r][n] = act(a[r] . w13[e][n]) * (a[r] . w13[e][I + n])   for the expert's rows r
//   kernel 2, per (local expert with rows, hidden column n):
//       out[r][n] = h[r] . w2[e][n]
// One warp owns one output column: it streams that column's weight row(s) once per pass of up to
// 8 token rows (16-byte loads) and keeps every dot product in fp32, so gate and up are never
// rounded before the activation (the CPU backend's order of roundings: h once, out once).
// Blocks whose expert has no rows exit at once: each block first lists the experts with rows, so
// the grid is sized by a host-known bound (min(E_local, R)), not by E_local.
// Rows outside every expert's range are neither read nor written; nothing syncs with the host.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/device_info.h"
#include "cuda/gemm/expert_rows.h"
#include "ironmoe/experts.h"
#include "ironmoe/types.h"

namespace ironmoe::cuda::gemm {

struct WeightStreamArgs {
  const void* a = nullptr;  // [R, K = H], row stride a_stride
  int64_t a_stride = 0;
  const void* w13 = nullptr;  // [E_local, 2I, H]
  int64_t w13_expert_stride = 0;
  void* h = nullptr;  // [R, I], row stride h_stride
  int64_t h_stride = 0;
  const void* w2 = nullptr;  // [E_local, H, I]
  int64_t w2_expert_stride = 0;
  void* out = nullptr;  // [R, H], row stride out_stride
  int64_t out_stride = 0;
  int64_t hidden = 0;
  int64_t intermediate = 0;
  DType dtype = DType::bf16;
  Activation activation = Activation::silu_and_mul;
};

// bf16 or f16, 16-byte aligned pointers and row strides (H, I and strides multiples of 8), and
// at most kWeightStreamMaxExperts local experts (their list lives in shared memory).
inline constexpr int64_t kWeightStreamMaxExperts = 8192;
bool weight_stream_supports(const WeightStreamArgs& args, int64_t local_experts);

// Where the weight-streaming kernels beat the grouped GEMM (ironmoe-bench --expert-kernel
// grouped_gemm vs weight_stream, docs/performance.md). The crossover moves with the memory:
//  - H100 (3.35 TB/s peak, 2026-11-24): at T = 1 (R = k rows) for H = 2048 and 4096 by 22-31%; at
//    T = 4 they tie or lose (qwen3-30b-a3b -3%, qwen3-next-80b-a3b +9%, mixtral-8x7b +9%), and
//    deepseek-v3 (H = 7168) loses 4% even at T = 1. So: at most 16 rows, at most one row per four
//    local experts on average, H <= 4096.
//  - H200 (4.8 TB/s peak, 2026-12-02): streaming is 28% and 17% faster on qwen3-30b-a3b at T = 4
//    and 8 (32 and 64 rows over 128 experts), 20%, 11% and 5% on qwen3-next-80b-a3b at T = 4, 8 and
//    16 (up to 160 rows over 512); ties at 128 rows over 128 experts and loses from 320 rows over
//    512 on. So: at most one row per two local experts on average, at most 256 rows, H <= 4096.
// fast_memory: has_fast_memory(device) (peak bandwidth at least kFastMemoryBandwidth).
inline constexpr double kFastMemoryBandwidth = 4.0e12;
inline bool has_fast_memory(int device_index) {
  return peak_memory_bandwidth(device_index) >= kFastMemoryBandwidth;
}
inline bool weight_stream_preferred(int64_t rows_total, int64_t local_experts, int64_t hidden,
                                    bool fast_memory) {
  if (hidden > 4096) return false;
  if (fast_memory) return rows_total <= 256 && 2 * rows_total <= local_experts;
  return rows_total <= 16 && 4 * rows_total <= local_experts;
}

// Gate/up (with the activation) into h, then down into out; `phase` runs one of the two alone.
void weight_stream_experts(const ExpertRows& rows, const WeightStreamArgs& args, ExpertPhase phase,
                           cudaStream_t stream);

}  // namespace ironmoe::cuda::gemm
