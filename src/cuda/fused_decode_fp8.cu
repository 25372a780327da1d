// The fused decode path with FP8 experts: Layer::forward's plan, gather, both quantisations, both
// expert GEMMs and combine as three kernels, where the staged FP8 path would run the weight-
// streaming kernels anyway (T * k <= kFusedDecodeMaxSlots, so every automatic choice streams).
// At one token the staged path launches plan, gather, a quantisation, gate/up, a quantisation,
// down and combine (7 kernels, 8-9 with fp8_tensor's dynamic scale); here:
//   kernel 1, grid (gate/up column blocks, distinct local experts of the batch): every block
//       quantises the valid tokens' x rows into shared memory (codes and scales, as the staged
//       path quantises the gathered copies of those rows), then streams its expert's gate and up
//       rows against them: h[s] = act(x[s / k] . gate) * (x[s / k] . up) in fp32, one row per slot;
//   kernel 2, one block: quantises the placed slots' h rows (fp8_tensor's dynamic scale over
//       exactly those rows, as the staged path takes it over the experts' rows);
//   kernel 3, grid (blocks of kDownColumns hidden columns), a warp per expert of the batch:
//       y[s][n] = h[s] . w2[e_s][n] rounded to the storage dtype, meeting in shared memory, then
//       the combine over them in slot order.
// Every code, scale and sum comes from the staged kernels' building blocks in their order
// (fp8_quantize_warp.cuh, gemm/weight_stream_fp8.cuh, fused_decode.cuh's combine), so the output
// equals the staged path's with the weight_stream family bit for bit
// (tests/cuda/test_fused_decode_fp8.cpp). h, its codes and its scales live in the FP8 scratch
// (core::fp8_scratch for T * k rows), where the staged path keeps them.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "core/fp8_scales.h"
#include "core/fp8_scratch.h"
#include "cuda/cuda_check.h"
#include "cuda/fp8_quantize_warp.cuh"
#include "cuda/fp8_row_sources.cuh"
#include "cuda/fused_decode.cuh"
#include "cuda/gemm/weight_stream_fp8.cuh"
#include "cuda/gemm/weight_stream_fp8.h"
#include "cuda/launch.cuh"

namespace ironmoe::cuda::fused {
namespace {

using namespace gemm::streaming;

constexpr int kGateUpColumns = 2;  // per warp: 4 weight rows, as the staged FP8 gate/up kernel
// Per block, each warp streaming these weight rows of its expert: two, not the staged kernel's
// four, at which this kernel spilled (ptxas: 28 bytes; none at two, 72 registers).
constexpr int kDownColumns = 2;
// Blocks per SM at 256 threads (80 registers), as the staged FP8 streaming kernels.
constexpr int kBlocksPerSm = 3;
// The quantised x rows of every valid token live in each gate/up block's shared memory: up to
// this many bytes of codes and scales (qwen3-30b-a3b's H = 2048 up to 19 tokens, deepseek-v3's
// 7168 up to 5). Larger batches take the staged path.
constexpr size_t kMaxTokenBytes = 40 * 1024;

struct Fp8DecodeParams {
  DecodeBatch batch;
  const void* x;  // [T, H] in the storage dtype, row stride x_stride
  int64_t x_stride;
  const uint8_t* w13;  // [E_local, 2I, H] codes
  const float* w13_scales;
  const uint8_t* w2;  // [E_local, H, I] codes
  const float* w2_scales;
  QuantScheme quant;
  const float* x_tensor_scale;  // fp8_tensor: GEMM1's input scale (static or the layer's)
  const float* h_tensor_scale;  // fp8_tensor: GEMM2's input scale (static, or h_dynamic_scale)
  float* h_dynamic_scale;       // fp8_tensor without a static GEMM2 scale: kernel 2 writes it
  float* h_values;  // [slots, I] f32
  uint8_t* h_codes;  // [slots, I]
  float* h_scales;   // [slots, fp8_activation_scales_per_row(I)]
  void* out;         // [T, H], row stride out_stride
  int64_t out_stride;
  int64_t hidden;
  int64_t intermediate;
  Activation activation;
};

// Scale floats kept per token row in shared memory: fp8_block's row of block scales, else one
// (fp8_channel's row scale, fp8_tensor's copy of the tensor scale).
__host__ __device__ int64_t token_scale_count(QuantScheme quant, int64_t hidden) {
  return quant == QuantScheme::fp8_block ? core::fp8_blocks(hidden) : 1;
}

__host__ __device__ int64_t token_codes_bytes(int64_t tokens, int64_t hidden) {
  return (tokens * hidden + 15) / 16 * 16;
}

size_t token_bytes(QuantScheme quant, int64_t tokens, int64_t hidden) {
  return static_cast<size_t>(token_codes_bytes(tokens, hidden) +
                             tokens * token_scale_count(quant, hidden) * 4);
}

// The scales of an activation row along K, as row_scales() reads a staged scale map.
__device__ __forceinline__ RowScales activation_row_scales(QuantScheme quant, const float* row,
                                                           const float* tensor_scale) {
  if (quant == QuantScheme::fp8_tensor) return {tensor_scale, false};
  return {row, quant == QuantScheme::fp8_block};
}

// codes[t] ([tokens, H]) and scales[t] (token_scale_count each) for the valid tokens t, a warp per
// scale group, each group encoded as the staged quantisation encodes that token's gathered rows.
template <class T>
__device__ __forceinline__ void quantize_tokens(const Fp8DecodeParams& p, int64_t valid,
                                                uint8_t* codes, float* scales) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const bool block = p.quant == QuantScheme::fp8_block;
  const int64_t hidden = p.hidden;
  const int64_t group = block ? core::kFp8Block : hidden;
  const int64_t groups = block ? core::fp8_blocks(hidden) : 1;
  const int64_t per_token = token_scale_count(p.quant, hidden);
  const PlainRows<T> rows{static_cast<const T*>(p.x), p.x_stride};
  const float* given = p.quant == QuantScheme::fp8_tensor ? p.x_tensor_scale : nullptr;
  for (int64_t task = warp; task < valid * groups; task += kWarps) {
    const int64_t t = task / groups;
    const int64_t g = task % groups;
    const int64_t first = g * group;
    const float scale = quantize_group(rows, 0, t, codes + t * hidden, first,
                                       min(group, hidden - first), given, lane);
    if (lane == 0) scales[t * per_token + g] = scale;
  }
}

template <class T>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) decode_gate_up_fp8(Fp8DecodeParams p) {
  wait_for_previous_kernel();
  extern __shared__ __align__(16) uint8_t token_codes[];
  __shared__ SlotGroups groups;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  if (threadIdx.x < 32) {
    const core::SlotPlace place = slot_place(p.batch, lane);
    group_slots(place, groups, lane);
    if (blockIdx.x == 0 && blockIdx.y == 0 && p.batch.diagnostics != nullptr)
      count_skipped_ids(place, p.batch.diagnostics, lane);
  }
  const int64_t hidden = p.hidden;
  auto* token_scales =
      reinterpret_cast<float*>(token_codes + token_codes_bytes(p.batch.tokens, hidden));
  quantize_tokens<T>(p, core::valid_tokens(p.batch.tokens, p.batch.num_valid_tokens), token_codes,
                     token_scales);
  __syncthreads();
  const int group = static_cast<int>(blockIdx.y);  // block row y: the y-th group
  if (group >= groups.count) return;
  const int64_t inter = p.intermediate;
  const int64_t first =
      (static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5)) * kGateUpColumns;
  if (first >= inter) return;
  const int64_t expert = groups.expert[group];
  constexpr int kRows = 2 * kGateUpColumns;
  const uint8_t* w[kRows];
  RowScales ws[kRows];
  const core::Fp8ScaleMap map =
      core::fp8_weight_scale_map(p.quant, p.w13_scales, expert, 2 * inter, hidden);
  const uint8_t* matrix = p.w13 + expert * 2 * inter * hidden;
#pragma unroll
  for (int c = 0; c < kGateUpColumns; ++c) {
    for (int half = 0; half < 2; ++half) {
      const int64_t row = first + c + half * inter;  // gate rows, then up rows
      w[half * kGateUpColumns + c] = matrix + row * hidden;
      ws[half * kGateUpColumns + c] = row_scales(map, row);
    }
  }
  const int* slots = groups.order + groups.begin[group];
  const int count = groups.begin[group + 1] - groups.begin[group];
  const int64_t per_token = token_scale_count(p.quant, hidden);
  const int top_k = p.batch.top_k;
  float* h = p.h_values;
  for (int pass = 0; pass < count; pass += kFp8RowsPerPass) {
    const int rows_here = min(count - pass, kFp8RowsPerPass);
    const uint8_t* a[kFp8RowsPerPass];
    RowScales as[kFp8RowsPerPass];
#pragma unroll
    for (int r = 0; r < kFp8RowsPerPass; ++r) {
      const int64_t token = core::slot_token(slots[pass + min(r, rows_here - 1)], top_k);
      a[r] = token_codes + token * hidden;
      as[r] = activation_row_scales(p.quant, token_scales + token * per_token,
                                    token_scales + token * per_token);
    }
    float acc[kRows][kFp8RowsPerPass] = {};
    stream_fp8_rows<kRows, true>(w, ws, a, as, rows_here, hidden, acc);
    const int* pass_slots = slots + pass;
    store_pass_sums<kGateUpColumns, true>(acc, rows_here, p.activation,
                                          [=](int r, int c, float v) {
                                            h[pass_slots[r] * inter + first + c] = v;
                                          });
  }
}

// One block: the placed slots' h rows into codes and scales, a warp per scale group.
__global__ void __launch_bounds__(kThreads) decode_quantize_h(Fp8DecodeParams p) {
  wait_for_previous_kernel();
  __shared__ unsigned placed;
  __shared__ float warp_amax[kWarps];
  __shared__ float tensor_scale;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  if (warp == 0) {
    const unsigned bits = __ballot_sync(kFullMask, slot_place(p.batch, lane).local_expert >= 0);
    if (lane == 0) placed = bits;
  }
  __syncthreads();
  const int64_t inter = p.intermediate;
  const PlainRows<float> rows{p.h_values, inter};
  const int slots = p.batch.slots;
  const float* given = nullptr;
  if (p.quant == QuantScheme::fp8_tensor) {
    given = p.h_tensor_scale;
    if (p.h_dynamic_scale != nullptr) {
      // The largest magnitude over the placed rows, NaN skipped: the staged amax pass's value
      // (a max, whatever the order).
      float amax = 0.0f;
      for (int s = warp; s < slots; s += kWarps) {
        if ((placed >> s) & 1u) amax = fmaxf(amax, row_amax_skipping_nan(rows, 0, s, inter, lane));
      }
      if (lane == 0) warp_amax[warp] = amax;
      __syncthreads();
      if (threadIdx.x == 0) {
        float m = 0.0f;
        for (int w = 0; w < kWarps; ++w) m = fmaxf(m, warp_amax[w]);
        tensor_scale = fp8_dynamic_scale(m);
        *p.h_dynamic_scale = tensor_scale;  // for kernel 3
      }
      __syncthreads();
      given = &tensor_scale;
    }
  }
  const bool block = p.quant == QuantScheme::fp8_block;
  const int64_t group = block ? core::kFp8Block : inter;
  const int64_t groups = block ? core::fp8_blocks(inter) : 1;
  const int64_t per_row = core::fp8_activation_scales_per_row(p.quant, inter);
  for (int64_t task = warp; task < slots * groups; task += kWarps) {
    const int64_t s = task / groups;
    if (((placed >> s) & 1u) == 0) continue;
    const int64_t g = task % groups;
    const int64_t first = g * group;
    const float scale =
        quantize_group(rows, 0, s, p.h_codes + s * inter, first, min(group, inter - first), given,
                       lane);
    if (lane == 0 && per_row > 0) p.h_scales[s * per_row + g] = scale;
  }
}

// Block: kDownColumns output columns; its warps take the groups in turn, each streaming its
// expert's kDownColumns weight rows once per pass of up to kFp8RowsPerPass of the group's slots.
template <class T>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    decode_down_combine_fp8(Fp8DecodeParams p) {
  wait_for_previous_kernel();
  __shared__ SlotGroups groups;
  __shared__ float y[kFusedDecodeMaxSlots][kDownColumns];  // rounded to T, as the stages store it
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int warps = static_cast<int>(blockDim.x) >> 5;
  if (warp == 0) group_slots(slot_place(p.batch, lane), groups, lane);
  __syncthreads();
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kDownColumns;
  const int64_t hidden = p.hidden;
  const int64_t inter = p.intermediate;
  const int64_t per_row = core::fp8_activation_scales_per_row(p.quant, inter);
  float(*y_rows)[kDownColumns] = y;
  for (int group = warp; group < groups.count; group += warps) {
    const int64_t expert = groups.expert[group];
    const uint8_t* w[kDownColumns];
    RowScales ws[kDownColumns];
    const core::Fp8ScaleMap map =
        core::fp8_weight_scale_map(p.quant, p.w2_scales, expert, hidden, inter);
#pragma unroll
    for (int c = 0; c < kDownColumns; ++c) {
      w[c] = p.w2 + (expert * hidden + first + c) * inter;
      ws[c] = row_scales(map, first + c);
    }
    const int* slots = groups.order + groups.begin[group];
    const int count = groups.begin[group + 1] - groups.begin[group];
    for (int pass = 0; pass < count; pass += kFp8RowsPerPass) {
      const int rows_here = min(count - pass, kFp8RowsPerPass);
      const uint8_t* a[kFp8RowsPerPass];
      RowScales as[kFp8RowsPerPass];
#pragma unroll
      for (int r = 0; r < kFp8RowsPerPass; ++r) {
        const int64_t slot = slots[pass + min(r, rows_here - 1)];
        a[r] = p.h_codes + slot * inter;
        as[r] = activation_row_scales(p.quant, p.h_scales + slot * per_row, p.h_tensor_scale);
      }
      float acc[kDownColumns][kFp8RowsPerPass] = {};
      stream_fp8_rows<kDownColumns>(w, ws, a, as, rows_here, inter, acc);
      const int* pass_slots = slots + pass;
      store_pass_sums<kDownColumns, false>(
          acc, rows_here, p.activation, [=](int r, int c, float v) {
            y_rows[pass_slots[r]][c] = to_float(from_float<T>(v));
          });
    }
  }
  __syncthreads();
  combine_columns<T, kDownColumns>(p.batch, groups.placed, y, static_cast<T*>(p.out),
                                   p.out_stride, first);
}

template <class T>
void launch_kernels(const Fp8DecodeParams& p, size_t token_smem, cudaStream_t stream) {
  constexpr int64_t kGateUpBlockColumns = kWarps * kGateUpColumns;
  // Never more distinct experts than placed slots or local experts.
  const int64_t local_experts = p.batch.expert_end - p.batch.expert_begin;
  const int slots = p.batch.slots;
  const auto expert_blocks = static_cast<unsigned>(std::min<int64_t>(local_experts, slots));
  const dim3 gate_up_grid(
      static_cast<unsigned>((p.intermediate + kGateUpBlockColumns - 1) / kGateUpBlockColumns),
      expert_blocks);
  launch_overlapped(decode_gate_up_fp8<T>, gate_up_grid, dim3(kThreads), token_smem, stream, p);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
  launch_overlapped(decode_quantize_h, dim3(1), dim3(kThreads), 0, stream, p);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
  // A warp per group of slots, at most kWarps (the rest take turns): few slots, few warps.
  const int down_warps = std::min(slots, kWarps);
  const dim3 down_grid(static_cast<unsigned>(p.hidden / kDownColumns));
  launch_overlapped(decode_down_combine_fp8<T>, down_grid, dim3(32 * down_warps), 0, stream, p);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
}

}  // namespace

bool fp8_decode(const MoeConfig& config, const LayerStages& s, cudaStream_t stream, bool enqueue) {
  Fp8DecodeParams p{};
  if (config.quant == QuantScheme::none || !decode_batch(config, s, &p.batch)) return false;
  const ExpertArgs& e = s.experts;
  const int64_t hidden = config.hidden;
  const int64_t inter = config.intermediate;
  const int64_t tokens = p.batch.tokens;
  // Where the staged stage would not stream (its kernel choice, experts_fp8.cu: every automatic
  // choice below 128 rows streams when the shapes allow it), or the batch's rows do not fit.
  if (!gemm::stream_fp8_supports(hidden, inter, e.w13.data, e.w2.data,
                                 config.num_local_experts())) {
    return false;
  }
  const size_t token_smem = token_bytes(config.quant, tokens, hidden);
  const core::Fp8Scratch scratch = core::fp8_scratch(config.quant, p.batch.slots, hidden, inter);
  if (token_smem > kMaxTokenBytes || e.scratch == nullptr || scratch.total_bytes > e.scratch_bytes)
    return false;
  if (!enqueue) return true;

  char* base = static_cast<char*>(e.scratch);
  p.x = s.gather.x.data;
  p.x_stride = s.gather.x.strides[0];
  p.w13 = static_cast<const uint8_t*>(e.w13.data);
  p.w13_scales = e.w13_scale.ptr<const float>();
  p.w2 = static_cast<const uint8_t*>(e.w2.data);
  p.w2_scales = e.w2_scale.ptr<const float>();
  p.quant = config.quant;
  p.x_tensor_scale = e.w13_input_scale.ptr<const float>();
  if (config.quant == QuantScheme::fp8_tensor && e.w2_input_scale.data == nullptr)
    p.h_dynamic_scale = reinterpret_cast<float*>(base + scratch.tensor_scales) + 1;
  p.h_tensor_scale = p.h_dynamic_scale != nullptr ? p.h_dynamic_scale
                                                  : e.w2_input_scale.ptr<const float>();
  p.h_values = reinterpret_cast<float*>(base + scratch.h_values);
  p.h_codes = reinterpret_cast<uint8_t*>(base + scratch.h_codes);
  p.h_scales = reinterpret_cast<float*>(base + scratch.h_scales);
  p.out = s.combine.out.data;
  p.out_stride = s.combine.out.strides[0];
  p.hidden = hidden;
  p.intermediate = inter;
  p.activation = e.activation;
  dispatch_float_dtype("Layer::forward", s.gather.x.dtype, [&](auto element) {
    launch_kernels<decltype(element)>(p, token_smem, stream);
  });
  return true;
}

}  // namespace ironmoe::cuda::fused
