#pragma once
// What ironmoe-check's cases are made of: a context (device, stream, seeded randomness), runners
// that put host data on the device, call one public entry point and bring the results back with
// poisoned outputs, and the case registry.
#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/device_memory.h"
#include "common/host_data.h"
#include "ironmoe/config.h"
#include "ironmoe/types.h"
#include "reference_fp8.h"

namespace ironmoe::tools::check {

using Diagnostics = std::array<int32_t, kDiagnosticCount>;

class Context {
 public:
  Context(Device device, uint64_t seed) : executor_(device), seed_(seed) {}
  Device device() const { return executor_.device(); }
  Stream stream() const { return executor_.stream(); }
  ThreadPool& pool() { return executor_.pool(); }
  void* cuda_stream() const { return executor_.cuda_stream(); }
  uint64_t seed() const { return seed_; }

 private:
  Executor executor_;
  uint64_t seed_;
};

// ---- route -----------------------------------------------------------------------------------

struct RouteRun {
  std::vector<int32_t> ids;    // [T, k]
  std::vector<float> weights;  // [T, k]
  Diagnostics diagnostics{};
};

struct RouteInput {
  RoutingConfig routing;
  int64_t tokens = 0;
  int64_t num_experts = 0;
  int64_t top_k = 0;
  std::vector<float> logits;  // [T, E], given to the library as logit_dtype
  DType logit_dtype = DType::f32;
  std::vector<float> bias;  // [E] or empty
  std::optional<int32_t> num_valid;
};

RouteRun run_route(Context& context, const RouteInput& input);
// reference::route on the same logits (widened from logit_dtype as the library sees them).
RouteRun reference_route(const RouteInput& input);

// ---- plan ------------------------------------------------------------------------------------

struct PlanInput {
  std::vector<int32_t> ids;  // [T, k]
  int64_t tokens = 0;
  int64_t top_k = 0;
  int64_t num_experts = 0;
  int64_t expert_begin = 0;
  int64_t expert_end = -1;
  Layout layout = Layout::contiguous;
  int64_t capacity = 0;
  std::optional<int32_t> num_valid;
};

struct PlanRun {
  std::vector<int32_t> counts;       // [E_local]
  std::vector<int32_t> offsets;      // [E_local + 1]
  std::vector<int32_t> slot_to_row;  // [T * k]
  std::vector<int32_t> row_to_slot;  // [R]
  Diagnostics diagnostics{};
};

PlanRun run_plan(Context& context, const PlanInput& input);

// ---- layer -----------------------------------------------------------------------------------

// One layer call, all data on the host as float (already representable in config.dtype).
struct LayerInput {
  MoeConfig config;  // max_tokens >= tokens
  int64_t tokens = 0;
  std::vector<float> x;  // [T, H]
  // Either logits [T, E] (with bias [E] for grouped routing, optional) ...
  std::vector<float> logits;
  std::vector<float> bias;
  // ... or precomputed routing [T, k].
  std::vector<int32_t> ids;
  std::vector<float> weights;
  std::vector<float> w13;  // [E_local, 2I, H]
  std::vector<float> w2;   // [E_local, H, I]
  // With an fp8 config.quant: w13 and w2 quantised by the FP8 reference (codes and scales); the
  // layer gets these, the reference computes with them (fill with quantize_weights_of).
  reference::Fp8Weights fp8;
  std::optional<int32_t> num_valid;
  bool diagnostics = true;     // pass a diagnostics buffer
  int64_t x_row_stride = 0;    // 0: H
  int64_t out_row_stride = 0;  // 0: H
};

struct LayerRun {
  std::vector<float> out;       // [T, H] (the gaps of a strided output are dropped)
  std::vector<float> out_gaps;  // elements between strided output rows, as left by forward
  Diagnostics diagnostics{};
};

LayerRun run_layer(Context& context, const LayerInput& input);

// Fills input.fp8 from w13 and w2 per config.quant (nothing for quant none).
void quantize_weights_of(LayerInput& input);

// reference::layer for the listed tokens given the routing the layer should have used.
std::vector<double> reference_layer(const LayerInput& input, const std::vector<int32_t>& ids,
                                    const std::vector<float>& weights,
                                    const std::vector<int64_t>& tokens);

// ---- data ------------------------------------------------------------------------------------

// A small layer with random weights and inputs (values representable in config.dtype).
LayerInput random_layer(const MoeConfig& config, int64_t tokens, Random& random);
std::vector<float> random_values(size_t count, float bound, Random& random);
std::vector<float> random_logits(int64_t tokens, int64_t num_experts, Random& random);

// Routing configs of every kind, named for case names ("softmax", "softmax-raw", "sigmoid",
// "grouped"), for num_experts (grouped needs num_experts divisible by 8 or 4).
struct NamedRouting {
  std::string name;
  RoutingConfig routing;
};
std::vector<NamedRouting> every_routing(int64_t num_experts);

// A small model shape for the cases: H=128, I=64, given E and k.
MoeConfig small_config(int64_t num_experts, int64_t top_k, int64_t max_tokens, DType dtype,
                       const RoutingConfig& routing);

// ---- cases -----------------------------------------------------------------------------------

struct Outcome {
  bool passed = true;
  std::string reason;  // the first failures, when not passed; a note otherwise
};

struct Case {
  std::string name;
  std::function<Outcome(Context&, Random&)> run;
};

std::vector<Case> routing_cases(Device device);
std::vector<Case> plan_cases(Device device);
std::vector<Case> layer_cases(Device device);
std::vector<Case> error_cases(Device device);
std::vector<Case> graph_cases(Device device);  // CUDA graph capture; empty without CUDA

}  // namespace ironmoe::tools::check
