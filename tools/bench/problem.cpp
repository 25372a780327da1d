#include "bench/problem.h"

#include <cmath>
#include <vector>

#include "common/fp8_weights.h"
#include "common/host_data.h"
#include "reference_fp8.h"

namespace ironmoe::tools {
namespace {

enum SeedStream : uint64_t {
  kSeedW13 = 1,
  kSeedW2,
  kSeedX,
  kSeedLogits,
  kSeedBias,
  kSeedW13Scale,
  kSeedW2Scale
};

// Standard deviation of the value of a uniformly drawn finite E4M3 code.
double fp8_code_deviation() {
  double sum = 0.0;
  int count = 0;
  for (int code = 0; code < 256; ++code) {
    const double v = reference::from_fp8_bits(static_cast<uint8_t>(code));
    if (std::isnan(v)) continue;
    sum += v * v;
    ++count;
  }
  return std::sqrt(sum / count);
}

// count scales uniform in [0.5, 1.5) / (code deviation * sqrt(fan_in)), uploaded as f32.
DeviceBuffer random_scales(Device device, int64_t count, int64_t fan_in, uint64_t seed) {
  Random random(seed);
  const double unit = 1.0 / (fp8_code_deviation() * std::sqrt(static_cast<double>(fan_in)));
  std::vector<float> scales(static_cast<size_t>(count));
  for (float& s : scales) s = static_cast<float>(unit) * random.uniform(0.5f, 1.5f);
  return upload_as(device, scales, DType::f32);
}

}  // namespace

int64_t expert_weight_elements(const MoeConfig& config) {
  return 3 * config.hidden * config.intermediate;
}

int64_t expert_scale_count(const MoeConfig& config) {
  return fp8_scales_per_expert(config.quant, 2 * config.intermediate, config.hidden) +
         fp8_scales_per_expert(config.quant, config.hidden, config.intermediate);
}

size_t weight_element_bytes(const MoeConfig& config, DType dtype) {
  return config.quant == QuantScheme::none ? dtype_size(dtype) : 1;
}

size_t problem_bytes(const BenchShape& shape, DType dtype, int64_t max_tokens) {
  const MoeConfig& c = shape.config;
  const auto elem = static_cast<int64_t>(dtype_size(dtype));
  const int64_t weights =
      c.num_experts *
      (expert_weight_elements(c) * static_cast<int64_t>(weight_element_bytes(c, dtype)) +
       expert_scale_count(c) * 4);
  const int64_t activations = max_tokens * c.hidden * elem * 2;  // x and out
  const int64_t logits = max_tokens * c.num_experts * 4 + c.num_experts * 4;
  return static_cast<size_t>(weights + activations + logits);
}

Problem make_problem(const BenchShape& shape, DType dtype, int64_t max_tokens, uint64_t seed,
                     Device device, ThreadPool& pool) {
  const MoeConfig& c = shape.config;
  const size_t elem = dtype_size(dtype);
  const size_t weight_elem = weight_element_bytes(c, dtype);
  const auto w13_count = static_cast<size_t>(c.num_experts * 2 * c.intermediate * c.hidden);
  const auto w2_count = static_cast<size_t>(c.num_experts * c.hidden * c.intermediate);
  const auto x_count = static_cast<size_t>(max_tokens * c.hidden);
  const auto logit_count = static_cast<size_t>(max_tokens * c.num_experts);
  const auto experts = static_cast<size_t>(c.num_experts);

  Problem problem{shape,
                  dtype,
                  max_tokens,
                  DeviceBuffer(device, w13_count * weight_elem),
                  DeviceBuffer(device, w2_count * weight_elem),
                  DeviceBuffer(),
                  DeviceBuffer(),
                  DeviceBuffer(),
                  DeviceBuffer(device, x_count * elem),
                  DeviceBuffer(device, logit_count * sizeof(float)),
                  DeviceBuffer(device, experts * sizeof(float))};
  // uniform(-b, b) has standard deviation b / sqrt(3).
  const auto bound_for = [](int64_t fan_in) {
    return std::sqrt(3.0f / static_cast<float>(fan_in));
  };
  if (c.quant == QuantScheme::none) {
    fill_uniform(problem.w13, dtype, w13_count, bound_for(c.hidden), stream_seed(seed, kSeedW13),
                 pool);
    fill_uniform(problem.w2, dtype, w2_count, bound_for(c.intermediate), stream_seed(seed, kSeedW2),
                 pool);
  } else {
    fill_fp8_codes(problem.w13, w13_count, stream_seed(seed, kSeedW13), pool);
    fill_fp8_codes(problem.w2, w2_count, stream_seed(seed, kSeedW2), pool);
    const int64_t inter = c.intermediate;
    problem.w13_scale =
        random_scales(device, c.num_experts * fp8_scales_per_expert(c.quant, 2 * inter, c.hidden),
                      c.hidden, stream_seed(seed, kSeedW13Scale));
    problem.w2_scale =
        random_scales(device, c.num_experts * fp8_scales_per_expert(c.quant, c.hidden, inter),
                      inter, stream_seed(seed, kSeedW2Scale));
    // x is uniform in +-sqrt(3); h = act(gate) * up of unit-scale gate and up stays well
    // inside +-16 (static scales come from calibration in real checkpoints).
    problem.input_scales =
        upload_as(device, {std::sqrt(3.0f) / 448.0f, 16.0f / 448.0f}, DType::f32);
  }
  fill_uniform(problem.x, dtype, x_count, std::sqrt(3.0f), stream_seed(seed, kSeedX), pool);
  fill_uniform(problem.logits, DType::f32, logit_count, 3.0f, stream_seed(seed, kSeedLogits), pool);
  fill_uniform(problem.bias, DType::f32, experts, 0.1f, stream_seed(seed, kSeedBias), pool);
  return problem;
}

}  // namespace ironmoe::tools
