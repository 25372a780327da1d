// MoeConfig validation, the model presets and what this build can run on.
#include "ironmoe/config.h"

#include <cmath>
#include <sstream>

#include "api/validate.h"
#include "core/check.h"
#include "cuda/cuda_backend.h"
#include "ironmoe/stream.h"

namespace ironmoe {

const char* routing_kind_name(RoutingKind kind) {
  switch (kind) {
    case RoutingKind::softmax_topk: return "softmax_topk";
    case RoutingKind::sigmoid_topk: return "sigmoid_topk";
    case RoutingKind::grouped_topk: return "grouped_topk";
  }
  return "unknown-routing";
}

const char* quant_scheme_name(QuantScheme quant) {
  switch (quant) {
    case QuantScheme::none: return "none";
    case QuantScheme::fp8_tensor: return "fp8_tensor";
    case QuantScheme::fp8_channel: return "fp8_channel";
    case QuantScheme::fp8_block: return "fp8_block";
  }
  return "unknown-quant";
}

const char* expert_kernel_name(ExpertKernel kernel) {
  switch (kernel) {
    case ExpertKernel::automatic: return "automatic";
    case ExpertKernel::grouped_gemm: return "grouped_gemm";
    case ExpertKernel::weight_stream: return "weight_stream";
    case ExpertKernel::cuda_cores: return "cuda_cores";
  }
  return "unknown-expert-kernel";
}

namespace api {

void check_routing(const char* where, const RoutingConfig& routing, int64_t num_experts,
                   int64_t top_k) {
  const bool known_kind = routing.kind == RoutingKind::softmax_topk ||
                          routing.kind == RoutingKind::sigmoid_topk ||
                          routing.kind == RoutingKind::grouped_topk;
  IRONMOE_CHECK(known_kind, where, "routing.kind: expected softmax_topk, sigmoid_topk or ",
                "grouped_topk, got ", static_cast<int>(routing.kind));
  // A negative or zero factor would break "weights are finite and >= 0" or silence the layer.
  IRONMOE_CHECK(std::isfinite(routing.routed_scaling_factor) && routing.routed_scaling_factor > 0,
                where, "routing.routed_scaling_factor: expected a finite value > 0, got ",
                routing.routed_scaling_factor);
  if (routing.kind != RoutingKind::grouped_topk) return;
  IRONMOE_CHECK(routing.num_groups >= 1 && num_experts % routing.num_groups == 0, where,
                "routing.num_groups: expected a divisor of num_experts (", num_experts, "), got ",
                routing.num_groups);
  const int64_t max_groups =
      routing.num_groups < core::kMaxTopK ? routing.num_groups : core::kMaxTopK;
  IRONMOE_CHECK(routing.topk_groups >= 1 && routing.topk_groups <= max_groups, where,
                "routing.topk_groups: expected a value in [1, ", max_groups,
                "] (num_groups, at most ", core::kMaxTopK, "), got ", routing.topk_groups);
  const int64_t group_size = num_experts / routing.num_groups;
  IRONMOE_CHECK(routing.topk_groups * group_size >= top_k, where,
                "routing.topk_groups: the kept groups hold ", routing.topk_groups * group_size,
                " experts (topk_groups ", routing.topk_groups, " x group size ", group_size,
                "), expected at least top_k = ", top_k);
}

}  // namespace api

// Saturates at INT64_MAX where the product overflows (an unvalidated config or token count), so
// a caller sizing buffers from it gets a size every allocation and check refuses, not a wrap.
int64_t MoeConfig::permuted_rows(int64_t tokens) const {
  const int64_t a = layout == Layout::batched ? num_local_experts() : tokens;
  const int64_t b = layout == Layout::batched ? capacity() : top_k;
  if (a <= 0 || b <= 0) return 0;
  int64_t rows = 0;
  return __builtin_mul_overflow(a, b, &rows) ? INT64_MAX : rows;
}

void MoeConfig::validate() const {
  const char* where = "MoeConfig";
  IRONMOE_CHECK(hidden > 0 && hidden <= api::kMaxDimension, where,
                "hidden: expected a value in [1, ", api::kMaxDimension, "], got ", hidden);
  IRONMOE_CHECK(intermediate > 0 && intermediate <= api::kMaxDimension, where,
                "intermediate: expected a value in [1, ", api::kMaxDimension, "], got ",
                intermediate);
  IRONMOE_CHECK(num_experts > 0 && num_experts <= api::kMaxIndex, where,
                "num_experts: expected a value in [1, ", api::kMaxIndex, "], got ", num_experts);
  IRONMOE_CHECK(top_k > 0, where, "top_k: expected > 0, got ", top_k);
  IRONMOE_CHECK(top_k <= num_experts, where, "top_k: expected <= num_experts (", num_experts,
                "), got ", top_k);
  IRONMOE_CHECK(top_k <= core::kMaxTopK, where, "top_k: expected <= ", core::kMaxTopK, ", got ",
                top_k);
  IRONMOE_CHECK(max_tokens > 0, where, "max_tokens: expected > 0, got ", max_tokens);
  IRONMOE_CHECK(max_tokens <= api::kMaxIndex / top_k, where, "max_tokens: max_tokens * top_k ",
                "must fit int32 (at most ", api::kMaxIndex / top_k, " tokens for top_k ", top_k,
                "), got ", max_tokens);
  api::check_expert_range(where, num_experts, expert_begin, expert_end);
  IRONMOE_CHECK(activation == Activation::silu_and_mul || activation == Activation::gelu_and_mul,
                where, "activation: expected silu_and_mul or gelu_and_mul, got ",
                static_cast<int>(activation));
  api::check_routing(where, routing, num_experts, top_k);
  IRONMOE_CHECK(dtype == DType::f32 || dtype == DType::bf16 || dtype == DType::f16, where,
                "dtype: expected f32, bf16 or f16, got ", dtype_name(dtype));
  api::check_quant_scheme(where, quant);
  IRONMOE_CHECK(layout == Layout::contiguous || layout == Layout::batched, where,
                "layout: expected contiguous or batched, got ", static_cast<int>(layout));
  // Checked here too, not only by the experts stage, so a Layer refuses it before any work is
  // queued (E1).
  IRONMOE_CHECK(
      expert_kernel == ExpertKernel::automatic || expert_kernel == ExpertKernel::grouped_gemm ||
          expert_kernel == ExpertKernel::weight_stream || expert_kernel == ExpertKernel::cuda_cores,
      where, "expert_kernel: expected automatic, grouped_gemm, weight_stream or ",
      "cuda_cores, got ", static_cast<int>(expert_kernel));
  IRONMOE_CHECK(batched_capacity >= 0, where, "batched_capacity: expected >= 0 (0: max_tokens), ",
                "got ", batched_capacity);
  if (layout == Layout::batched) {
    const int64_t local = num_local_experts();
    IRONMOE_CHECK(local == 0 || capacity() <= api::kMaxIndex / local, where,
                  "batched_capacity: local experts x capacity must fit int32, got ", local, " x ",
                  capacity());
  }
}

namespace {

struct Preset {
  const char* name;
  int64_t hidden, intermediate, num_experts, top_k;
  RoutingConfig routing;
};

RoutingConfig softmax_renormalized() { return {RoutingKind::softmax_topk, true, 1, 1, 1.0f}; }

// DESIGN.md section 1.
const Preset kPresets[] = {
    {"qwen3-30b-a3b", 2048, 768, 128, 8, softmax_renormalized()},
    {"qwen3-next-80b-a3b", 2048, 512, 512, 10, softmax_renormalized()},
    {"mixtral-8x7b", 4096, 14336, 8, 2, softmax_renormalized()},
    {"deepseek-v3", 7168, 2048, 256, 8, {RoutingKind::grouped_topk, true, 8, 4, 2.5f}},
};

}  // namespace

MoeConfig preset(std::string_view name, int64_t max_tokens) {
  for (const Preset& p : kPresets) {
    if (name != p.name) continue;
    MoeConfig config;
    config.hidden = p.hidden;
    config.intermediate = p.intermediate;
    config.num_experts = p.num_experts;
    config.top_k = p.top_k;
    config.max_tokens = max_tokens;
    config.routing = p.routing;
    config.dtype = DType::bf16;
    config.validate();
    return config;
  }
  std::ostringstream known;
  for (const Preset& p : kPresets) known << (&p == kPresets ? "" : ", ") << p.name;
  core::fail("preset", "name: expected one of ", known.str(), ", got '", name, "'");
}

std::vector<std::string> preset_names() {
  std::vector<std::string> names;
  for (const Preset& p : kPresets) names.emplace_back(p.name);
  return names;
}

bool cuda_compiled() {
#if defined(IRONMOE_WITH_CUDA)
  return true;
#else
  return false;
#endif
}

bool cuda_available() { return cuda::available(); }

}  // namespace ironmoe
