#pragma once
// What the fused decode kernels of both weight formats share (fused_decode.cu for bf16 and f16
// weights, fused_decode_fp8.cu for E4M3 weights): the batch's routing, the plan's placement of
// each slot, the slots grouped by local expert in shared memory, the plan's diagnostics, the
// combine over the y values of one block's output columns, and the host-side test of whether a
// Layer::forward call may fuse at all. Slots are placed exactly as the plan places them
// (core/plan_math.h): valid token, local id; anything else (padding rows, ids out of range or
// remote, any duplicates) follows the staged path's rules without reading out of bounds.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "core/plan_math.h"
#include "cuda/cuda_backend.h"
#include "cuda/diagnostics.cuh"
#include "cuda/storage.cuh"

namespace ironmoe::cuda::fused {

inline constexpr unsigned kFullMask = 0xffffffffu;
static_assert(kFusedDecodeMaxSlots <= 32, "one lane of warp 0 per slot");

// The batch as the plan and the combine see it.
struct DecodeBatch {
  const int32_t* topk_ids;  // [T, k]
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

// How the plan places the slot of lane s (s < b.slots), a padding row's slot placing nothing.
__device__ __forceinline__ core::SlotPlace slot_place(const DecodeBatch& b, int lane) {
  if (lane >= b.slots ||
      core::slot_token(lane, b.top_k) >= core::valid_tokens(b.tokens, b.num_valid_tokens))
    return {-1, false, false};
  return core::place_slot(b.topk_ids[lane], b.num_experts, b.expert_begin, b.expert_end);
}

// The plan's diagnostics for the batch: valid-row ids out of [0, E), and in range but remote.
__device__ __forceinline__ void count_skipped_ids(const core::SlotPlace& place,
                                                  int32_t* diagnostics, int lane) {
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
__device__ __forceinline__ void group_slots(const core::SlotPlace& place, SlotGroups& groups,
                                            int lane) {
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

// Warp 0 of a gate/up block: the slots grouped (group_slots), and block (0, 0) adding the
// skipped ids to the diagnostics, as the plan does.
__device__ __forceinline__ void group_slots_counting_skipped(const DecodeBatch& b,
                                                             SlotGroups& groups, int lane) {
  const core::SlotPlace place = slot_place(b, lane);
  group_slots(place, groups, lane);
  if (blockIdx.x == 0 && blockIdx.y == 0 && b.diagnostics != nullptr)
    count_skipped_ids(place, b.diagnostics, lane);
}

// Warp 0 of a down + combine block: the slots grouped (group_slots) and each slot's routing
// weight in slot_weight, its load issued with the id load of slot_place, so the combine does not
// wait on a load of its own.
__device__ __forceinline__ void group_slots_with_weights(const DecodeBatch& b, SlotGroups& groups,
                                                         float* slot_weight, int lane) {
  const float weight = lane < b.slots ? b.topk_weights[lane] : 0.0f;
  group_slots(slot_place(b, lane), groups, lane);
  slot_weight[lane] = weight;
}

// out[t][first + c] = sum over j in order of w[t, j] * y[t k + j][c] for c < kColumns, skipped
// slots adding nothing, as the combine stage sums (padding rows and rows without a placed slot
// get 0). y holds each slot's value already rounded to T, as the stages store it, and
// slot_weight each slot's routing weight. The whole block calls it.
template <class T, int kColumns>
__device__ __forceinline__ void combine_columns(int64_t tokens, int top_k, unsigned placed,
                                                const float* slot_weight,
                                                const float (*y)[kColumns], T* out,
                                                int64_t out_stride, int64_t first) {
  for (int64_t i = threadIdx.x; i < tokens * kColumns; i += blockDim.x) {
    const int64_t token = i / kColumns;
    const int c = static_cast<int>(i % kColumns);
    float sum = 0.0f;
    for (int j = 0; j < top_k; ++j) {
      const int64_t slot = token * top_k + j;
      if ((placed >> slot) & 1u) sum = __fadd_rn(sum, __fmul_rn(slot_weight[slot], y[slot][c]));
    }
    out[token * out_stride + first + c] = from_float<T>(sum);
  }
}

// IRONMOE_FUSED_DECODE=0 turns both fused paths off.
inline bool enabled() {
  static const bool on = [] {
    const char* fused = std::getenv("IRONMOE_FUSED_DECODE");
    return fused == nullptr || std::strcmp(fused, "0") != 0;
  }();
  return on;
}

// The batch of a Layer::forward call when its shape allows a fused path at all (switch on,
// contiguous layout, 1 to kFusedDecodeMaxSlots slots, local experts, an expert kernel choice that
// may stream weights); false otherwise.
inline bool decode_batch(const MoeConfig& config, const LayerStages& s, DecodeBatch* batch) {
  const int64_t tokens = s.gather.x.size(0);
  const int64_t slots = tokens * config.top_k;
  if (!enabled() || config.layout != Layout::contiguous || tokens == 0 ||
      slots > kFusedDecodeMaxSlots || config.num_local_experts() == 0) {
    return false;
  }
  if (config.expert_kernel != ExpertKernel::automatic &&
      config.expert_kernel != ExpertKernel::weight_stream) {
    return false;
  }
  batch->topk_ids = s.plan.topk_ids.ptr<const int32_t>();
  batch->topk_weights = s.combine.topk_weights.ptr<const float>();
  batch->tokens = tokens;
  batch->top_k = static_cast<int>(config.top_k);
  batch->slots = static_cast<int>(slots);
  batch->num_valid_tokens = s.plan.num_valid_tokens;
  batch->num_experts = config.num_experts;
  batch->expert_begin = config.expert_begin;
  batch->expert_end = config.local_expert_end();
  batch->diagnostics = s.plan.diagnostics;
  return true;
}

// The FP8 path (fused_decode_fp8.cu): whether it applies to the call and, when `enqueue`, its
// kernels enqueued on `stream`.
bool fp8_decode(const MoeConfig& config, const LayerStages& s, cudaStream_t stream, bool enqueue);

}  // namespace ironmoe::cuda::fused
