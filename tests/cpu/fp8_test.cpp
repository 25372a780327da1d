// FP8 E4M3 conversions and dynamic scales (src/core/fp8.h): every code decodes to its defined
// value and encodes back to itself, rounding is to nearest with ties to even, out-of-range values
// saturate, NaN stays NaN, and a group's largest value always lands on +-448.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

#include "core/fp8.h"

namespace ironmoe::core {
namespace {

bool is_nan_code(uint8_t code) { return (code & 0x7fu) == 0x7fu; }

TEST(Fp8E4m3, DecodesTheDefiningValues) {
  EXPECT_EQ(fp8_e4m3_to_float(0x00), 0.0f);
  EXPECT_TRUE(std::signbit(fp8_e4m3_to_float(0x80)));
  EXPECT_EQ(fp8_e4m3_to_float(0x01), std::ldexp(1.0f, -9));   // smallest subnormal
  EXPECT_EQ(fp8_e4m3_to_float(0x07), 7 * std::ldexp(1.0f, -9));
  EXPECT_EQ(fp8_e4m3_to_float(0x08), std::ldexp(1.0f, -6));   // smallest normal
  EXPECT_EQ(fp8_e4m3_to_float(0x38), 1.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0x39), 1.125f);
  EXPECT_EQ(fp8_e4m3_to_float(0x7e), 448.0f);
  EXPECT_EQ(fp8_e4m3_to_float(0xfe), -448.0f);
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(0x7f)));
  EXPECT_TRUE(std::isnan(fp8_e4m3_to_float(0xff)));
}

TEST(Fp8E4m3, EveryCodeRoundTripsAndPositiveCodesIncrease) {
  for (int code = 0; code < 256; ++code) {
    const auto bits = static_cast<uint8_t>(code);
    if (is_nan_code(bits)) continue;
    EXPECT_EQ(float_to_fp8_e4m3(fp8_e4m3_to_float(bits)), bits) << "code " << code;
  }
  for (int code = 0; code < 0x7e; ++code) {
    EXPECT_LT(fp8_e4m3_to_float(static_cast<uint8_t>(code)),
              fp8_e4m3_to_float(static_cast<uint8_t>(code + 1)));
  }
}

TEST(Fp8E4m3, RoundsToNearestWithTiesToEven) {
  for (int code = 0; code < 0x7e; ++code) {
    const auto low = static_cast<uint8_t>(code);
    const auto high = static_cast<uint8_t>(code + 1);
    const float a = fp8_e4m3_to_float(low);
    const float b = fp8_e4m3_to_float(high);
    const float middle = (a + b) / 2;  // exact: both are short binary fractions
    EXPECT_EQ(float_to_fp8_e4m3(middle), (low % 2 == 0) ? low : high) << "between " << code;
    EXPECT_EQ(float_to_fp8_e4m3(std::nextafter(middle, 0.0f)), low) << "below " << code;
    EXPECT_EQ(float_to_fp8_e4m3(std::nextafter(middle, 1000.0f)), high) << "above " << code;
    EXPECT_EQ(float_to_fp8_e4m3(-middle), static_cast<uint8_t>(float_to_fp8_e4m3(middle) | 0x80u));
  }
}

TEST(Fp8E4m3, SaturatesAndKeepsNan) {
  const float inf = std::numeric_limits<float>::infinity();
  for (float big : {448.5f, 464.0f, 480.0f, 1e6f, 3.0e38f, inf}) {
    EXPECT_EQ(float_to_fp8_e4m3(big), 0x7e) << big;
    EXPECT_EQ(float_to_fp8_e4m3(-big), 0xfe) << big;
  }
  EXPECT_TRUE(is_nan_code(float_to_fp8_e4m3(std::nanf(""))));
  EXPECT_TRUE(is_nan_code(float_to_fp8_e4m3(-std::nanf(""))));
  EXPECT_EQ(float_to_fp8_e4m3(std::ldexp(1.0f, -11)), 0x00);  // a quarter step: to zero
  EXPECT_EQ(float_to_fp8_e4m3(std::ldexp(1.0f, -10)), 0x00);  // half a step, tie: to even (0)
  EXPECT_EQ(float_to_fp8_e4m3(std::ldexp(3.0f, -10)), 0x02);  // 1.5 steps, tie: to even (2)
}

TEST(Fp8E4m3, RandomValuesRoundToTheNearestCode) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> exponent(-12.0f, 9.5f);
  for (int i = 0; i < 20000; ++i) {
    const float value = std::exp2(exponent(rng)) * (rng() % 2 ? 1.0f : -1.0f);
    const uint8_t code = float_to_fp8_e4m3(value);
    const float decoded = fp8_e4m3_to_float(code);
    if (std::fabs(value) >= 448.0f) {
      EXPECT_EQ(std::fabs(decoded), 448.0f);
      continue;
    }
    // No other finite code is nearer.
    for (int other = 0; other < 256; ++other) {
      if (is_nan_code(static_cast<uint8_t>(other))) continue;
      const float candidate = fp8_e4m3_to_float(static_cast<uint8_t>(other));
      ASSERT_LE(std::fabs(decoded - value), std::fabs(candidate - value)) << value;
    }
  }
}

// Above the scale floor (amax >= 448 * kFp8MinScale = 2^-9); below it, see ZeroAndNanGroups.
TEST(Fp8Scales, TheLargestValueEncodesAsTheLargestCode) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> exponent(-9.0f, 20.0f);
  for (int i = 0; i < 10000; ++i) {
    const float amax = std::exp2(exponent(rng));
    const float scale = fp8_dynamic_scale(amax);
    EXPECT_EQ(fp8_quantize(amax, scale), 0x7e) << amax;
    EXPECT_EQ(fp8_quantize(-amax, scale), 0xfe) << amax;
  }
}

TEST(Fp8Scales, ZeroAndNanGroups) {
  EXPECT_EQ(fp8_dynamic_scale(0.0f), kFp8MinScale);
  EXPECT_EQ(fp8_quantize(0.0f, fp8_dynamic_scale(0.0f)), 0x00);
  EXPECT_EQ(fp8_dynamic_scale(1e-12f), kFp8MinScale);
  // A group below the floor keeps its values' magnitudes in code units of the floor scale.
  EXPECT_EQ(fp8_quantize(std::ldexp(1.0f, -10), fp8_dynamic_scale(std::ldexp(1.0f, -10))),
            float_to_fp8_e4m3(224.0f));
  EXPECT_TRUE(std::isnan(fp8_dynamic_scale(std::nanf(""))));
  EXPECT_TRUE(is_nan_code(fp8_quantize(1.0f, fp8_dynamic_scale(std::nanf("")))));
}

}  // namespace
}  // namespace ironmoe::core
