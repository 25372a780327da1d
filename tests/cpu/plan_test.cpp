// Plan invariants (contract, "Dispatch/plan") at boundary and random T, both layouts, with ids that
// include every kind of invalid value and duplicates within a token: every map entry is written,
// offsets are monotone and end at the rows in use, slot_to_row and row_to_slot are inverse, rows
// of an expert follow slot order, skipped and dropped slots are counted. The result is also
// compared entry by entry with a model written here from the documented rules.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <optional>
#include <sstream>

#include "test_util.h"

namespace ironmoe::test {
namespace {

constexpr int64_t kExperts = 64;
constexpr int64_t kTopK = 8;

struct PlanCase {
  int64_t tokens = 0;
  int64_t expert_begin = 0;
  int64_t expert_end = kExperts;  // -1: all experts
  Layout layout = Layout::contiguous;
  int64_t capacity = 0;
  std::optional<int32_t> num_valid;

  int64_t end() const { return expert_end < 0 ? kExperts : expert_end; }
  int64_t local() const { return end() - expert_begin; }
  int64_t rows() const {
    return layout == Layout::contiguous ? tokens * kTopK : local() * capacity;
  }
  std::string describe() const {
    std::ostringstream text;
    text << "T " << tokens << " experts [" << expert_begin << ", " << expert_end << ") "
         << (layout == Layout::contiguous ? "contiguous" : "batched capacity ")
         << (layout == Layout::batched ? std::to_string(capacity) : "")
         << (num_valid ? " num_valid " + std::to_string(*num_valid) : "");
    return text.str();
  }
};

struct PlanMaps {
  std::vector<int32_t> counts, offsets, slot_to_row, row_to_slot;
  std::array<int32_t, kDiagnosticCount> diagnostics{};
};

// Ids as engines may hand them over: mostly valid, some -1, some >= E, INT32_MIN/MAX, other
// negatives, and duplicates within a token.
std::vector<int32_t> random_ids(int64_t tokens, Rng& rng) {
  std::vector<int32_t> ids(static_cast<size_t>(tokens * kTopK));
  const int32_t invalid[] = {
      -1, static_cast<int32_t>(kExperts), kExperts + 7, INT32_MIN, INT32_MAX, -1000};
  for (int64_t s = 0; s < tokens * kTopK; ++s) {
    int32_t& id = ids[s];
    if (s % kTopK != 0 && rng.chance(0.1)) {
      id = ids[s - 1 - rng.integer(0, s % kTopK - 1)];  // duplicate of an earlier slot
    } else if (rng.chance(0.1)) {
      id = invalid[rng.integer(0, std::size(invalid) - 1)];
    } else {
      id = static_cast<int32_t>(rng.integer(0, kExperts - 1));
    }
  }
  return ids;
}

// Plans into m's buffers as they are (sized by the caller).
void plan_into(const PlanCase& c, const std::vector<int32_t>& ids, PlanMaps& m) {
  m.diagnostics = {};
  const int32_t num_valid = c.num_valid.value_or(0);
  const size_t scratch_bytes = plan_scratch_bytes(c.tokens, kTopK, c.local(), Device::cpu());
  AlignedBuffer scratch(scratch_bytes);

  PlanArgs args;
  args.topk_ids = TensorView::contiguous(ids.data(), DType::i32, {c.tokens, kTopK});
  args.num_experts = kExperts;
  args.expert_begin = c.expert_begin;
  args.expert_end = c.expert_end;
  args.layout = c.layout;
  args.capacity = c.capacity;
  args.expert_counts = TensorView::contiguous(m.counts.data(), DType::i32, {c.local()});
  args.expert_offsets = TensorView::contiguous(m.offsets.data(), DType::i32, {c.local() + 1});
  args.slot_to_row = TensorView::contiguous(m.slot_to_row.data(), DType::i32, {c.tokens, kTopK});
  args.row_to_slot = TensorView::contiguous(m.row_to_slot.data(), DType::i32, {c.rows()});
  args.num_valid_tokens = c.num_valid ? &num_valid : nullptr;
  args.diagnostics = m.diagnostics.data();
  args.scratch = scratch_bytes > 0 ? scratch.data() : nullptr;
  args.scratch_bytes = scratch_bytes;
  plan(args, Stream::cpu());
}

// Poisons every output, then plans.
PlanMaps run_plan(const PlanCase& c, const std::vector<int32_t>& ids) {
  PlanMaps m;
  m.counts.assign(static_cast<size_t>(c.local()), kPoisonInt);
  m.offsets.assign(static_cast<size_t>(c.local() + 1), kPoisonInt);
  m.slot_to_row.assign(static_cast<size_t>(c.tokens * kTopK), kPoisonInt);
  m.row_to_slot.assign(static_cast<size_t>(c.rows()), kPoisonInt);
  plan_into(c, ids, m);
  return m;
}

// The documented rules, slot by slot: placed iff the token is valid and the id local; contiguous
// rows are offsets[e] + rank, batched rows e * capacity + rank unless rank >= capacity.
PlanMaps model_plan(const PlanCase& c, const std::vector<int32_t>& ids) {
  PlanMaps m;
  const int64_t valid = c.num_valid ? std::clamp<int64_t>(*c.num_valid, 0, c.tokens) : c.tokens;
  std::vector<std::vector<int64_t>> slots_of(static_cast<size_t>(c.local()));
  for (int64_t s = 0; s < valid * kTopK; ++s) {
    const int64_t id = ids[s];
    if (id >= c.expert_begin && id < c.end()) {
      slots_of[id - c.expert_begin].push_back(s);
    } else {
      ++m.diagnostics[(id < 0 || id >= kExperts) ? kDiagIdOutOfRange : kDiagIdRemote];
    }
  }
  m.slot_to_row.assign(static_cast<size_t>(c.tokens * kTopK), -1);
  m.row_to_slot.assign(static_cast<size_t>(c.rows()), -1);
  int32_t next_row = 0;
  for (int64_t e = 0; e < c.local(); ++e) {
    const auto& slots = slots_of[e];
    const int64_t first = c.layout == Layout::contiguous ? next_row : e * c.capacity;
    int64_t kept = static_cast<int64_t>(slots.size());
    if (c.layout == Layout::batched && kept > c.capacity) {
      m.diagnostics[kDiagCapacityOverflow] += static_cast<int32_t>(kept - c.capacity);
      kept = c.capacity;
    }
    m.offsets.push_back(static_cast<int32_t>(first));
    m.counts.push_back(static_cast<int32_t>(kept));
    for (int64_t rank = 0; rank < kept; ++rank) {
      m.slot_to_row[slots[rank]] = static_cast<int32_t>(first + rank);
      m.row_to_slot[first + rank] = static_cast<int32_t>(slots[rank]);
    }
    next_row += static_cast<int32_t>(kept);
  }
  m.offsets.push_back(
      c.layout == Layout::contiguous ? next_row : static_cast<int32_t>(c.local() * c.capacity));
  return m;
}

// The invariants stated in plan.h, checked without the model so a failure names the rule.
void expect_invariants(const PlanCase& c, const PlanMaps& m) {
  auto written = [](const std::vector<int32_t>& v, const char* name) {
    const auto it = std::find(v.begin(), v.end(), kPoisonInt);
    EXPECT_TRUE(it == v.end()) << name << "[" << (it - v.begin()) << "] was never written";
  };
  written(m.counts, "expert_counts");
  written(m.offsets, "expert_offsets");
  written(m.slot_to_row, "slot_to_row");
  written(m.row_to_slot, "row_to_slot");

  int64_t total = 0;
  for (int64_t e = 0; e < c.local(); ++e) {
    total += m.counts[e];
    ASSERT_LE(m.offsets[e], m.offsets[e + 1]) << "expert_offsets not monotone at " << e;
    ASSERT_LE(m.offsets[e] + m.counts[e], m.offsets[e + 1])
        << "expert " << e << " rows overrun the next expert";
    if (c.layout == Layout::batched) {
      ASSERT_EQ(m.offsets[e], e * c.capacity) << "batched offset of expert " << e;
      ASSERT_LE(m.counts[e], c.capacity) << "batched count above capacity at expert " << e;
    }
  }
  if (c.layout == Layout::contiguous) {
    ASSERT_EQ(m.offsets[c.local()], total) << "expert_offsets[E_local] is not the sum of counts";
  }

  int64_t placed = 0;
  for (int64_t s = 0; s < c.tokens * kTopK; ++s) {
    const int32_t row = m.slot_to_row[s];
    if (row == -1) continue;
    ++placed;
    ASSERT_TRUE(row >= 0 && row < c.rows()) << "slot " << s << " -> row " << row << " out of range";
    ASSERT_EQ(m.row_to_slot[row], s) << "row_to_slot[slot_to_row[" << s << "]] is not " << s;
  }
  ASSERT_EQ(placed, total) << "placed slots differ from the sum of counts";
  for (int64_t e = 0; e < c.local(); ++e)
    for (int64_t r = m.offsets[e]; r < m.offsets[e] + m.counts[e]; ++r) {
      ASSERT_GE(m.row_to_slot[r], 0) << "row " << r << " of expert " << e << " holds no slot";
      if (r > m.offsets[e]) {
        ASSERT_LT(m.row_to_slot[r - 1], m.row_to_slot[r])
            << "rows of expert " << e << " are not in slot order at row " << r;
      }
    }
  int64_t used_rows = 0;
  for (int32_t slot : m.row_to_slot) used_rows += slot >= 0 ? 1 : 0;
  ASSERT_EQ(used_rows, total) << "row_to_slot holds slots outside every expert's rows";
}

void expect_equal_maps(const PlanCase& c, const PlanMaps& got, const PlanMaps& want) {
  auto same = [](const std::vector<int32_t>& g, const std::vector<int32_t>& w, const char* name) {
    ASSERT_EQ(g.size(), w.size()) << name << " size";
    const auto diff = std::mismatch(g.begin(), g.end(), w.begin());
    ASSERT_TRUE(diff.first == g.end()) << name << "[" << (diff.first - g.begin())
                                       << "] = " << *diff.first << ", expected " << *diff.second;
  };
  same(got.counts, want.counts, "expert_counts");
  same(got.offsets, want.offsets, "expert_offsets");
  same(got.slot_to_row, want.slot_to_row, "slot_to_row");
  same(got.row_to_slot, want.row_to_slot, "row_to_slot");
  for (int d = 0; d < kDiagnosticCount; ++d)
    EXPECT_EQ(got.diagnostics[d], want.diagnostics[d])
        << "diagnostics[" << d << "] for " << c.describe();
}

void check_case(const PlanCase& c, Rng& rng) {
  SCOPED_TRACE(c.describe());
  const std::vector<int32_t> ids = random_ids(c.tokens, rng);
  const PlanMaps got = run_plan(c, ids);
  expect_invariants(c, got);
  expect_equal_maps(c, got, model_plan(c, ids));
}

// 0, every power of two and its neighbours up to 8193, and two random sizes.
std::vector<int64_t> token_counts(Rng& rng) {
  std::vector<int64_t> counts = {0, 1, rng.integer(2, 254), rng.integer(258, 8190)};
  for (int64_t p = 2; p <= 8192; p *= 2) counts.insert(counts.end(), {p - 1, p, p + 1});
  return counts;
}

TEST(Plan, ContiguousAtBoundaryAndRandomSizes) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  for (int64_t tokens : token_counts(rng)) {
    check_case({tokens, 0, kExperts, Layout::contiguous, 0, std::nullopt}, rng);
    check_case({tokens, 16, 40, Layout::contiguous, 0, std::nullopt}, rng);
    check_case({tokens, 50, -1, Layout::contiguous, 0, std::nullopt}, rng);
  }
}

TEST(Plan, BatchedWithAndWithoutOverflow) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  for (int64_t tokens : token_counts(rng)) {
    // Roomy: every slot fits. Tight: about half the average load, so most experts overflow.
    const int64_t tight = std::max<int64_t>(1, tokens * kTopK / kExperts / 2);
    check_case({tokens, 0, kExperts, Layout::batched, std::max<int64_t>(tokens, 1), std::nullopt},
               rng);
    check_case({tokens, 0, kExperts, Layout::batched, tight, std::nullopt}, rng);
    check_case({tokens, 40, 64, Layout::batched, tight, std::nullopt}, rng);
  }
}

// Padding rows are skipped and not counted, whatever ids they hold.
TEST(Plan, PaddingRowsAreSkippedAndNotCounted) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  for (int64_t tokens : {int64_t{1}, int64_t{257}, int64_t{8193}}) {
    for (int32_t num_valid : {0, -5, static_cast<int32_t>(tokens / 2), static_cast<int32_t>(tokens),
                              static_cast<int32_t>(tokens + 3)}) {
      check_case({tokens, 0, kExperts, Layout::contiguous, 0, num_valid}, rng);
      check_case({tokens, 8, 24, Layout::batched, 64, num_valid}, rng);
    }
  }
}

// A second call on the same buffers overwrites every entry: stale rows of a larger earlier batch
// must not survive.
TEST(Plan, EveryEntryIsRewrittenOnEveryCall) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const PlanCase c{300, 0, kExperts, Layout::contiguous, 0, std::nullopt};
  const std::vector<int32_t> ids = random_ids(c.tokens, rng);
  PlanMaps maps = run_plan(c, ids);
  expect_equal_maps(c, maps, model_plan(c, ids));
  PlanCase fewer = c;
  fewer.num_valid = 10;
  plan_into(fewer, ids, maps);
  expect_equal_maps(fewer, maps, model_plan(fewer, ids));
}

TEST(Plan, AllIdsInvalidOrRemote) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const PlanCase c{513, 0, 16, Layout::contiguous, 0, std::nullopt};
  std::vector<int32_t> ids(static_cast<size_t>(c.tokens * kTopK));
  for (int32_t& id : ids)
    id = rng.chance(0.5) ? static_cast<int32_t>(rng.integer(16, kExperts - 1))
                         : (rng.chance(0.5) ? INT32_MIN : INT32_MAX);
  const PlanMaps got = run_plan(c, ids);
  expect_invariants(c, got);
  expect_equal_maps(c, got, model_plan(c, ids));
  EXPECT_EQ(got.offsets[c.local()], 0) << "no slot is local, yet rows are in use";
}

}  // namespace
}  // namespace ironmoe::test
