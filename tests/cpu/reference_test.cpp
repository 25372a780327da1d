// The reference checks itself against facts derived by hand from the definitions, so a mistake in
// it cannot pass silently as agreement with the library; and its bf16 conversion is compared with
// the library's (src/core/bf16.h) over many values.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>

#include "core/bf16.h"
#include "reference_moe.h"
#include "test_util.h"

namespace ironmoe::test {
namespace {

float from_bits(uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

TEST(Reference, Bf16RoundsToNearestEven) {
  // bf16 keeps 7 mantissa bits: near 1.0 its ulp is 2^-7, so 1 + 2^-8 is a tie.
  EXPECT_EQ(reference::to_bf16_bits(1.0f), 0x3f80);
  EXPECT_EQ(reference::to_bf16_bits(1.0f + 0x1p-8f), 0x3f80) << "tie goes to the even 1.0";
  EXPECT_EQ(reference::to_bf16_bits(1.0f + 0x1p-7f + 0x1p-8f), 0x3f82) << "tie goes up to even";
  EXPECT_EQ(reference::to_bf16_bits(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81) << "above the tie";
  EXPECT_EQ(reference::to_bf16_bits(-2.0f), 0xc000);
  EXPECT_EQ(reference::to_bf16_bits(FLT_MAX), 0x7f80) << "FLT_MAX rounds up to +inf";
  EXPECT_EQ(reference::to_bf16_bits(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_TRUE(std::isnan(
      reference::from_bf16_bits(reference::to_bf16_bits(std::numeric_limits<float>::quiet_NaN()))));
  EXPECT_TRUE(
      std::isnan(reference::from_bf16_bits(reference::to_bf16_bits(from_bits(0x7f800001u)))))
      << "a NaN whose payload sits in the dropped bits stays NaN";
  EXPECT_EQ(reference::round_to_bf16(3.0), 3.0f);
}

TEST(Reference, Bf16AgreesWithTheLibraryConversion) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  for (int i = 0; i < 200000; ++i) {
    const uint32_t bits = static_cast<uint32_t>(rng.engine()());
    const float value = from_bits(bits);
    const uint16_t ours = reference::to_bf16_bits(value);
    const uint16_t theirs = core::float_to_bf16(value);
    if (std::isnan(value)) {
      ASSERT_TRUE(std::isnan(reference::from_bf16_bits(theirs))) << "NaN " << std::hex << bits;
      continue;
    }
    ASSERT_EQ(ours, theirs) << "float bits 0x" << std::hex << bits;
    ASSERT_EQ(reference::from_bf16_bits(ours), core::bf16_to_float(theirs));
  }
}

TEST(Reference, SoftmaxWeightsOfAHandComputedRow) {
  // logits [0, ln 3]: p = [1/4, 3/4]; k = 2, no renormalisation, scaling 2.
  RoutingConfig routing;
  routing.renormalize = false;
  routing.routed_scaling_factor = 2.0f;
  const float logits[] = {0.0f, std::log(3.0f)};
  int32_t ids[2];
  float weights[2];
  reference::route(routing, 1, 2, 2, logits, nullptr, 1, ids, weights);
  EXPECT_EQ(ids[0], 1);
  EXPECT_EQ(ids[1], 0);
  EXPECT_NEAR(weights[0], 1.5, 1e-6);
  EXPECT_NEAR(weights[1], 0.5, 1e-6);
}

TEST(Reference, GroupedSelectionOfAHandBuiltRow) {
  // 4 groups of 2, logits 0 (sigmoid 0.5), so the selection keys are 0.5 + bias:
  //   e0 0.8, e1 0.7 | e2 0.5, e3 0.6 | e4 1.4, e5 0.9 | e6 1.3, e7 -0.4
  // Group scores (two best keys): 1.5, 1.1, 2.3, 0.9 -> groups 2 and 0 kept. Expert 6 has the
  // second best key but its group is dropped; k = 3 gives experts 4, 5, 0.
  RoutingConfig routing;
  routing.kind = RoutingKind::grouped_topk;
  routing.num_groups = 4;
  routing.topk_groups = 2;
  routing.renormalize = true;
  const float logits[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const float bias[8] = {0.3f, 0.2f, 0.0f, 0.1f, 0.9f, 0.4f, 0.8f, -0.9f};
  int32_t ids[3];
  float weights[3];
  reference::route(routing, 1, 8, 3, logits, bias, 1, ids, weights);
  EXPECT_EQ(ids[0], 4);
  EXPECT_EQ(ids[1], 5);
  EXPECT_EQ(ids[2], 0);
  for (float w : weights) EXPECT_NEAR(w, 1.0 / 3.0, 1e-6) << "equal sigmoids renormalise to 1/3";
}

TEST(Reference, MaxRelativeErrorIsPerRowAndRejectsNonFinite) {
  const double ref[] = {1.0, -2.0, 0.0, 0.0};
  const float exact[] = {1.0f, -2.0f, 0.0f, 0.0f};
  const float off[] = {1.0f, -1.0f, 0.0f, 0.0f};
  const float nan[] = {1.0f, -2.0f, std::nanf(""), 0.0f};
  const float nonzero[] = {1.0f, -2.0f, 0.0f, 1e-20f};
  EXPECT_EQ(reference::max_relative_error(ref, exact, 2, 2), 0.0);
  EXPECT_DOUBLE_EQ(reference::max_relative_error(ref, off, 2, 2), 0.5) << "|1| / max(|1|,|2|)";
  EXPECT_TRUE(std::isinf(reference::max_relative_error(ref, nan, 2, 2)));
  EXPECT_GT(reference::max_relative_error(ref, nonzero, 2, 2), 1.0)
      << "any value where the reference row is zero is a large error";
}

TEST(Reference, LayerOfOneTokenByHand) {
  // H = 1, I = 1, one expert: gate = up = x * 1, h = silu(x) * x, y = h * 2, weighted by 0.5.
  MoeConfig config = small_config(1, 1, 1);
  config.hidden = 1;
  config.intermediate = 1;
  const float x[] = {1.5f};
  const int32_t ids[] = {0};
  const float weights[] = {0.5f};
  const float w13[] = {1.0f, 1.0f};
  const float w2[] = {2.0f};
  double out[1];
  reference::layer(config, 1, x, ids, weights, w13, w2, 1, {0}, false, out);
  const double silu = 1.5 / (1.0 + std::exp(-1.5));
  EXPECT_NEAR(out[0], 0.5 * 2.0 * silu * 1.5, 1e-12);
}

}  // namespace
}  // namespace ironmoe::test
