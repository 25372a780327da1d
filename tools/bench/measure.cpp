#include "bench/measure.h"

#include <algorithm>
#include <vector>

#include "bench/accuracy.h"
#include "common/fp8_weights.h"
#include "ironmoe/layer.h"
#include "ironmoe/route.h"

namespace ironmoe::tools {
namespace {

struct Routing {
  std::vector<int32_t> ids;
  std::vector<float> weights;
};

// The routing the layer computes internally, obtained by the public route() on the same logits
// (the layer keeps its own copy in the workspace, whose layout is private).
Routing route_separately(const Problem& problem, const MoeConfig& config, int64_t tokens,
                         Executor& executor) {
  const int64_t k = config.top_k;
  const Device device = executor.device();
  DeviceBuffer ids(device, static_cast<size_t>(tokens * k) * sizeof(int32_t));
  DeviceBuffer weights(device, static_cast<size_t>(tokens * k) * sizeof(float));
  RouteArgs args;
  args.logits = problem.logits.view(DType::f32, {tokens, config.num_experts});
  if (config.routing.kind == RoutingKind::grouped_topk) {
    args.correction_bias = problem.bias.view(DType::f32, {config.num_experts});
  }
  args.topk_ids = ids.view(DType::i32, {tokens, k});
  args.topk_weights = weights.view(DType::f32, {tokens, k});
  route(config.routing, args, executor.stream());
  synchronize(device);
  const auto count = static_cast<size_t>(tokens * k);
  return {ids.download_vector<int32_t>(count), weights.download_vector<float>(count)};
}

// The problem's weights as the layer takes them: storage dtype, or E4M3 codes with the scheme's
// scales (fp8_tensor with its static activation scales).
Weights weight_views(const Problem& problem, const MoeConfig& config) {
  const int64_t e = config.num_experts;
  const int64_t h = config.hidden;
  const int64_t i = config.intermediate;
  Weights weights;
  if (config.quant == QuantScheme::none) {
    weights.w13 = problem.w13.view(problem.dtype, {e, 2 * i, h});
    weights.w2 = problem.w2.view(problem.dtype, {e, h, i});
    return weights;
  }
  weights.w13 = problem.w13.view(DType::f8e4m3, {e, 2 * i, h});
  weights.w2 = problem.w2.view(DType::f8e4m3, {e, h, i});
  weights.w13_scale = fp8_weight_scale_view(problem.w13_scale, config.quant, e, 2 * i, h);
  weights.w2_scale = fp8_weight_scale_view(problem.w2_scale, config.quant, e, h, i);
  if (config.quant == QuantScheme::fp8_tensor) {
    weights.w13_input_scale = problem.input_scales.view_at(0, DType::f32, {1});
    weights.w2_input_scale = problem.input_scales.view_at(sizeof(float), DType::f32, {1});
  }
  return weights;
}

}  // namespace

BenchRow measure_row(const Problem& problem, int64_t tokens, const BenchSettings& settings,
                     const MachinePeak& peak, Executor& executor, CacheFlusher* flusher) {
  const Device device = executor.device();
  MoeConfig config = problem.shape.config;
  config.max_tokens = tokens;
  config.dtype = problem.dtype;
  const Layer layer(config, device);
  const int64_t hidden = config.hidden;
  const int64_t experts = config.num_experts;

  BenchRow row;
  row.shape = problem.shape.name;
  row.config = config;
  row.tokens = tokens;
  row.workspace_bytes = layer.workspace_bytes();

  DeviceBuffer workspace(device, row.workspace_bytes);
  DeviceBuffer out(device, static_cast<size_t>(tokens * hidden) * dtype_size(problem.dtype));
  Inputs inputs;
  inputs.x = problem.x.view(problem.dtype, {tokens, hidden});
  inputs.router_logits = problem.logits.view(DType::f32, {tokens, experts});
  if (config.routing.kind == RoutingKind::grouped_topk) {
    inputs.correction_bias = problem.bias.view(DType::f32, {experts});
  }
  const Weights weights = weight_views(problem, config);
  Outputs outputs;
  outputs.out = out.view(problem.dtype, {tokens, hidden});
  const Workspace ws{workspace.data(), workspace.bytes()};
  const Stream stream = executor.stream();
  const auto forward = [&] { layer.forward(inputs, weights, outputs, ws, stream); };
  const auto time_call = [&](const std::function<void()>& call) {
    if (device.is_cuda()) return time_cuda_graph(call, executor.cuda_stream(), settings.iters);
    std::function<void()> before;
    if (flusher != nullptr) before = [flusher] { flusher->flush(); };
    return time_cpu(call, settings.iters, before);
  };

  row.timing = time_call(forward);
  synchronize(device);
  if (settings.breakdown) {
    // The stages read what the previous ones left in the workspace: each timed call runs several
    // times in this order (forward() may have fused plan through combine and left their buffers
    // alone), so each stage runs on real data when timed alone.
    const LayerStages s = layer.stages(inputs, weights, outputs, ws, stream);
    if (s.has_route) row.stages[0] = time_call([&] { route(s.routing, s.route, stream); });
    row.stages[1] = time_call([&] { plan(s.plan, stream); });
    if (s.has_gather) row.stages[2] = time_call([&] { gather(s.gather, stream); });
    ExpertArgs phase = s.experts;
    phase.phase = ExpertPhase::gate_up;
    row.stages[3] = time_call([&] { ironmoe::experts(phase, stream); });
    phase.phase = ExpertPhase::down;
    row.stages[4] = time_call([&] { ironmoe::experts(phase, stream); });
    row.stages[5] = time_call([&] { combine(s.combine, stream); });
    if (s.has_route) {
      row.route_plan_combine = time_call([&] {
        route(s.routing, s.route, stream);
        plan(s.plan, stream);
        combine(s.combine, stream);
      });
    }
    synchronize(device);
  }

  const Routing routing = route_separately(problem, config, tokens, executor);
  std::vector<bool> used(static_cast<size_t>(experts), false);
  for (int32_t id : routing.ids) {
    if (id < 0 || id >= experts) continue;
    used[static_cast<size_t>(id)] = true;
    ++row.valid_slots;
  }
  row.experts_used = std::count(used.begin(), used.end(), true);

  // FP8: weights at one byte each plus their f32 scales, and the dense FP8 GEMM rate.
  const auto elem = static_cast<double>(dtype_size(problem.dtype));
  const auto weight_elem = static_cast<double>(weight_element_bytes(config, problem.dtype));
  const auto expert_elements = static_cast<double>(expert_weight_elements(config));
  const auto expert_bytes =
      expert_elements * weight_elem + static_cast<double>(expert_scale_count(config)) * 4.0;
  const auto activation_bytes = static_cast<double>(tokens * hidden) * elem * 2.0 +
                                static_cast<double>(tokens * experts) * sizeof(float);
  row.bytes = static_cast<double>(row.experts_used) * expert_bytes + activation_bytes;
  row.flops = 2.0 * static_cast<double>(row.valid_slots) * expert_elements;
  const double gemm_rate =
      config.quant == QuantScheme::none ? peak.gemm_flops_per_s : peak.fp8_gemm_flops_per_s;
  row.floor_s = std::max(row.bytes / peak.bandwidth_bytes_per_s, row.flops / gemm_rate);

  if (settings.check_tokens > 0) {
    row.max_rel_error = sampled_layer_error(problem, routing.ids, routing.weights, out,
                                            sample_tokens(tokens, settings.check_tokens));
  }
  return row;
}

}  // namespace ironmoe::tools
