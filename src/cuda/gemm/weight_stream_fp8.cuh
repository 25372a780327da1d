#pragma once
// Device building blocks of the FP8 weight-streaming kernels (weight_stream_fp8.cu) and of the FP8
// fused decode kernels (cuda/fused_decode_fp8.cu): a warp's weight rows as runs of codes with
// their scales, the activation row read as codes or as values the warp quantises itself, and the
// decode pass over both. Both kernel families compute every sum with these, in the same order, so
// the fused layer and the staged one give the same bits.
#include <cuda_fp8.h>

#include <cstdint>

#include "core/fp8_scales.h"
#include "cuda/fp8.cuh"
#include "cuda/fp8_row_sources.cuh"
#include "ironmoe/types.h"

namespace ironmoe::cuda::gemm::streaming_fp8 {

inline constexpr int kCodes = 16;                // codes per 16-byte load
inline constexpr int kCodeStride = 32 * kCodes;  // K covered by one warp-wide load
static_assert(core::kFp8Block % kCodes == 0, "a 16-group never straddles a scale block");
static_assert(core::kFp8Block == 128, "scale blocks along K are indexed as k >> 7");

// A warp's weight rows: kRuns runs of kPerRun consecutive rows of one expert's matrix (gate/up:
// its gate rows and its up rows; down: its output rows). Run q's row i is first[q] + i * k codes,
// and its scales start at scales[q] + i * scale_row_step: consecutive rows have consecutive scales
// per channel and share them per tensor or per 128-row block (a run starts at a multiple of
// kPerRun, which divides 128, so it never straddles a block). Two pointers a run instead of two a
// row keep the warp's two K strides of codes in registers (ptxas: 80 registers, no spill).
template <int kRuns, int kPerRun>
struct WeightRuns {
  const uint8_t* first[kRuns];
  const float* scales[kRuns];
  int scale_row_step;
  bool per_block;  // scales along K in 128-code blocks (fp8_block)
};

// The runs over one matrix whose scales `map` describes, before set_run places each run.
template <int kRuns, int kPerRun>
__device__ __forceinline__ WeightRuns<kRuns, kPerRun> weight_runs(const core::Fp8ScaleMap& map) {
  WeightRuns<kRuns, kPerRun> runs;
  runs.scale_row_step = map.row_group == 1 ? static_cast<int>(map.row_stride) : 0;
  runs.per_block = map.k_group != 0;
  return runs;
}

// Run q starts at the matrix's row `row` (K codes a row).
template <int kRuns, int kPerRun>
__device__ __forceinline__ void set_run(WeightRuns<kRuns, kPerRun>& runs, int q,
                                        const uint8_t* matrix, const core::Fp8ScaleMap& map,
                                        int64_t row, int64_t k) {
  static_assert(core::kFp8Block % kPerRun == 0, "a run never straddles a scale block");
  runs.first[q] = matrix + row * k;
  runs.scales[q] = map.row_base(row);
}

// The 16 codes at k of every row of the runs (zeros from the rows' end on).
template <int kRuns, int kPerRun>
__device__ __forceinline__ void load_codes(const WeightRuns<kRuns, kPerRun>& w, int k, int k_size,
                                           uint4 (&codes)[kRuns * kPerRun]) {
#pragma unroll
  for (int q = 0; q < kRuns; ++q) {
#pragma unroll
    for (int i = 0; i < kPerRun; ++i) {
      codes[q * kPerRun + i] =
          k < k_size ? __ldg(reinterpret_cast<const uint4*>(w.first[q] + i * k_size + k))
                     : make_uint4(0, 0, 0, 0);
    }
  }
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

// A decode pass's activation row, read one warp-wide K stride at a time: every lane of the warp
// calls prepare() once and stride() for every stride, whether its k is inside the row or not.
// CodeRow reads the codes and scales fp8_quantize_rows wrote.
struct CodeRow {
  const uint8_t* codes;
  const float* scales;  // the row's (Fp8ScaleMap::row_base)
  bool per_block;
  __device__ void prepare(int) {}
  __device__ void stride(int k, int k_size, uint4& codes_out, float& scale) const {
    if (k >= k_size) return;
    codes_out = __ldg(reinterpret_cast<const uint4*>(codes + k));
    scale = scales[per_block ? k >> 7 : 0];
  }
};

// ValueRow quantises the row's values as it reads them, with fp8_quantize_rows's rules, so the
// codes and scales are that kernel's: a 128-block's scale is the max over the 8 lanes that hold
// its 8 x 16 values (lanes past the row add zeros, as the quantiser's shorter last block), a
// row's scale a max over the whole row found by prepare(), NaN in the group making it NaN.
template <class T>
struct ValueRow {
  const T* values;  // null: a row of zeros (a gathered row whose entry is not a slot)
  QuantScheme quant;
  float scale;  // fp8_tensor: the tensor's; fp8_channel: the row's, from prepare()

  __device__ void load16(int k, float (&v)[kCodes]) const {
    float(&low)[kFp8Chunk] = *reinterpret_cast<float(*)[kFp8Chunk]>(&v[0]);
    float(&high)[kFp8Chunk] = *reinterpret_cast<float(*)[kFp8Chunk]>(&v[kFp8Chunk]);
    load_chunk(values + k, low);
    load_chunk(values + k + kFp8Chunk, high);
  }

  __device__ void prepare(int k_size) {
    if (quant != QuantScheme::fp8_channel) return;
    const int lane = static_cast<int>(threadIdx.x) & 31;
    float amax = 0.0f;
    bool nan = false;
    if (values != nullptr) {
      for (int c = lane * kFp8Chunk; c < k_size; c += 32 * kFp8Chunk) {
        float v[kFp8Chunk];
        load_chunk(values + c, v);
#pragma unroll
        for (int j = 0; j < kFp8Chunk; ++j) {
          nan = nan || isnan(v[j]);
          amax = fmaxf(amax, fabsf(v[j]));  // fmaxf drops NaN, as the quantiser's amax
        }
      }
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1)
      amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
    scale = fp8_dynamic_scale(__any_sync(0xffffffffu, nan) ? __int_as_float(0x7fc00000) : amax);
  }

  __device__ void stride(int k, int k_size, uint4& codes_out, float& scale_out) const {
    float v[kCodes] = {};
    if (values != nullptr && k < k_size) load16(k, v);
    scale_out = scale;
    if (quant == QuantScheme::fp8_block) {
      float amax = 0.0f;
      bool nan = false;
#pragma unroll
      for (int j = 0; j < kCodes; ++j) {
        nan = nan || isnan(v[j]);
        amax = fmaxf(amax, fabsf(v[j]));
      }
      constexpr int kBlockLanes = static_cast<int>(core::kFp8Block) / kCodes;  // 8
#pragma unroll
      for (int offset = kBlockLanes / 2; offset > 0; offset >>= 1)
        amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, offset));
      const int lane = static_cast<int>(threadIdx.x) & 31;
      const unsigned block_nan =
          (__ballot_sync(0xffffffffu, nan) >> (lane & ~(kBlockLanes - 1))) & 0xffu;
      scale_out = fp8_dynamic_scale(block_nan != 0 ? __int_as_float(0x7fc00000) : amax);
    }
    alignas(16) uint8_t packed[kCodes];
#pragma unroll
    for (int j = 0; j < kCodes; ++j) packed[j] = fp8_quantize(v[j], scale_out);
    codes_out = *reinterpret_cast<const uint4*>(packed);
  }
};
static_assert(32 * kCodes % core::kFp8Block == 0, "a 128-block is 8 lanes of one stride");

// acc[q * kPerRun + i] = sum over K of (run q's row i) . a, each 16-group scaled by its activation
// and weight scales, for one activation row: the decode pass. Per lane the groups are added in
// increasing k, as stream_fp8_rows adds them. The loop runs the same number of times in every
// lane (ValueRow shuffles); a's row scale is found once the first weights are on their way.
template <int kSteps, int kRuns, int kPerRun, class Row>
__device__ __forceinline__ void stream_fp8_row(const WeightRuns<kRuns, kPerRun>& w, Row a,
                                               int k_size, float (&acc)[kRuns * kPerRun]) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  for (int base = 0; base < k_size; base += kSteps * kCodeStride) {
    uint4 wv[kSteps][kRuns * kPerRun];
#pragma unroll
    for (int step = 0; step < kSteps; ++step)
      load_codes(w, base + step * kCodeStride + lane * kCodes, k_size, wv[step]);
    if (base == 0) a.prepare(k_size);
#pragma unroll
    for (int step = 0; step < kSteps; ++step) {
      const int k = base + step * kCodeStride + lane * kCodes;
      uint4 av = make_uint4(0, 0, 0, 0);
      float a_scale = 0.0f;
      a.stride(k, k_size, av, a_scale);
      if (k < k_size) {
        const int w_block = w.per_block ? k >> 7 : 0;
#pragma unroll
        for (int q = 0; q < kRuns; ++q) {
#pragma unroll
          for (int i = 0; i < kPerRun; ++i) {
            const float w_scale = w.scales[q][i * w.scale_row_step + w_block];
            acc[q * kPerRun + i] =
                fmaf(dot16(wv[step][q * kPerRun + i], av), a_scale * w_scale, acc[q * kPerRun + i]);
          }
        }
      }
    }
  }
}

}  // namespace ironmoe::cuda::gemm::streaming_fp8
