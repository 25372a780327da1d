#pragma once
// What the FP8 quantising kernels read and where they put the scales (fp8_quantize.h): the row
// sources (stored values, token rows through the plan's row_to_slot, or act(gate) * up from a
// gate_up buffer) read one value or eight consecutive ones, and the scale sink writes a group's
// scale in the streaming GEMMs' row-major layout and/or the Hopper GEMM's grouped layout.
#include <cstdint>

#include "core/plan_math.h"
#include "cuda/gemm/expert_rows.cuh"
#include "cuda/gemm/gated_activation.cuh"
#include "cuda/gemm/grouped_gemm_sm90_fp8.h"
#include "cuda/storage.cuh"

namespace ironmoe::cuda {

inline constexpr int kFp8Chunk = 8;  // values per vector read: 16 bytes of bf16 or f16

// Eight consecutive values of a row at `p` (16-byte aligned), widened to fp32.
template <class T>
__device__ __forceinline__ void load_chunk(const T* p, float (&v)[kFp8Chunk]) {
  if constexpr (sizeof(T) == 4) {
    const float4 a = reinterpret_cast<const float4*>(p)[0];
    const float4 b = reinterpret_cast<const float4*>(p)[1];
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int j = 0; j < kFp8Chunk; ++j) v[j] = to_float(e[j]);
  }
}

// The value at row r, column c of a source (Fp8RowSource) whose row belongs to local expert
// `expert`: stored values, or act(gate) * up (gate and up times their channel's weight scale
// when channel_scales is given).
template <class T>
struct PlainRows {
  const T* data;
  int64_t stride;
  __device__ float operator()(int64_t, int64_t r, int64_t c) const {
    return to_float(data[r * stride + c]);
  }
  __device__ void load(int64_t, int64_t r, int64_t c, float (&v)[kFp8Chunk]) const {
    load_chunk(data + r * stride + c, v);
  }
};

// Row r is token row_to_slot[r] / top_k of `data`, or zeros where the entry is not a slot: the
// gather fused into the quantisation.
template <class T>
struct GatheredRows {
  const T* data;
  int64_t stride;
  const int32_t* row_to_slot;
  int64_t top_k;
  int64_t slots;
  __device__ const T* row(int64_t r) const {
    const int64_t token = core::row_token(row_to_slot[r], slots, top_k);
    return token >= 0 ? data + token * stride : nullptr;
  }
  __device__ float operator()(int64_t, int64_t r, int64_t c) const {
    const T* p = row(r);
    return p != nullptr ? to_float(p[c]) : 0.0f;
  }
  __device__ void load(int64_t, int64_t r, int64_t c, float (&v)[kFp8Chunk]) const {
    const T* p = row(r);
    if (p != nullptr) {
      load_chunk(p + c, v);
      return;
    }
#pragma unroll
    for (int j = 0; j < kFp8Chunk; ++j) v[j] = 0.0f;
  }
};

template <class T>
struct GatedRows {
  const T* data;
  int64_t stride;
  int64_t k;
  Activation activation;
  const float* channel_scales;  // [E_local, 2k] or null
  __device__ float operator()(int64_t expert, int64_t r, int64_t c) const {
    const T* row = data + r * stride;
    float gate = to_float(row[c]);
    float up = to_float(row[k + c]);
    if (channel_scales != nullptr) {
      const float* scales = channel_scales + expert * 2 * k;
      gate *= scales[c];
      up *= scales[k + c];
    }
    return gemm::gated_activation(gate, up, activation);
  }
  __device__ void load(int64_t expert, int64_t r, int64_t c, float (&v)[kFp8Chunk]) const {
    const T* row = data + r * stride;
    float gate[kFp8Chunk];
    float up[kFp8Chunk];
    load_chunk(row + c, gate);
    load_chunk(row + k + c, up);
    const float* scales = channel_scales != nullptr ? channel_scales + expert * 2 * k : nullptr;
#pragma unroll
    for (int j = 0; j < kFp8Chunk; ++j) {
      if (scales != nullptr) {
        gate[j] *= scales[c + j];
        up[j] *= scales[k + c + j];
      }
      v[j] = gemm::gated_activation(gate[j], up[j], activation);
    }
  }
};

// Writes one group's scale where Fp8ScaleTarget says; the warp's lanes share the grouped copies.
struct ScaleSink {
  float* row_scales;
  int64_t per_row;
  float* grouped;
  const float* grouped_factor;
  int64_t k_blocks;

  __device__ void put(int64_t expert, gemm::RowRange range, int64_t r, int64_t group, int64_t first,
                      int64_t count, float scale, int lane) const {
    if (row_scales != nullptr && per_row > 0 && lane == 0) row_scales[r * per_row + group] = scale;
    if (grouped == nullptr) return;
    const float value = grouped_factor != nullptr ? scale * grouped_factor[expert] : scale;
    const int64_t last = (first + count - 1) / gemm::kSm90Fp8ScaleBlock;
    for (int64_t kb = first / gemm::kSm90Fp8ScaleBlock + lane; kb <= last; kb += 32) {
      grouped[gemm::sm90_fp8_activation_scale_index(range.begin, range.count, r, kb, k_blocks)] =
          value;
    }
  }
};

}  // namespace ironmoe::cuda
