// The float64 reference. Deliberately written from the documented rules (docs/contract.md,
// DESIGN.md section 3) with sorts and plain loops, sharing no code with src/, so that a mistake in
// the library's rule functions cannot hide in the reference too.
#include "reference_moe.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>

namespace ironmoe::reference {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// One expert offered to a top-k selection. A NaN key has already been replaced by -inf.
struct Candidate {
  double key;
  int64_t index;
};

// The contract's order: larger key first; equal keys (-inf included) by lower index.
bool ranks_before(const Candidate& a, const Candidate& b) {
  return a.key > b.key || (a.key == b.key && a.index < b.index);
}

double rank_key(double value) { return std::isnan(value) ? -kInf : value; }

// The k best candidates in rank order. The order is total (indices are distinct), so the result
// does not depend on the sort algorithm.
std::vector<Candidate> best(std::vector<Candidate> candidates, int64_t k) {
  const auto middle = candidates.begin() + static_cast<std::ptrdiff_t>(k);
  std::partial_sort(candidates.begin(), middle, candidates.end(), ranks_before);
  candidates.resize(static_cast<size_t>(k));
  return candidates;
}

double sigmoid(double value) { return 1.0 / (1.0 + std::exp(-value)); }

// A usable logit is a number above -inf (+inf counts).
bool usable(float logit) {
  return !std::isnan(logit) && logit > -std::numeric_limits<float>::infinity();
}

// Softmax over the whole row, NaN as -inf. When some logits are +inf they share the mass equally.
std::vector<double> softmax(const float* row, int64_t num_experts) {
  std::vector<double> p(static_cast<size_t>(num_experts), 0.0);
  int64_t num_pos_inf = 0;
  double max_finite = -kInf;
  for (int64_t e = 0; e < num_experts; ++e) {
    const double v = row[e];
    if (v == kInf) ++num_pos_inf;
    if (std::isfinite(v)) max_finite = std::max(max_finite, v);
  }
  if (num_pos_inf > 0) {
    for (int64_t e = 0; e < num_experts; ++e)
      if (static_cast<double>(row[e]) == kInf) p[e] = 1.0 / static_cast<double>(num_pos_inf);
    return p;
  }
  double sum = 0.0;
  for (int64_t e = 0; e < num_experts; ++e)
    if (std::isfinite(row[e])) sum += std::exp(static_cast<double>(row[e]) - max_finite);
  for (int64_t e = 0; e < num_experts; ++e)
    if (std::isfinite(row[e])) p[e] = std::exp(static_cast<double>(row[e]) - max_finite) / sum;
  return p;
}

// DeepSeek-V3 grouped selection: selection key = sigmoid(logit) + bias (NaN as -inf); a group
// scores the sum of its two best keys (its only key when it has one); the topk_groups best groups
// are kept and the k best experts of those groups are selected.
std::vector<int64_t> grouped_selection(const RoutingConfig& routing, const float* row,
                                       const float* bias, int64_t num_experts, int64_t top_k) {
  const int64_t group_size = num_experts / routing.num_groups;
  std::vector<double> key(static_cast<size_t>(num_experts));
  for (int64_t e = 0; e < num_experts; ++e)
    key[e] = rank_key(sigmoid(row[e]) + (bias != nullptr ? static_cast<double>(bias[e]) : 0.0));

  std::vector<Candidate> groups;
  for (int64_t g = 0; g < routing.num_groups; ++g) {
    std::vector<Candidate> members;
    for (int64_t e = g * group_size; e < (g + 1) * group_size; ++e) members.push_back({key[e], e});
    const std::vector<Candidate> top = best(members, std::min<int64_t>(2, group_size));
    const double score = top.size() >= 2 ? top[0].key + top[1].key : top[0].key;
    groups.push_back({rank_key(score), g});
  }
  std::vector<Candidate> candidates;
  for (const Candidate& group : best(groups, routing.topk_groups))
    for (int64_t e = group.index * group_size; e < (group.index + 1) * group_size; ++e)
      candidates.push_back({key[e], e});
  if (static_cast<int64_t>(candidates.size()) < top_k)
    throw std::invalid_argument("reference::route: topk_groups * group size < top_k");
  std::vector<int64_t> ids;
  for (const Candidate& c : best(candidates, top_k)) ids.push_back(c.index);
  return ids;
}

void route_row(const RoutingConfig& routing, int64_t num_experts, int64_t top_k, const float* row,
               const float* bias, int32_t* ids, float* weights) {
  const double scaling = routing.routed_scaling_factor;
  const double uniform = 1.0 / static_cast<double>(top_k);
  if (std::none_of(row, row + num_experts, usable)) {
    // Degenerate row: experts 0..k-1 with uniform weights (route.h).
    for (int64_t j = 0; j < top_k; ++j) {
      ids[j] = static_cast<int32_t>(j);
      weights[j] = static_cast<float>(uniform * scaling);
    }
    return;
  }

  std::vector<int64_t> selected;
  if (routing.kind == RoutingKind::grouped_topk) {
    selected = grouped_selection(routing, row, bias, num_experts, top_k);
  } else {
    // softmax and sigmoid are increasing, so both rank by the logit itself.
    std::vector<Candidate> candidates;
    for (int64_t e = 0; e < num_experts; ++e) candidates.push_back({rank_key(row[e]), e});
    for (const Candidate& c : best(candidates, top_k)) selected.push_back(c.index);
  }

  std::vector<double> raw(static_cast<size_t>(top_k));
  if (routing.kind == RoutingKind::softmax_topk) {
    const std::vector<double> p = softmax(row, num_experts);
    for (int64_t j = 0; j < top_k; ++j) raw[j] = p[selected[j]];
  } else {
    for (int64_t j = 0; j < top_k; ++j) {
      const double v = row[selected[j]];
      raw[j] = std::isnan(v) ? 0.0 : sigmoid(v);
    }
  }
  if (routing.renormalize) {
    double sum = 0.0;
    for (double w : raw) sum += w;
    for (double& w : raw) w = (sum > 0.0 && std::isfinite(sum)) ? w / sum : uniform;
  }
  for (int64_t j = 0; j < top_k; ++j) {
    ids[j] = static_cast<int32_t>(selected[j]);
    weights[j] = static_cast<float>(raw[j] * scaling);
  }
}

// One slot's expert MLP for token row x: y = (act(x W_gate^T) * (x W_up^T)) W2^T, accumulated into
// out with the slot's weight.
void add_expert(const MoeConfig& config, const float* x, const float* w13, const float* w2,
                double weight, bool round_intermediate, double* out) {
  const int64_t hidden = config.hidden;
  const int64_t inter = config.intermediate;
  std::vector<double> h(static_cast<size_t>(inter));
  for (int64_t i = 0; i < inter; ++i) {
    const float* gate_row = w13 + i * hidden;
    const float* up_row = w13 + (inter + i) * hidden;
    double gate = 0.0;
    double up = 0.0;
    for (int64_t c = 0; c < hidden; ++c) {
      gate += static_cast<double>(x[c]) * gate_row[c];
      up += static_cast<double>(x[c]) * up_row[c];
    }
    h[i] = activation(config.activation, gate) * up;
    if (round_intermediate) h[i] = round_to_bf16(h[i]);
  }
  for (int64_t c = 0; c < hidden; ++c) {
    const float* w2_row = w2 + c * inter;
    double y = 0.0;
    for (int64_t i = 0; i < inter; ++i) y += h[i] * w2_row[i];
    out[c] += weight * y;
  }
}

}  // namespace

double activation(Activation kind, double v) {
  switch (kind) {
    case Activation::silu_and_mul: return v / (1.0 + std::exp(-v));
    case Activation::gelu_and_mul: return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
  }
  throw std::invalid_argument("reference::activation: unknown activation");
}

void route(const RoutingConfig& routing, int64_t tokens, int64_t num_experts, int64_t top_k,
           const float* logits, const float* bias, int64_t num_valid, int32_t* topk_ids,
           float* topk_weights) {
  if (top_k < 1 || top_k > num_experts)
    throw std::invalid_argument("reference::route: need 1 <= top_k <= num_experts");
  if (routing.kind == RoutingKind::grouped_topk &&
      (routing.num_groups < 1 || num_experts % routing.num_groups != 0 || routing.topk_groups < 1 ||
       routing.topk_groups > routing.num_groups))
    throw std::invalid_argument("reference::route: bad group configuration");
  for (int64_t t = 0; t < tokens; ++t) {
    int32_t* ids = topk_ids + t * top_k;
    float* weights = topk_weights + t * top_k;
    if (t >= num_valid) {
      std::fill(ids, ids + top_k, -1);
      std::fill(weights, weights + top_k, 0.0f);
      continue;
    }
    route_row(routing, num_experts, top_k, logits + t * num_experts, bias, ids, weights);
  }
}

void layer(const MoeConfig& config, int64_t tokens, const float* x, const int32_t* topk_ids,
           const float* topk_weights, const float* w13, const float* w2, int64_t num_valid,
           const std::vector<int64_t>& token_list, bool round_intermediate, double* out) {
  const int64_t hidden = config.hidden;
  const int64_t k = config.top_k;
  const int64_t begin = config.expert_begin;
  const int64_t end = config.local_expert_end();
  const int64_t w13_stride = 2 * config.intermediate * hidden;
  const int64_t w2_stride = hidden * config.intermediate;
  for (size_t i = 0; i < token_list.size(); ++i) {
    const int64_t t = token_list[i];
    if (t < 0 || t >= tokens) throw std::out_of_range("reference::layer: token_list entry");
    double* row = out + static_cast<int64_t>(i) * hidden;
    std::fill(row, row + hidden, 0.0);
    if (t >= num_valid) continue;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t id = topk_ids[t * k + j];
      if (id < begin || id >= end) continue;  // not on this rank: contributes zero
      const int64_t local = id - begin;
      add_expert(config, x + t * hidden, w13 + local * w13_stride, w2 + local * w2_stride,
                 topk_weights[t * k + j], round_intermediate, row);
    }
  }
}

uint16_t to_bf16_bits(float value) {
  uint32_t word;
  std::memcpy(&word, &value, sizeof word);
  if (std::isnan(value)) return static_cast<uint16_t>((word >> 16) | 0x0040u);  // keep it quiet
  // Round to nearest, ties to even: add just under half an ulp, plus one when the kept LSB is 1.
  const uint32_t kept_lsb = (word >> 16) & 1u;
  word += 0x7fffu + kept_lsb;
  return static_cast<uint16_t>(word >> 16);
}

float from_bf16_bits(uint16_t bits) {
  const uint32_t word = static_cast<uint32_t>(bits) << 16;
  float value;
  std::memcpy(&value, &word, sizeof value);
  return value;
}

// Through float, as the library rounds its fp32 h; the double -> float step is far below the
// tolerance of any bf16 comparison.
float round_to_bf16(double value) {
  return from_bf16_bits(to_bf16_bits(static_cast<float>(value)));
}

double max_relative_error(const double* ref, const float* got, int64_t rows, int64_t cols) {
  constexpr double kTiny = 1e-30;
  double worst = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    double scale = 0.0;
    for (int64_t c = 0; c < cols; ++c) scale = std::max(scale, std::abs(ref[r * cols + c]));
    scale = std::max(scale, kTiny);
    for (int64_t c = 0; c < cols; ++c) {
      const double g = got[r * cols + c];
      // A non-finite result is never close to a finite reference.
      if (!std::isfinite(g)) return kInf;
      worst = std::max(worst, std::abs(g - ref[r * cols + c]) / scale);
    }
  }
  return worst;
}

}  // namespace ironmoe::reference
