// The PyTorch ops torch.ops.ironmoe.*: thin adapters from at::Tensor to ironmoe's views. Every
// argument check is the C++ library's own (its ironmoe::Error message reaches Python unchanged as
// a RuntimeError); this file only converts tensors, allocates the outputs and the workspace with
// PyTorch's allocator, and picks the stream.
//
// CPU tensors run on the CPU backend with a pool of at::get_num_threads() workers; CUDA tensors
// (when the package was built with the CUDA backend, IRONMOE_TORCH_CUDA) run on the tensors'
// device and PyTorch's current stream of that device, so the ops work inside CUDA graph capture
// and under torch.compile. Nothing here synchronises or allocates outside PyTorch's allocator.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/DeviceGuard.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>
#ifndef IRONMOE_TORCH_CUDA
#define IRONMOE_TORCH_CUDA 0
#endif
#if IRONMOE_TORCH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>

#include "ironmoe/ironmoe.h"

namespace ironmoe::torch_ops {
namespace {

DType dtype_of(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kBFloat16: return DType::bf16;
    case at::kHalf: return DType::f16;
    case at::kInt: return DType::i32;
    case at::kFloat8_e4m3fn: return DType::f8e4m3;
    default:
      throw Error(std::string("ironmoe: ") + name + ": expected float32, bfloat16, float16, " +
                  "int32 or float8_e4m3fn, got " + std::string(c10::toString(t.scalar_type())));
  }
}

Device device_of(const at::Tensor& t, const char* name) {
  if (t.device().is_cpu()) return Device::cpu();
#if IRONMOE_TORCH_CUDA
  if (t.device().is_cuda()) return Device::cuda(t.device().index());
  throw Error(std::string("ironmoe: ") + name + ": expected a CPU or CUDA tensor, got one on " +
              t.device().str());
#else
  throw Error(std::string("ironmoe: ") + name + ": this build of the ironmoe Python package runs " +
              "on the CPU only (it was built without nvcc or against a PyTorch without CUDA); " +
              "got a tensor on " + t.device().str());
#endif
}

// Where the work of an op on `anchor`'s device runs: PyTorch's current stream of that device
// (what CUDA graph capture records), or `threads` on the CPU.
Stream stream_for(const at::Tensor& anchor, ThreadPool* threads) {
#if IRONMOE_TORCH_CUDA
  if (anchor.is_cuda()) {
    const c10::DeviceIndex index = anchor.device().index();
    return Stream::cuda(c10::cuda::getCurrentCUDAStream(index).stream(), index);
  }
#endif
  (void)anchor;
  return Stream::cpu(threads);
}

// A view of a tensor whose rows may be strided (2-D) or that must be contiguous (otherwise).
TensorView view_of(const at::Tensor& t, const char* name) {
  TensorView v;
  v.data = t.data_ptr();
  v.dtype = dtype_of(t, name);
  v.device = device_of(t, name);
  if (t.dim() > kMaxDims) {
    throw Error(std::string("ironmoe: ") + name + ": expected at most 4 dimensions, got " +
                std::to_string(t.dim()));
  }
  v.ndim = static_cast<int>(t.dim());
  for (int d = 0; d < v.ndim; ++d) {
    v.shape[static_cast<size_t>(d)] = t.size(d);
    v.strides[static_cast<size_t>(d)] = t.stride(d);
  }
  return v;
}

// One process-wide pool would be global state; a pool per call costs a thread start per worker,
// negligible next to a MoE layer on the CPU.
int cpu_threads() {
  return std::clamp(static_cast<int>(at::get_num_threads()), 1, ThreadPool::kMaxThreads);
}

RoutingConfig routing_config(const std::string& scoring, bool renormalize, int64_t num_groups,
                             int64_t topk_groups, double routed_scaling_factor) {
  RoutingConfig routing;
  if (scoring == "softmax") {
    routing.kind = RoutingKind::softmax_topk;
  } else if (scoring == "sigmoid") {
    routing.kind = RoutingKind::sigmoid_topk;
  } else if (scoring == "grouped") {
    routing.kind = RoutingKind::grouped_topk;
  } else {
    throw Error("ironmoe: scoring: expected 'softmax', 'sigmoid' or 'grouped', got '" + scoring +
                "'");
  }
  routing.renormalize = renormalize;
  routing.num_groups = num_groups;
  routing.topk_groups = topk_groups;
  routing.routed_scaling_factor = static_cast<float>(routed_scaling_factor);
  return routing;
}

Activation activation_of(const std::string& name) {
  if (name == "silu") return Activation::silu_and_mul;
  if (name == "gelu") return Activation::gelu_and_mul;
  throw Error("ironmoe: activation: expected 'silu' or 'gelu', got '" + name + "'");
}

std::tuple<at::Tensor, at::Tensor> route(const at::Tensor& router_logits, int64_t top_k,
                                         const std::string& scoring, bool renormalize,
                                         const std::optional<at::Tensor>& correction_bias,
                                         int64_t num_groups, int64_t topk_groups,
                                         double routed_scaling_factor) {
  if (router_logits.dim() != 2) {
    throw Error("ironmoe::route: router_logits: expected a [T, E] tensor, got " +
                std::to_string(router_logits.dim()) + " dimensions");
  }
  device_of(router_logits, "router_logits");  // refuses a device this build cannot run
  // Before the outputs are allocated: a k of -1 or 2**40 is the caller's error, not the
  // allocator's (the library checks k again against the outputs).
  const int64_t max_k = std::min<int64_t>(router_logits.size(1), kMaxTopK);
  if (top_k < 1 || top_k > max_k) {
    throw Error("ironmoe::route: top_k: expected a value in [1, " + std::to_string(max_k) +
                "] (E = " + std::to_string(router_logits.size(1)) + ", at most " +
                std::to_string(kMaxTopK) + "), got " + std::to_string(top_k));
  }
  const c10::OptionalDeviceGuard guard(router_logits.device());
  const int64_t tokens = router_logits.size(0);
  const auto options = router_logits.options();
  at::Tensor weights = at::empty({tokens, top_k}, options.dtype(at::kFloat));
  at::Tensor ids = at::empty({tokens, top_k}, options.dtype(at::kInt));
  RouteArgs args;
  args.logits = view_of(router_logits, "router_logits");
  if (correction_bias.has_value())
    args.correction_bias = view_of(*correction_bias, "correction_bias");
  args.topk_ids = view_of(ids, "topk_ids");
  args.topk_weights = view_of(weights, "topk_weights");
  // Routing is a few hundred operations per token: the calling thread alone, no pool to start.
  ironmoe::route(
      routing_config(scoring, renormalize, num_groups, topk_groups, routed_scaling_factor), args,
      stream_for(router_logits, nullptr));
  return {weights, ids};
}

// Engines hand over int64 ids as often as int32 ones. Every id outside int32 is outside [0, E)
// as well, so clamping to [-1, E] keeps its meaning ("not a local expert") exactly.
at::Tensor ids_as_int32(const at::Tensor& ids, int64_t num_experts) {
  if (ids.scalar_type() == at::kInt) return ids.contiguous();
  if (ids.scalar_type() != at::kLong) {
    throw Error("ironmoe::fused_experts: topk_ids: expected int32 or int64, got " +
                std::string(c10::toString(ids.scalar_type())));
  }
  return ids.clamp(-1, num_experts).to(at::kInt).contiguous();
}

QuantScheme quant_of(const std::string& quant) {
  if (quant == "none") return QuantScheme::none;
  if (quant == "fp8_tensor") return QuantScheme::fp8_tensor;
  if (quant == "fp8_channel") return QuantScheme::fp8_channel;
  if (quant == "fp8_block") return QuantScheme::fp8_block;
  throw Error("ironmoe::fused_experts: quant: expected 'none', 'fp8_tensor', 'fp8_channel' or " +
              std::string("'fp8_block', got '") + quant + "'");
}

// vLLM keeps per-channel weight scales as [E, N, 1]; the library takes [E, N].
at::Tensor weight_scale_of(const at::Tensor& scale, QuantScheme quant) {
  if (quant == QuantScheme::fp8_channel && scale.dim() == 3 && scale.size(2) == 1) {
    return scale.squeeze(-1).contiguous();
  }
  return scale.contiguous();
}

// The ranks the shapes below are read from, checked before any size is.
void check_ranks(const at::Tensor& hidden_states, const at::Tensor& w1, const at::Tensor& w2,
                 const at::Tensor& topk_ids) {
  if (hidden_states.dim() != 2 || w1.dim() != 3 || w2.dim() != 3 || topk_ids.dim() != 2) {
    throw Error(
        "ironmoe::fused_experts: expected hidden_states [T, H], w1 [E, 2I, H], "
        "w2 [E, H, I] and topk_ids [T, k]; got " +
        std::to_string(hidden_states.dim()) + ", " + std::to_string(w1.dim()) + ", " +
        std::to_string(w2.dim()) + " and " + std::to_string(topk_ids.dim()) + " dimensions");
  }
}

// A static activation scale is one value; reshape would fail on any other count with a message
// that names no argument.
at::Tensor activation_scale_of(const at::Tensor& scale, const char* name) {
  if (scale.numel() != 1) {
    throw Error(std::string("ironmoe::fused_experts: ") + name +
                ": expected one value (a static per-tensor activation scale), got " +
                std::to_string(scale.numel()) + " elements");
  }
  return scale.reshape({1});
}

void fused_experts_out(const at::Tensor& hidden_states, const at::Tensor& w1, const at::Tensor& w2,
                       const at::Tensor& topk_weights, const at::Tensor& topk_ids,
                       const std::string& activation, int64_t global_num_experts,
                       int64_t expert_begin, const std::string& quant,
                       const std::optional<at::Tensor>& w1_scale,
                       const std::optional<at::Tensor>& w2_scale,
                       const std::optional<at::Tensor>& a1_scale,
                       const std::optional<at::Tensor>& a2_scale, at::Tensor& out) {
  check_ranks(hidden_states, w1, w2, topk_ids);
  const int64_t tokens = hidden_states.size(0);
  const int64_t local_experts = w1.size(0);
  if (global_num_experts < -1) {
    throw Error(
        "ironmoe: global_num_experts: expected -1 (the local expert count) "
        "or the number of experts, got " +
        std::to_string(global_num_experts));
  }
  const int64_t num_experts = global_num_experts == -1 ? local_experts : global_num_experts;

  MoeConfig config;
  config.hidden = hidden_states.size(1);
  config.intermediate = w2.size(2);
  config.num_experts = num_experts;
  config.top_k = topk_ids.size(1);
  config.max_tokens = tokens > 0 ? tokens : 1;  // T = 0 is valid and does nothing
  config.expert_begin = expert_begin;
  config.expert_end = expert_begin + local_experts;
  config.activation = activation_of(activation);
  config.dtype = dtype_of(hidden_states, "hidden_states");
  config.quant = quant_of(quant);

  const Device device = device_of(hidden_states, "hidden_states");
  const c10::OptionalDeviceGuard guard(hidden_states.device());
  const Layer layer(config, device);
  at::Tensor workspace = at::empty({static_cast<int64_t>(layer.workspace_bytes()) + 256},
                                   hidden_states.options().dtype(at::kByte));
  const auto address = reinterpret_cast<uintptr_t>(workspace.data_ptr());
  void* aligned = reinterpret_cast<void*>((address + 255) / 256 * 256);
  const at::Tensor ids = ids_as_int32(topk_ids, num_experts);
  const at::Tensor weights = topk_weights.contiguous();

  Inputs inputs;
  inputs.x = view_of(hidden_states, "hidden_states");
  inputs.topk_ids = view_of(ids, "topk_ids");
  inputs.topk_weights = view_of(weights, "topk_weights");
  Weights layer_weights;
  layer_weights.w13 = view_of(w1, "w1");
  layer_weights.w2 = view_of(w2, "w2");
  // Kept alive until forward() has read them (reshaped or contiguous copies).
  at::Tensor scales[4];
  const std::optional<at::Tensor>* given[4] = {&w1_scale, &w2_scale, &a1_scale, &a2_scale};
  TensorView* views[4] = {&layer_weights.w13_scale, &layer_weights.w2_scale,
                          &layer_weights.w13_input_scale, &layer_weights.w2_input_scale};
  const char* names[4] = {"w1_scale", "w2_scale", "a1_scale", "a2_scale"};
  for (int i = 0; i < 4; ++i) {
    if (!given[i]->has_value()) continue;
    scales[i] = i < 2 ? weight_scale_of(**given[i], config.quant)
                      : activation_scale_of(**given[i], names[i]);
    *views[i] = view_of(scales[i], names[i]);
  }
  const Outputs outputs{view_of(out, "out")};
  std::optional<ThreadPool> threads;
  if (device.type == DeviceType::cpu) threads.emplace(cpu_threads());
  layer.forward(inputs, layer_weights, outputs, Workspace{aligned, layer.workspace_bytes()},
                stream_for(hidden_states, threads ? &*threads : nullptr));
}

at::Tensor fused_experts(const at::Tensor& hidden_states, const at::Tensor& w1,
                         const at::Tensor& w2, const at::Tensor& topk_weights,
                         const at::Tensor& topk_ids, const std::string& activation,
                         int64_t global_num_experts, int64_t expert_begin, const std::string& quant,
                         const std::optional<at::Tensor>& w1_scale,
                         const std::optional<at::Tensor>& w2_scale,
                         const std::optional<at::Tensor>& a1_scale,
                         const std::optional<at::Tensor>& a2_scale) {
  check_ranks(hidden_states, w1, w2, topk_ids);
  at::Tensor out =
      at::empty({hidden_states.size(0), hidden_states.size(-1)}, hidden_states.options());
  fused_experts_out(hidden_states, w1, w2, topk_weights, topk_ids, activation, global_num_experts,
                    expert_begin, quant, w1_scale, w2_scale, a1_scale, a2_scale, out);
  return out;
}

// fused_experts_out above autograd: as PyTorch's own out= functions, it refuses inputs that
// require grad while grad mode is on (out could not carry their gradient), and dual tensors of
// forward AD whatever the grad mode. PyTorch's default fallback for custom ops would run it and
// leave out without a history or tangent. Boxed: it only looks at the tensors among the arguments
// and passes the call on to ADInplaceOrView.
void fused_experts_out_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                                torch::jit::Stack* stack) {
  const bool grad_mode = at::GradMode::is_enabled();
  const size_t arguments = op.schema().arguments().size();
  for (size_t i = stack->size() - arguments; i < stack->size(); ++i) {
    const c10::IValue& argument = (*stack)[i];
    if (!argument.isTensor()) continue;
    const at::Tensor& tensor = argument.toTensor();
    if (tensor._fw_grad(/*level=*/0).defined()) {
      throw Error(
          "ironmoe::fused_experts: out= does not support forward-mode automatic "
          "differentiation, but one of the arguments is a dual tensor with a tangent");
    }
    if (grad_mode && tensor.requires_grad()) {
      throw Error(
          "ironmoe::fused_experts: out= does not support automatic differentiation, but one "
          "of the arguments requires grad; call it under torch.no_grad() or "
          "torch.inference_mode(), or pass detached tensors");
    }
  }
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}

// fused_experts_out's ADInplaceOrView kernel: bumps out's version counter after the write, as
// PyTorch's in-place and out= ops do, so that a tensor autograd saved before it is known to be
// stale. This key runs in inference_mode too, for every tensor but an inference tensor (which
// has no counter and skips it).
void fused_experts_out_inplace(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                               torch::jit::Stack* stack) {
  const at::Tensor out = stack->back().toTensor();  // the last argument; the op returns nothing
  {
    const at::AutoDispatchBelowADInplaceOrView guard;
    op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
  }
  torch::autograd::impl::bump_version(out);
}

// fused_experts_out where a tensor carries PyTorch's lazy negation or conjugation bit
// (torch._neg_view, conj views). PyTorch's fallback for those bits cannot write back through out
// for this op (an internal assert, then a corrupted heap, when the op was called directly): out
// with either bit is refused by name, inputs with one are resolved here, as the fallback would
// resolve them, and the call goes on below both keys.
void fused_experts_out_math_bits(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                                 torch::jit::Stack* stack) {
  const at::Tensor out = stack->back().toTensor();
  if (out.is_neg() || out.is_conj()) {
    throw Error(
        "ironmoe::fused_experts: out: expected a tensor without the lazy negation or conjugation "
        "bit; pass out.resolve_neg() or a fresh tensor");
  }
  const size_t arguments = op.schema().arguments().size();
  for (size_t i = stack->size() - arguments; i + 1 < stack->size(); ++i) {
    c10::IValue& argument = (*stack)[i];
    if (!argument.isTensor()) continue;
    const at::Tensor tensor = argument.toTensor();
    if (tensor.is_neg() || tensor.is_conj()) argument = tensor.resolve_conj().resolve_neg();
  }
  op.redispatchBoxed(keys.remove(c10::DispatchKey::Negative).remove(c10::DispatchKey::Conjugate),
                     stack);
}

// Whether these ops accept CUDA tensors (the package was built with the CUDA backend).
bool cuda_enabled() { return IRONMOE_TORCH_CUDA != 0; }

}  // namespace
}  // namespace ironmoe::torch_ops

TORCH_LIBRARY(ironmoe, m) {
  m.def(
      "route(Tensor router_logits, int top_k, str scoring='softmax', bool renormalize=True, "
      "Tensor? correction_bias=None, int num_groups=1, int topk_groups=1, "
      "float routed_scaling_factor=1.0) -> (Tensor, Tensor)");
  m.def(
      "fused_experts(Tensor hidden_states, Tensor w1, Tensor w2, Tensor topk_weights, "
      "Tensor topk_ids, str activation='silu', int global_num_experts=-1, int expert_begin=0, "
      "str quant='none', Tensor? w1_scale=None, Tensor? w2_scale=None, Tensor? a1_scale=None, "
      "Tensor? a2_scale=None) -> Tensor");
  m.def(
      "fused_experts_out(Tensor hidden_states, Tensor w1, Tensor w2, Tensor topk_weights, "
      "Tensor topk_ids, str activation, int global_num_experts, int expert_begin, str quant, "
      "Tensor? w1_scale, Tensor? w2_scale, Tensor? a1_scale, Tensor? a2_scale, "
      "Tensor(a!) out) -> ()");
  m.def("cuda_enabled() -> bool", &ironmoe::torch_ops::cuda_enabled);
}

TORCH_LIBRARY_IMPL(ironmoe, CPU, m) {
  m.impl("route", &ironmoe::torch_ops::route);
  m.impl("fused_experts", &ironmoe::torch_ops::fused_experts);
  m.impl("fused_experts_out", &ironmoe::torch_ops::fused_experts_out);
}

// route and fused_experts keep PyTorch's default autograd fallback for custom ops: they have no
// backward, and backward() through them warns and gives the inputs no gradient. A kernel that
// raises on backward instead (autogradNotImplementedFallback) made torch.compile fail on any
// model whose weights require grad, since compiling traces the backward. out= refuses such
// inputs outright, as PyTorch's own out= functions do.
TORCH_LIBRARY_IMPL(ironmoe, Autograd, m) {
  m.impl(
      "fused_experts_out",
      torch::CppFunction::makeFromBoxedFunction<&ironmoe::torch_ops::fused_experts_out_autograd>());
}

TORCH_LIBRARY_IMPL(ironmoe, ADInplaceOrView, m) {
  m.impl(
      "fused_experts_out",
      torch::CppFunction::makeFromBoxedFunction<&ironmoe::torch_ops::fused_experts_out_inplace>());
}

TORCH_LIBRARY_IMPL(ironmoe, Negative, m) {
  m.impl("fused_experts_out", torch::CppFunction::makeFromBoxedFunction<
                                  &ironmoe::torch_ops::fused_experts_out_math_bits>());
}

TORCH_LIBRARY_IMPL(ironmoe, Conjugate, m) {
  m.impl("fused_experts_out", torch::CppFunction::makeFromBoxedFunction<
                                  &ironmoe::torch_ops::fused_experts_out_math_bits>());
}

#if IRONMOE_TORCH_CUDA
TORCH_LIBRARY_IMPL(ironmoe, CUDA, m) {
  m.impl("route", &ironmoe::torch_ops::route);
  m.impl("fused_experts", &ironmoe::torch_ops::fused_experts);
  m.impl("fused_experts_out", &ironmoe::torch_ops::fused_experts_out);
}
#endif
