#pragma once
// The FP8 quantising kernels for rows whose K is a multiple of 8 (up to 8192) read in 16-byte
// chunks: a block per row, each thread holding up to kMaxChunks chunks of 8 values in registers,
// so a row is read once and its codes are written 8 bytes at a time. A 128-column block scale is
// the max over the 16 threads (one half warp) that hold its 16 chunks; a row scale is a block
// max. Same codes and scales as the warp-per-row kernels of fp8_quantize.cu, which take every
// other shape: the amax is a max (order-free) and the encoding is the same function.
#include <cstdint>

#include "core/fp8_scales.h"
#include "cuda/fp8.cuh"
#include "cuda/fp8_row_sources.cuh"
#include "cuda/gemm/expert_rows.cuh"

namespace ironmoe::cuda::fp8_vector {

inline constexpr int kMaxThreads = 256;
inline constexpr int kMaxChunks = 4;  // per thread: K up to 256 * 4 * 8 = 8192
inline constexpr int kGroupThreads = static_cast<int>(core::kFp8Block) / kFp8Chunk;  // 16
inline constexpr unsigned kFullMask = 0xffffffffu;

// Grid (local expert, row split): block s takes the expert's rows s, s + splits, ...
template <class Body>
__device__ void for_block_rows(const gemm::ExpertRows& rows, Body body) {
  const int64_t expert = blockIdx.x;
  const gemm::RowRange range = gemm::expert_row_range(rows, expert);
  for (int64_t r = blockIdx.y; r < range.count; r += gridDim.y)
    body(expert, range, range.begin + r);
}

// Max over the block (blockDim.x a multiple of 32), NaN skipped; `any_nan` is or-ed likewise.
__device__ __forceinline__ float block_max(float v, bool& any_nan) {
  __shared__ float warp_amax[kMaxThreads / 32];
  __shared__ int warp_nan[kMaxThreads / 32];
  for (int offset = 16; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  const bool nan = __any_sync(kFullMask, any_nan);
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  __syncthreads();  // the previous row's reads of the partials are done
  if ((threadIdx.x & 31) == 0) {
    warp_amax[warp] = v;
    warp_nan[warp] = nan ? 1 : 0;
  }
  __syncthreads();
  float result = 0.0f;
  int result_nan = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) {
    result = fmaxf(result, warp_amax[w]);
    result_nan |= warp_nan[w];
  }
  any_nan = result_nan != 0;
  return result;
}

template <class Rows, int kChunks>
__global__ void __launch_bounds__(kMaxThreads)
    quantize_rows(gemm::ExpertRows rows, Rows values, int64_t k, QuantScheme quant,
                  const float* tensor_scale, uint8_t* codes, ScaleSink sink) {
  const int tid = static_cast<int>(threadIdx.x);
  const int threads = static_cast<int>(blockDim.x);
  const int64_t chunks = k / kFp8Chunk;
  for_block_rows(rows, [&](int64_t expert, gemm::RowRange range, int64_t r) {
    float v[kChunks][kFp8Chunk];
    float scale[kChunks];
    float amax[kChunks];
    bool nan[kChunks];
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int64_t chunk = static_cast<int64_t>(i) * threads + tid;
      amax[i] = 0.0f;
      nan[i] = false;
      if (chunk < chunks) {
        values.load(expert, r, chunk * kFp8Chunk, v[i]);
#pragma unroll
        for (int j = 0; j < kFp8Chunk; ++j) {
          nan[i] = nan[i] || isnan(v[i][j]);
          amax[i] = fmaxf(amax[i], fabsf(v[i][j]));
        }
      }
    }
    if (quant == QuantScheme::fp8_tensor) {
#pragma unroll
      for (int i = 0; i < kChunks; ++i) scale[i] = *tensor_scale;
    } else if (quant == QuantScheme::fp8_block) {
#pragma unroll
      for (int i = 0; i < kChunks; ++i) {
        float m = amax[i];
        for (int offset = kGroupThreads / 2; offset > 0; offset >>= 1) {
          m = fmaxf(m, __shfl_xor_sync(kFullMask, m, offset));
        }
        // A half warp's any: the ballot's bits of this thread's 16-thread group.
        const unsigned ballot = __ballot_sync(kFullMask, nan[i]);
        const unsigned group_bits = (ballot >> (tid & 16)) & 0xffffu;
        scale[i] = fp8_dynamic_scale(group_bits != 0 ? __int_as_float(0x7fc00000) : m);
      }
    } else {
      float m = 0.0f;
      bool any_nan = false;
#pragma unroll
      for (int i = 0; i < kChunks; ++i) {
        m = fmaxf(m, amax[i]);
        any_nan = any_nan || nan[i];
      }
      m = block_max(m, any_nan);
      const float row_scale = fp8_dynamic_scale(any_nan ? __int_as_float(0x7fc00000) : m);
#pragma unroll
      for (int i = 0; i < kChunks; ++i) scale[i] = row_scale;
    }
    uint8_t* row_codes = codes + r * k;
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int64_t chunk = static_cast<int64_t>(i) * threads + tid;
      if (chunk >= chunks) continue;
      alignas(8) uint8_t packed[kFp8Chunk];
#pragma unroll
      for (int j = 0; j < kFp8Chunk; ++j) packed[j] = fp8_quantize(v[i][j], scale[i]);
      *reinterpret_cast<uint2*>(row_codes + chunk * kFp8Chunk) =
          *reinterpret_cast<const uint2*>(packed);
      if (quant == QuantScheme::fp8_block && chunk % kGroupThreads == 0) {
        const int64_t first = chunk * kFp8Chunk;
        sink.put(expert, range, r, first / core::kFp8Block, first, min(core::kFp8Block, k - first),
                 scale[i], 0);
      }
    }
    // One scale for the whole row: written by the first warp, which shares the grouped copies.
    if (quant != QuantScheme::fp8_block && tid < 32) {
      sink.put(expert, range, r, 0, 0, k, scale[0], tid);
    }
  });
}

template <class Rows, int kChunks>
__global__ void __launch_bounds__(kMaxThreads)
    amax_of_rows(gemm::ExpertRows rows, Rows values, int64_t k, unsigned* word) {
  const int tid = static_cast<int>(threadIdx.x);
  const int threads = static_cast<int>(blockDim.x);
  const int64_t chunks = k / kFp8Chunk;
  float amax = 0.0f;
  for_block_rows(rows, [&](int64_t expert, gemm::RowRange, int64_t r) {
#pragma unroll
    for (int i = 0; i < kChunks; ++i) {
      const int64_t chunk = static_cast<int64_t>(i) * threads + tid;
      if (chunk >= chunks) continue;
      float v[kFp8Chunk];
      values.load(expert, r, chunk * kFp8Chunk, v);
#pragma unroll
      for (int j = 0; j < kFp8Chunk; ++j) amax = fmaxf(amax, fabsf(v[j]));  // fmaxf drops NaN
    }
  });
  bool unused = false;
  amax = block_max(amax, unused);
  if (tid == 0) atomicMax(word, __float_as_uint(amax));  // amax >= 0 and never NaN here
}

}  // namespace ironmoe::cuda::fp8_vector
