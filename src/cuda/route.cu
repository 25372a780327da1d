// Stage 1 on CUDA: router logits -> k experts and weights per token, one warp per token.
//
// Selection follows core/routing_rules.h exactly (core::ranks_before: larger key first, NaN as
// -inf, ties to the lower index), so the ids match the CPU backend bit for bit and come out in
// rank order. Lane l holds experts l, l+32, l+64, ...; two ways to find the row's k best, chosen
// on the host by E alone (never by T):
//   E <= 1024 (route_topk_kernel): the lane keeps its keys in registers, sorted once into rank
//     order; k rounds of "each lane proposes its head, a warp-wide arg-best picks the winner, its
//     owner drops it". Round j yields the j-th best expert.
//   E > 1024 (route_topk_long_kernel): each lane keeps its own core::TopK (experts offered in
//     increasing order, as TopK requires; any expert of the row's top k is in its lane's top k)
//     and k rounds of a warp-wide arg-best over the lists' heads merge the 32 lists.
// grouped_topk keeps the topk_groups best groups; experts of other groups are not candidates.
// Where each group is whole register slots of route_topk_kernel (group size a multiple of 32, as
// DeepSeek-V3's 8 groups of 32; E <= 512), the groups are scored in registers: slot i of every lane
// is experts 32 i .. 32 i + 31, so a group's two best keys are warp reductions. Otherwise the keys
// are staged in shared memory and one lane scores each group.
// Weights: core::softmax_prob / sigmoid_weight of the selected logits, then core::finalize_weights,
// computed identically by every lane. Softmax statistics use warp reductions, so weights may
// differ from the CPU's sequential sums in the last bits; ids do not. Rows >= *num_valid_tokens
// (read on the device) get ids -1 and weights 0; rows without a usable logit get experts 0..k-1.
// Diagnostics: one atomicAdd per row with non-finite logits (counting only).
#include <climits>
#include <string>

#include "core/check.h"
#include "core/plan_math.h"
#include "core/routing_rules.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/diagnostics.cuh"
#include "cuda/launch.cuh"
#include "cuda/storage.cuh"

namespace ironmoe::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = 4;
constexpr int kRouteThreads = kWarpsPerBlock * kWarpSize;
constexpr unsigned kFullMask = 0xffffffffu;
// route_topk_kernel holds up to this many keys per lane in registers (E <= 32 * 32).
constexpr int kMaxKeysPerLane = 32;

struct RouteParams {
  const void* logits;
  int64_t row_stride;  // elements
  int64_t tokens;
  int num_experts;
  int top_k;
  RoutingKind kind;
  bool renormalize;
  float scaling;
  int num_groups;     // grouped_topk
  int topk_groups;    // grouped_topk
  const float* bias;  // grouped_topk, may be null (zeros)
  const int32_t* num_valid_tokens;
  int32_t* diagnostics;
  int32_t* topk_ids;
  float* topk_weights;
};

// Shared memory one warp uses for grouped_topk: E selection keys, then per group its score and
// whether it is kept.
IRONMOE_HD size_t grouped_shared_floats(int num_experts, int num_groups) {
  return static_cast<size_t>(num_experts) + 2 * static_cast<size_t>(num_groups);
}

// Whether route_topk_kernel scores grouped_topk's groups in registers: every group is a whole
// number of its register slots (slot i holds experts 32 i .. 32 i + 31 across the warp), and
// there are at most 16 slots (at 32 the per-slot scores went to local memory).
constexpr int kMaxSlotsForRegisterGroups = 16;
bool groups_in_registers(const RouteParams& p) {
  return p.kind == RoutingKind::grouped_topk &&
         p.num_experts <= kMaxSlotsForRegisterGroups * kWarpSize &&
         (p.num_experts / p.num_groups) % kWarpSize == 0;
}

// The warp reductions of routing, in two forms that give the same results: kRedux through the
// warp-reduce unit (redux.sync, one instruction per 32-bit integer reduction; a rank key's max as
// the max of its core::rank_key_bits; the arg-best as the max key, then the min index among the
// lanes holding it), otherwise by xor-shuffle butterflies. Which is faster depends on the kernel
// around them: under ncu on an H200 (session 16) redux took route_topk_kernel<float, 4>
// (E <= 128) from 5.1 / 4.4 to 4.5 / 3.8 us (1009 -> 765 instructions) but
// route_topk_kernel<float, 16> (E = 512) from 8.0 / 7.5 to 9.5 / 8.5 us, more cycles with fewer
// instructions. The float sum is a butterfly in both (its order sets the weights' bits).
// Merges the two largest values of two sets, (best, second) and (other_best, other_second), into
// (best, second).
__device__ __forceinline__ void merge_top_two(unsigned& best, unsigned& second, unsigned other_best,
                                              unsigned other_second) {
  second = ::max(::min(best, other_best), ::max(second, other_second));
  best = ::max(best, other_best);
}

template <bool kRedux>
struct WarpReduce;

template <>
struct WarpReduce<true> {
  // The index of the best (key, index) among the lanes' candidates (core::ranks_before), in
  // every lane. An exhausted lane offers (-inf, INT_MAX): it can only tie with a real -inf key,
  // and then loses on the index.
  __device__ static int best_index(float key, int index) {
    const unsigned mine = core::rank_key_bits(key);
    const unsigned top = __reduce_max_sync(kFullMask, mine);
    return static_cast<int>(
        __reduce_min_sync(kFullMask, mine == top ? static_cast<unsigned>(index) : UINT_MAX));
  }
  __device__ static int sum(int v) { return __reduce_add_sync(kFullMask, v); }
  // The two largest of the lanes' values (a tie for the largest gives it twice).
  __device__ static void top_two(unsigned v, unsigned& best, unsigned& second) {
    best = __reduce_max_sync(kFullMask, v);
    const bool tied = __popc(__ballot_sync(kFullMask, v == best)) >= 2;
    second = tied ? best : __reduce_max_sync(kFullMask, v == best ? 0u : v);
  }
  // Of rank keys (never NaN).
  __device__ static float max(float v) {
    return core::rank_key_from_bits(__reduce_max_sync(kFullMask, core::rank_key_bits(v)));
  }
};

template <>
struct WarpReduce<false> {
  // Keys are rank keys (never NaN), so ranks_before is a total order and both partners of each
  // exchange agree.
  __device__ static int best_index(float key, int index) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      const float other_key = __shfl_xor_sync(kFullMask, key, offset);
      const int other_index = __shfl_xor_sync(kFullMask, index, offset);
      if (core::ranks_before(other_key, other_index, key, index)) {
        key = other_key;
        index = other_index;
      }
    }
    return index;
  }
  __device__ static int sum(int v) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
      v += __shfl_xor_sync(kFullMask, v, offset);
    return v;
  }
  __device__ static void top_two(unsigned v, unsigned& best, unsigned& second) {
    best = v;
    second = 0u;
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
      const unsigned other_best = __shfl_xor_sync(kFullMask, best, offset);
      const unsigned other_second = __shfl_xor_sync(kFullMask, second, offset);
      merge_top_two(best, second, other_best, other_second);
    }
  }
  __device__ static float max(float v) {
    for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
      v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
    return v;
  }
};

__device__ float warp_sum(float v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Merges the lanes' rank-ordered lists; lane j < k returns the j-th best expert of the warp.
__device__ int merge_lane_lists(const core::TopK& local, int k, int lane) {
  int head = 0;
  int mine = -1;
  for (int j = 0; j < k; ++j) {
    const bool has = head < local.count;
    // an exhausted lane ranks after every expert
    const int best = WarpReduce<false>::best_index(has ? local.keys[head] : core::kNegInf,
                                                   has ? local.ids[head] : INT_MAX);
    if (has && local.ids[head] == best) ++head;
    if (lane == j) mine = best;
  }
  return mine;
}

// grouped_topk: scores the groups from the keys in shared memory and marks the topk_groups best
// (a group is kept when fewer than topk_groups groups rank before it).
__device__ void mark_best_groups(const float* keys, float* group_scores, float* group_kept,
                                 int num_groups, int group_size, int topk_groups, int lane) {
  for (int g = lane; g < num_groups; g += kWarpSize) {
    core::TopK top2(group_size >= 2 ? 2 : 1);
    for (int e = g * group_size; e < (g + 1) * group_size; ++e) top2.offer(keys[e], e);
    group_scores[g] = core::group_score(top2.keys[0], top2.keys[top2.count - 1], group_size);
  }
  __syncwarp();
  for (int g = lane; g < num_groups; g += kWarpSize) {
    int ahead = 0;
    for (int h = 0; h < num_groups; ++h)
      ahead += core::ranks_before(group_scores[h], h, group_scores[g], g) ? 1 : 0;
    group_kept[g] = ahead < topk_groups ? 1.0f : 0.0f;
  }
  __syncwarp();
}

// What pass 1 learns about a row besides the keys.
struct RowScan {
  core::SoftmaxStats stats;  // partial per lane until reduced
  int non_finite = 0;
  bool usable = false;

  __device__ void add(float v) {
    non_finite += isfinite(v) ? 0 : 1;
    usable = usable || core::is_usable_logit(v);
    stats.max = fmaxf(stats.max, core::rank_key(v));
    stats.num_pos_inf += v == INFINITY ? 1 : 0;
  }
};

__device__ __forceinline__ float expert_bias(const RouteParams& p, int e) {
  return p.kind == RoutingKind::grouped_topk && p.bias != nullptr ? p.bias[e] : 0.0f;
}

// `bias` is expert_bias(p, e), read by the caller.
__device__ __forceinline__ float selection_key(const RouteParams& p, float v, float bias) {
  if (p.kind != RoutingKind::grouped_topk) return core::rank_key(v);
  return core::grouped_selection_key(v, bias);
}

// Padding rows (token >= *num_valid_tokens): ids -1, weights 0. Returns whether the row is one.
__device__ bool write_if_padding(const RouteParams& p, int64_t token, int lane) {
  if (token < core::valid_tokens(p.tokens, p.num_valid_tokens)) return false;
  if (lane < p.top_k) {
    p.topk_ids[token * p.top_k + lane] = -1;
    p.topk_weights[token * p.top_k + lane] = 0.0f;
  }
  return true;
}

// Counts the row's non-finite logits and writes a degenerate row (no usable logit: experts
// 0..k-1, uniform weights). Returns whether the row still needs a selection.
template <bool kRedux>
__device__ bool count_and_check_usable(const RouteParams& p, int64_t token, RowScan& scan,
                                       int lane) {
  const int non_finite = WarpReduce<kRedux>::sum(scan.non_finite);
  if (lane == 0 && non_finite > 0 && p.diagnostics != nullptr)
    add_diagnostic(p.diagnostics + kDiagNonFiniteLogit, non_finite);
  if (__any_sync(kFullMask, scan.usable)) return true;
  float weights[core::kMaxTopK];
  core::finalize_weights(weights, p.top_k, true, p.renormalize, p.scaling);
  if (lane < p.top_k) {
    p.topk_ids[token * p.top_k + lane] = lane;
    p.topk_weights[token * p.top_k + lane] = weights[lane];
  }
  return false;
}

// Softmax statistics of the row: the lanes' partial max and +inf counts reduced, then the sum of
// exp(v - max) over finite logits, lane_sum(max) giving each lane's share.
template <bool kRedux, class LaneSum>
__device__ core::SoftmaxStats reduce_softmax_stats(core::SoftmaxStats stats, LaneSum lane_sum) {
  stats.max = WarpReduce<kRedux>::max(stats.max);
  stats.num_pos_inf = WarpReduce<kRedux>::sum(stats.num_pos_inf);
  stats.sum = stats.num_pos_inf == 0 ? warp_sum(lane_sum(stats.max)) : 0.0f;
  return stats;
}

// Lane j < k holds the j-th selected expert: weights from its logit, finalised as on the CPU.
template <class T>
__device__ void write_selection(const RouteParams& p, const T* row, const core::SoftmaxStats& stats,
                                int64_t token, int selected, int lane) {
  const int k = p.top_k;
  float mine = 0.0f;
  if (lane < k) {
    const float v = to_float(row[selected]);
    mine = p.kind == RoutingKind::softmax_topk ? core::softmax_prob(v, stats)
                                               : core::sigmoid_weight(v);
  }
  // The renormalising sum in order j = 0..k-1, as core::finalize_weights adds it, with no per-lane
  // array (which lived in local memory).
  float sum = 0.0f;
  if (p.renormalize) {
    for (int j = 0; j < k; ++j) sum += __shfl_sync(kFullMask, mine, j);
  }
  if (lane < k) {
    p.topk_ids[token * k + lane] = selected;
    p.topk_weights[token * k + lane] =
        core::finalize_weight(mine, sum, k, p.renormalize, p.scaling);
  }
}

// grouped_topk: the kept-group test for expert e, from the flags mark_best_groups wrote.
struct GroupFilter {
  const float* kept;
  int group_size;
  __device__ bool keeps(int e) const { return kept[e / group_size] != 0.0f; }
};

// Scores the groups of a row whose keys are staged in `keys` (shared memory).
__device__ GroupFilter filter_groups(const RouteParams& p, float* keys, int lane) {
  __syncwarp();
  const int group_size = p.num_experts / p.num_groups;
  float* group_scores = keys + p.num_experts;
  float* group_kept = group_scores + p.num_groups;
  mark_best_groups(keys, group_scores, group_kept, p.num_groups, group_size, p.topk_groups, lane);
  return {group_kept, group_size};
}

// grouped_topk with groups_in_registers: drops the pairs of every group but the topk_groups best.
// Slot i holds experts 32 i + lane, so group g is slots [g s, (g + 1) s) with s = group_size / 32.
// A group's two best keys are two warp reductions per slot, merged over its slots; its score is
// then core::group_score of them, the same floats as the CPU's (the sum commutes; a -0 that
// becomes +0 ranks the same). Every lane ends up with every group's score; lane g ranks group g
// and a ballot collects the kept ones.
template <bool kRedux, int N>
__device__ void drop_unkept_groups(const RouteParams& p, float (&key)[N], int (&expert)[N],
                                   int lane) {
  const int group_size = p.num_experts / p.num_groups;
  const int slots_per_group = group_size / kWarpSize;
  int group_of[N];  // the group of slot i, without a division per slot
  {
    int group = 0;
    int filled = 0;
#pragma unroll
    for (int i = 0; i < N; ++i) {
      group_of[i] = group;
      if (++filled == slots_per_group) {
        filled = 0;
        ++group;
      }
    }
  }
  // Running top two of the current group's slots; score[i] is final at the group's last slot.
  float score[N];
  unsigned best = 0u;
  unsigned second = 0u;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if (group_of[i] >= p.num_groups) continue;  // past E: no group (uniform over the warp)
    unsigned slot_best;
    unsigned slot_second;
    WarpReduce<kRedux>::top_two(core::rank_key_bits(key[i]), slot_best, slot_second);
    const bool first_slot = i == 0 || group_of[i] != group_of[i - 1];
    if (first_slot) {
      best = slot_best;
      second = slot_second;
    } else {
      merge_top_two(best, second, slot_best, slot_second);
    }
    score[i] = core::group_score(core::rank_key_from_bits(best), core::rank_key_from_bits(second),
                                 group_size);
  }
  // Lane g takes group g's score from the group's last slot and counts the groups ranked before.
  float mine = core::kNegInf;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const bool last_slot = i + 1 == N || group_of[i + 1] != group_of[i];
    if (group_of[i] < p.num_groups && last_slot && group_of[i] == lane) mine = score[i];
  }
  int ahead = 0;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    const bool last_slot = i + 1 == N || group_of[i + 1] != group_of[i];
    if (group_of[i] < p.num_groups && last_slot)
      ahead += core::ranks_before(score[i], group_of[i], mine, lane) ? 1 : 0;
  }
  const unsigned kept = __ballot_sync(kFullMask, lane < p.num_groups && ahead < p.topk_groups);
#pragma unroll
  for (int i = 0; i < N; ++i) {
    if (expert[i] != INT_MAX && ((kept >> group_of[i]) & 1u) == 0) {
      key[i] = core::kNegInf;
      expert[i] = INT_MAX;
    }
  }
}

// Sorts a lane's N (key, expert) pairs into rank order (core::ranks_before): a bitonic network
// with compile-time indices, so the pairs stay in registers.
template <int N>
__device__ __forceinline__ void sort_by_rank(float (&key)[N], int (&expert)[N]) {
  static_assert((N & (N - 1)) == 0, "a bitonic network sorts a power of two");
#pragma unroll
  for (int size = 2; size <= N; size <<= 1) {
#pragma unroll
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const int j = i ^ stride;
        if (j <= i) continue;
        // Runs of `size` alternate direction until the last pass, which leaves all in rank order.
        const bool rank_order = (i & size) == 0;
        const bool swap = rank_order ? core::ranks_before(key[j], expert[j], key[i], expert[i])
                                     : core::ranks_before(key[i], expert[i], key[j], expert[j]);
        if (swap) {
          const float k = key[i];
          key[i] = key[j];
          key[j] = k;
          const int e = expert[i];
          expert[i] = expert[j];
          expert[j] = e;
        }
      }
    }
  }
}

// kGroupsInRegisters: grouped_topk with groups_in_registers (its own instantiation, so the
// other routings keep their registers).
template <class T, int kKeysPerLane, bool kGroupsInRegisters>
__global__ void __launch_bounds__(kRouteThreads) route_topk_kernel(RouteParams p) {
  constexpr bool kRedux = kKeysPerLane <= 4;  // WarpReduce: measured faster there only
  wait_for_previous_kernel();
  extern __shared__ float shared[];  // grouped_topk: keys and group scores, per warp
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int64_t token = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (token >= p.tokens || write_if_padding(p, token, lane)) return;  // whole warp
  const T* row = static_cast<const T*>(p.logits) + token * p.row_stride;
  const bool grouped = p.kind == RoutingKind::grouped_topk;
  const bool stage_keys = grouped && !kGroupsInRegisters;
  float* staged =
      shared + static_cast<size_t>(warp) * grouped_shared_floats(p.num_experts, p.num_groups);

  // Lane l's candidates: experts l + 32 i. Every load is issued before any value is used: with
  // the shared-memory stores of grouped_topk between them the compiler kept one load in flight
  // at a time, and at T = 1 the row then cost kKeysPerLane round trips to L2 (E = 512 under
  // ncu: 13.6 us that way, 7.9 us with the loads together).
  float value[kKeysPerLane];
  float bias[kKeysPerLane];
#pragma unroll
  for (int i = 0; i < kKeysPerLane; ++i) {
    const int e = lane + kWarpSize * i;
    const bool present = e < p.num_experts;
    value[i] = present ? to_float(row[e]) : 0.0f;
    bias[i] = present ? expert_bias(p, e) : 0.0f;
  }
  // A pair that is no candidate (past E, or in a group grouped_topk drops) gets (-inf, INT_MAX)
  // and ranks after every candidate; the kept groups hold at least k experts
  // (MoeConfig::validate), so it is never selected.
  float key[kKeysPerLane];
  int expert[kKeysPerLane];
  RowScan scan;
#pragma unroll
  for (int i = 0; i < kKeysPerLane; ++i) {
    const int e = lane + kWarpSize * i;
    key[i] = core::kNegInf;
    expert[i] = INT_MAX;
    if (e < p.num_experts) {
      scan.add(value[i]);
      key[i] = selection_key(p, value[i], bias[i]);
      expert[i] = e;
      if (stage_keys) staged[e] = key[i];
    }
  }
  if (!count_and_check_usable<kRedux>(p, token, scan, lane)) return;

  // Softmax statistics before the pairs are sorted: each lane sums its experts in increasing
  // order, as route_topk_long_kernel and every earlier version do, so the weights keep their bits.
  core::SoftmaxStats stats;
  if (p.kind == RoutingKind::softmax_topk) {
    stats = reduce_softmax_stats<kRedux>(scan.stats, [&](float max) {
      float sum = 0.0f;
#pragma unroll
      for (int i = 0; i < kKeysPerLane; ++i)
        if (isfinite(key[i])) sum += expf(key[i] - max);  // softmax keys are the logits
      return sum;
    });
  }
  if (stage_keys) {
    const GroupFilter groups = filter_groups(p, staged, lane);
#pragma unroll
    for (int i = 0; i < kKeysPerLane; ++i) {
      if (expert[i] != INT_MAX && !groups.keeps(expert[i])) {
        key[i] = core::kNegInf;
        expert[i] = INT_MAX;
      }
    }
  } else if constexpr (kGroupsInRegisters) {
    // With topk_groups == num_groups every group is kept.
    if (p.topk_groups < p.num_groups) drop_unkept_groups<kRedux>(p, key, expert, lane);
  }

  // Each lane sorts its pairs once; round j then only compares the lanes' heads, and the winner's
  // lane drops its head. (Rescanning every key each round made the rounds a serial chain of
  // ~3000 instructions for one warp at E = 512: 15 us for one token under ncu.)
  sort_by_rank(key, expert);
  int selected = -1;
  for (int j = 0; j < p.top_k; ++j) {
    const int best = WarpReduce<kRedux>::best_index(key[0], expert[0]);
    if (expert[0] == best && best != INT_MAX) {
#pragma unroll
      for (int i = 0; i + 1 < kKeysPerLane; ++i) {
        key[i] = key[i + 1];
        expert[i] = expert[i + 1];
      }
      key[kKeysPerLane - 1] = core::kNegInf;
      expert[kKeysPerLane - 1] = INT_MAX;
    }
    if (lane == j) selected = best;
  }
  write_selection(p, row, stats, token, selected, lane);
}

// E > kMaxKeysPerLane * 32: per-lane core::TopK lists merged across the warp.
template <class T>
__global__ void __launch_bounds__(kRouteThreads) route_topk_long_kernel(RouteParams p) {
  wait_for_previous_kernel();
  extern __shared__ float shared[];
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  const int64_t token = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + warp;
  if (token >= p.tokens || write_if_padding(p, token, lane)) return;  // whole warp
  const T* row = static_cast<const T*>(p.logits) + token * p.row_stride;
  const bool grouped = p.kind == RoutingKind::grouped_topk;
  float* staged =
      shared + static_cast<size_t>(warp) * grouped_shared_floats(p.num_experts, p.num_groups);

  core::TopK local(p.top_k);
  RowScan scan;
  for (int e = lane; e < p.num_experts; e += kWarpSize) {
    const float v = to_float(row[e]);
    scan.add(v);
    if (grouped) {
      staged[e] = selection_key(p, v, expert_bias(p, e));
    } else {
      local.offer(core::rank_key(v), e);
    }
  }
  if (!count_and_check_usable<false>(p, token, scan, lane)) return;
  if (grouped) {
    const GroupFilter groups = filter_groups(p, staged, lane);
    for (int e = lane; e < p.num_experts; e += kWarpSize)
      if (groups.keeps(e)) local.offer(staged[e], e);
  }
  const int selected = merge_lane_lists(local, p.top_k, lane);

  core::SoftmaxStats stats;
  if (p.kind == RoutingKind::softmax_topk) {
    stats = reduce_softmax_stats<false>(scan.stats, [&](float max) {
      float sum = 0.0f;
      for (int e = lane; e < p.num_experts; e += kWarpSize) {
        const float v = to_float(row[e]);
        if (isfinite(v)) sum += expf(v - max);
      }
      return sum;
    });
  }
  write_selection(p, row, stats, token, selected, lane);
}

template <class T>
void launch_route(const RouteParams& p, unsigned blocks, size_t shared_bytes, cudaStream_t stream,
                  const char* where) {
  const bool in_registers = groups_in_registers(p);
  void (*kernel)(RouteParams) = route_topk_long_kernel<T>;
  if (p.num_experts <= 4 * kWarpSize) {
    kernel = in_registers ? route_topk_kernel<T, 4, true> : route_topk_kernel<T, 4, false>;
  } else if (p.num_experts <= 8 * kWarpSize) {
    kernel = in_registers ? route_topk_kernel<T, 8, true> : route_topk_kernel<T, 8, false>;
  } else if (p.num_experts <= 16 * kWarpSize) {
    static_assert(kMaxSlotsForRegisterGroups == 16);
    kernel = in_registers ? route_topk_kernel<T, 16, true> : route_topk_kernel<T, 16, false>;
  } else if (p.num_experts <= kMaxKeysPerLane * kWarpSize) {
    kernel = route_topk_kernel<T, kMaxKeysPerLane, false>;
  }
  reserve_dynamic_shared_memory(reinterpret_cast<const void*>(kernel), shared_bytes, where,
                                "logits: grouped_topk (keys and group scores per warp)",
                                p.num_experts);
  launch_overlapped(kernel, dim3(blocks), dim3(kRouteThreads), shared_bytes, stream, p);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
}

}  // namespace

void route(const RoutingConfig& routing, const RouteArgs& args, void* stream) {
  const char* where = "route";
  const int64_t tokens = args.logits.size(0);
  const int64_t num_experts = args.logits.size(1);
  const int64_t top_k = args.topk_ids.size(1);
  // The public entry point has checked shapes, dtypes and k <= min(E, kMaxTopK); warp lanes
  // hold one selected expert each, which kMaxTopK == 32 guarantees.
  static_assert(core::kMaxTopK <= kWarpSize, "one lane per selected expert");
  if (tokens == 0) return;

  RouteParams p{};
  p.logits = args.logits.data;
  p.row_stride = args.logits.strides[0];
  p.tokens = tokens;
  p.num_experts = static_cast<int>(num_experts);
  p.top_k = static_cast<int>(top_k);
  p.kind = routing.kind;
  p.renormalize = routing.renormalize;
  p.scaling = routing.routed_scaling_factor;
  p.num_groups = static_cast<int>(routing.num_groups);
  p.topk_groups = static_cast<int>(routing.topk_groups);
  p.bias = args.correction_bias.defined() ? args.correction_bias.ptr<const float>() : nullptr;
  p.num_valid_tokens = args.num_valid_tokens;
  p.diagnostics = args.diagnostics;
  p.topk_ids = args.topk_ids.ptr<int32_t>();
  p.topk_weights = args.topk_weights.ptr<float>();

  size_t shared_bytes = 0;
  if (routing.kind == RoutingKind::grouped_topk && !groups_in_registers(p)) {
    shared_bytes =
        kWarpsPerBlock * grouped_shared_floats(p.num_experts, p.num_groups) * sizeof(float);
  }
  const auto blocks = static_cast<unsigned>((tokens + kWarpsPerBlock - 1) / kWarpsPerBlock);
  const cudaStream_t cuda_stream = as_cuda_stream(stream);
  dispatch_float_dtype(where, args.logits.dtype, [&](auto element) {
    launch_route<decltype(element)>(p, blocks, shared_bytes, cuda_stream, where);
  });
}

}  // namespace ironmoe::cuda
