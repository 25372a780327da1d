// Layer: route -> plan -> gather -> experts -> combine (FP8: the gather inside the experts),
// every buffer carved from the caller's workspace (core::workspace_layout), so forward()
// allocates nothing and never syncs. On CUDA, decode batches take the fused path
// (cuda/fused_decode.cu): route, then two kernels, with the stages' result bit for bit.
#include "ironmoe/layer.h"

#include <initializer_list>

#include "api/validate.h"
#include "core/workspace_layout.h"
#include "cuda/cuda_backend.h"
#include "ironmoe/combine.h"
#include "ironmoe/experts.h"
#include "ironmoe/gather.h"
#include "ironmoe/plan.h"
#include "ironmoe/route.h"

namespace ironmoe {
namespace {

// The config is valid and its dtype runs on the device.
void check_config_for(const char* where, const MoeConfig& config, Device device) {
  config.validate();
  api::check_stream(where, Stream{device, nullptr, nullptr});
  api::check_float_dtype(where, "config.dtype", config.dtype, device);
}

// What forward() writes (the workspace, out, diagnostics) shares no byte with anything else it
// touches, checked on the host. out may be x itself or overlap it (in place): x is read whole, by
// gather, the FP8 experts' input quantisation or the fused decode kernels, before combine writes
// out.
void check_no_shared_memory(const char* where, const Inputs& inputs, const Weights& weights,
                            const Outputs& outputs, const void* workspace, size_t workspace_bytes) {
  using api::byte_range;
  const api::ByteRange ws = byte_range("workspace", workspace, workspace_bytes);
  const api::ByteRange diagnostics =
      api::diagnostics_range(where, inputs.diagnostics, "inputs.diagnostics");
  api::check_outputs_apart(
      where, {ws, diagnostics, byte_range("outputs.out", outputs.out)},
      {byte_range("inputs.router_logits", inputs.router_logits),
       byte_range("inputs.correction_bias", inputs.correction_bias),
       byte_range("inputs.topk_ids", inputs.topk_ids),
       byte_range("inputs.topk_weights", inputs.topk_weights),
       api::num_valid_range(where, inputs.num_valid_tokens, "inputs.num_valid_tokens"),
       byte_range("weights.w13", weights.w13), byte_range("weights.w2", weights.w2),
       byte_range("weights.w13_scale", weights.w13_scale),
       byte_range("weights.w2_scale", weights.w2_scale),
       byte_range("weights.w13_input_scale", weights.w13_input_scale),
       byte_range("weights.w2_input_scale", weights.w2_input_scale)});
  // out may overlap x (in place); nothing else the call writes may.
  const api::ByteRange x = byte_range("inputs.x", inputs.x);
  for (const api::ByteRange& written : {ws, diagnostics}) api::check_disjoint(where, written, {x});
}

}  // namespace

size_t workspace_bytes(const MoeConfig& config, Device device) {
  check_config_for("workspace_bytes", config, device);
  return core::workspace_layout(config, device).total_bytes;
}

Layer::Layer(const MoeConfig& config, Device device) : config_(config), device_(device) {
  check_config_for("Layer", config_, device_);
}

size_t Layer::workspace_bytes() const { return ironmoe::workspace_bytes(config_, device_); }

void Layer::forward(const Inputs& inputs, const Weights& weights, const Outputs& outputs,
                    const Workspace& workspace, const Stream& stream) const {
  const LayerStages s = stages(inputs, weights, outputs, workspace, stream);
  if (s.has_route) route(s.routing, s.route, stream);
  if (s.has_input_scale) fp8_input_scale(s.input_scale, stream);
  if (device_.is_cuda() && cuda::try_fused_decode(config_, s, stream.cuda_stream)) return;
  plan(s.plan, stream);
  if (s.has_gather) gather(s.gather, stream);
  experts(s.experts, stream);
  combine(s.combine, stream);
}

LayerStages Layer::stages(const Inputs& inputs, const Weights& weights, const Outputs& outputs,
                          const Workspace& workspace, const Stream& stream) const {
  const char* where = "Layer::forward";
  const MoeConfig& c = config_;
  const Device device = device_;
  api::check_stream(where, stream);
  IRONMOE_CHECK(stream.device == device, where, "stream: expected the layer's device ",
                api::device_string(device), ", got ", api::device_string(stream.device));
  const int64_t hidden = c.hidden;
  const int64_t inter = c.intermediate;
  const int64_t num_experts = c.num_experts;
  const int64_t top_k = c.top_k;
  const int64_t local_experts = c.num_local_experts();

  IRONMOE_CHECK(api::present(inputs.x), where, "inputs.x: expected a [T, ", hidden,
                "] tensor, got none");
  check_tensor(where, "inputs.x", inputs.x, {c.dtype, {-1, hidden}, true}, device);
  const int64_t tokens = inputs.x.size(0);
  IRONMOE_CHECK(tokens <= c.max_tokens, where, "inputs.x: expected at most max_tokens = ",
                c.max_tokens, " rows, got ", tokens);

  const bool has_logits = api::present(inputs.router_logits);
  const bool has_ids = api::present(inputs.topk_ids);
  const bool has_weights = api::present(inputs.topk_weights);
  IRONMOE_CHECK(has_logits != (has_ids || has_weights), where,
                "inputs: expected either router_logits or (topk_ids and topk_weights), got ",
                has_logits ? "both" : "neither");
  if (has_logits) {
    api::check_float_dtype(where, "inputs.router_logits", inputs.router_logits.dtype, device);
    check_tensor(where, "inputs.router_logits", inputs.router_logits,
                 {inputs.router_logits.dtype, {tokens, num_experts}, true}, device);
  } else {
    IRONMOE_CHECK(has_ids && has_weights, where, "inputs: precomputed routing needs both ",
                  "topk_ids and topk_weights, got only ", has_ids ? "topk_ids" : "topk_weights");
    check_tensor(where, "inputs.topk_ids", inputs.topk_ids, {DType::i32, {tokens, top_k}},
                 device);
    check_tensor(where, "inputs.topk_weights", inputs.topk_weights,
                 {DType::f32, {tokens, top_k}}, device);
  }
  if (api::present(inputs.correction_bias)) {
    IRONMOE_CHECK(has_logits && c.routing.kind == RoutingKind::grouped_topk, where,
                  "inputs.correction_bias: only used when routing router_logits with ",
                  "grouped_topk, got routing.kind ", routing_kind_name(c.routing.kind),
                  has_logits ? "" : " and precomputed topk_ids");
    check_tensor(where, "inputs.correction_bias", inputs.correction_bias,
                 {DType::f32, {num_experts}}, device);
  }

  api::check_quantized_weights(where,
                               {"weights.", weights.w13, weights.w2, weights.w13_scale,
                                weights.w2_scale, weights.w13_input_scale, weights.w2_input_scale},
                               c.quant, c.dtype, local_experts, hidden, inter, device);
  check_tensor(where, "outputs.out", outputs.out, {c.dtype, {tokens, hidden}, true}, device);

  const core::WorkspaceLayout layout = core::workspace_layout(c, device);
  IRONMOE_CHECK(workspace.data != nullptr, where, "workspace: expected ", layout.total_bytes,
                " bytes, got a null pointer");
  IRONMOE_CHECK(workspace.bytes >= layout.total_bytes, where, "workspace: expected at least ",
                layout.total_bytes, " bytes (workspace_bytes), got ", workspace.bytes);
  check_pointer_alignment(where, "workspace", workspace.data, core::kWorkspaceAlignment);
  check_no_shared_memory(where, inputs, weights, outputs, workspace.data, layout.total_bytes);

  char* base = static_cast<char*>(workspace.data);
  const int64_t rows = c.permuted_rows(tokens);
  auto view = [&](size_t offset, DType dtype, std::initializer_list<int64_t> shape) {
    return TensorView::contiguous(base + offset, dtype, shape, device);
  };

  LayerStages result;
  TensorView topk_ids = inputs.topk_ids;
  TensorView topk_weights = inputs.topk_weights;
  if (has_logits) {
    topk_ids = view(layout.topk_ids, DType::i32, {tokens, top_k});
    topk_weights = view(layout.topk_weights, DType::f32, {tokens, top_k});
    RouteArgs& route_args = result.route;
    result.has_route = true;
    result.routing = c.routing;
    route_args.logits = inputs.router_logits;
    route_args.correction_bias = inputs.correction_bias;
    route_args.topk_ids = topk_ids;
    route_args.topk_weights = topk_weights;
    route_args.num_valid_tokens = inputs.num_valid_tokens;
    route_args.diagnostics = inputs.diagnostics;
  }

  PlanArgs& plan_args = result.plan;
  plan_args.topk_ids = topk_ids;
  plan_args.num_experts = num_experts;
  plan_args.expert_begin = c.expert_begin;
  plan_args.expert_end = c.local_expert_end();
  plan_args.layout = c.layout;
  plan_args.capacity = c.capacity();
  plan_args.expert_counts = view(layout.expert_counts, DType::i32, {local_experts});
  plan_args.expert_offsets = view(layout.expert_offsets, DType::i32, {local_experts + 1});
  plan_args.slot_to_row = view(layout.slot_to_row, DType::i32, {tokens, top_k});
  plan_args.row_to_slot = view(layout.row_to_slot, DType::i32, {rows});
  plan_args.num_valid_tokens = inputs.num_valid_tokens;
  plan_args.diagnostics = inputs.diagnostics;
  plan_args.scratch = base + layout.plan_scratch;
  plan_args.scratch_bytes = layout.plan_scratch_bytes;

  GatherArgs& gather_args = result.gather;
  gather_args.x = inputs.x;
  gather_args.row_to_slot = plan_args.row_to_slot;
  gather_args.top_k = top_k;
  gather_args.permuted = view(layout.permuted_in, c.dtype, {rows, hidden});

  ExpertArgs& expert_args = result.experts;
  expert_args.permuted_in = gather_args.permuted;
  if (c.quant != QuantScheme::none) {
    // The gather fused into GEMM1's input quantisation (DESIGN section 6); permuted_in (the
    // bytes of permuted_out, core::workspace_layout) is not read.
    result.has_gather = false;
    expert_args.gathered = {inputs.x, plan_args.row_to_slot, top_k};
  }
  expert_args.expert_offsets = plan_args.expert_offsets;
  expert_args.expert_counts = plan_args.expert_counts;
  expert_args.w13 = weights.w13;
  expert_args.w2 = weights.w2;
  expert_args.activation = c.activation;
  expert_args.kernel = c.expert_kernel;
  if (c.quant == QuantScheme::none) {
    expert_args.intermediate = view(layout.intermediate, c.dtype, {rows, inter});
  }
  expert_args.permuted_out = view(layout.permuted_out, c.dtype, {rows, hidden});
  expert_args.scratch = base + layout.expert_scratch;
  expert_args.scratch_bytes = layout.expert_scratch_bytes;
  expert_args.quant = c.quant;
  expert_args.w13_scale = weights.w13_scale;
  expert_args.w2_scale = weights.w2_scale;
  expert_args.w13_input_scale = weights.w13_input_scale;
  expert_args.w2_input_scale = weights.w2_input_scale;
  if (c.quant == QuantScheme::fp8_tensor && !api::present(weights.w13_input_scale)) {
    result.has_input_scale = true;
    result.input_scale.x = inputs.x;
    result.input_scale.num_valid_tokens = inputs.num_valid_tokens;
    result.input_scale.scale = view(layout.input_scale, DType::f32, {1});
    expert_args.w13_input_scale = result.input_scale.scale;
  }

  CombineArgs& combine_args = result.combine;
  combine_args.permuted_out = expert_args.permuted_out;
  combine_args.slot_to_row = plan_args.slot_to_row;
  combine_args.topk_weights = topk_weights;
  combine_args.out = outputs.out;
  combine_args.num_valid_tokens = inputs.num_valid_tokens;
  return result;
}

}  // namespace ironmoe
