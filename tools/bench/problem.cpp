#include "bench/problem.h"

#include <cmath>

#include "common/host_data.h"

namespace ironmoe::tools {
namespace {

enum SeedStream : uint64_t { kSeedW13 = 1, kSeedW2, kSeedX, kSeedLogits, kSeedBias };

}  // namespace

int64_t expert_weight_elements(const MoeConfig& config) {
  return 3 * config.hidden * config.intermediate;
}

size_t problem_bytes(const BenchShape& shape, DType dtype, int64_t max_tokens) {
  const MoeConfig& c = shape.config;
  const auto elem = static_cast<int64_t>(dtype_size(dtype));
  const int64_t weights = c.num_experts * expert_weight_elements(c) * elem;
  const int64_t activations = max_tokens * c.hidden * elem * 2;  // x and out
  const int64_t logits = max_tokens * c.num_experts * 4 + c.num_experts * 4;
  return static_cast<size_t>(weights + activations + logits);
}

Problem make_problem(const BenchShape& shape, DType dtype, int64_t max_tokens, uint64_t seed,
                     Device device, ThreadPool& pool) {
  const MoeConfig& c = shape.config;
  const size_t elem = dtype_size(dtype);
  const auto w13_count = static_cast<size_t>(c.num_experts * 2 * c.intermediate * c.hidden);
  const auto w2_count = static_cast<size_t>(c.num_experts * c.hidden * c.intermediate);
  const auto x_count = static_cast<size_t>(max_tokens * c.hidden);
  const auto logit_count = static_cast<size_t>(max_tokens * c.num_experts);
  const auto experts = static_cast<size_t>(c.num_experts);

  Problem problem{shape,
                  dtype,
                  max_tokens,
                  DeviceBuffer(device, w13_count * elem),
                  DeviceBuffer(device, w2_count * elem),
                  DeviceBuffer(device, x_count * elem),
                  DeviceBuffer(device, logit_count * sizeof(float)),
                  DeviceBuffer(device, experts * sizeof(float))};
  // uniform(-b, b) has standard deviation b / sqrt(3).
  const auto bound_for = [](int64_t fan_in) {
    return std::sqrt(3.0f / static_cast<float>(fan_in));
  };
  fill_uniform(problem.w13, dtype, w13_count, bound_for(c.hidden), stream_seed(seed, kSeedW13),
               pool);
  fill_uniform(problem.w2, dtype, w2_count, bound_for(c.intermediate), stream_seed(seed, kSeedW2),
               pool);
  fill_uniform(problem.x, dtype, x_count, std::sqrt(3.0f), stream_seed(seed, kSeedX), pool);
  fill_uniform(problem.logits, DType::f32, logit_count, 3.0f, stream_seed(seed, kSeedLogits), pool);
  fill_uniform(problem.bias, DType::f32, experts, 0.1f, stream_seed(seed, kSeedBias), pool);
  return problem;
}

}  // namespace ironmoe::tools
