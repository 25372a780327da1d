#pragma once
// FP8 quantisation of a few whole rows by one block (the fused decode kernels, where a handful of
// token or slot rows must be quantised inside a kernel that does other work). Every thread loads
// kBatch of its 8-value chunks before it uses any, so the rows cost a couple of memory round trips
// rather than a warp's serial walk along each row (which made a fused fp8_tensor layer 12 us
// slower at one token on an H200). Same scales and codes as the staged kernels of
// fp8_quantize.cu: a group's amax is a max (order-free), kept as float bits in a shared word by
// atomicMax (a NaN in the group writes all ones, which no amax's bits reach), and the encoding is
// the same function.
#include <cstdint>

#include "cuda/fp8.cuh"
#include "cuda/fp8_quantize_warp.cuh"
#include "cuda/fp8_row_sources.cuh"

namespace ironmoe::cuda::fp8_together {

inline constexpr int kBatch = 4;  // chunks a thread has in flight
inline constexpr unsigned kNanWord = 0xffffffffu;

// Row r < count of `data` ([count, k] in T, row stride `stride`, k a multiple of 8) when
// takes(r); `wide`: 16-byte aligned rows, read 16 bytes at a time (else 8 scalar loads a chunk).
template <class T, class Takes>
struct Rows {
  const T* data;
  int64_t stride;
  int64_t k;
  int64_t count;
  bool wide;
  Takes takes;

  __device__ void load(int64_t r, int64_t c, float (&v)[kFp8Chunk]) const {
    const T* p = data + r * stride + c;
    if (wide) {
      load_chunk(p, v);
      return;
    }
#pragma unroll
    for (int j = 0; j < kFp8Chunk; ++j) v[j] = to_float(p[j]);
  }
};

// body(r, c, values) for every chunk (row r, columns c .. c + 7) of the rows taken, each thread
// loading kBatch chunks before any body runs. The whole block calls it.
template <class R, class Body>
__device__ __forceinline__ void for_chunks(const R& rows, Body body) {
  const int64_t per_row = rows.k / kFp8Chunk;
  const int64_t n = rows.count * per_row;
  const int64_t step = blockDim.x;
  for (int64_t base = threadIdx.x; base < n; base += kBatch * step) {
    float v[kBatch][kFp8Chunk];
    int64_t row[kBatch];
    int64_t col[kBatch];
    bool taken[kBatch];
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      const int64_t i = base + b * step;
      row[b] = i / per_row;
      col[b] = i % per_row * kFp8Chunk;
      taken[b] = i < n && rows.takes(row[b]);
      if (taken[b]) rows.load(row[b], col[b], v[b]);
    }
#pragma unroll
    for (int b = 0; b < kBatch; ++b) {
      if (taken[b]) body(row[b], col[b], v[b]);
    }
  }
}

// words[r * groups + c / group] = the bits of the largest magnitude of each group of `group`
// columns (128, or k: the row), kNanWord when it holds a NaN. The words must be zero before, and
// the block must synchronise before reading them.
template <class R>
__device__ __forceinline__ void group_amax(const R& rows, int64_t group, int64_t groups,
                                           unsigned* words) {
  for_chunks(rows, [&](int64_t r, int64_t c, const float(&v)[kFp8Chunk]) {
    float amax = 0.0f;
    bool nan = false;
#pragma unroll
    for (int j = 0; j < kFp8Chunk; ++j) {
      nan = nan || isnan(v[j]);
      amax = fmaxf(amax, fabsf(v[j]));
    }
    atomicMax(words + r * groups + c / group, nan ? kNanWord : __float_as_uint(amax));
  });
}

// *word = max(*word, bits of the largest magnitude over the rows taken), NaN skipped (fp8_tensor's
// dynamic scale). The block must synchronise before reading it.
template <class R>
__device__ __forceinline__ void tensor_amax(const R& rows, unsigned* word) {
  float amax = 0.0f;
  for_chunks(rows, [&](int64_t, int64_t, const float(&v)[kFp8Chunk]) {
#pragma unroll
    for (int j = 0; j < kFp8Chunk; ++j) amax = fmaxf(amax, fabsf(v[j]));  // fmaxf drops NaN
  });
  amax = warp_max(amax);
  if ((threadIdx.x & 31) == 0) atomicMax(word, __float_as_uint(amax));
}

// The dynamic scale of a group from its amax word (fp8_quantize.cu's NaN rule).
__device__ __forceinline__ float scale_of(unsigned word) {
  return fp8_dynamic_scale(word == kNanWord ? __int_as_float(0x7fc00000) : __uint_as_float(word));
}

// codes[r * k + c + j] = the chunk's values encoded with scale(r, c), 8 codes a store.
template <class R, class Scale>
__device__ __forceinline__ void encode(const R& rows, uint8_t* codes, Scale scale) {
  for_chunks(rows, [&](int64_t r, int64_t c, const float(&v)[kFp8Chunk]) {
    const float s = scale(r, c);
    alignas(8) uint8_t packed[kFp8Chunk];
#pragma unroll
    for (int j = 0; j < kFp8Chunk; ++j) packed[j] = fp8_quantize(v[j], s);
    *reinterpret_cast<uint2*>(codes + r * rows.k + c) = *reinterpret_cast<const uint2*>(packed);
  });
}

// Quantises the rows with a per-group dynamic scale (fp8_channel: groups of k, fp8_block: of
// 128) into codes; scales[r * groups + g] (shared) gets each group's scale. The whole block calls
// it; the block is synchronised on return.
template <class R>
__device__ __forceinline__ void quantize_groups(const R& rows, int64_t group, uint8_t* codes,
                                                float* scales) {
  const int64_t groups = (rows.k + group - 1) / group;
  auto* words = reinterpret_cast<unsigned*>(scales);  // amax bits first, scales in place after
  for (int64_t i = threadIdx.x; i < rows.count * groups; i += blockDim.x) words[i] = 0;
  __syncthreads();
  group_amax(rows, group, groups, words);
  __syncthreads();
  for (int64_t i = threadIdx.x; i < rows.count * groups; i += blockDim.x)
    scales[i] = scale_of(words[i]);
  __syncthreads();
  encode(rows, codes, [&](int64_t r, int64_t c) { return scales[r * groups + c / group]; });
  __syncthreads();
}

}  // namespace ironmoe::cuda::fp8_together
