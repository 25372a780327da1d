// Routing contract, weight clauses: weights are finite, degenerate rows get 1/k, renormalisation
// on/off, the scaling factor, padding rows (ids -1, weights 0) and the non-finite-logit counter.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <limits>

#include "route_helpers.h"

namespace ironmoe::test {
namespace {

class RouteWeights : public ::testing::TestWithParam<RoutingKind> {
 protected:
  RoutingConfig routing() const { return routing_for(GetParam()); }
};

std::string kind_name(const ::testing::TestParamInfo<RoutingKind>& info) {
  return routing_kind_name(info.param);
}

INSTANTIATE_TEST_SUITE_P(Kinds, RouteWeights,
                         ::testing::Values(RoutingKind::softmax_topk, RoutingKind::sigmoid_topk,
                                           RoutingKind::grouped_topk),
                         kind_name);

constexpr int64_t kExperts = 32;
constexpr int64_t kTopK = 8;

bool is_degenerate(const float* row, int64_t n) {
  for (int64_t e = 0; e < n; ++e)
    if (!std::isnan(row[e]) && row[e] > -std::numeric_limits<float>::infinity()) return false;
  return true;
}

TEST_P(RouteWeights, DegenerateRowsGetExpertsZeroToKWithUniformWeights) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  for (bool renormalize : {true, false}) {
    RoutingConfig config = routing();
    config.renormalize = renormalize;
    const RouteProblem p = make_route_problem(
        config, 12, kExperts, kTopK,
        {RowPattern::all_nan, RowPattern::all_neg_inf, RowPattern::nan_and_neg_inf}, rng);
    const RouteOutput got = run_route(p);
    const double expected = double{config.routed_scaling_factor} / kTopK;
    for (int64_t t = 0; t < p.tokens; ++t)
      for (int64_t j = 0; j < kTopK; ++j) {
        const int64_t s = t * kTopK + j;
        ASSERT_TRUE(got.ids[s] == j && std::abs(got.weights[s] - expected) <= 1e-6 * expected)
            << "degenerate row " << t << " (renormalize " << renormalize << ") slot " << j
            << ": got id " << got.ids[s] << " weight " << got.weights[s] << ", expected id " << j
            << " weight " << expected << "; logits "
            << row_string(p.logits.data() + t * kExperts, kExperts);
      }
  }
}

// Extreme but legal rows: +-FLT_MAX, +inf next to numbers, denormals. No reference comparison
// (float and double underflow differently here); the clause is about finiteness and the sum.
TEST_P(RouteWeights, WeightsAreFiniteAndRenormalisedWeightsSumToTheScale) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const std::vector<RowPattern> patterns(std::begin(kAllPatterns), std::end(kAllPatterns));
  RouteProblem p = make_route_problem(routing(), 200, kExperts, kTopK, patterns, rng);
  const float extremes[] = {FLT_MAX, -FLT_MAX, 1e30f,
                            -1e30f,  1e-40f,   -1e-40f,
                            88.0f,   -104.0f,  std::numeric_limits<float>::infinity()};
  for (int64_t t = 100; t < p.tokens; ++t)
    for (int64_t e = 0; e < kExperts; ++e)
      if (rng.chance(0.5))
        p.logits[t * kExperts + e] = extremes[rng.integer(0, std::size(extremes) - 1)];
  const RouteOutput got = run_route(p);
  expect_valid_rows(p, got);
  const double scale = p.routing.routed_scaling_factor;
  for (int64_t t = 0; t < p.tokens; ++t) {
    double sum = 0.0;
    for (int64_t j = 0; j < kTopK; ++j) sum += got.weights[t * kTopK + j];
    ASSERT_NEAR(sum, scale, 1e-5 * scale)
        << "row " << t << ": renormalised weights " << row_string(&got.weights[t * kTopK], kTopK)
        << " do not sum to the scaling factor; logits "
        << row_string(p.logits.data() + t * kExperts, kExperts);
  }
}

// Without renormalisation the weights are the raw probabilities (softmax over all E, or the
// sigmoid); with it they are those divided by their sum. Same ids either way.
TEST_P(RouteWeights, RenormaliseOnAndOff) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  RoutingConfig off = routing();
  off.renormalize = false;
  RoutingConfig on = off;
  on.renormalize = true;
  RouteProblem p =
      make_route_problem(off, 60, kExperts, kTopK,
                         {RowPattern::random, RowPattern::mixed_all, RowPattern::nan_and_numbers,
                          RowPattern::few_values, RowPattern::all_pos_inf},
                         rng);
  const RouteOutput got_off = run_route(p);
  expect_valid_rows(p, got_off);
  expect_matches_reference(p, got_off);
  p.routing = on;
  const RouteOutput got_on = run_route(p);
  expect_matches_reference(p, got_on);
  for (int64_t t = 0; t < p.tokens; ++t) {
    const int64_t first = t * kTopK;
    double sum = 0.0;
    for (int64_t j = 0; j < kTopK; ++j) sum += got_off.weights[first + j];
    for (int64_t j = 0; j < kTopK; ++j) {
      ASSERT_EQ(got_on.ids[first + j], got_off.ids[first + j])
          << "row " << t << ": renormalize changed the ids";
      if (sum <= 0.0) continue;
      const double expected = got_off.weights[first + j] / sum * off.routed_scaling_factor;
      ASSERT_NEAR(got_on.weights[first + j], expected, 2e-6 * off.routed_scaling_factor)
          << "row " << t << " slot " << j << ": renormalised weight is not raw / sum(raw)";
    }
  }
}

TEST_P(RouteWeights, ScalingFactorMultipliesEveryWeight) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const std::vector<RowPattern> patterns(std::begin(kAllPatterns), std::end(kAllPatterns));
  for (bool renormalize : {true, false}) {
    RoutingConfig unit = routing();
    unit.renormalize = renormalize;
    unit.routed_scaling_factor = 1.0f;
    RouteProblem p = make_route_problem(unit, 44, kExperts, kTopK, patterns, rng);
    const RouteOutput base = run_route(p);
    for (float scale : {2.5f, 0.375f, 16.0f}) {
      p.routing.routed_scaling_factor = scale;
      const RouteOutput scaled = run_route(p);
      expect_matches_reference(p, scaled);
      for (size_t s = 0; s < base.ids.size(); ++s) {
        ASSERT_EQ(scaled.ids[s], base.ids[s]) << "slot " << s << ": scaling changed the ids";
        ASSERT_NEAR(scaled.weights[s], double{base.weights[s]} * scale, 1e-6 * scale)
            << "slot " << s << " (scale " << scale << ", renormalize " << renormalize
            << "): weight is not scale * unscaled weight";
      }
    }
  }
}

// Rows at or beyond *num_valid_tokens: ids -1, weights 0, whatever they hold; their logits are
// not counted as non-finite. Valid rows are routed as usual.
TEST_P(RouteWeights, PaddingRowsRouteToNothing) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const std::vector<RowPattern> patterns(std::begin(kAllPatterns), std::end(kAllPatterns));
  constexpr int64_t kTokens = 37;
  for (int32_t num_valid : {0, -3, 1, static_cast<int32_t>(rng.integer(2, kTokens - 1)),
                            static_cast<int32_t>(kTokens), static_cast<int32_t>(kTokens + 5)}) {
    SCOPED_TRACE("num_valid " + std::to_string(num_valid));
    RouteProblem p = make_route_problem(routing(), kTokens, kExperts, kTopK, patterns, rng);
    p.num_valid = num_valid;
    const RouteOutput got = run_route(p);
    expect_valid_rows(p, got);
    expect_matches_reference(p, got);
    int32_t nonfinite = 0;
    for (int64_t t = 0; t < std::min<int64_t>(std::max(num_valid, 0), kTokens); ++t)
      for (int64_t e = 0; e < kExperts; ++e)
        nonfinite += std::isfinite(p.logits[t * kExperts + e]) ? 0 : 1;
    EXPECT_EQ(got.diagnostics[kDiagNonFiniteLogit], nonfinite)
        << "non-finite logits of valid rows counted wrongly";
    EXPECT_EQ(got.diagnostics[kDiagIdOutOfRange], 0);
    EXPECT_EQ(got.diagnostics[kDiagIdRemote], 0);
    EXPECT_EQ(got.diagnostics[kDiagCapacityOverflow], 0);
  }
}

TEST_P(RouteWeights, Bf16LogitsMatchTheReference) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const std::vector<RowPattern> patterns(std::begin(kAllPatterns), std::end(kAllPatterns));
  RouteProblem p = make_route_problem(routing(), 66, kExperts, kTopK, patterns, rng);
  p.logits_dtype = DType::bf16;
  const RouteOutput got = run_route(p);
  expect_valid_rows(p, got);
  expect_matches_reference(p, got);
}

TEST_P(RouteWeights, DegenerateDetectionMatchesTheRule) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const RouteProblem p = make_route_problem(
      routing(), 40, kExperts, kTopK,
      {RowPattern::one_usable, RowPattern::nan_and_neg_inf, RowPattern::mixed_nonfinite}, rng);
  const RouteOutput got = run_route(p);
  expect_matches_reference(p, got);
  // A row with a usable logit selects it first unless grouping excludes its group.
  if (GetParam() == RoutingKind::grouped_topk) return;
  for (int64_t t = 0; t < p.tokens; ++t) {
    const float* row = p.logits.data() + t * kExperts;
    if (is_degenerate(row, kExperts)) continue;
    int64_t best = 0;
    for (int64_t e = 1; e < kExperts; ++e)
      if (!std::isnan(row[e]) && (std::isnan(row[best]) || row[e] > row[best])) best = e;
    ASSERT_EQ(got.ids[t * kTopK], best)
        << "row " << t << ": best usable logit not ranked first; " << row_string(row, kExperts);
  }
}

}  // namespace
}  // namespace ironmoe::test
