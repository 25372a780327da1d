#pragma once
// A plain float64 reference of the MoE layer, written independently of the library (sorts and
// loops, no shared code with src/) so that tests, ironmoe-bench and ironmoe-check can check the
// library against something that did not come from it. Values come in as float (bf16 storage
// already widened); all arithmetic is double.
#include <cstdint>
#include <vector>

#include "ironmoe/config.h"

namespace ironmoe::reference {

// Routing in float64 following docs/contract.md. logits: [T, E] row-major; bias: [E] or null.
// Rows >= num_valid get ids -1 and weights 0.
void route(const RoutingConfig& routing, int64_t tokens, int64_t num_experts, int64_t top_k,
           const float* logits, const float* bias, int64_t num_valid, int32_t* topk_ids,
           float* topk_weights);

// The expert MLPs and combine for the listed tokens, in float64.
//   x [T, H], ids/weights [T, k], w13 [E_local, 2I, H], w2 [E_local, H, I] (all row-major).
//   out: [token_list.size(), H], row i for token token_list[i].
// `round_intermediate`: round h to bf16 between the GEMMs, as bf16 storage does.
// Slots whose id is outside [expert_begin, expert_end) contribute zero; tokens >= num_valid give
// zero rows.
void layer(const MoeConfig& config, int64_t tokens, const float* x, const int32_t* topk_ids,
           const float* topk_weights, const float* w13, const float* w2, int64_t num_valid,
           const std::vector<int64_t>& token_list, bool round_intermediate, double* out);

// act(v) in float64: SiLU v / (1 + exp(-v)) or the exact (erf) GELU; the gate's activation of
// every reference layer.
double activation(Activation kind, double v);

// bf16 storage as the reference understands it, written here rather than taken from src/ so the
// tests do not check the library's conversion against itself. Round to nearest even; NaN stays
// NaN (quiet), +-inf stay infinite.
uint16_t to_bf16_bits(float value);
float from_bf16_bits(uint16_t bits);
float round_to_bf16(double value);

// max over listed rows of |got - ref| / max(|ref|_inf of that row, tiny): the error metric the
// tests and the benchmark report ("max relative error"). A non-finite `got` gives +inf.
double max_relative_error(const double* ref, const float* got, int64_t rows, int64_t cols);

}  // namespace ironmoe::reference
