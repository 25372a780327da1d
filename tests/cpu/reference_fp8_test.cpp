// The FP8 reference (reference/reference_fp8.h) against src/core/fp8.h (two independent encoders
// must agree on every value) and against the unquantised float64 reference: each scheme lands
// within FP8's precision of it, quantises for real, keeps block scales in bounds when H and I are
// not multiples of 128, and keeps a per-tensor dynamic scale free of NaN rows.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/fp8.h"
#include "reference_fp8.h"
#include "reference_moe.h"

namespace ironmoe {
namespace {

using reference::Fp8Scheme;

TEST(ReferenceFp8, EncoderAgreesWithTheLibraryOnEveryCodeAndRandomValues) {
  for (int code = 0; code < 256; ++code) {
    const float value = reference::from_fp8_bits(static_cast<uint8_t>(code));
    if (std::isnan(value)) continue;
    EXPECT_EQ(core::fp8_e4m3_to_float(static_cast<uint8_t>(code)), value) << code;
    EXPECT_EQ(reference::to_fp8_bits(value), core::float_to_fp8_e4m3(value)) << code;
  }
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> exponent(-13.0f, 10.0f);
  for (int i = 0; i < 20000; ++i) {
    const float value = std::exp2(exponent(rng)) * (i % 2 ? 1.0f : -1.0f);
    ASSERT_EQ(reference::to_fp8_bits(value), core::float_to_fp8_e4m3(value)) << value;
  }
  EXPECT_EQ(reference::fp8_group_scale(3.0), core::fp8_dynamic_scale(3.0f));
  EXPECT_EQ(reference::fp8_group_scale(0.0), core::fp8_dynamic_scale(0.0f));
}

struct Problem {
  MoeConfig config;
  int64_t tokens = 0;
  std::vector<float> x, w13, w2, weights;
  std::vector<int32_t> ids;
};

Problem random_problem(int64_t tokens, int64_t hidden, int64_t inter, int64_t experts,
                       int64_t top_k, uint32_t seed) {
  Problem p;
  p.tokens = tokens;
  p.config.hidden = hidden;
  p.config.intermediate = inter;
  p.config.num_experts = experts;
  p.config.top_k = top_k;
  p.config.max_tokens = tokens;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto fill = [&](std::vector<float>& v, size_t n, float scale) {
    v.resize(n);
    for (float& value : v) value = normal(rng) * scale;
  };
  fill(p.x, static_cast<size_t>(tokens * hidden), 1.0f);
  fill(p.w13, static_cast<size_t>(experts * 2 * inter * hidden), 1.0f / std::sqrt(float(hidden)));
  fill(p.w2, static_cast<size_t>(experts * hidden * inter), 1.0f / std::sqrt(float(inter)));
  p.ids.resize(static_cast<size_t>(tokens * top_k));
  p.weights.resize(p.ids.size());
  std::uniform_real_distribution<float> uniform(0.1f, 1.0f);
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < top_k; ++j) {
      p.ids[t * top_k + j] = static_cast<int32_t>((t * 7 + j * 3) % experts);
      p.weights[t * top_k + j] = uniform(rng);
    }
  }
  return p;
}

std::vector<double> unquantised(const Problem& p, const std::vector<int64_t>& tokens) {
  std::vector<double> out(tokens.size() * static_cast<size_t>(p.config.hidden));
  reference::layer(p.config, p.tokens, p.x.data(), p.ids.data(), p.weights.data(), p.w13.data(),
                   p.w2.data(), p.tokens, tokens, false, out.data());
  return out;
}

std::vector<double> fp8(const Problem& p, Fp8Scheme scheme, const std::vector<int64_t>& tokens,
                        const float* static_scales = nullptr, int64_t num_valid = -1) {
  const reference::Fp8Weights w =
      reference::quantize_weights(scheme, p.config.num_experts, p.config.hidden,
                                  p.config.intermediate, p.w13.data(), p.w2.data());
  std::vector<double> out(tokens.size() * static_cast<size_t>(p.config.hidden));
  reference::layer_fp8(p.config, p.tokens, p.x.data(), p.ids.data(), p.weights.data(), w,
                       static_scales, num_valid < 0 ? p.tokens : num_valid, tokens, out.data());
  return out;
}

// max over rows of max |a - b| / max |b| of the row.
double relative_error(const std::vector<double>& a, const std::vector<double>& b, int64_t cols) {
  double worst = 0.0;
  for (size_t r = 0; r < a.size() / static_cast<size_t>(cols); ++r) {
    double diff = 0.0, scale = 1e-30;
    for (int64_t c = 0; c < cols; ++c) {
      diff = std::max(diff, std::fabs(a[r * cols + c] - b[r * cols + c]));
      scale = std::max(scale, std::fabs(b[r * cols + c]));
    }
    worst = std::max(worst, diff / scale);
  }
  return worst;
}

class ReferenceFp8Schemes : public ::testing::TestWithParam<Fp8Scheme> {};

// E4M3 keeps 3 mantissa bits (relative step 1/8 to 1/16): rounding errors of random signs in
// dot products of a few hundred terms stay around a few percent of the row's largest output.
TEST_P(ReferenceFp8Schemes, CloseToTheUnquantisedLayerButNotEqual) {
  const Problem p = random_problem(6, 320, 200, 4, 2, 21);  // H, I not multiples of 128
  const std::vector<int64_t> tokens = {0, 1, 2, 3, 4, 5};
  const double error = relative_error(fp8(p, GetParam(), tokens), unquantised(p, tokens), 320);
  EXPECT_GT(error, 1e-4) << "the layer was not quantised";
  EXPECT_LT(error, 0.12);
}

INSTANTIATE_TEST_SUITE_P(Schemes, ReferenceFp8Schemes,
                         ::testing::Values(Fp8Scheme::per_tensor, Fp8Scheme::per_channel,
                                           Fp8Scheme::block));

TEST(ReferenceFp8, BlockScaleShapesFollowTheFormats) {
  const Problem p = random_problem(1, 300, 72, 3, 1, 5);
  const auto w = reference::quantize_weights(Fp8Scheme::block, 3, 300, 72, p.w13.data(),
                                             p.w2.data());
  EXPECT_EQ(w.w13_scale.size(), 3u * 2u * 3u);  // [E, ceil(144/128), ceil(300/128)]
  EXPECT_EQ(w.w2_scale.size(), 3u * 3u * 1u);   // [E, ceil(300/128), ceil(72/128)]
  const auto c = reference::quantize_weights(Fp8Scheme::per_channel, 3, 300, 72, p.w13.data(),
                                             p.w2.data());
  EXPECT_EQ(c.w13_scale.size(), 3u * 144u);
  EXPECT_EQ(c.w2_scale.size(), 3u * 300u);
}

TEST(ReferenceFp8, StaticPerTensorScalesAreUsedAsGiven) {
  const Problem p = random_problem(4, 128, 64, 2, 1, 9);
  const std::vector<int64_t> tokens = {0, 1, 2, 3};
  // Scales far too small saturate every activation at +-448: the output changes a lot.
  const float tiny[2] = {1e-4f, 1e-4f};
  const float fitting[2] = {8.0f / 448.0f, 32.0f / 448.0f};  // room for |x| <= 8, |h| <= 32
  const auto reference = unquantised(p, tokens);
  EXPECT_LT(relative_error(fp8(p, Fp8Scheme::per_tensor, tokens, fitting), reference, 128), 0.15);
  EXPECT_GT(relative_error(fp8(p, Fp8Scheme::per_tensor, tokens, tiny), reference, 128), 0.5);
}

TEST(ReferenceFp8, NanRowsStayTheirOwnAndPaddingGivesZeros) {
  Problem p = random_problem(5, 128, 64, 4, 2, 13);
  const std::vector<int64_t> tokens = {0, 1, 2, 3, 4};
  Problem zero_row = p;  // row 2 zero: it cannot raise an amax, as an ignored NaN row cannot
  for (int64_t c = 0; c < 128; ++c) {
    p.x[2 * 128 + c] = std::nanf("");
    zero_row.x[2 * 128 + c] = 0.0f;
  }
  for (Fp8Scheme scheme : {Fp8Scheme::per_tensor, Fp8Scheme::per_channel, Fp8Scheme::block}) {
    const auto out = fp8(p, scheme, tokens, nullptr, /*num_valid=*/4);
    const auto expected = fp8(zero_row, scheme, tokens, nullptr, /*num_valid=*/4);
    for (int64_t t = 0; t < 5; ++t) {
      for (int64_t c = 0; c < 128; ++c) {
        const auto at = static_cast<size_t>(t * 128 + c);
        if (t == 2) {
          EXPECT_TRUE(std::isnan(out[at]));
        } else if (t == 4) {
          EXPECT_EQ(out[at], 0.0) << "padding row";
        } else {
          ASSERT_EQ(out[at], expected[at]) << "token " << t << ", scheme " << int(scheme);
        }
      }
    }
  }
}

}  // namespace
}  // namespace ironmoe
