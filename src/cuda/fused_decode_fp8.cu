// The fused decode path with FP8 experts: Layer::forward's plan, both expert GEMMs with their input
// quantisation, and combine as two kernels, where the staged FP8 path streams weights anyway
// (T * k <= kFusedDecodeMaxSlots rows, far below the Hopper GEMM's kFp8HopperMinRows). At one
// token the staged path launches plan, gate/up, down and combine after route; here:
//   kernel 1, grid (gate/up column blocks, distinct local experts of the batch): every block
//       groups the batch's slots by expert (fused_decode.cuh) and streams its expert's gate and
//       up rows against each of its slots' token row, quantised by the warp as it reads it
//       (gemm/weight_stream_fp8.cuh's ValueRow): h[s] = act(x[s / k] . gate) * (x[s / k] . up)
//       in fp32, one row per slot;
//   kernel 2, grid (blocks of kDownColumns hidden columns), a warp per expert of the batch:
//       y[s][n] = h[s] . w2[e_s][n], h quantised likewise, rounded to the storage dtype, meeting
//       in shared memory; then the combine over them in slot order.
// Every code, scale and sum comes from the staged decode kernels' building blocks in their order
// and the combine's roundings are the combine stage's, so the output equals the staged path's
// with the weight_stream family bit for bit (tests/cuda/test_fused_decode.cpp). h lives in the
// FP8 scratch (core::fp8_scratch for T * k rows), where the staged path keeps it.
// Not fused: fp8_tensor without a static GEMM2 input scale (h's scale is then the largest
// magnitude over every placed slot's h, which no block of kernel 2 sees alone), x rows that are
// not 16-byte readable, and the shapes the staged streaming kernels refuse.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

#include "core/fp8_scales.h"
#include "core/fp8_scratch.h"
#include "cuda/cuda_check.h"
#include "cuda/fused_decode.cuh"
#include "cuda/gemm/gated_activation.cuh"
#include "cuda/gemm/weight_stream.cuh"
#include "cuda/gemm/weight_stream_fp8.cuh"
#include "cuda/gemm/weight_stream_fp8.h"
#include "cuda/launch.cuh"

namespace ironmoe::cuda::fused {
namespace {

using namespace gemm::streaming;
using namespace gemm::streaming_fp8;

// Per warp: 2 columns, 4 weight rows (gate and up), as the staged FP8 gate/up kernel.
constexpr int kGateUpColumns = 2;
// Per block of kernel 2: one weight row per column for each warp, as the bf16 fused down kernel.
constexpr int kDownColumns = 2;
// K strides of weight codes in flight, as the staged decode kernels (weight_stream_fp8.cu).
constexpr int kSteps = 2;
// Blocks of 256 threads per SM (80 registers), as the staged FP8 streaming kernels.
constexpr int kBlocksPerSm = 3;

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
  const float* h_tensor_scale;  // fp8_tensor: GEMM2's static input scale
  float* h;                     // [slots, I] f32
  void* out;                    // [T, H], row stride out_stride
  int64_t out_stride;
  int64_t hidden;
  int64_t intermediate;
  Activation activation;
};

template <class T>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm) decode_gate_up_fp8(Fp8DecodeParams p) {
  wait_for_previous_kernel();
  __shared__ SlotGroups groups;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  if (threadIdx.x < 32) group_slots_counting_skipped(p.batch, groups, lane);
  __syncthreads();
  const int group = static_cast<int>(blockIdx.y);  // block row y: the y-th group
  if (group >= groups.count) return;
  const int64_t inter = p.intermediate;
  const int64_t hidden = p.hidden;
  const int64_t first =
      (static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5)) * kGateUpColumns;
  if (first >= inter) return;
  const int64_t expert = groups.expert[group];
  const core::Fp8ScaleMap map =
      core::fp8_weight_scale_map(p.quant, p.w13_scales, expert, 2 * inter, hidden);
  const uint8_t* matrix = p.w13 + expert * 2 * inter * hidden;
  auto w = weight_runs<2, kGateUpColumns>(map);  // run 0: the gate rows, run 1: the up rows
  set_run(w, 0, matrix, map, first, hidden);
  set_run(w, 1, matrix, map, first + inter, hidden);
  const float x_scale = p.quant == QuantScheme::fp8_tensor ? *p.x_tensor_scale : 0.0f;
  const auto* x = static_cast<const T*>(p.x);
  for (int i = groups.begin[group]; i < groups.begin[group + 1]; ++i) {
    const int slot = groups.order[i];
    const T* row = x + core::slot_token(slot, p.batch.top_k) * p.x_stride;
    float acc[2 * kGateUpColumns] = {};
    stream_fp8_row<kSteps>(w, ValueRow<T>{row, p.quant, x_scale}, static_cast<int>(hidden), acc);
#pragma unroll
    for (int c = 0; c < kGateUpColumns; ++c) {
      const float gate = warp_sum(acc[c]);
      const float up = warp_sum(acc[kGateUpColumns + c]);
      if (lane == c) p.h[slot * inter + first + c] = gemm::gated_activation(gate, up, p.activation);
    }
  }
}

// Block: kDownColumns output columns; its warps take the groups in turn (warp w: groups w, w +
// warps, ...), each streaming its expert's kDownColumns weight rows once per slot of the group.
template <class T>
__global__ void __launch_bounds__(kThreads, kBlocksPerSm)
    decode_down_combine_fp8(Fp8DecodeParams p) {
  wait_for_previous_kernel();
  __shared__ SlotGroups groups;
  __shared__ float slot_weight[kFusedDecodeMaxSlots];
  __shared__ float y[kFusedDecodeMaxSlots][kDownColumns];  // rounded to T, as the stages store it
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int warps = static_cast<int>(blockDim.x) >> 5;
  if (warp == 0) group_slots_with_weights(p.batch, groups, slot_weight, lane);
  __syncthreads();
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kDownColumns;
  const int64_t hidden = p.hidden;
  const int64_t inter = p.intermediate;
  const float h_scale = p.quant == QuantScheme::fp8_tensor ? *p.h_tensor_scale : 0.0f;
  for (int group = warp; group < groups.count; group += warps) {
    const int64_t expert = groups.expert[group];
    const core::Fp8ScaleMap map =
        core::fp8_weight_scale_map(p.quant, p.w2_scales, expert, hidden, inter);
    auto w = weight_runs<1, kDownColumns>(map);
    set_run(w, 0, p.w2 + expert * hidden * inter, map, first, inter);
    for (int i = groups.begin[group]; i < groups.begin[group + 1]; ++i) {
      const int slot = groups.order[i];
      float acc[kDownColumns] = {};
      stream_fp8_row<kSteps>(w, ValueRow<float>{p.h + slot * inter, p.quant, h_scale},
                             static_cast<int>(inter), acc);
#pragma unroll
      for (int c = 0; c < kDownColumns; ++c) {
        const float v = warp_sum(acc[c]);
        if (lane == c) y[slot][c] = to_float(from_float<T>(v));
      }
    }
  }
  __syncthreads();
  combine_columns<T, kDownColumns>(p.batch.tokens, p.batch.top_k, groups.placed, slot_weight, y,
                                   static_cast<T*>(p.out), p.out_stride, first);
}

template <class T>
void launch_kernels(const Fp8DecodeParams& p, cudaStream_t stream) {
  constexpr int64_t kGateUpBlockColumns = kWarps * kGateUpColumns;
  // Never more distinct experts than placed slots or local experts.
  const int64_t local_experts = p.batch.expert_end - p.batch.expert_begin;
  const int slots = p.batch.slots;
  const auto expert_blocks = static_cast<unsigned>(std::min<int64_t>(local_experts, slots));
  const dim3 gate_up_grid(
      static_cast<unsigned>((p.intermediate + kGateUpBlockColumns - 1) / kGateUpBlockColumns),
      expert_blocks);
  launch_overlapped(decode_gate_up_fp8<T>, gate_up_grid, dim3(kThreads), 0, stream, p);
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
  const TensorView& x = s.gather.x;
  const int64_t hidden = config.hidden;
  const int64_t inter = config.intermediate;
  const int64_t local_experts = config.num_local_experts();
  if (config.quant == QuantScheme::fp8_tensor && e.w2_input_scale.data == nullptr) return false;
  if (!gemm::stream_fp8_supports(hidden, inter, e.w13.data, e.w2.data, local_experts)) {
    return false;
  }
  const auto element = static_cast<int64_t>(dtype_size(x.dtype));
  if (!rows_allow_wide_access(x.data, hidden * element, x.strides[0] * element, x.size(0))) {
    return false;
  }
  // As the bf16 path: kernel 2 reads an expert's w2 once per slot, from L2 after the first only
  // when it is small.
  if (p.batch.tokens > 1 && hidden * inter > kFusedDecodeMaxRereadBytes) return false;
  const core::Fp8Scratch scratch = core::fp8_scratch(config.quant, p.batch.slots, hidden, inter);
  if (e.scratch == nullptr || scratch.total_bytes > e.scratch_bytes) return false;
  if (!enqueue) return true;

  p.x = x.data;
  p.x_stride = x.strides[0];
  p.w13 = static_cast<const uint8_t*>(e.w13.data);
  p.w13_scales = e.w13_scale.ptr<const float>();
  p.w2 = static_cast<const uint8_t*>(e.w2.data);
  p.w2_scales = e.w2_scale.ptr<const float>();
  p.quant = config.quant;
  p.x_tensor_scale = e.w13_input_scale.ptr<const float>();
  p.h_tensor_scale = e.w2_input_scale.ptr<const float>();
  p.h = reinterpret_cast<float*>(static_cast<char*>(e.scratch) + scratch.h_values);
  p.out = s.combine.out.data;
  p.out_stride = s.combine.out.strides[0];
  p.hidden = hidden;
  p.intermediate = inter;
  p.activation = e.activation;
  dispatch_float_dtype("Layer::forward", x.dtype, [&](auto element_type) {
    launch_kernels<decltype(element_type)>(p, stream);
  });
  return true;
}

}  // namespace ironmoe::cuda::fused
