// Weight-streaming expert GEMMs on E4M3 codes (weight_stream_fp8.h).
#include <cuda_fp8.h>

#include <algorithm>

#include "cuda/cuda_check.h"
#include "cuda/fp8.cuh"
#include "cuda/gemm/weight_stream.cuh"
#include "cuda/gemm/weight_stream.h"
#include "cuda/gemm/weight_stream_fp8.h"
#include "cuda/storage.cuh"

namespace ironmoe::cuda::gemm {
namespace {

using namespace streaming;

constexpr int kCodes = 16;                // codes per 16-byte load
constexpr int kCodeStride = 32 * kCodes;  // K covered by one warp-wide load
constexpr int kGateUpColumnsFp8 = 2;      // gate/up: 4 weight rows a warp
constexpr int kDownColumnsFp8 = 4;        // down: 4 weight rows a warp
// Three blocks of 256 threads per SM (80 registers): at four (64 registers) the per-row scale
// pointers spilled (ptxas: 164 bytes); a decode grid (e.g. 48 x 8 blocks for qwen3-30b-a3b's
// gate/up at one token) still fits one wave of 3 x 132.
constexpr int kFp8BlocksPerSm = 3;
// Token rows per pass over a weight row: two, not the bf16 kernels' four, for the same reason (a
// decode batch rarely gives an expert more than one or two rows).
constexpr int kFp8RowsPerPass = 2;
static_assert(core::kFp8Block % kCodes == 0, "a 16-group never straddles a scale block");
static_assert(core::kFp8Block == 128, "RowScales::at indexes blocks as k >> 7");

// The scales of one matrix row along K: row_base[k >> 7] (block) or row_base[0].
struct RowScales {
  const float* base;
  bool per_block;
  __device__ float at(int64_t k) const { return base[per_block ? (k >> 7) : 0]; }
};

__device__ __forceinline__ RowScales row_scales(const core::Fp8ScaleMap& map, int64_t row) {
  const float* base = map.data + (map.row_group != 0 ? row / map.row_group * map.row_stride : 0);
  return {base, map.k_group != 0};
}

// The activation rows of one pass over an expert's rows (from `pass`, at most kFp8RowsPerPass;
// past the last, the last again, never read): their codes and scales; returns how many are real.
__device__ __forceinline__ int pass_rows(const Fp8GemmArgs& p, const RowRange& range, int64_t pass,
                                         const uint8_t* (&a)[kFp8RowsPerPass],
                                         RowScales (&as)[kFp8RowsPerPass]) {
  const int rows_here =
      static_cast<int>(range.count - pass < kFp8RowsPerPass ? range.count - pass : kFp8RowsPerPass);
#pragma unroll
  for (int r = 0; r < kFp8RowsPerPass; ++r) {
    const int64_t row = range.begin + pass + min(r, rows_here - 1);
    a[r] = p.a + row * p.k;
    as[r] = row_scales(p.a_scales, row);
  }
  return rows_here;
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
// each 16-group scaled by its activation and weight scales.
template <int kRows>
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
        const uint4 av = __ldg(reinterpret_cast<const uint4*>(a[r] + k));
        const float a_scale = as[r].at(k);
#pragma unroll
        for (int j = 0; j < kRows; ++j)
          acc[j][r] = fmaf(dot16(wv[j], av), a_scale * ws[j].at(k), acc[j][r]);
      }
    }
  }
}

__global__ void __launch_bounds__(kThreads, kFp8BlocksPerSm)
    stream_fp8_gate_up_kernel(ExpertRows rows, Fp8GemmArgs p) {
  extern __shared__ int active[];
  int64_t expert = 0, first = 0;
  RowRange range;
  if (!warp_task<kGateUpColumnsFp8>(rows, p.n, active, &expert, &range, &first)) return;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  constexpr int kRows = 2 * kGateUpColumnsFp8;
  const uint8_t* w[kRows];
  RowScales ws[kRows];
  const core::Fp8ScaleMap map =
      core::fp8_weight_scale_map(p.quant, p.w_scales, expert, 2 * p.n, p.k);
  const uint8_t* matrix = p.w + expert * 2 * p.n * p.k;
#pragma unroll
  for (int c = 0; c < kGateUpColumnsFp8; ++c) {
    for (int half = 0; half < 2; ++half) {
      const int64_t row = first + c + half * p.n;  // gate rows, then up rows
      w[half * kGateUpColumnsFp8 + c] = matrix + row * p.k;
      ws[half * kGateUpColumnsFp8 + c] = row_scales(map, row);
    }
  }
  auto* h = static_cast<float*>(p.out);
  for (int64_t pass = 0; pass < range.count; pass += kFp8RowsPerPass) {
    const uint8_t* a[kFp8RowsPerPass];
    RowScales as[kFp8RowsPerPass];
    const int rows_here = pass_rows(p, range, pass, a, as);
    float acc[kRows][kFp8RowsPerPass] = {};
    stream_fp8_rows<kRows>(w, ws, a, as, rows_here, p.k, acc);
#pragma unroll
    for (int c = 0; c < kGateUpColumnsFp8; ++c) {
#pragma unroll
      for (int r = 0; r < kFp8RowsPerPass; ++r) {
        if (r < rows_here) {
          const float gate = warp_sum(acc[c][r]);
          const float up = warp_sum(acc[kGateUpColumnsFp8 + c][r]);
          if (lane == r * kGateUpColumnsFp8 + c)
            h[(range.begin + pass + r) * p.out_stride + first + c] =
                gated_activation(gate, up, p.activation);
        }
      }
    }
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads, kFp8BlocksPerSm)
    stream_fp8_down_kernel(ExpertRows rows, Fp8GemmArgs p) {
  extern __shared__ int active[];
  int64_t expert = 0, first = 0;
  RowRange range;
  if (!warp_task<kDownColumnsFp8>(rows, p.n, active, &expert, &range, &first)) return;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const uint8_t* w[kDownColumnsFp8];
  RowScales ws[kDownColumnsFp8];
  const core::Fp8ScaleMap map = core::fp8_weight_scale_map(p.quant, p.w_scales, expert, p.n, p.k);
#pragma unroll
  for (int c = 0; c < kDownColumnsFp8; ++c) {
    w[c] = p.w + (expert * p.n + first + c) * p.k;
    ws[c] = row_scales(map, first + c);
  }
  auto* out = static_cast<T*>(p.out);
  for (int64_t pass = 0; pass < range.count; pass += kFp8RowsPerPass) {
    const uint8_t* a[kFp8RowsPerPass];
    RowScales as[kFp8RowsPerPass];
    const int rows_here = pass_rows(p, range, pass, a, as);
    float acc[kDownColumnsFp8][kFp8RowsPerPass] = {};
    stream_fp8_rows<kDownColumnsFp8>(w, ws, a, as, rows_here, p.k, acc);
#pragma unroll
    for (int c = 0; c < kDownColumnsFp8; ++c) {
#pragma unroll
      for (int r = 0; r < kFp8RowsPerPass; ++r) {
        if (r < rows_here) {
          const float v = warp_sum(acc[c][r]);
          if (lane == r * kDownColumnsFp8 + c)
            out[(range.begin + pass + r) * p.out_stride + first + c] = from_float<T>(v);
        }
      }
    }
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

dim3 grid_for(const ExpertRows& rows, int64_t columns, int columns_per_warp) {
  const int64_t block_columns = static_cast<int64_t>(kWarps) * columns_per_warp;
  return dim3(static_cast<unsigned>((columns + block_columns - 1) / block_columns),
              static_cast<unsigned>(std::min(rows.num_experts, rows.num_rows)));
}

}  // namespace

bool stream_fp8_supports(int64_t hidden, int64_t intermediate, const void* w13, const void* w2,
                         int64_t local_experts) {
  // Whole warps' columns: gate/up columns in pairs, down columns in fours.
  return hidden % kCodes == 0 && intermediate % kCodes == 0 && aligned16(w13) && aligned16(w2) &&
         local_experts <= kWeightStreamMaxExperts;
}

void stream_fp8_gemm(const ExpertRows& rows, const Fp8GemmArgs& args, cudaStream_t stream) {
  if (rows.num_experts == 0 || rows.num_rows == 0) return;
  const size_t list_bytes = static_cast<size_t>(rows.num_experts) * sizeof(int);
  if (args.gated) {
    stream_fp8_gate_up_kernel<<<grid_for(rows, args.n, kGateUpColumnsFp8), kThreads, list_bytes,
                                stream>>>(rows, args);
  } else {
    dispatch_float_dtype("experts", args.out_dtype, [&](auto element) {
      using T = decltype(element);
      stream_fp8_down_kernel<T>
          <<<grid_for(rows, args.n, kDownColumnsFp8), kThreads, list_bytes, stream>>>(rows, args);
    });
  }
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
}

}  // namespace ironmoe::cuda::gemm
