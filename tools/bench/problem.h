#pragma once
// One benchmarked layer: its shape, and random weights and inputs for up to max_tokens tokens on
// the device. Values come from the seed alone: weights uniform with standard deviation
// 1/sqrt(fan_in) (so activations keep unit scale through both GEMMs), x with unit standard
// deviation, router logits uniform in [-3, 3), DeepSeek correction bias uniform in [-0.1, 0.1).
// FP8 weights: uniformly drawn finite E4M3 codes, each scale (per expert, channel or block)
// uniform in [0.5, 1.5) times 1 / (code standard deviation * sqrt(fan_in)), the same spread.
#include <cstdint>
#include <string>

#include "common/device_memory.h"
#include "ironmoe/config.h"

namespace ironmoe::tools {

struct BenchShape {
  std::string name;
  MoeConfig config;  // max_tokens and dtype are set per run
};

struct Problem {
  BenchShape shape;
  DType dtype = DType::bf16;
  int64_t max_tokens = 0;
  DeviceBuffer w13;  // [E, 2I, H]: dtype, or E4M3 codes with an fp8 shape.config.quant
  DeviceBuffer w2;   // [E, H, I]
  // FP8 only: f32 weight scales in the scheme's shapes (experts.h), and fp8_tensor's static
  // activation scales {GEMM1 input, GEMM2 input}.
  DeviceBuffer w13_scale;
  DeviceBuffer w2_scale;
  DeviceBuffer input_scales;
  DeviceBuffer x;       // [max_tokens, H]
  DeviceBuffer logits;  // [max_tokens, E] f32
  DeviceBuffer bias;    // [E] f32
};

// Bytes make_problem allocates (weights dominate), to skip shapes the device cannot hold.
size_t problem_bytes(const BenchShape& shape, DType dtype, int64_t max_tokens);
Problem make_problem(const BenchShape& shape, DType dtype, int64_t max_tokens, uint64_t seed,
                     Device device, ThreadPool& pool);

int64_t expert_weight_elements(const MoeConfig& config);  // 3 * H * I
// f32 scales of all of one expert's FP8 weights (common/fp8_weights.h per matrix).
int64_t expert_scale_count(const MoeConfig& config);
size_t weight_element_bytes(const MoeConfig& config, DType dtype);  // 1 for FP8

}  // namespace ironmoe::tools
