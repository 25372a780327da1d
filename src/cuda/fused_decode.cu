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
// Slots are placed exactly as the plan places them (core/plan_math.h): valid token, local id;
// anything else (padding rows, ids out of range or remote, any duplicates) follows the staged
// path's rules without reading anything out of bounds.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdlib>
#include <cstring>
#include <optional>

#include "core/plan_math.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/diagnostics.cuh"
#include "cuda/gemm/weight_stream.cuh"
#include "cuda/gemm/weight_stream.h"
#include "cuda/launch.cuh"
#include "cuda/storage.cuh"

namespace ironmoe::cuda {
namespace {

using namespace gemm::streaming;

constexpr unsigned kFullMask = 0xffffffffu;
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
static_assert(kFusedDecodeMaxSlots <= 32, "one lane of warp 0 per slot");

struct DecodeParams {
  gemm::WeightStreamArgs ops;  // a = x, read in place; h: one row per slot
  const int32_t* topk_ids;     // [T, k]
  const float* topk_weights;
  int64_t tokens;
  int top_k;
  int slots;  // T * k <= kFusedDecodeMaxSlots
  const int32_t* num_valid_tokens;
  int64_t num_experts;
  int64_t expert_begin;
  int64_t expert_end;
  int32_t* diagnostics;
};

// How the plan places the slot of lane s (s < p.slots), a padding row's slot placing nothing.
__device__ core::SlotPlace slot_place(const DecodeParams& p, int lane) {
  if (lane >= p.slots ||
      core::slot_token(lane, p.top_k) >= core::valid_tokens(p.tokens, p.num_valid_tokens))
    return {-1, false, false};
  return core::place_slot(p.topk_ids[lane], p.num_experts, p.expert_begin, p.expert_end);
}

// The plan's diagnostics for the batch: valid-row ids out of [0, E), and in range but remote.
__device__ void count_skipped_ids(const core::SlotPlace& place, int32_t* diagnostics, int lane) {
  const int out_of_range = __popc(__ballot_sync(kFullMask, place.out_of_range));
  const int remote = __popc(__ballot_sync(kFullMask, place.remote));
  if (lane == 0 && out_of_range > 0) add_diagnostic(diagnostics + kDiagIdOutOfRange, out_of_range);
  if (lane == 0 && remote > 0) add_diagnostic(diagnostics + kDiagIdRemote, remote);
}

// The batch's placed slots grouped by local expert (shared memory): group g holds expert[g] and its
// slots order[begin[g]] .. order[begin[g + 1] - 1], in slot order; groups in order of first slot.
struct SlotGroups {
  unsigned placed;  // bit s: slot s is placed
  int count;
  int expert[kFusedDecodeMaxSlots];
  int begin[kFusedDecodeMaxSlots + 1];
  int order[kFusedDecodeMaxSlots];
};

// Called by warp 0 (lane s handles slot s, placed as `place`); the block synchronises before
// reading `groups`.
__device__ void group_slots(const core::SlotPlace& place, SlotGroups& groups, int lane) {
  const int expert = place.local_expert;
  const unsigned same = __match_any_sync(kFullMask, expert);  // the slots of this lane's expert
  const unsigned lowest = same & (~same + 1u);                // the group's first slot
  const unsigned before = (1u << lane) - 1u;
  const bool first = expert >= 0 && lowest == (1u << lane);
  const unsigned firsts = __ballot_sync(kFullMask, first);
  const int group = __popc(firsts & (lowest - 1u));
  const int size = first ? __popc(same) : 0;
  // Inclusive scan of the group sizes in lane order: a first lane's group begins at end - size.
  int end = size;
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int other = __shfl_up_sync(kFullMask, end, offset);
    if (lane >= offset) end += other;
  }
  if (first) {
    groups.expert[group] = expert;
    groups.begin[group] = end - size;
  }
  if (lane == 31) groups.begin[__popc(firsts)] = end;  // every placed slot
  const unsigned placed = __ballot_sync(kFullMask, expert >= 0);
  if (lane == 0) {
    groups.placed = placed;
    groups.count = __popc(firsts);
  }
  __syncwarp();
  if (expert >= 0) groups.order[groups.begin[group] + __popc(same & before)] = lane;
}

// Three blocks per SM (80 registers) rather than the staged kernel's four: at 64 registers the
// slot bookkeeping spills (ptxas: 144 bytes), and a decode grid (I / 16 x experts, e.g. 48 x 8 at
// qwen3-30b-a3b's T = 1) fits in one wave of 3 x 132 blocks anyway.
template <class T>
__global__ void __launch_bounds__(kThreads, 3) decode_gate_up(DecodeParams p) {
  wait_for_previous_kernel();
  __shared__ SlotGroups groups;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  if (threadIdx.x < 32) {
    const core::SlotPlace place = slot_place(p, lane);
    group_slots(place, groups, lane);
    if (blockIdx.x == 0 && blockIdx.y == 0 && p.diagnostics != nullptr)
      count_skipped_ids(place, p.diagnostics, lane);
  }
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
  const int top_k = p.top_k;
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
  if (warp == 0) {
    // Issued with the id load of slot_place, so the combine does not wait on a load of its own.
    const float weight = lane < p.slots ? p.topk_weights[lane] : 0.0f;
    group_slots(slot_place(p, lane), groups, lane);
    slot_weight[lane] = weight;
  }
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
  // out[t][first + c] = sum over j in order of w[t, j] * y[t k + j][c], skipped slots adding
  // nothing, as the combine stage sums (padding rows and rows without a placed slot get 0).
  auto* out = static_cast<T*>(p.ops.out);
  for (int64_t i = threadIdx.x; i < p.tokens * kDownColumns; i += blockDim.x) {
    const int64_t token = i / kDownColumns;
    const int c = static_cast<int>(i % kDownColumns);
    float sum = 0.0f;
    for (int j = 0; j < p.top_k; ++j) {
      const int64_t slot = token * p.top_k + j;
      if ((groups.placed >> slot) & 1u)
        sum = __fadd_rn(sum, __fmul_rn(slot_weight[slot], y[slot][c]));
    }
    out[token * p.ops.out_stride + first + c] = from_float<T>(sum);
  }
}

bool fused_decode_enabled() {
  static const bool enabled = [] {
    const char* fused = std::getenv("IRONMOE_FUSED_DECODE");
    return fused == nullptr || std::strcmp(fused, "0") != 0;
  }();
  return enabled;
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
  const int64_t tokens = s.gather.x.size(0);
  const int64_t slots = tokens * config.top_k;
  const int64_t local_experts = config.num_local_experts();
  if (!fused_decode_enabled() || config.quant != QuantScheme::none ||
      config.layout != Layout::contiguous || tokens == 0 ||
      slots > kFusedDecodeMaxSlots || local_experts == 0) {
    return std::nullopt;
  }
  if (config.expert_kernel != ExpertKernel::automatic &&
      config.expert_kernel != ExpertKernel::weight_stream) {
    return std::nullopt;
  }
  DecodeParams p{};
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
  p.topk_ids = s.plan.topk_ids.ptr<const int32_t>();
  p.topk_weights = s.combine.topk_weights.ptr<const float>();
  p.tokens = tokens;
  p.top_k = static_cast<int>(config.top_k);
  p.slots = static_cast<int>(slots);
  p.num_valid_tokens = s.plan.num_valid_tokens;
  p.num_experts = config.num_experts;
  p.expert_begin = config.expert_begin;
  p.expert_end = config.local_expert_end();
  p.diagnostics = s.plan.diagnostics;
  return p;
}

template <class T>
void launch(const DecodeParams& p, cudaStream_t stream) {
  constexpr int64_t kGateUpBlockColumns = kWarps * kGateUpColumns;
  // Never more distinct experts than placed slots or local experts.
  const int64_t local_experts = p.expert_end - p.expert_begin;
  const auto expert_blocks =
      static_cast<unsigned>(local_experts < p.slots ? local_experts : p.slots);
  const dim3 gate_up_grid(
      static_cast<unsigned>((p.ops.intermediate + kGateUpBlockColumns - 1) / kGateUpBlockColumns),
      expert_blocks);
  launch_overlapped(decode_gate_up<T>, gate_up_grid, dim3(kThreads), 0, stream, p);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
  // A warp per group of slots, at most kWarps (the rest take turns): few slots, few warps.
  const int down_warps = p.slots < kWarps ? p.slots : kWarps;
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
  return decode_params(config, s).has_value();
}

bool try_fused_decode(const MoeConfig& config, const LayerStages& s, void* stream) {
  const std::optional<DecodeParams> p = decode_params(config, s);
  if (!p) return false;
  const cudaStream_t cuda_stream = as_cuda_stream(stream);
  if (p->ops.dtype == DType::bf16) {
    launch<__nv_bfloat16>(*p, cuda_stream);
  } else {
    launch<__half>(*p, cuda_stream);
  }
  return true;
}

}  // namespace ironmoe::cuda
