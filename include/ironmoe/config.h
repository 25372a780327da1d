#pragma once
// What one MoE layer is: its shapes, its routing, its activation and its storage dtype.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "ironmoe/types.h"

namespace ironmoe {

enum class RoutingKind : uint8_t {
  softmax_topk,  // softmax over all E, top-k (Qwen3, Mixtral)
  sigmoid_topk,  // sigmoid scores, top-k
  grouped_topk,  // DeepSeek-V3: sigmoid scores + correction bias for selection, best groups first
};

const char* routing_kind_name(RoutingKind kind);

// The largest k (and topk_groups) any routing takes: the CUDA route gives each selected expert
// one lane of a warp.
inline constexpr int kMaxTopK = 32;

struct RoutingConfig {
  RoutingKind kind = RoutingKind::softmax_topk;
  bool renormalize = true;             // divide the k selected weights by their sum
  int64_t num_groups = 1;              // grouped_topk: n_group, divides E
  int64_t topk_groups = 1;             // grouped_topk: groups kept, 1..num_groups
  float routed_scaling_factor = 1.0f;  // multiplies every final weight
};

struct MoeConfig {
  int64_t hidden = 0;        // H, 1 to 2^20
  int64_t intermediate = 0;  // I, per tensor-parallel shard, 1 to 2^20
  int64_t num_experts = 0;   // E, global
  int64_t top_k = 0;         // k
  int64_t max_tokens = 0;    // T the workspace is sized for
  int64_t expert_begin = 0;  // local experts [expert_begin, expert_end) for expert parallelism
  int64_t expert_end = -1;   // -1: num_experts
  Activation activation = Activation::silu_and_mul;
  RoutingConfig routing;
  DType dtype = DType::bf16;         // storage of x, weights, out (f32, bf16; f16 on CUDA)
  Layout layout = Layout::contiguous;  // how Layer lays out permuted rows
  int64_t batched_capacity = 0;        // rows per expert for Layout::batched (0: max_tokens)
  ExpertKernel expert_kernel = ExpertKernel::automatic;  // CUDA expert kernel family
  // none: weights in `dtype`; an fp8 scheme: f8e4m3 weights with f32 scales (layer.h Weights),
  // activations quantised to E4M3 on the fly; x and out stay in `dtype`.
  QuantScheme quant = QuantScheme::none;

  int64_t local_expert_end() const { return expert_end < 0 ? num_experts : expert_end; }
  int64_t num_local_experts() const { return local_expert_end() - expert_begin; }
  // Rows of the permuted activation buffers: T * k (contiguous) or E_local * capacity (batched);
  // 0 when a factor is <= 0, INT64_MAX when the product does not fit.
  int64_t permuted_rows(int64_t tokens) const;
  int64_t capacity() const { return batched_capacity > 0 ? batched_capacity : max_tokens; }

  // Throws ironmoe::Error naming the first field that is out of range.
  void validate() const;
};

// The model presets of DESIGN.md section 1: qwen3-30b-a3b, qwen3-next-80b-a3b, mixtral-8x7b,
// deepseek-v3. Throws ironmoe::Error listing the known names for an unknown one.
MoeConfig preset(std::string_view name, int64_t max_tokens);
std::vector<std::string> preset_names();

}  // namespace ironmoe
