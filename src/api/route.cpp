// ironmoe::route: validates on the host, then runs the backend of the stream's device.
#include "ironmoe/route.h"

#include "api/validate.h"
#include "cpu/cpu_backend.h"
#include "cuda/cuda_backend.h"

namespace ironmoe {

void route(const RoutingConfig& routing, const RouteArgs& args, const Stream& stream) {
  const char* where = "route";
  api::check_stream(where, stream);
  const Device device = stream.device;

  IRONMOE_CHECK(api::present(args.logits), where, "logits: expected a [T, E] tensor, got none");
  api::check_float_dtype(where, "logits", args.logits.dtype, device);
  check_tensor(where, "logits", args.logits, {args.logits.dtype, {-1, -1}, true}, device);
  const int64_t tokens = args.logits.size(0);
  const int64_t num_experts = args.logits.size(1);
  IRONMOE_CHECK(num_experts >= 1 && num_experts <= api::kMaxIndex, where,
                "logits: expected E in [1, ", api::kMaxIndex, "] columns, got ", num_experts);

  IRONMOE_CHECK(api::present(args.topk_ids), where, "topk_ids: expected a [T, k] i32 output, ",
                "got none");
  check_tensor(where, "topk_ids", args.topk_ids, {DType::i32, {tokens, -1}}, device);
  const int64_t top_k = args.topk_ids.size(1);
  api::check_top_k(where, "topk_ids", top_k);
  IRONMOE_CHECK(top_k <= num_experts, where, "topk_ids: expected k <= E (", num_experts,
                ") columns, got ", top_k);
  IRONMOE_CHECK(tokens <= api::kMaxIndex / top_k, where, "logits: T * k must fit int32, got T = ",
                tokens, ", k = ", top_k);
  check_tensor(where, "topk_weights", args.topk_weights, {DType::f32, {tokens, top_k}}, device);
  api::check_routing(where, routing, num_experts, top_k);

  if (api::present(args.correction_bias)) {
    IRONMOE_CHECK(routing.kind == RoutingKind::grouped_topk, where,
                  "correction_bias: only grouped_topk uses a correction bias, but routing.kind is ",
                  routing_kind_name(routing.kind));
    check_tensor(where, "correction_bias", args.correction_bias, {DType::f32, {num_experts}},
                 device);
  }

  api::check_outputs_apart(where,
                           {api::byte_range("topk_ids", args.topk_ids),
                            api::byte_range("topk_weights", args.topk_weights),
                            api::diagnostics_range(where, args.diagnostics)},
                           {api::byte_range("logits", args.logits),
                            api::byte_range("correction_bias", args.correction_bias),
                            api::num_valid_range(where, args.num_valid_tokens)});

  if (device.is_cpu()) {
    cpu::route(routing, args, stream.threads);
  } else {
    cuda::route(routing, args, stream.cuda_stream);
  }
}

}  // namespace ironmoe
