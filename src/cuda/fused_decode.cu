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

#include "core/check.h"
#include "core/plan_math.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
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
  const void* x;
  int64_t x_stride;
  const int32_t* topk_ids;  // [T, k]
  const float* topk_weights;
  int64_t tokens;
  int top_k;
  int slots;  // T * k <= kFusedDecodeMaxSlots
  const int32_t* num_valid_tokens;
  int64_t num_experts;
  int64_t expert_begin;
  int64_t expert_end;
  const void* w13;
  int64_t w13_expert_stride;
  const void* w2;
  int64_t w2_expert_stride;
  void* h;  // [slots, I]
  int64_t h_stride;
  void* out;
  int64_t out_stride;
  int64_t hidden;
  int64_t intermediate;
  Activation activation;
  int32_t* diagnostics;
};

// Lane s of the calling warp (s < p.slots): the slot's local expert, or -1 when the plan would not
// place it (padding token, id outside the local range).
__device__ int placed_expert(const DecodeParams& p, int lane) {
  if (lane >= p.slots) return -1;
  const int64_t valid = core::valid_tokens(p.tokens, p.num_valid_tokens);
  if (core::slot_token(lane, p.top_k) >= valid) return -1;
  return core::local_expert_of(p.topk_ids[lane], p.expert_begin, p.expert_end);
}

// The plan's diagnostics for the batch: valid-row ids out of [0, E), and in range but remote.
__device__ void count_skipped_ids(const DecodeParams& p, int lane) {
  bool out_of_range = false;
  bool remote = false;
  if (lane < p.slots &&
      core::slot_token(lane, p.top_k) < core::valid_tokens(p.tokens, p.num_valid_tokens)) {
    const int32_t id = p.topk_ids[lane];
    out_of_range = id < 0 || id >= p.num_experts;
    remote = !out_of_range && core::local_expert_of(id, p.expert_begin, p.expert_end) < 0;
  }
  const int out_of_range_count = __popc(__ballot_sync(kFullMask, out_of_range));
  const int remote_count = __popc(__ballot_sync(kFullMask, remote));
  if (lane == 0 && out_of_range_count > 0)
    atomicAdd(p.diagnostics + kDiagIdOutOfRange, out_of_range_count);
  if (lane == 0 && remote_count > 0) atomicAdd(p.diagnostics + kDiagIdRemote, remote_count);
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

// Called by warp 0 (lane s handles slot s); the block synchronises before reading `groups`.
__device__ void group_slots(const DecodeParams& p, SlotGroups& groups, int lane) {
  const int expert = placed_expert(p, lane);
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
    group_slots(p, groups, lane);
    if (blockIdx.x == 0 && blockIdx.y == 0 && p.diagnostics != nullptr) count_skipped_ids(p, lane);
  }
  __syncthreads();
  const int group = static_cast<int>(blockIdx.y);  // block row y: the y-th group
  const int64_t first =
      (static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x >> 5)) * kGateUpColumns;
  if (group >= groups.count || first >= p.intermediate) return;
  // The row lambdas capture copies: taking the address of a kernel parameter would copy all of
  // `p` to local memory.
  const int* slots = groups.order + groups.begin[group];
  const auto* x = static_cast<const T*>(p.x);
  auto* h = static_cast<T*>(p.h);
  const int64_t x_stride = p.x_stride;
  const int64_t h_stride = p.h_stride;
  const int top_k = p.top_k;
  gate_up_columns<T, kGateUpColumns>(
      static_cast<const T*>(p.w13) + groups.expert[group] * p.w13_expert_stride, first,
      p.intermediate, p.hidden, groups.begin[group + 1] - groups.begin[group],
      [=](int64_t r) { return x + core::slot_token(slots[r], top_k) * x_stride; },
      [=](int64_t r) { return h + slots[r] * h_stride; }, p.activation);
}

// Block: kDownColumns output columns; its warps take the groups in turn (warp w: groups w, w +
// warps, ...), each streaming its expert's kDownColumns weight rows once per pass of up to
// kDownRowsPerPass of the group's slots; each sum is formed as in the staged down kernel. The y
// values meet in shared memory, and the combine runs over them in slot order.
template <class T>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm) decode_down_combine(DecodeParams p) {
  wait_for_previous_kernel();
  __shared__ SlotGroups groups;
  __shared__ float y[kFusedDecodeMaxSlots][kDownColumns];  // rounded to T, as the stages store it
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  const int warps = static_cast<int>(blockDim.x) >> 5;
  if (warp == 0) group_slots(p, groups, lane);
  __syncthreads();
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kDownColumns;
  const auto* w2 = static_cast<const T*>(p.w2);
  const auto* h = static_cast<const T*>(p.h);
  for (int group = warp; group < groups.count; group += warps) {
    const T* weights[kDownColumns];
#pragma unroll
    for (int c = 0; c < kDownColumns; ++c)
      weights[c] = w2 + groups.expert[group] * p.w2_expert_stride + (first + c) * p.intermediate;
    const int begin = groups.begin[group];
    const int count = groups.begin[group + 1] - begin;
    for (int pass = 0; pass < count; pass += kDownRowsPerPass) {
      const int rows_here = min(kDownRowsPerPass, count - pass);
      const T* rows[kDownRowsPerPass];
#pragma unroll
      for (int r = 0; r < kDownRowsPerPass; ++r)
        rows[r] = h + groups.order[begin + pass + min(r, rows_here - 1)] * p.h_stride;
      float acc[kDownColumns][kDownRowsPerPass] = {};
      stream_rows<T, kDownColumns, kDownRowsPerPass>(weights, rows, rows_here, p.intermediate, acc);
#pragma unroll
      for (int c = 0; c < kDownColumns; ++c) {
#pragma unroll
        for (int r = 0; r < kDownRowsPerPass; ++r) {
          if (r < rows_here) {
            const float v = to_float(from_float<T>(warp_sum(acc[c][r])));
            if (lane == r * kDownColumns + c) y[groups.order[begin + pass + r]][c] = v;
          }
        }
      }
    }
  }
  __syncthreads();
  // out[t][first + c] = sum over j in order of w[t, j] * y[t k + j][c], skipped slots adding
  // nothing, as the combine stage sums (padding rows and rows without a placed slot get 0).
  for (int64_t i = threadIdx.x; i < p.tokens * kDownColumns; i += blockDim.x) {
    const int64_t token = i / kDownColumns;
    const int c = static_cast<int>(i % kDownColumns);
    float sum = 0.0f;
    for (int j = 0; j < p.top_k; ++j) {
      const int64_t slot = token * p.top_k + j;
      if ((groups.placed >> slot) & 1u)
        sum = __fadd_rn(sum, __fmul_rn(p.topk_weights[slot], y[slot][c]));
    }
    static_cast<T*>(p.out)[token * p.out_stride + first + c] = from_float<T>(sum);
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

template <class T>
void launch(const DecodeParams& p, cudaStream_t stream) {
  constexpr int64_t kGateUpBlockColumns = kWarps * kGateUpColumns;
  // Never more distinct experts than placed slots or local experts.
  const int64_t local_experts = p.expert_end - p.expert_begin;
  const auto expert_blocks =
      static_cast<unsigned>(local_experts < p.slots ? local_experts : p.slots);
  const dim3 gate_up_grid(
      static_cast<unsigned>((p.intermediate + kGateUpBlockColumns - 1) / kGateUpBlockColumns),
      expert_blocks);
  launch_overlapped(decode_gate_up<T>, gate_up_grid, dim3(kThreads), 0, stream, p);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
  // A warp per group of slots, at most kWarps (the rest take turns): few slots, few warps.
  const int down_warps = p.slots < kWarps ? p.slots : kWarps;
  const dim3 down_grid(static_cast<unsigned>(p.hidden / kDownColumns));
  launch_overlapped(decode_down_combine<T>, down_grid, dim3(32 * down_warps), 0, stream, p);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
}

}  // namespace

bool fused_decode_applies(const MoeConfig& config, const LayerStages& s) {
  const int64_t tokens = s.gather.x.size(0);
  const int64_t slots = tokens * config.top_k;
  const int64_t local_experts = config.num_local_experts();
  if (!fused_decode_enabled() || config.layout != Layout::contiguous || tokens == 0 ||
      slots > kFusedDecodeMaxSlots || local_experts == 0) {
    return false;
  }
  if (config.expert_kernel != ExpertKernel::automatic &&
      config.expert_kernel != ExpertKernel::weight_stream) {
    return false;
  }
  const gemm::WeightStreamArgs operands = streamed_operands(s);
  if (!gemm::weight_stream_supports(operands, local_experts)) return false;
  return config.expert_kernel == ExpertKernel::weight_stream ||
         gemm::weight_stream_preferred(slots, local_experts, config.hidden);
}

void fused_decode(const MoeConfig& config, const LayerStages& s, void* stream) {
  const gemm::WeightStreamArgs operands = streamed_operands(s);
  DecodeParams p{};
  p.x = operands.a;
  p.x_stride = operands.a_stride;
  p.topk_ids = s.plan.topk_ids.ptr<const int32_t>();
  p.topk_weights = s.combine.topk_weights.ptr<const float>();
  p.tokens = s.gather.x.size(0);
  p.top_k = static_cast<int>(config.top_k);
  p.slots = static_cast<int>(p.tokens * config.top_k);
  p.num_valid_tokens = s.plan.num_valid_tokens;
  p.num_experts = config.num_experts;
  p.expert_begin = config.expert_begin;
  p.expert_end = config.local_expert_end();
  p.w13 = operands.w13;
  p.w13_expert_stride = operands.w13_expert_stride;
  p.w2 = operands.w2;
  p.w2_expert_stride = operands.w2_expert_stride;
  p.h = operands.h;
  p.h_stride = operands.h_stride;
  p.out = operands.out;
  p.out_stride = operands.out_stride;
  p.hidden = operands.hidden;
  p.intermediate = operands.intermediate;
  p.activation = operands.activation;
  p.diagnostics = s.plan.diagnostics;
  IRONMOE_CHECK(p.slots >= 1 && p.slots <= kFusedDecodeMaxSlots &&
                    gemm::weight_stream_supports(operands, p.expert_end - p.expert_begin),
                "Layer::forward", "internal: fused decode called outside fused_decode_applies");
  const cudaStream_t cuda_stream = as_cuda_stream(stream);
  if (operands.dtype == DType::bf16) {
    launch<__nv_bfloat16>(p, cuda_stream);
  } else {
    launch<__half>(p, cuda_stream);
  }
}

}  // namespace ironmoe::cuda
