// The fused decode path: plan, gather, experts and combine of Layer::forward as two kernels, for
// the few slots (T * k <= kFusedDecodeMaxSlots) where the experts stage streams weights anyway.
// At one token the staged path spends about a quarter of the layer on the launches and ramps of
// its small plan, gather and combine kernels (docs/performance.md); here:
//   kernel 1, grid (gate/up column blocks, distinct local experts of the batch):
//       every block reads the k ids of every token and finds its expert and that expert's slots;
//       h[s] = act(x[s / k] . gate) * (x[s / k] . up) for those slots, x read in place (no
//       gather); block (0, 0) adds the skipped ids to the diagnostics, as the plan does.
//   kernel 2, grid (blocks of 2 hidden columns), a warp per expert of the batch (up to 8):
//       y[s][n] = h[s] . w2[e_s][n] for every placed slot, rounded to the storage dtype, meets in
//       shared memory; out[t][n] = sum over j, in order, of w[t, j] * y[t k + j][n], as the combine
//       stage sums.
// h lives in the layer's intermediate buffer, one row per slot. Both kernels compute each dot
// product with the weight-streaming building blocks (gemm/weight_stream.cuh) in the staged
// kernels' order, and the combine with the same roundings, so the result equals the staged
// path's with the weight_stream family bit for bit (tests/cuda/test_fused_decode.cpp).
// The batch, the slots' placement and grouping and the combine are fused_decode.cuh's, shared
// with the FP8 path (fused_decode_fp8.cu), which try_fused_decode tries first.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <optional>

#include "core/plan_math.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/fused_decode.cuh"
#include "cuda/gemm/weight_stream.cuh"
#include "cuda/gemm/weight_stream.h"
#include "cuda/launch.cuh"
#include "cuda/storage.cuh"

namespace ironmoe::cuda {
namespace {

using namespace gemm::streaming;
using namespace fused;

// Output columns of a down block: one weight row each. Two, not the staged kernel's four: an A/B
// of 1, 2 and 4 columns with 2 or 4 K strides in flight (H100, 2026-11-24) found 2 x 2 the only
// shape without spills and 0.5-3 us faster at T = 1 (qwen3-30b-a3b 42.0 -> 41.2 us).
constexpr int kDownColumns = 2;
// Slots of one expert per pass of its weight rows: one, not the staged kernel's four. A decode
// batch rarely gives an expert two slots (a second pass then finds the rows in L2), and with four
// the kernel spilled (ptxas: 104 bytes) and ran at 1.56 TB/s under ncu (qwen3-30b-a3b, T = 1).
constexpr int kDownRowsPerPass = 1;
// H is a multiple of kVec (weight_stream_supports), so the column blocks tile it exactly.
static_assert(kVec % kDownColumns == 0);

struct DecodeParams {
  gemm::WeightStreamArgs ops;  // a = x, read in place; h: one row per slot
  DecodeBatch batch;
};

// Three blocks per SM (80 registers) rather than the staged kernel's four: at 64 registers the
// slot bookkeeping spills (ptxas: 144 bytes), and a decode grid (I / 16 x experts, e.g. 48 x 8 at
// qwen3-30b-a3b's T = 1) fits in one wave of 3 x 132 blocks anyway.
template <class T>
__global__ void __launch_bounds__(kThreads, 3) decode_gate_up(DecodeParams p) {
  wait_for_previous_kernel();
  __shared__ SlotGroups groups;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  if (threadIdx.x < 32) group_slots_counting_skipped(p.batch, groups, lane);
  __syncthreads();
  const int group = static_cast<int>(blockIdx.y);  // block row y: the y-th group
  if (group >= groups.count) return;
  const int64_t first =
      (static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5)) * kGateUpColumns;
  if (first >= p.ops.intermediate) return;
  // The row lambdas capture copies: taking the address of a kernel parameter would copy all of
  // `p` to local memory.
  const int* slots = groups.order + groups.begin[group];
  const auto* x = static_cast<const T*>(p.ops.a);
  auto* h = static_cast<T*>(p.ops.h);
  const int64_t x_stride = p.ops.a_stride;
  const int64_t h_stride = p.ops.h_stride;
  const int top_k = p.batch.top_k;
  gate_up_columns<T, kGateUpColumns>(
      static_cast<const T*>(p.ops.w13) + groups.expert[group] * p.ops.w13_expert_stride, first,
      p.ops.intermediate, p.ops.hidden, groups.begin[group + 1] - groups.begin[group],
      [=](int64_t r) { return x + core::slot_token(slots[r], top_k) * x_stride; },
      [=](int64_t r) { return h + slots[r] * h_stride; }, p.ops.activation);
}

// Block: kDownColumns output columns; its warps take the groups in turn (warp w: groups w, w +
// warps, ...), each streaming its expert's kDownColumns weight rows once per pass of up to
// kDownRowsPerPass of the group's slots; each sum is formed as in the staged down kernel. The y
// values meet in shared memory, and the combine runs over them in slot order.
//
// What is read before wait_for_previous_kernel(): the batch's ids and weights, written by route
// (or the caller) before decode_gate_up passed its own wait, so complete before this grid could
// launch (cuda/launch.cuh), and the first strides of the w2 rows (stream_rows' before_x). h,
// which decode_gate_up writes, is read after the wait, and out (which may be x) written after
// it. Launched overlapped, the blocks so stream their weights while decode_gate_up's last blocks
// finish.
template <class T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) decode_down_combine(DecodeParams p) {
  __shared__ SlotGroups groups;
  __shared__ float slot_weight[kFusedDecodeMaxSlots];
  __shared__ float y[kFusedDecodeMaxSlots][kDownColumns];  // rounded to T, as the stages store it
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int warps = static_cast<int>(blockDim.x) >> 5;
  if (warp == 0) group_slots_with_weights(p.batch, groups, slot_weight, lane);
  __syncthreads();
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kDownColumns;
  const auto* h = static_cast<const T*>(p.ops.h);
  const int64_t h_stride = p.ops.h_stride;
  float(*y_rows)[kDownColumns] = y;
  for (int group = warp; group < groups.count; group += warps) {
    const int* slots = groups.order + groups.begin[group];
    down_columns<T, kDownColumns, kDownRowsPerPass>(
        static_cast<const T*>(p.ops.w2) + groups.expert[group] * p.ops.w2_expert_stride, first,
        p.ops.intermediate, groups.begin[group + 1] - groups.begin[group],
        [=](int64_t r) { return h + slots[r] * h_stride; },
        [=](int64_t r, int c, float v) { y_rows[slots[r]][c] = to_float(from_float<T>(v)); },
        [] { wait_for_previous_kernel(); });
  }
  wait_for_previous_kernel();  // for the warps without a group: out is written below
  __syncthreads();
  combine_columns<T, kDownColumns>(p.batch.tokens, p.batch.top_k, groups.placed, slot_weight, y,
                                   static_cast<T*>(p.ops.out), p.ops.out_stride, first);
}

gemm::WeightStreamArgs streamed_operands(const LayerStages& s) {
  gemm::WeightStreamArgs args;
  args.a = s.gather.x.data;  // the fused kernels read x in place
  args.a_stride = s.gather.x.strides[0];
  args.w13 = s.experts.w13.data;
  args.w13_expert_stride = s.experts.w13.strides[0];
  args.h = s.experts.intermediate.data;
  args.h_stride = s.experts.intermediate.strides[0];
  args.w2 = s.experts.w2.data;
  args.w2_expert_stride = s.experts.w2.strides[0];
  args.out = s.combine.out.data;
  args.out_stride = s.combine.out.strides[0];
  args.hidden = s.gather.x.size(1);
  args.intermediate = s.experts.w13.size(1) / 2;
  args.dtype = s.gather.x.dtype;
  args.activation = s.experts.activation;
  return args;
}

// The fused kernels' parameters, or nothing when the path does not apply to this call.
std::optional<DecodeParams> decode_params(const MoeConfig& config, const LayerStages& s) {
  DecodeParams p{};
  if (config.quant != QuantScheme::none || !decode_batch(config, s, &p.batch)) return std::nullopt;
  const int64_t tokens = p.batch.tokens;
  const int64_t slots = p.batch.slots;
  const int64_t local_experts = config.num_local_experts();
  p.ops = streamed_operands(s);
  if (!gemm::weight_stream_supports(p.ops, local_experts)) return std::nullopt;
  const int64_t w2_bytes =
      config.hidden * config.intermediate * static_cast<int64_t>(dtype_size(config.dtype));
  if (tokens > 1 && w2_bytes > kFusedDecodeMaxRereadBytes) return std::nullopt;
  if (config.expert_kernel == ExpertKernel::automatic &&
      !gemm::weight_stream_preferred(slots, local_experts, config.hidden,
                                     gemm::has_fast_memory(s.gather.x.device.index))) {
    return std::nullopt;
  }
  return p;
}

template <class T>
void launch(const DecodeParams& p, cudaStream_t stream) {
  constexpr int64_t kGateUpBlockColumns = kWarps * kGateUpColumns;
  // Never more distinct experts than placed slots or local experts.
  const int64_t local_experts = p.batch.expert_end - p.batch.expert_begin;
  const int slots = p.batch.slots;
  const auto expert_blocks = static_cast<unsigned>(local_experts < slots ? local_experts : slots);
  const dim3 gate_up_grid(
      static_cast<unsigned>((p.ops.intermediate + kGateUpBlockColumns - 1) / kGateUpBlockColumns),
      expert_blocks);
  launch_overlapped(decode_gate_up<T>, gate_up_grid, dim3(kThreads), 0, stream, p);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
  // A warp per group of slots, at most kWarps (the rest take turns): few slots, few warps.
  const int down_warps = slots < kWarps ? slots : kWarps;
  const dim3 down_grid(static_cast<unsigned>(p.ops.hidden / kDownColumns));
  // Always overlapped, whatever IRONMOE_OVERLAP_LAUNCHES says: the down blocks start on their
  // weights as decode_gate_up's blocks retire (decode_down_combine's comment). Measured on an
  // H200 against a plain launch (session 16, docs/performance.md): -5.0% and -5.8% for the layer
  // at T = 1 on qwen3-30b-a3b and qwen3-next-80b-a3b, -3.3% at T = 2, within +-1% elsewhere.
  launch_with_overlap(true, decode_down_combine<T>, down_grid, dim3(32 * down_warps), 0, stream, p);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
}

}  // namespace

bool fused_decode_applies(const MoeConfig& config, const LayerStages& s) {
  return decode_params(config, s).has_value() || fused::fp8_decode(config, s, nullptr, false);
}

bool try_fused_decode(const MoeConfig& config, const LayerStages& s, void* stream) {
  const cudaStream_t cuda_stream = as_cuda_stream(stream);
  if (fused::fp8_decode(config, s, cuda_stream, true)) return true;
  const std::optional<DecodeParams> p = decode_params(config, s);
  if (!p) return false;
  if (p->ops.dtype == DType::bf16) {
    launch<__nv_bfloat16>(*p, cuda_stream);
  } else {
    launch<__half>(*p, cuda_stream);
  }
  return true;
}

}  // namespace ironmoe::cuda
