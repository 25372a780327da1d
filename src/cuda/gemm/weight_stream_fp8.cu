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
// Two shapes of pass over a warp's weight rows (a template parameter pair), picked on the host by
// the number of rows:
//   decode (R <= kFp8DecodeMaxRows): one token row per pass and two warp-wide K strides of weight
//     codes loaded before any is used (as the bf16 kernels' kStepsPerLoad). An expert rarely gets
//     two rows there (a second pass then finds its weights in L2). With one stride a warp had a
//     single 16-byte load per weight row in flight and waited out an HBM round trip per stride
//     (session 13 under ncu, qwen3-30b-a3b at T = 1: gate/up 2.1 TB/s, down 1.1 TB/s, against
//     4.26 TB/s copies).
//   otherwise: two token rows per pass (not the bf16 kernels' four: rows rarely share an expert
//     more than that at these sizes) and one stride; two of each spill at 80 registers.
// Per lane every sum adds its 16-groups in increasing k either way, so both give the same bits.
constexpr int64_t kFp8DecodeMaxRows = 32;
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

// The activation rows of one pass over an expert's rows (from `pass`, at most kRowsPerPass; past
// the last, the last again, never read): their codes and scale rows; returns how many are real.
// Activation scales are per tensor, per row, or per row and 128-code block.
template <int kRowsPerPass>
__device__ __forceinline__ int pass_rows(const Fp8GemmArgs& p, const RowRange& range, int64_t pass,
                                         const uint8_t* (&a)[kRowsPerPass],
                                         const float* (&as)[kRowsPerPass]) {
  const int rows_here =
      static_cast<int>(range.count - pass < kRowsPerPass ? range.count - pass : kRowsPerPass);
#pragma unroll
  for (int r = 0; r < kRowsPerPass; ++r) {
    const int64_t row = range.begin + pass + min(r, rows_here - 1);
    a[r] = p.a + row * p.k;
    as[r] = p.a_scales.row_base(row);
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

// acc[q * kPerRun + i][r] = sum over K of (run q's row i) . a_r for up to kRowsPerPass token rows,
// each 16-group scaled by its activation and weight scales. Per lane the groups are added in
// increasing k, one K stride after the other, whatever kSteps is.
template <int kRowsPerPass, int kSteps, int kRuns, int kPerRun>
__device__ __forceinline__ void stream_fp8_rows(const WeightRuns<kRuns, kPerRun>& w,
                                                const uint8_t* const (&a)[kRowsPerPass],
                                                const float* const (&as)[kRowsPerPass],
                                                bool a_per_block, int rows_here, int k_size,
                                                float (&acc)[kRuns * kPerRun][kRowsPerPass]) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  for (int k0 = lane * kCodes; k0 < k_size; k0 += kSteps * kCodeStride) {
    uint4 wv[kSteps][kRuns * kPerRun];
#pragma unroll
    for (int step = 0; step < kSteps; ++step) {
      const int k = k0 + step * kCodeStride;
#pragma unroll
      for (int q = 0; q < kRuns; ++q) {
#pragma unroll
        for (int i = 0; i < kPerRun; ++i) {
          wv[step][q * kPerRun + i] =
              k < k_size ? __ldg(reinterpret_cast<const uint4*>(w.first[q] + i * k_size + k))
                         : make_uint4(0, 0, 0, 0);
        }
      }
    }
#pragma unroll
    for (int step = 0; step < kSteps; ++step) {
      const int k = k0 + step * kCodeStride;
      if (k >= k_size) break;
      const int w_block = w.per_block ? k >> 7 : 0;
      const int a_block = a_per_block ? k >> 7 : 0;
#pragma unroll
      for (int r = 0; r < kRowsPerPass; ++r) {
        if (r < rows_here) {
          const uint4 av = __ldg(reinterpret_cast<const uint4*>(a[r] + k));
          const float a_scale = as[r][a_block];
#pragma unroll
          for (int q = 0; q < kRuns; ++q) {
#pragma unroll
            for (int i = 0; i < kPerRun; ++i) {
              const float w_scale = w.scales[q][i * w.scale_row_step + w_block];
              acc[q * kPerRun + i][r] = fmaf(dot16(wv[step][q * kPerRun + i], av),
                                             a_scale * w_scale, acc[q * kPerRun + i][r]);
            }
          }
        }
      }
    }
  }
}

template <int kRowsPerPass, int kSteps>
__global__ void __launch_bounds__(kThreads, kFp8BlocksPerSm)
    stream_fp8_gate_up_kernel(ExpertRows rows, Fp8GemmArgs p) {
  extern __shared__ int active[];
  int64_t expert = 0, first = 0;
  RowRange range;
  if (!warp_task<kGateUpColumnsFp8>(rows, p.n, active, &expert, &range, &first)) return;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  constexpr int kRows = 2 * kGateUpColumnsFp8;
  const core::Fp8ScaleMap map =
      core::fp8_weight_scale_map(p.quant, p.w_scales, expert, 2 * p.n, p.k);
  const uint8_t* matrix = p.w + expert * 2 * p.n * p.k;
  auto w = weight_runs<2, kGateUpColumnsFp8>(map);  // run 0: the gate rows, run 1: the up rows
  set_run(w, 0, matrix, map, first, p.k);
  set_run(w, 1, matrix, map, first + p.n, p.k);
  const bool a_per_block = p.a_scales.k_group != 0;
  auto* h = static_cast<float*>(p.out);
  for (int64_t pass = 0; pass < range.count; pass += kRowsPerPass) {
    const uint8_t* a[kRowsPerPass];
    const float* as[kRowsPerPass];
    const int rows_here = pass_rows<kRowsPerPass>(p, range, pass, a, as);
    float acc[kRows][kRowsPerPass] = {};
    stream_fp8_rows<kRowsPerPass, kSteps>(w, a, as, a_per_block, rows_here, static_cast<int>(p.k),
                                          acc);
#pragma unroll
    for (int c = 0; c < kGateUpColumnsFp8; ++c) {
#pragma unroll
      for (int r = 0; r < kRowsPerPass; ++r) {
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

template <class T, int kRowsPerPass, int kSteps>
__global__ void __launch_bounds__(kThreads, kFp8BlocksPerSm)
    stream_fp8_down_kernel(ExpertRows rows, Fp8GemmArgs p) {
  extern __shared__ int active[];
  int64_t expert = 0, first = 0;
  RowRange range;
  if (!warp_task<kDownColumnsFp8>(rows, p.n, active, &expert, &range, &first)) return;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const core::Fp8ScaleMap map = core::fp8_weight_scale_map(p.quant, p.w_scales, expert, p.n, p.k);
  auto w = weight_runs<1, kDownColumnsFp8>(map);
  set_run(w, 0, p.w + expert * p.n * p.k, map, first, p.k);
  const bool a_per_block = p.a_scales.k_group != 0;
  auto* out = static_cast<T*>(p.out);
  for (int64_t pass = 0; pass < range.count; pass += kRowsPerPass) {
    const uint8_t* a[kRowsPerPass];
    const float* as[kRowsPerPass];
    const int rows_here = pass_rows<kRowsPerPass>(p, range, pass, a, as);
    float acc[kDownColumnsFp8][kRowsPerPass] = {};
    stream_fp8_rows<kRowsPerPass, kSteps>(w, a, as, a_per_block, rows_here, static_cast<int>(p.k),
                                          acc);
#pragma unroll
    for (int c = 0; c < kDownColumnsFp8; ++c) {
#pragma unroll
      for (int r = 0; r < kRowsPerPass; ++r) {
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
  const bool decode = rows.num_rows <= kFp8DecodeMaxRows;
  if (args.gated) {
    auto* kernel = decode ? stream_fp8_gate_up_kernel<1, 2> : stream_fp8_gate_up_kernel<2, 1>;
    kernel<<<grid_for(rows, args.n, kGateUpColumnsFp8), kThreads, list_bytes, stream>>>(rows, args);
  } else {
    dispatch_float_dtype("experts", args.out_dtype, [&](auto element) {
      using T = decltype(element);
      auto* kernel = decode ? stream_fp8_down_kernel<T, 1, 2> : stream_fp8_down_kernel<T, 2, 1>;
      kernel<<<grid_for(rows, args.n, kDownColumnsFp8), kThreads, list_bytes, stream>>>(rows, args);
    });
  }
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
}

}  // namespace ironmoe::cuda::gemm
