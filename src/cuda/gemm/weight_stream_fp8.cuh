#pragma once
// Device building blocks of the FP8 weight-streaming kernels (weight_stream_fp8.cu) and of the
// fused FP8 decode kernels (cuda/fused_decode_fp8.cu). Both compute every dot product with these
// functions, in the same order (each lane sums its own 16-code groups in increasing k, each group
// scaled once, then a butterfly over the warp), so a fused layer and the staged one give the same
// bits.
#include <cuda_fp8.h>

#include <cstdint>

#include "core/fp8_scales.h"
#include "cuda/gemm/weight_stream.cuh"

namespace ironmoe::cuda::gemm::streaming {

constexpr int kCodes = 16;                // codes per 16-byte load
constexpr int kCodeStride = 32 * kCodes;  // K covered by one warp-wide load
// Token rows per pass over a weight row: two, not the bf16 kernels' four (a decode batch rarely
// gives an expert more than one or two rows, and four spilled at 80 registers).
constexpr int kFp8RowsPerPass = 2;
static_assert(core::kFp8Block % kCodes == 0, "a 16-group never straddles a scale block");
static_assert(core::kFp8Block == 128, "RowScales::at indexes blocks as k >> 7");

// The scales of one matrix row along K: base[k >> 7] (block) or base[0].
struct RowScales {
  const float* base;
  bool per_block;
  __device__ float at(int64_t k) const { return base[per_block ? (k >> 7) : 0]; }
};

__device__ __forceinline__ RowScales row_scales(const core::Fp8ScaleMap& map, int64_t row) {
  const float* base = map.data + (map.row_group != 0 ? row / map.row_group * map.row_stride : 0);
  return {base, map.k_group != 0};
}

// sum over 16 code pairs of value(w) * value(a), in code order.
__device__ __forceinline__ float dot16(const uint4& w, const uint4& a) {
  const auto* wp = reinterpret_cast<const __nv_fp8x2_storage_t*>(&w);
  const auto* ap = reinterpret_cast<const __nv_fp8x2_storage_t*>(&a);
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < kCodes / 2; ++i) {
    const float2 wv = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(wp[i], __NV_E4M3)));
    const float2 av = __half22float2(__half2(__nv_cvt_fp8x2_to_halfraw2(ap[i], __NV_E4M3)));
    sum = fmaf(wv.x, av.x, sum);
    sum = fmaf(wv.y, av.y, sum);
  }
  return sum;
}

// acc[j][r] = sum over K of w_j . a_r for kRows weight rows and up to kFp8RowsPerPass token rows,
// each 16-group scaled by its activation and weight scales. kSharedA: the activation codes are
// in shared memory (read with plain loads instead of the read-only global path).
template <int kRows, bool kSharedA = false>
__device__ __forceinline__ void stream_fp8_rows(const uint8_t* const (&w)[kRows],
                                                const RowScales (&ws)[kRows],
                                                const uint8_t* const (&a)[kFp8RowsPerPass],
                                                const RowScales (&as)[kFp8RowsPerPass],
                                                int rows_here, int64_t k_size,
                                                float (&acc)[kRows][kFp8RowsPerPass]) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  for (int64_t k = lane * kCodes; k < k_size; k += kCodeStride) {
    uint4 wv[kRows];
#pragma unroll
    for (int j = 0; j < kRows; ++j) wv[j] = __ldg(reinterpret_cast<const uint4*>(w[j] + k));
#pragma unroll
    for (int r = 0; r < kFp8RowsPerPass; ++r) {
      if (r < rows_here) {
        const auto* a_chunk = reinterpret_cast<const uint4*>(a[r] + k);
        const uint4 av = kSharedA ? *a_chunk : __ldg(a_chunk);
        const float a_scale = as[r].at(k);
#pragma unroll
        for (int j = 0; j < kRows; ++j)
          acc[j][r] = fmaf(dot16(wv[j], av), a_scale * ws[j].at(k), acc[j][r]);
      }
    }
  }
}

// The warp sums of one pass: for each column c < kColumns and token row r < rows_here,
// store(r, c, value) by one lane, where value = act(gate sum) * (up sum) (kGated: acc holds the
// gate rows, then the up rows) or the plain sum.
template <int kColumns, bool kGated, class Store>
__device__ __forceinline__ void store_pass_sums(
    const float (&acc)[kGated ? 2 * kColumns : kColumns][kFp8RowsPerPass], int rows_here,
    Activation activation, Store store) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
#pragma unroll
  for (int c = 0; c < kColumns; ++c) {
#pragma unroll
    for (int r = 0; r < kFp8RowsPerPass; ++r) {
      if (r < rows_here) {
        float value = warp_sum(acc[c][r]);
        if constexpr (kGated) value = gated_activation(value, warp_sum(acc[kColumns + c][r]),
                                                       activation);
        if (lane == r * kColumns + c) store(r, c, value);
      }
    }
  }
}

}  // namespace ironmoe::cuda::gemm::streaming
