#include "check/harness.h"

#include <cmath>

#include "common/fp8_weights.h"
#include "ironmoe/layer.h"
#include "ironmoe/plan.h"
#include "ironmoe/route.h"
#include "reference_moe.h"

namespace ironmoe::tools::check {
namespace {

// Outputs are filled with these before each call, so an entry the library fails to write shows
// up: 0x7b7b7b7b is no valid id, row or count; 0xff bytes are NaN in f32 and bf16.
constexpr uint8_t kIndexPoison = 0x7b;
constexpr uint8_t kFloatPoison = 0xff;

DeviceBuffer poisoned(Device device, size_t bytes, uint8_t poison) {
  DeviceBuffer buffer(device, bytes);
  buffer.fill_bytes(poison);
  return buffer;
}

DeviceBuffer diagnostics_buffer(Device device) {
  DeviceBuffer buffer(device, sizeof(int32_t) * kDiagnosticCount);
  buffer.fill_bytes(0);
  return buffer;
}

Diagnostics read_diagnostics(const DeviceBuffer& buffer) {
  Diagnostics counts{};
  buffer.download(counts.data(), sizeof(counts));
  return counts;
}

std::optional<DeviceBuffer> num_valid_buffer(Device device, std::optional<int32_t> num_valid) {
  if (!num_valid) return std::nullopt;
  return to_device(device, std::vector<int32_t>{*num_valid});
}

const int32_t* pointer_of(const std::optional<DeviceBuffer>& buffer) {
  return buffer ? buffer->as<int32_t>() : nullptr;
}

}  // namespace

RouteRun run_route(Context& context, const RouteInput& input) {
  const Device device = context.device();
  const int64_t t = input.tokens;
  const int64_t k = input.top_k;
  const auto slots = static_cast<size_t>(t * k);
  const DeviceBuffer logits = upload_as(device, input.logits, input.logit_dtype);
  std::optional<DeviceBuffer> bias;
  if (!input.bias.empty()) bias = upload_as(device, input.bias, DType::f32);
  const DeviceBuffer ids = poisoned(device, slots * sizeof(int32_t), kIndexPoison);
  const DeviceBuffer weights = poisoned(device, slots * sizeof(float), kFloatPoison);
  const std::optional<DeviceBuffer> num_valid = num_valid_buffer(device, input.num_valid);
  const DeviceBuffer diagnostics = diagnostics_buffer(device);

  RouteArgs args;
  args.logits = logits.view(input.logit_dtype, {t, input.num_experts});
  if (bias) args.correction_bias = bias->view(DType::f32, {input.num_experts});
  args.topk_ids = ids.view(DType::i32, {t, k});
  args.topk_weights = weights.view(DType::f32, {t, k});
  args.num_valid_tokens = pointer_of(num_valid);
  args.diagnostics = diagnostics.as<int32_t>();
  route(input.routing, args, context.stream());
  synchronize(device);
  return {ids.download_vector<int32_t>(slots), weights.download_vector<float>(slots),
          read_diagnostics(diagnostics)};
}

RouteRun reference_route(const RouteInput& input) {
  const auto slots = static_cast<size_t>(input.tokens * input.top_k);
  RouteRun run{std::vector<int32_t>(slots), std::vector<float>(slots), {}};
  const std::vector<float> logits = round_trip(input.logits, input.logit_dtype);
  const int64_t num_valid = input.num_valid ? *input.num_valid : input.tokens;
  reference::route(input.routing, input.tokens, input.num_experts, input.top_k, logits.data(),
                   input.bias.empty() ? nullptr : input.bias.data(), num_valid, run.ids.data(),
                   run.weights.data());
  return run;
}

PlanRun run_plan(Context& context, const PlanInput& input) {
  const Device device = context.device();
  const int64_t t = input.tokens;
  const int64_t k = input.top_k;
  const int64_t end = input.expert_end < 0 ? input.num_experts : input.expert_end;
  const int64_t local = end - input.expert_begin;
  const int64_t rows = input.layout == Layout::batched ? local * input.capacity : t * k;
  const auto slots = static_cast<size_t>(t * k);

  const DeviceBuffer ids = to_device(device, input.ids);
  const DeviceBuffer counts = poisoned(device, sizeof(int32_t) * local, kIndexPoison);
  const DeviceBuffer offsets = poisoned(device, sizeof(int32_t) * (local + 1), kIndexPoison);
  const DeviceBuffer slot_to_row = poisoned(device, sizeof(int32_t) * slots, kIndexPoison);
  const DeviceBuffer row_to_slot =
      poisoned(device, sizeof(int32_t) * static_cast<size_t>(rows), kIndexPoison);
  const std::optional<DeviceBuffer> num_valid = num_valid_buffer(device, input.num_valid);
  const DeviceBuffer diagnostics = diagnostics_buffer(device);
  DeviceBuffer scratch(device, plan_scratch_bytes(t, k, local, device));

  PlanArgs args;
  args.topk_ids = ids.view(DType::i32, {t, k});
  args.num_experts = input.num_experts;
  args.expert_begin = input.expert_begin;
  args.expert_end = input.expert_end;
  args.layout = input.layout;
  args.capacity = input.capacity;
  args.expert_counts = counts.view(DType::i32, {local});
  args.expert_offsets = offsets.view(DType::i32, {local + 1});
  args.slot_to_row = slot_to_row.view(DType::i32, {t, k});
  args.row_to_slot = row_to_slot.view(DType::i32, {rows});
  args.num_valid_tokens = pointer_of(num_valid);
  args.diagnostics = diagnostics.as<int32_t>();
  args.scratch = scratch.data();
  args.scratch_bytes = scratch.bytes();
  plan(args, context.stream());
  synchronize(device);
  return {counts.download_vector<int32_t>(static_cast<size_t>(local)),
          offsets.download_vector<int32_t>(static_cast<size_t>(local + 1)),
          slot_to_row.download_vector<int32_t>(slots),
          row_to_slot.download_vector<int32_t>(static_cast<size_t>(rows)),
          read_diagnostics(diagnostics)};
}

LayerRun run_layer(Context& context, const LayerInput& input) {
  const Device device = context.device();
  const MoeConfig& c = input.config;
  const int64_t t = input.tokens;
  const int64_t h = c.hidden;
  const int64_t x_stride = input.x_row_stride > 0 ? input.x_row_stride : h;
  const int64_t out_stride = input.out_row_stride > 0 ? input.out_row_stride : h;
  const Layer layer(c, device);

  // Strided x: the gaps hold NaN, so reading one would show in the output.
  std::vector<float> x_host(static_cast<size_t>(t * x_stride), NAN);
  for (int64_t r = 0; r < t; ++r) {
    for (int64_t col = 0; col < h; ++col) x_host[r * x_stride + col] = input.x[r * h + col];
  }
  const DeviceBuffer x = upload_as(device, x_host, c.dtype);
  const bool fp8 = c.quant != QuantScheme::none;
  const DeviceBuffer w13 =
      fp8 ? to_device(device, input.fp8.w13) : upload_as(device, input.w13, c.dtype);
  const DeviceBuffer w2 =
      fp8 ? to_device(device, input.fp8.w2) : upload_as(device, input.w2, c.dtype);
  const DeviceBuffer w13_scale = upload_as(device, input.fp8.w13_scale, DType::f32);
  const DeviceBuffer w2_scale = upload_as(device, input.fp8.w2_scale, DType::f32);
  const size_t elem = dtype_size(c.dtype);
  const DeviceBuffer out =
      poisoned(device, static_cast<size_t>(t * out_stride) * elem, kFloatPoison);
  DeviceBuffer workspace = poisoned(device, layer.workspace_bytes(), kFloatPoison);
  const std::optional<DeviceBuffer> num_valid = num_valid_buffer(device, input.num_valid);
  const DeviceBuffer diagnostics = diagnostics_buffer(device);
  std::optional<DeviceBuffer> logits, bias, ids, weights;

  Inputs inputs;
  inputs.x = TensorView::rows(x.data(), c.dtype, t, h, x_stride, device);
  if (!input.logits.empty() || input.ids.empty()) {
    logits = upload_as(device, input.logits, DType::f32);
    inputs.router_logits = logits->view(DType::f32, {t, c.num_experts});
    if (!input.bias.empty()) {
      bias = upload_as(device, input.bias, DType::f32);
      inputs.correction_bias = bias->view(DType::f32, {c.num_experts});
    }
  } else {
    ids = to_device(device, input.ids);
    weights = upload_as(device, input.weights, DType::f32);
    inputs.topk_ids = ids->view(DType::i32, {t, c.top_k});
    inputs.topk_weights = weights->view(DType::f32, {t, c.top_k});
  }
  inputs.num_valid_tokens = pointer_of(num_valid);
  if (input.diagnostics) inputs.diagnostics = diagnostics.as<int32_t>();
  Weights layer_weights;
  const int64_t local = c.num_local_experts();
  const DType weight_dtype = fp8 ? DType::f8e4m3 : c.dtype;
  layer_weights.w13 = w13.view(weight_dtype, {local, 2 * c.intermediate, h});
  layer_weights.w2 = w2.view(weight_dtype, {local, h, c.intermediate});
  if (fp8) {
    layer_weights.w13_scale =
        fp8_weight_scale_view(w13_scale, c.quant, local, 2 * c.intermediate, h);
    layer_weights.w2_scale = fp8_weight_scale_view(w2_scale, c.quant, local, h, c.intermediate);
  }
  Outputs outputs;
  outputs.out = TensorView::rows(out.data(), c.dtype, t, h, out_stride, device);

  layer.forward(inputs, layer_weights, outputs, Workspace{workspace.data(), workspace.bytes()},
                context.stream());
  synchronize(device);

  const std::vector<float> all = download_as(out, static_cast<size_t>(t * out_stride), c.dtype);
  LayerRun run;
  run.out.resize(static_cast<size_t>(t * h));
  for (int64_t r = 0; r < t; ++r) {
    for (int64_t col = 0; col < out_stride; ++col) {
      const float v = all[r * out_stride + col];
      if (col < h) {
        run.out[r * h + col] = v;
      } else {
        run.out_gaps.push_back(v);
      }
    }
  }
  run.diagnostics = read_diagnostics(diagnostics);
  return run;
}

std::vector<double> reference_layer(const LayerInput& input, const std::vector<int32_t>& ids,
                                    const std::vector<float>& weights,
                                    const std::vector<int64_t>& tokens) {
  std::vector<double> out(tokens.size() * static_cast<size_t>(input.config.hidden));
  const int64_t num_valid = input.num_valid ? *input.num_valid : input.tokens;
  if (input.config.quant != QuantScheme::none) {
    reference::layer_fp8(input.config, input.tokens, input.x.data(), ids.data(), weights.data(),
                         input.fp8, nullptr, num_valid, tokens, out.data());
    return out;
  }
  reference::layer(input.config, input.tokens, input.x.data(), ids.data(), weights.data(),
                   input.w13.data(), input.w2.data(), num_valid, tokens,
                   input.config.dtype == DType::bf16, out.data());
  return out;
}

void quantize_weights_of(LayerInput& input) {
  const MoeConfig& c = input.config;
  if (c.quant == QuantScheme::none) return;
  const reference::Fp8Scheme scheme =
      c.quant == QuantScheme::fp8_channel ? reference::Fp8Scheme::per_channel
      : c.quant == QuantScheme::fp8_block ? reference::Fp8Scheme::block
                                          : reference::Fp8Scheme::per_tensor;
  input.fp8 = reference::quantize_weights(scheme, c.num_local_experts(), c.hidden, c.intermediate,
                                          input.w13.data(), input.w2.data());
}

std::vector<float> random_values(size_t count, float bound, Random& random) {
  std::vector<float> values(count);
  for (float& v : values) v = random.uniform(-bound, bound);
  return values;
}

std::vector<float> random_logits(int64_t tokens, int64_t num_experts, Random& random) {
  return random_values(static_cast<size_t>(tokens * num_experts), 3.0f, random);
}

LayerInput random_layer(const MoeConfig& config, int64_t tokens, Random& random) {
  const int64_t h = config.hidden;
  const int64_t i = config.intermediate;
  const int64_t local = config.num_local_experts();
  LayerInput input;
  input.config = config;
  input.tokens = tokens;
  input.x = round_trip(random_values(static_cast<size_t>(tokens * h), std::sqrt(3.0f), random),
                       config.dtype);
  input.logits = random_logits(tokens, config.num_experts, random);
  if (config.routing.kind == RoutingKind::grouped_topk) {
    input.bias = random_values(static_cast<size_t>(config.num_experts), 0.1f, random);
  }
  const float w13_bound = std::sqrt(3.0f / static_cast<float>(h));
  const float w2_bound = std::sqrt(3.0f / static_cast<float>(i));
  input.w13 = round_trip(random_values(static_cast<size_t>(local * 2 * i * h), w13_bound, random),
                         config.dtype);
  input.w2 =
      round_trip(random_values(static_cast<size_t>(local * h * i), w2_bound, random), config.dtype);
  return input;
}

std::vector<NamedRouting> every_routing(int64_t num_experts) {
  std::vector<NamedRouting> all;
  RoutingConfig softmax;
  all.push_back({"softmax", softmax});
  RoutingConfig raw;
  raw.renormalize = false;
  all.push_back({"softmax-raw", raw});
  RoutingConfig sigmoid;
  sigmoid.kind = RoutingKind::sigmoid_topk;
  sigmoid.routed_scaling_factor = 1.5f;
  all.push_back({"sigmoid", sigmoid});
  RoutingConfig grouped;
  grouped.kind = RoutingKind::grouped_topk;
  grouped.num_groups = num_experts % 8 == 0 ? 8 : 4;
  grouped.topk_groups = grouped.num_groups / 2;
  grouped.routed_scaling_factor = 2.5f;
  all.push_back({"grouped", grouped});
  return all;
}

MoeConfig small_config(int64_t num_experts, int64_t top_k, int64_t max_tokens, DType dtype,
                       const RoutingConfig& routing) {
  MoeConfig config;
  config.hidden = 128;
  config.intermediate = 64;
  config.num_experts = num_experts;
  config.top_k = top_k;
  config.max_tokens = max_tokens;
  config.dtype = dtype;
  config.routing = routing;
  return config;
}

}  // namespace ironmoe::tools::check
