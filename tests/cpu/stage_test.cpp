// The stages after plan, one at a time: gather copies only used rows, experts touches only rows
// inside an expert's range and matches the reference there, combine sums in slot order, skips
// -1 rows and writes zeros for padding tokens. Row maps here are random, not from plan(), so each
// stage is checked on inputs an engine could hand it directly.
#include <gtest/gtest.h>

#include <climits>
#include <cmath>
#include <string>

#include "reference_moe.h"
#include "test_util.h"

namespace ironmoe::test {
namespace {

class Stage : public ::testing::TestWithParam<DType> {};

std::string dtype_param_name(const ::testing::TestParamInfo<DType>& info) {
  return dtype_name(info.param);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, Stage, ::testing::Values(DType::f32, DType::bf16),
                         dtype_param_name);

TEST_P(Stage, GatherCopiesUsedRowsAndLeavesUnusedRowsAlone) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const DType dtype = GetParam();
  constexpr int64_t kTokens = 37, kHidden = 40, kStride = 45, kTopK = 4, kRows = 120;
  const Buffer x = Buffer::from(dtype, rng.nonzero_vector(kTokens * kStride, 1.0f));
  std::vector<int32_t> row_to_slot(kRows);
  for (int32_t& slot : row_to_slot)
    slot = rng.chance(0.3) ? -1 : static_cast<int32_t>(rng.integer(0, kTokens * kTopK - 1));
  Buffer permuted = Buffer::poisoned(dtype, kRows * kHidden);
  const Buffer poison = Buffer::poisoned(dtype, 1);

  GatherArgs args;
  args.x = TensorView::rows(x.data(), dtype, kTokens, kHidden, kStride);
  args.row_to_slot = TensorView::contiguous(row_to_slot.data(), DType::i32, {kRows});
  args.top_k = kTopK;
  args.permuted = TensorView::contiguous(permuted.data(), dtype, {kRows, kHidden});
  gather(args, Stream::cpu());

  for (int64_t r = 0; r < kRows; ++r)
    for (int64_t c = 0; c < kHidden; ++c) {
      const int32_t slot = row_to_slot[r];
      const uint32_t want =
          slot < 0 ? storage_bits(poison, 0) : storage_bits(x, slot / kTopK * kStride + c);
      ASSERT_EQ(storage_bits(permuted, r * kHidden + c), want)
          << "permuted row " << r << " column " << c << " (slot " << slot
          << "): " << (slot < 0 ? "an unused row was written" : "not a copy of token slot / k");
    }
}

TEST_P(Stage, ExpertsComputeOnlyRowsInsideExpertRanges) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const DType dtype = GetParam();
  MoeConfig config = small_config(4, 1, 64, dtype);
  config.activation = rng.chance(0.5) ? Activation::silu_and_mul : Activation::gelu_and_mul;
  const int64_t hidden = config.hidden, inter = config.intermediate, local = 4, rows = 40;
  // Ranges with gaps, an empty expert, and offsets given without the trailing total.
  const std::vector<int32_t> offsets = {0, 8, 10, 25};
  const std::vector<int32_t> counts = {5, 0, 10, 8};
  const Buffer in = Buffer::from(dtype, rng.nonzero_vector(rows * hidden, 1.0f));
  const Buffer w13 = Buffer::from(dtype, rng.nonzero_vector(local * 2 * inter * hidden, 0.2f));
  const Buffer w2 = Buffer::from(dtype, rng.nonzero_vector(local * hidden * inter, 0.3f));
  Buffer intermediate = Buffer::poisoned(dtype, rows * inter);
  Buffer out = Buffer::poisoned(dtype, rows * hidden);

  ExpertArgs args =
      expert_stage_args(in, offsets, counts, w13, w2, intermediate, out, hidden, inter);
  args.activation = config.activation;
  ThreadPool pool(3);
  experts(args, Stream::cpu(&pool));

  // The reference sees each row as a token routed to its expert alone with weight 1.
  std::vector<int32_t> expert_of_row(rows, -1);
  for (int64_t e = 0; e < local; ++e)
    for (int32_t r = offsets[e]; r < offsets[e] + counts[e]; ++r)
      expert_of_row[r] = static_cast<int32_t>(e);
  const std::vector<float> ones(rows, 1.0f);
  std::vector<int64_t> all_rows(rows);
  for (int64_t r = 0; r < rows; ++r) all_rows[r] = r;
  std::vector<double> ref(rows * hidden);
  const std::vector<float> in_f = in.to_float(), w13_f = w13.to_float(), w2_f = w2.to_float();
  reference::layer(config, rows, in_f.data(), expert_of_row.data(), ones.data(), w13_f.data(),
                   w2_f.data(), rows, all_rows, dtype == DType::bf16, ref.data());

  const std::vector<float> got = out.to_float();
  const Buffer poison = Buffer::poisoned(dtype, 1);
  for (int64_t r = 0; r < rows; ++r) {
    if (expert_of_row[r] < 0) {
      for (int64_t c = 0; c < hidden; ++c)
        ASSERT_EQ(storage_bits(out, r * hidden + c), storage_bits(poison, 0))
            << "row " << r << " lies outside every expert's range but was written";
      continue;
    }
    const double error =
        reference::max_relative_error(&ref[r * hidden], &got[r * hidden], 1, hidden);
    ASSERT_LE(error, layer_tolerance(dtype))
        << "row " << r << " of expert " << expert_of_row[r] << ": relative error " << error;
  }
}

// ExpertPhase: gate_up writes h and not one output byte; down after it writes the output; both
// equal the whole stage's bits. (FP8 experts: run_layer's by_stages mode runs the phases.)
TEST_P(Stage, ExpertsGateUpThenDownEqualsTheWholeStage) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const DType dtype = GetParam();
  const int64_t hidden = 24, inter = 20, local = 3, rows = 30;
  const std::vector<int32_t> offsets = {0, 4, 12};
  const std::vector<int32_t> counts = {3, 8, 17};
  const Buffer in = Buffer::from(dtype, rng.nonzero_vector(rows * hidden, 1.0f));
  const Buffer w13 = Buffer::from(dtype, rng.nonzero_vector(local * 2 * inter * hidden, 0.2f));
  const Buffer w2 = Buffer::from(dtype, rng.nonzero_vector(local * hidden * inter, 0.3f));
  Buffer whole_h = Buffer::poisoned(dtype, rows * inter);
  Buffer whole_out = Buffer::poisoned(dtype, rows * hidden);
  ThreadPool pool(3);
  experts(expert_stage_args(in, offsets, counts, w13, w2, whole_h, whole_out, hidden, inter),
          Stream::cpu(&pool));

  Buffer h = Buffer::poisoned(dtype, rows * inter);
  Buffer out = Buffer::poisoned(dtype, rows * hidden);
  ExpertArgs args = expert_stage_args(in, offsets, counts, w13, w2, h, out, hidden, inter);
  args.phase = ExpertPhase::gate_up;
  experts(args, Stream::cpu(&pool));
  EXPECT_EQ(out.bytes(), Buffer::poisoned(dtype, rows * hidden).bytes())
      << "the gate_up phase wrote permuted_out";
  EXPECT_EQ(h.bytes(), whole_h.bytes()) << "h after gate_up differs from the whole stage's";
  args.phase = ExpertPhase::down;
  experts(args, Stream::cpu(&pool));
  EXPECT_EQ(out.bytes(), whole_out.bytes()) << "gate_up then down differs from the whole stage";
}

TEST_P(Stage, CombineSumsSlotsSkipsMissingRowsAndZeroesPadding) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const DType dtype = GetParam();
  constexpr int64_t kTokens = 29, kHidden = 24, kStride = 30, kTopK = 3, kRows = 50;
  const int32_t num_valid = static_cast<int32_t>(rng.integer(1, kTokens - 1));
  const Buffer y = Buffer::from(dtype, rng.nonzero_vector(kRows * kHidden, 1.0f));
  std::vector<int32_t> slot_to_row(kTokens * kTopK);
  for (int32_t& row : slot_to_row)
    row = rng.chance(0.25) ? -1 : static_cast<int32_t>(rng.integer(0, kRows - 1));
  std::vector<float> weights(kTokens * kTopK);
  for (float& w : weights) w = std::abs(rng.nonzero(1.0f));
  Buffer out = Buffer::poisoned(dtype, kTokens * kStride);

  CombineArgs args;
  args.permuted_out = TensorView::contiguous(y.data(), dtype, {kRows, kHidden});
  args.slot_to_row = TensorView::contiguous(slot_to_row.data(), DType::i32, {kTokens, kTopK});
  args.topk_weights = TensorView::contiguous(weights.data(), DType::f32, {kTokens, kTopK});
  args.out = TensorView::rows(out.data(), dtype, kTokens, kHidden, kStride);
  args.num_valid_tokens = &num_valid;
  ThreadPool pool(2);
  combine(args, Stream::cpu(&pool));

  const std::vector<float> y_f = y.to_float();
  const std::vector<float> got = out.to_float();
  const Buffer poison = Buffer::poisoned(dtype, 1);
  for (int64_t t = 0; t < kTokens; ++t) {
    std::vector<double> ref(kHidden, 0.0);
    std::vector<float> row(got.begin() + t * kStride, got.begin() + t * kStride + kHidden);
    for (int64_t j = 0; j < kTopK && t < num_valid; ++j) {
      const int32_t r = slot_to_row[t * kTopK + j];
      if (r < 0) continue;
      for (int64_t c = 0; c < kHidden; ++c)
        ref[c] += double{weights[t * kTopK + j]} * y_f[r * kHidden + c];
    }
    if (t >= num_valid) {
      for (int64_t c = 0; c < kHidden; ++c)
        ASSERT_EQ(row[c], 0.0f) << "padding token " << t << " column " << c << " is not zero";
    } else {
      const double error = reference::max_relative_error(ref.data(), row.data(), 1, kHidden);
      ASSERT_LE(error, layer_tolerance(dtype)) << "token " << t << ": relative error " << error
                                               << "; " << describe_worst(ref, row, kHidden);
    }
    for (int64_t c = kHidden; c < kStride; ++c)
      ASSERT_EQ(storage_bits(out, t * kStride + c), storage_bits(poison, 0))
          << "token " << t << ": combine wrote into the row padding at column " << c;
  }
}

// The row ranges may come from an engine's own dispatch, not from plan(). On the CPU, where they
// can be read before any work, a range outside [0, R) or two ranges that share a row is an
// ironmoe::Error naming the experts, and nothing is written; ranges that only touch, come in any
// order or are empty (with any offset) are accepted.
TEST(StageRanges, RangesOutsideTheRowsOrSharingARowAreRefused) {
  Rng rng = Rng::for_current_test();
  constexpr int64_t kLocal = 4, kRows = 40, kHidden = 24, kInter = 16;
  const Buffer in = Buffer::from(DType::f32, rng.nonzero_vector(kRows * kHidden, 1.0f));
  const Buffer w13 =
      Buffer::from(DType::f32, rng.nonzero_vector(kLocal * 2 * kInter * kHidden, 0.2f));
  const Buffer w2 = Buffer::from(DType::f32, rng.nonzero_vector(kLocal * kHidden * kInter, 0.3f));
  struct RangeCase {
    const char* what;
    std::vector<int32_t> offsets;
    std::vector<int32_t> counts;
    std::vector<std::string> names;  // empty: accepted
  };
  const RangeCase cases[] = {
      {"back to back", {0, 5, 5, 20}, {5, 0, 15, 20}, {}},
      {"any order, gaps, empty ranges anywhere", {30, -7, 0, 12}, {10, 0, 9, 3}, {}},
      {"negative count", {0, 5, 10, 20}, {5, -1, 10, 8}, {"expert_offsets", "local expert 1"}},
      {"negative offset", {-2, 5, 10, 20}, {5, 1, 10, 8}, {"expert_offsets", "local expert 0"}},
      {"past the last row", {0, 5, 10, 35}, {5, 1, 10, 8}, {"expert_offsets", "local expert 3"}},
      {"neighbours share a row",
       {0, 4, 10, 20},
       {5, 3, 10, 8},
       {"local experts 0 and 1", "overlap"}},
      {"one inside another", {0, 2, 12, 20}, {10, 3, 6, 8}, {"local experts 0 and 1", "overlap"}},
      {"out of order, sharing rows",
       {25, 8, 0, 5},
       {8, 0, 10, 2},
       {"local experts 2 and 3", "overlap"}},
      {"the same range twice", {3, 20, 3, 30}, {4, 5, 4, 1}, {"local experts 0 and 2", "overlap"}},
  };
  for (const RangeCase& c : cases) {
    SCOPED_TRACE(c.what);
    Buffer intermediate = Buffer::poisoned(DType::f32, kRows * kInter);
    Buffer out = Buffer::poisoned(DType::f32, kRows * kHidden);
    const std::vector<uint8_t> untouched = out.bytes();
    const ExpertArgs args =
        expert_stage_args(in, c.offsets, c.counts, w13, w2, intermediate, out, kHidden, kInter);
    ThreadPool pool(3);
    if (c.names.empty()) {
      EXPECT_NO_THROW(experts(args, Stream::cpu(&pool)));
      EXPECT_NE(out.bytes(), untouched);
    } else {
      expect_error_naming([&] { experts(args, Stream::cpu(&pool)); }, c.names, c.what);
      EXPECT_EQ(out.bytes(), untouched) << "a refused call wrote rows";
    }
  }
}

// An engine's ranges may come in any order for any number of experts: 2^16 one-row ranges in
// reverse order are accepted and computed, and one pair sharing a row far apart in that order is
// refused naming both (the check sorts the ranges instead of comparing every pair).
TEST(StageRanges, ManyRangesInReverseOrderAreCheckedByFirstRow) {
  Rng rng = Rng::for_current_test();
  constexpr int64_t kLocal = int64_t{1} << 16, kRows = kLocal, kHidden = 8, kInter = 8;
  const Buffer in = Buffer::from(DType::f32, rng.nonzero_vector(kRows * kHidden, 1.0f));
  const Buffer w13 =
      Buffer::from(DType::f32, rng.nonzero_vector(kLocal * 2 * kInter * kHidden, 0.2f));
  const Buffer w2 = Buffer::from(DType::f32, rng.nonzero_vector(kLocal * kHidden * kInter, 0.3f));
  std::vector<int32_t> offsets(kLocal), counts(kLocal, 1);
  for (int64_t e = 0; e < kLocal; ++e) offsets[e] = static_cast<int32_t>(kLocal - 1 - e);
  ThreadPool pool(2);
  Buffer intermediate = Buffer::poisoned(DType::f32, kRows * kInter);
  Buffer out = Buffer::poisoned(DType::f32, kRows * kHidden);
  const std::vector<uint8_t> untouched = out.bytes();
  EXPECT_NO_THROW(
      experts(expert_stage_args(in, offsets, counts, w13, w2, intermediate, out, kHidden, kInter),
              Stream::cpu(&pool)));
  EXPECT_NE(out.bytes(), untouched);

  offsets[kLocal - 1] = offsets[1];  // expert 65535 now shares expert 1's row; row 0 is empty
  Buffer refused_out = Buffer::poisoned(DType::f32, kRows * kHidden);
  expect_error_naming(
      [&] {
        experts(expert_stage_args(in, offsets, counts, w13, w2, intermediate, refused_out, kHidden,
                                  kInter),
                Stream::cpu(&pool));
      },
      {"local experts 1 and 65535", "overlap"}, "two of 2^16 reversed ranges share a row");
  EXPECT_EQ(refused_out.bytes(), untouched) << "a refused call wrote rows";
}

// The diagnostics counters add up across calls and stop at INT32_MAX instead of wrapping to a
// negative count (core/diagnostic_count.h): route's non-finite count and plan's out-of-range
// count, from just below the limit and from a small start.
TEST(StageDiagnostics, CountersSaturateAtInt32Max) {
  constexpr int64_t kTokens = 6, kExperts = 8, kTopK = 2;
  for (const int32_t start : {INT32_MAX - 3, 5}) {
    SCOPED_TRACE("start " + std::to_string(start));
    std::vector<float> logits(kTokens * kExperts, std::nanf(""));
    std::vector<int32_t> ids(kTokens * kTopK, 0);
    std::vector<float> weights(kTokens * kTopK, 0.0f);
    std::vector<int32_t> diagnostics(kDiagnosticCount, start);
    RouteArgs r;
    r.logits = TensorView::contiguous(logits.data(), DType::f32, {kTokens, kExperts});
    r.topk_ids = TensorView::contiguous(ids.data(), DType::i32, {kTokens, kTopK});
    r.topk_weights = TensorView::contiguous(weights.data(), DType::f32, {kTokens, kTopK});
    r.diagnostics = diagnostics.data();
    ThreadPool pool(3);
    route(RoutingConfig{}, r, Stream::cpu(&pool));
    EXPECT_EQ(diagnostics[kDiagNonFiniteLogit],
              std::min<int64_t>(int64_t{start} + kTokens * kExperts, INT32_MAX));

    std::fill(ids.begin(), ids.end(), static_cast<int32_t>(kExperts + 3));  // all out of range
    std::vector<int32_t> counts(kExperts), offsets(kExperts + 1), slot_to_row(kTokens * kTopK),
        row_to_slot(kTokens * kTopK);
    PlanArgs pa;
    pa.topk_ids = TensorView::contiguous(ids.data(), DType::i32, {kTokens, kTopK});
    pa.num_experts = kExperts;
    pa.expert_counts = TensorView::contiguous(counts.data(), DType::i32, {kExperts});
    pa.expert_offsets = TensorView::contiguous(offsets.data(), DType::i32, {kExperts + 1});
    pa.slot_to_row = TensorView::contiguous(slot_to_row.data(), DType::i32, {kTokens, kTopK});
    pa.row_to_slot = TensorView::contiguous(row_to_slot.data(), DType::i32, {kTokens * kTopK});
    pa.diagnostics = diagnostics.data();
    plan(pa, Stream::cpu(&pool));
    EXPECT_EQ(diagnostics[kDiagIdOutOfRange],
              std::min<int64_t>(int64_t{start} + kTokens * kTopK, INT32_MAX));
    EXPECT_EQ(diagnostics[kDiagIdRemote], start);
    EXPECT_EQ(diagnostics[kDiagCapacityOverflow], start);
  }
}

}  // namespace
}  // namespace ironmoe::test
