// CPU expert MLPs in the storage dtype (bf16, f32) on the tile matmul of tile_matmul.h; FP8
// experts are experts_fp8.cpp.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/check.h"
#include "cpu/cpu_backend.h"
#include "cpu/experts_fp8.h"
#include "cpu/parallel.h"
#include "cpu/tile_matmul.h"

namespace ironmoe::cpu {
namespace {

using namespace tiles;

template <class Storage>
void run_experts(const ExpertArgs& args, const Problem& problem, ThreadPool* threads) {
  const int64_t hidden = args.permuted_in.size(1);
  const int64_t inter = args.w13.size(1) / 2;
  const auto* x = static_cast<const Storage*>(args.permuted_in.data);
  const auto* w13 = static_cast<const Storage*>(args.w13.data);
  const auto* w2 = static_cast<const Storage*>(args.w2.data);
  auto* h = static_cast<Storage*>(args.intermediate.data);
  auto* y = static_cast<Storage*>(args.permuted_out.data);

  // GEMM1 + activation: h = act(x w_gate^T) * (x w_up^T), rounded to the storage dtype.
  if (args.phase != ExpertPhase::down) {
    gate_up_pass(
        problem, inter, hidden, PlainRows<Storage>{x, hidden},
        [&](int64_t e) {
          return PlainRows<Storage>{w13 + e * 2 * inter * hidden, hidden};
        },
        [&](int64_t row, int64_t n, float gate, float up) {
          store(h + row * inter, n, activate(args.activation, gate) * up);
        },
        threads);
  }
  // GEMM2: y = h w2^T, rounded to the storage dtype.
  if (args.phase != ExpertPhase::gate_up) {
    down_pass(
        problem, hidden, inter, PlainRows<Storage>{h, inter},
        [&](int64_t e) {
          return PlainRows<Storage>{w2 + e * hidden * inter, inter};
        },
        [&](int64_t row, int64_t n, float value) { store(y + row * hidden, n, value); }, threads);
  }
}

// The row ranges are device-side data, but on the CPU they can be checked before any access:
// each inside [0, R), and no row in two of them (two experts would write it at once from two
// threads). Ranges in increasing order (every layout plan() writes) take one pass; others are
// sorted by first row and compared with their neighbour, so any number of experts costs
// O(E log E), not a pairwise sweep.
void check_row_ranges(const Problem& problem, int64_t rows) {
  const int64_t experts = problem.local_experts;
  bool increasing = true;
  int64_t end_so_far = 0;
  for (int64_t e = 0; e < experts; ++e) {
    const int64_t first = problem.offsets[e];
    const int64_t count = problem.counts[e];
    IRONMOE_CHECK(count >= 0 && (count == 0 || (first >= 0 && first + count <= rows)), "experts",
                  "expert_offsets/expert_counts: local expert ", e, " has rows [", first, ", ",
                  first + count, "), expected a range inside [0, ", rows, ")");
    if (count == 0) continue;
    increasing = increasing && first >= end_so_far;
    end_so_far = std::max(end_so_far, first + count);
  }
  if (increasing) return;
  std::vector<int64_t> by_first;
  for (int64_t e = 0; e < experts; ++e) {
    if (problem.counts[e] > 0) by_first.push_back(e);
  }
  std::sort(by_first.begin(), by_first.end(), [&](int64_t a, int64_t b) {
    return problem.offsets[a] != problem.offsets[b] ? problem.offsets[a] < problem.offsets[b]
                                                    : a < b;
  });
  // Sorted by first row, a range overlaps some earlier one exactly when it overlaps the earlier
  // range reaching furthest; that one is named. Every first row is >= 0 (checked above), so the
  // first range passes against furthest_end = 0.
  int64_t furthest = -1, furthest_end = 0;
  for (const int64_t e : by_first) {
    const int64_t first = problem.offsets[e], end = first + problem.counts[e];
    IRONMOE_CHECK(first >= furthest_end, "experts",
                  "expert_offsets/expert_counts: the row ranges of local experts ",
                  std::min(e, furthest), " and ", std::max(e, furthest), " overlap ([",
                  problem.offsets[furthest], ", ", furthest_end, ") and [", first, ", ", end,
                  ")); each row belongs to one expert at most");
    if (end > furthest_end) {
      furthest = e;
      furthest_end = end;
    }
  }
}

}  // namespace

void experts(const ExpertArgs& args, ThreadPool* threads) {
  const int64_t rows = args.permuted_in.size(0);
  const int64_t local_experts = args.w13.size(0);
  Problem problem{args.expert_offsets.ptr<int32_t>(), args.expert_counts.ptr<int32_t>(),
                  local_experts, 0};
  check_row_ranges(problem, rows);
  if (args.quant != QuantScheme::none) {
    experts_fp8(args, problem, threads);
  } else if (args.permuted_in.dtype == DType::bf16) {
    run_experts<uint16_t>(args, problem, threads);
  } else {
    run_experts<float>(args, problem, threads);
  }
}

}  // namespace ironmoe::cpu
