// CPU plan: a counting sort over slots (histogram, scan, stable scatter in slot order), the same
// algorithm for every T. Every entry of every output is written; expert_counts doubles as the
// scatter cursor, so no scratch is needed.
#include <algorithm>
#include <cstdint>

#include "core/plan_math.h"
#include "cpu/cpu_backend.h"
#include "cpu/parallel.h"

namespace ironmoe::cpu {

void plan(const PlanArgs& args, ThreadPool* /*threads: the sort is sequential by design*/) {
  const int64_t tokens = args.topk_ids.size(0);
  const int64_t top_k = args.topk_ids.size(1);
  const int64_t slots = tokens * top_k;
  const int64_t num_experts = args.num_experts;
  const int64_t begin = args.expert_begin;
  const int64_t end = args.expert_end < 0 ? num_experts : args.expert_end;
  const int64_t local_experts = end - begin;
  const bool batched = args.layout == Layout::batched;
  const int64_t capacity = args.capacity;
  const int64_t valid_slots = core::valid_tokens(tokens, args.num_valid_tokens) * top_k;

  const int32_t* ids = args.topk_ids.ptr<int32_t>();
  int32_t* counts = args.expert_counts.ptr<int32_t>();
  int32_t* offsets = args.expert_offsets.ptr<int32_t>();
  int32_t* slot_to_row = args.slot_to_row.ptr<int32_t>();
  int32_t* row_to_slot = args.row_to_slot.ptr<int32_t>();

  // Histogram of the placed slots (valid rows, local ids), and the diagnostics of the rest.
  std::fill(counts, counts + local_experts, 0);
  int32_t out_of_range = 0;
  int32_t remote = 0;
  for (int64_t s = 0; s < valid_slots; ++s) {
    const core::SlotPlace place = core::place_slot(ids[s], num_experts, begin, end);
    if (place.local_expert >= 0) ++counts[place.local_expert];
    out_of_range += place.out_of_range ? 1 : 0;
    remote += place.remote ? 1 : 0;
  }

  // Offsets: exclusive scan (contiguous) or fixed strides of capacity (batched).
  int64_t used_rows = 0;
  for (int64_t e = 0; e < local_experts; ++e) {
    offsets[e] = static_cast<int32_t>(batched ? core::batched_first_row(e, capacity) : used_rows);
    used_rows += counts[e];
  }
  offsets[local_experts] = static_cast<int32_t>(
      batched ? core::batched_first_row(local_experts, capacity) : used_rows);

  // Stable scatter in slot order; counts[e] is the running rank of expert e's next slot.
  const int64_t rows = batched ? local_experts * capacity : slots;
  std::fill(row_to_slot, row_to_slot + rows, core::kNoSlot);
  std::fill(counts, counts + local_experts, 0);
  int32_t overflow = 0;
  for (int64_t s = 0; s < slots; ++s) {
    const int32_t local = s < valid_slots ? core::local_expert_of(ids[s], begin, end) : -1;
    int32_t row = core::kNoRow;
    if (local >= 0) {
      const int64_t rank = counts[local]++;
      if (!batched || rank < capacity) {
        row = static_cast<int32_t>(offsets[local] + rank);
        row_to_slot[row] = static_cast<int32_t>(s);
      } else {
        ++overflow;
      }
    }
    slot_to_row[s] = row;
  }
  if (batched) {
    for (int64_t e = 0; e < local_experts; ++e) {
      counts[e] = static_cast<int32_t>(std::min<int64_t>(counts[e], capacity));
    }
  }

  add_diagnostic(args.diagnostics, kDiagIdOutOfRange, out_of_range);
  add_diagnostic(args.diagnostics, kDiagIdRemote, remote);
  add_diagnostic(args.diagnostics, kDiagCapacityOverflow, overflow);
}

}  // namespace ironmoe::cpu
