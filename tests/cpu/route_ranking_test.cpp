// Routing contract, ranking clauses: NaN ranks below every number, ties go to the lower index, k
// distinct ids come back for every row, whatever it holds; for each routing kind.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "core/routing_rules.h"
#include "route_helpers.h"

namespace ironmoe::test {
namespace {

class RouteRanking : public ::testing::TestWithParam<RoutingKind> {
 protected:
  RoutingConfig routing() const { return routing_for(GetParam()); }
  bool grouped() const { return GetParam() == RoutingKind::grouped_topk; }
};

std::string kind_name(const ::testing::TestParamInfo<RoutingKind>& info) {
  return routing_kind_name(info.param);
}

INSTANTIATE_TEST_SUITE_P(Kinds, RouteRanking,
                         ::testing::Values(RoutingKind::softmax_topk, RoutingKind::sigmoid_topk,
                                           RoutingKind::grouped_topk),
                         kind_name);

// Every pattern, several (E, k) including k = 1 and k = E, against the reference and the row
// properties.
TEST_P(RouteRanking, KDistinctIdsForEveryRowPattern) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const std::vector<RowPattern> patterns(std::begin(kAllPatterns), std::end(kAllPatterns));
  for (const auto& [experts, top_k] :
       {std::pair<int64_t, int64_t>{8, 1}, {16, 4}, {32, 8}, {64, 10}, {32, 32}, {40, 16}}) {
    if (grouped() && top_k > experts / 2) continue;  // the 4 kept groups hold E/2 experts
    SCOPED_TRACE("E " + std::to_string(experts) + " k " + std::to_string(top_k));
    const RouteProblem p = make_route_problem(routing(), 5 * static_cast<int64_t>(patterns.size()),
                                              experts, top_k, patterns, rng);
    const RouteOutput got = run_route(p);
    expect_valid_rows(p, got);
    expect_matches_reference(p, got);
  }
}

// softmax and sigmoid rank by the logit: a NaN is chosen only after every number, and then the
// lowest-index NaNs first. For grouped_topk the reference comparison covers the same rule.
TEST_P(RouteRanking, NanRanksBelowEveryNumber) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  constexpr int64_t kExperts = 32;
  constexpr int64_t kTopK = 8;
  for (int nan_count : {1, 8, 24, 25, 28, 31, 32}) {
    RouteProblem p = make_route_problem(routing(), 6, kExperts, kTopK, {RowPattern::random}, rng);
    for (int64_t t = 0; t < p.tokens; ++t) {
      float* row = p.logits.data() + t * kExperts;
      // Index 0 is always a NaN (the lowest index must not win), the others are shuffled.
      std::vector<int64_t> order(kExperts);
      for (int64_t e = 0; e < kExperts; ++e) order[e] = e;
      std::shuffle(order.begin() + 1, order.end(), rng.engine());
      for (int i = 0; i < nan_count; ++i) row[order[i]] = std::numeric_limits<float>::quiet_NaN();
    }
    const RouteOutput got = run_route(p);
    expect_valid_rows(p, got);
    expect_matches_reference(p, got);
    if (grouped()) continue;
    for (int64_t t = 0; t < p.tokens; ++t) {
      const float* row = p.logits.data() + t * kExperts;
      const int32_t* ids = got.ids.data() + t * kTopK;
      int64_t numbers = 0;
      for (int64_t e = 0; e < kExperts; ++e) numbers += std::isnan(row[e]) ? 0 : 1;
      bool seen_nan = false;
      int32_t last_nan = -1;
      for (int64_t j = 0; j < kTopK; ++j) {
        const bool is_nan = std::isnan(row[ids[j]]);
        const bool wrong =
            (is_nan && j < numbers) || (!is_nan && seen_nan) || (is_nan && ids[j] <= last_nan);
        ASSERT_FALSE(wrong) << "row " << t << " slot " << j << ": id " << ids[j]
                            << (is_nan ? " (NaN)" : "") << " breaks NaN-ranks-last; ids "
                            << ids_string(ids, kTopK) << " logits " << row_string(row, kExperts);
        if (is_nan) {
          seen_nan = true;
          last_nan = ids[j];
        }
      }
    }
  }
}

// Equal logits rank by index. An all-equal row (bias zero for grouped) gives ids 0..k-1; rows
// of three repeated values check that ids of equal logits are increasing and that no lower
// index with the same logit was passed over.
TEST_P(RouteRanking, TiesGoToTheLowerIndex) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  constexpr int64_t kExperts = 32;
  constexpr int64_t kTopK = 8;
  RouteProblem equal =
      make_route_problem(routing(), 16, kExperts, kTopK, {RowPattern::all_equal}, rng);
  equal.bias.clear();
  const RouteOutput got_equal = run_route(equal);
  for (int64_t t = 0; t < equal.tokens; ++t)
    for (int64_t j = 0; j < kTopK; ++j)
      ASSERT_EQ(got_equal.ids[t * kTopK + j], j)
          << "all-equal row " << t << " should select experts 0..k-1, got "
          << ids_string(got_equal.ids.data() + t * kTopK, kTopK);

  const RouteProblem ties =
      make_route_problem(routing(), 64, kExperts, kTopK, {RowPattern::few_values}, rng);
  const RouteOutput got = run_route(ties);
  expect_valid_rows(ties, got);
  expect_matches_reference(ties, got);
  if (grouped()) return;
  for (int64_t t = 0; t < ties.tokens; ++t) {
    const float* row = ties.logits.data() + t * kExperts;
    const int32_t* ids = got.ids.data() + t * kTopK;
    std::vector<bool> chosen(kExperts, false);
    for (int64_t j = 0; j < kTopK; ++j) chosen[ids[j]] = true;
    for (int64_t j = 0; j < kTopK; ++j)
      for (int64_t e = 0; e < ids[j]; ++e)
        ASSERT_FALSE(!chosen[e] && row[e] == row[ids[j]])
            << "row " << t << ": chose expert " << ids[j] << " over expert " << e
            << " with the same logit " << row[e] << "; ids " << ids_string(ids, kTopK);
  }
}

// Ranking is by the logit itself: a saturating sigmoid (1.0f for every logit above ~17) must not
// turn distinct logits into a tie.
TEST(RouteRankingSigmoid, RanksByLogitWhereTheSigmoidSaturates) {
  RouteProblem p;
  p.routing = routing_for(RoutingKind::sigmoid_topk);
  p.tokens = 1;
  p.experts = 8;
  p.top_k = 2;
  p.logits = {20.0f, 25.0f, 30.0f, 40.0f, 1.0f, 2.0f, 3.0f, 4.0f};
  const RouteOutput got = run_route(p);
  EXPECT_EQ(got.ids[0], 3) << "logit 40 ranks first; ids " << ids_string(got.ids.data(), 2);
  EXPECT_EQ(got.ids[1], 2) << "logit 30 ranks second; ids " << ids_string(got.ids.data(), 2);
  expect_matches_reference(p, got);
}

// grouped_topk with one expert per group (a group scores its only key), and with k filling the
// kept groups exactly.
TEST(RouteRankingGrouped, GroupSizeOneAndFullGroups) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const std::vector<RowPattern> patterns(std::begin(kAllPatterns), std::end(kAllPatterns));
  RoutingConfig routing = routing_for(RoutingKind::grouped_topk);
  routing.num_groups = 16;
  routing.topk_groups = 8;
  for (int64_t top_k : {4, 8}) {
    const RouteProblem p = make_route_problem(routing, 44, 16, top_k, patterns, rng);
    const RouteOutput got = run_route(p);
    expect_valid_rows(p, got);
    expect_matches_reference(p, got);
  }
  routing.num_groups = 4;
  routing.topk_groups = 2;
  const RouteProblem full = make_route_problem(routing, 44, 32, 16, patterns, rng);
  const RouteOutput got = run_route(full);
  expect_valid_rows(full, got);
  expect_matches_reference(full, got);
}

// The ordered bits the CUDA route reduces with redux.sync: integer order is the keys' order,
// -0 and +0 tie, and the bits map back to the key. Every pair of the special values (infinities,
// the largest and smallest magnitudes, both zeros) and random pairs of non-NaN bit patterns.
TEST(RankKeyBits, OrderAndEqualityAsTheKeysHaveThem) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  constexpr float kMax = std::numeric_limits<float>::max();
  constexpr float kTiny = std::numeric_limits<float>::denorm_min();
  constexpr float kInf = std::numeric_limits<float>::infinity();
  std::vector<float> keys = {-kInf, -kMax, -1.5f, -kTiny, -0.0f, 0.0f, kTiny, 1.5f, kMax, kInf};
  std::uniform_int_distribution<uint32_t> any_bits;
  while (keys.size() < 400) {
    const uint32_t bits = any_bits(rng.engine());
    float key;
    std::memcpy(&key, &bits, sizeof key);
    if (!std::isnan(key)) keys.push_back(key);
  }
  for (float a : keys) {
    const uint32_t a_bits = core::rank_key_bits(a);
    ASSERT_EQ(core::rank_key_from_bits(a_bits), a) << a;
    if (a == 0.0f) {
      ASSERT_FALSE(std::signbit(core::rank_key_from_bits(a_bits))) << "a zero maps back to +0";
    }
    for (float b : keys) {
      const uint32_t b_bits = core::rank_key_bits(b);
      ASSERT_EQ(a > b, a_bits > b_bits) << a << " vs " << b;
      ASSERT_EQ(a == b, a_bits == b_bits) << a << " vs " << b;
    }
  }
}

// The redux arg-best of the CUDA route (the largest key's bits over the lanes, then the smallest
// index among the lanes holding them) picks what core::ranks_before picks, on 32-lane rounds full
// of ties (keys from a small set, both zeros and -inf among them) with exhausted lanes offering
// (-inf, INT_MAX).
TEST(RankKeyBits, MaxBitsThenMinIndexIsTheArgBest) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const float kInf = std::numeric_limits<float>::infinity();
  const std::vector<float> few = {-kInf, -2.0f, -0.0f, 0.0f, 0.5f, 0.5f, 3.0f, kInf};
  constexpr int kLanes = 32;
  for (int round = 0; round < 2000; ++round) {
    // Keys from a prefix of `few` (ascending), so that every value of it is the round's best in
    // some rounds, the two zeros included.
    const int64_t span = rng.integer(1, static_cast<int64_t>(few.size()));
    float key[kLanes];
    int index[kLanes];
    for (int lane = 0; lane < kLanes; ++lane) {
      const bool exhausted = rng.chance(0.2);
      key[lane] = exhausted ? -kInf : few[rng.integer(0, span - 1)];
      index[lane] = exhausted ? INT_MAX : lane + kLanes * static_cast<int>(rng.integer(0, 15));
    }
    int expected = 0;
    for (int lane = 1; lane < kLanes; ++lane) {
      if (core::ranks_before(key[lane], index[lane], key[expected], index[expected]))
        expected = lane;
    }
    uint32_t top = 0;
    for (int lane = 0; lane < kLanes; ++lane) top = std::max(top, core::rank_key_bits(key[lane]));
    uint32_t best = UINT32_MAX;
    for (int lane = 0; lane < kLanes; ++lane) {
      if (core::rank_key_bits(key[lane]) == top)
        best = std::min(best, static_cast<uint32_t>(index[lane]));
    }
    ASSERT_EQ(static_cast<int>(best), index[expected]) << "round " << round;
    ASSERT_EQ(core::rank_key_from_bits(top), key[expected]) << "round " << round;
  }
}

}  // namespace
}  // namespace ironmoe::test
