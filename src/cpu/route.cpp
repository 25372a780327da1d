// CPU routing: one token per iteration, ranking and weights from core/routing_rules.h.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/bf16.h"
#include "core/plan_math.h"
#include "core/routing_rules.h"
#include "cpu/cpu_backend.h"
#include "cpu/parallel.h"

namespace ironmoe::cpu {
namespace {

constexpr int32_t kNoExpert = -1;

// One row of router logits, widened to fp32 on read.
struct LogitRow {
  const void* data;
  DType dtype;

  float operator[](int64_t e) const {
    if (dtype == DType::bf16) return core::bf16_to_float(static_cast<const uint16_t*>(data)[e]);
    return static_cast<const float*>(data)[e];
  }
};

struct RowChoice {
  int ids[core::kMaxTopK];
  float weights[core::kMaxTopK];
};

void select_softmax(const LogitRow& logits, int num_experts, int top_k, RowChoice& choice) {
  core::SoftmaxStats stats;
  core::TopK best(top_k);
  for (int e = 0; e < num_experts; ++e) {
    const float v = logits[e];
    best.offer(core::rank_key(v), e);
    if (v == INFINITY) ++stats.num_pos_inf;
    if (v == v && v > stats.max) stats.max = v;
  }
  if (stats.num_pos_inf == 0 && stats.max > core::kNegInf) {
    for (int e = 0; e < num_experts; ++e) {
      const float v = logits[e];
      if (std::isfinite(v)) stats.sum += expf(v - stats.max);
    }
  }
  for (int j = 0; j < top_k; ++j) {
    choice.ids[j] = best.ids[j];
    choice.weights[j] = core::softmax_prob(logits[best.ids[j]], stats);
  }
}

void select_sigmoid(const LogitRow& logits, int num_experts, int top_k, RowChoice& choice) {
  core::TopK best(top_k);
  for (int e = 0; e < num_experts; ++e) best.offer(core::rank_key(logits[e]), e);
  for (int j = 0; j < top_k; ++j) {
    choice.ids[j] = best.ids[j];
    choice.weights[j] = core::sigmoid_weight(logits[best.ids[j]]);
  }
}

// DeepSeek-V3: rank groups by the sum of their two best selection keys, keep topk_groups of
// them, then take the top k experts of the kept groups (visited in index order for the tie rule).
void select_grouped(const LogitRow& logits, const float* bias, int num_experts, int top_k,
                    const RoutingConfig& routing, RowChoice& choice) {
  const int num_groups = static_cast<int>(routing.num_groups);
  const int group_size = num_experts / num_groups;
  auto key = [&](int e) { return core::grouped_selection_key(logits[e], bias ? bias[e] : 0.0f); };

  core::TopK groups(static_cast<int>(routing.topk_groups));
  for (int g = 0; g < num_groups; ++g) {
    core::TopK pair(group_size >= 2 ? 2 : 1);
    for (int e = g * group_size; e < (g + 1) * group_size; ++e) pair.offer(key(e), e);
    groups.offer(core::group_score(pair.keys[0], group_size >= 2 ? pair.keys[1] : 0.0f,
                                   group_size),
                 g);
  }
  int kept[core::kMaxTopK];
  std::copy(groups.ids, groups.ids + groups.count, kept);
  std::sort(kept, kept + groups.count);

  core::TopK best(top_k);
  for (int i = 0; i < groups.count; ++i) {
    for (int e = kept[i] * group_size; e < (kept[i] + 1) * group_size; ++e) best.offer(key(e), e);
  }
  for (int j = 0; j < top_k; ++j) {
    choice.ids[j] = best.ids[j];
    choice.weights[j] = core::sigmoid_weight(logits[best.ids[j]]);
  }
}

}  // namespace

void route(const RoutingConfig& routing, const RouteArgs& args, ThreadPool* threads) {
  const int64_t tokens = args.logits.size(0);
  const int num_experts = static_cast<int>(args.logits.size(1));
  const int top_k = static_cast<int>(args.topk_ids.size(1));
  const int64_t row_stride = args.logits.strides[0];
  const int64_t valid = core::valid_tokens(tokens, args.num_valid_tokens);
  const float* bias = args.correction_bias.defined() ? args.correction_bias.ptr<float>() : nullptr;
  const auto* logit_bytes = static_cast<const char*>(args.logits.data);
  const int64_t row_bytes = row_stride * static_cast<int64_t>(dtype_size(args.logits.dtype));
  int32_t* out_ids = args.topk_ids.ptr<int32_t>();
  float* out_weights = args.topk_weights.ptr<float>();

  parallel_for(threads, tokens, [&](int64_t begin, int64_t end) {
    int64_t non_finite = 0;  // a chunk may hold more than 2^31 logits
    for (int64_t t = begin; t < end; ++t) {
      int32_t* ids = out_ids + t * top_k;
      float* weights = out_weights + t * top_k;
      if (t >= valid) {  // padding rows are routed nowhere
        std::fill(ids, ids + top_k, kNoExpert);
        std::fill(weights, weights + top_k, 0.0f);
        continue;
      }
      const LogitRow logits{logit_bytes + t * row_bytes, args.logits.dtype};
      bool degenerate = true;
      for (int e = 0; e < num_experts; ++e) {
        const float v = logits[e];
        if (!std::isfinite(v)) ++non_finite;
        if (core::is_usable_logit(v)) degenerate = false;
      }
      RowChoice choice;
      if (degenerate) {  // no usable logit: experts 0..k-1, weights set by finalize_weights
        for (int j = 0; j < top_k; ++j) choice.ids[j] = j;
      } else if (routing.kind == RoutingKind::softmax_topk) {
        select_softmax(logits, num_experts, top_k, choice);
      } else if (routing.kind == RoutingKind::sigmoid_topk) {
        select_sigmoid(logits, num_experts, top_k, choice);
      } else {
        select_grouped(logits, bias, num_experts, top_k, routing, choice);
      }
      core::finalize_weights(choice.weights, top_k, degenerate, routing.renormalize,
                             routing.routed_scaling_factor);
      for (int j = 0; j < top_k; ++j) {
        ids[j] = choice.ids[j];
        weights[j] = choice.weights[j];
      }
    }
    add_diagnostic(args.diagnostics, kDiagNonFiniteLogit, non_finite);
  });
}

}  // namespace ironmoe::cpu
