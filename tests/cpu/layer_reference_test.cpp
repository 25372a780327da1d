// The full layer against the float64 reference for the four model presets, scaled down (fewer
// experts, small H and I; k, routing kind, groups and scaling kept), for f32 and bf16, both
// layouts, routing from logits and precomputed, SiLU and GELU.
#include <gtest/gtest.h>

#include <tuple>

#include "reference_moe.h"
#include "test_util.h"

namespace ironmoe::test {
namespace {

struct ScaledPreset {
  const char* name;
  int64_t num_experts;  // scaled down; num_groups still divides it
};

// qwen3-30b-a3b E 128 -> 32, qwen3-next E 512 -> 64, mixtral E 8 (as is), deepseek-v3 E 256 -> 32
// (8 groups of 4, top 4 groups, k 8, scaling 2.5).
constexpr ScaledPreset kPresets[] = {
    {"qwen3-30b-a3b", 32}, {"qwen3-next-80b-a3b", 64}, {"mixtral-8x7b", 8}, {"deepseek-v3", 32}};

using Params = std::tuple<ScaledPreset, DType, Layout, bool /*from_logits*/, Activation>;

class LayerVsReference : public ::testing::TestWithParam<Params> {};

std::string param_name(const ::testing::TestParamInfo<Params>& info) {
  const auto& [preset_, dtype, layout, from_logits, activation] = info.param;
  std::string name = preset_.name;
  for (char& c : name)
    if (c == '-') c = '_';
  return name + "_" + dtype_name(dtype) + (layout == Layout::contiguous ? "_contig" : "_batched") +
         (from_logits ? "_logits" : "_ids") +
         (activation == Activation::silu_and_mul ? "_silu" : "_gelu");
}

INSTANTIATE_TEST_SUITE_P(
    Presets, LayerVsReference,
    ::testing::Combine(::testing::ValuesIn(kPresets), ::testing::Values(DType::f32, DType::bf16),
                       ::testing::Values(Layout::contiguous, Layout::batched), ::testing::Bool(),
                       ::testing::Values(Activation::silu_and_mul, Activation::gelu_and_mul)),
    param_name);

TEST_P(LayerVsReference, MatchesWithinTolerance) {
  const auto& [scaled, dtype, layout, from_logits, activation] = GetParam();
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  MoeConfig config = preset(scaled.name, 64);
  const MoeConfig original = config;
  config.num_experts = scaled.num_experts;
  config.hidden = 64;
  config.intermediate = 48;
  config.dtype = dtype;
  config.layout = layout;
  config.activation = activation;
  ASSERT_EQ(config.top_k, original.top_k);
  ASSERT_EQ(config.routing.kind, original.routing.kind);

  // One boundary size and one random size per case.
  for (int64_t tokens : {int64_t{1}, rng.integer(2, 64)}) {
    SCOPED_TRACE("T " + std::to_string(tokens));
    const LayerProblem p = make_problem(config, tokens, from_logits, rng);
    ThreadPool pool(3);
    const LayerRun run = run_layer(p, &pool);
    const std::vector<double> ref = reference_output(p);
    const std::vector<float> got = run.out.to_float();
    const double error =
        reference::max_relative_error(ref.data(), got.data(), tokens, config.hidden);
    EXPECT_LE(error, layer_tolerance(dtype))
        << "max relative error " << error << " (tolerance " << layer_tolerance(dtype) << "); "
        << describe_worst(ref, got, config.hidden);
    for (int d = 0; d < kDiagnosticCount; ++d)
      EXPECT_EQ(run.diagnostics[d], 0) << "diagnostics[" << d << "] on a clean problem";
  }
}

}  // namespace
}  // namespace ironmoe::test
