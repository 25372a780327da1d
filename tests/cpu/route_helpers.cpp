#include "route_helpers.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <sstream>

#include "reference_moe.h"

namespace ironmoe::test {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int kMaxReportedRows = 4;

std::vector<float> logits_as_stored(const RouteProblem& p) {
  return Buffer::from(p.logits_dtype, p.logits).to_float();
}

}  // namespace

RoutingConfig routing_for(RoutingKind kind) {
  RoutingConfig routing;
  routing.kind = kind;
  routing.renormalize = true;
  if (kind == RoutingKind::grouped_topk) {
    routing.num_groups = 8;
    routing.topk_groups = 4;
    routing.routed_scaling_factor = 2.5f;
  }
  return routing;
}

RouteOutput run_route(const RouteProblem& p, ThreadPool* threads) {
  RouteOutput out;
  const int64_t slots = p.tokens * p.top_k;
  out.ids.assign(static_cast<size_t>(slots), kPoisonInt);
  out.weights.assign(static_cast<size_t>(slots), poison_float());
  Buffer logits = Buffer::from(p.logits_dtype, p.logits);
  const int32_t num_valid = p.num_valid.value_or(0);

  RouteArgs args;
  args.logits = TensorView::contiguous(logits.data(), p.logits_dtype, {p.tokens, p.experts});
  if (!p.bias.empty())
    args.correction_bias = TensorView::contiguous(p.bias.data(), DType::f32, {p.experts});
  args.topk_ids = TensorView::contiguous(out.ids.data(), DType::i32, {p.tokens, p.top_k});
  args.topk_weights = TensorView::contiguous(out.weights.data(), DType::f32, {p.tokens, p.top_k});
  args.num_valid_tokens = p.num_valid ? &num_valid : nullptr;
  args.diagnostics = out.diagnostics.data();
  route(p.routing, args, Stream::cpu(threads));
  return out;
}

RouteOutput reference_route(const RouteProblem& p) {
  RouteOutput out;
  const int64_t slots = p.tokens * p.top_k;
  out.ids.assign(static_cast<size_t>(slots), 0);
  out.weights.assign(static_cast<size_t>(slots), 0.0f);
  const std::vector<float> logits = logits_as_stored(p);
  reference::route(p.routing, p.tokens, p.experts, p.top_k, logits.data(),
                   p.bias.empty() ? nullptr : p.bias.data(), p.num_valid.value_or(p.tokens),
                   out.ids.data(), out.weights.data());
  return out;
}

void expect_valid_rows(const RouteProblem& p, const RouteOutput& got) {
  const int64_t valid = p.num_valid ? std::clamp<int64_t>(*p.num_valid, 0, p.tokens) : p.tokens;
  const std::vector<float> logits = logits_as_stored(p);
  int reported = 0;
  for (int64_t t = 0; t < p.tokens && reported < kMaxReportedRows; ++t) {
    const int32_t* ids = got.ids.data() + t * p.top_k;
    const float* weights = got.weights.data() + t * p.top_k;
    std::ostringstream problem;
    if (t >= valid) {
      for (int64_t j = 0; j < p.top_k; ++j)
        if (ids[j] != -1 || weights[j] != 0.0f) problem << "padding slot " << j << " not -1/0; ";
    } else {
      std::set<int32_t> distinct(ids, ids + p.top_k);
      if (static_cast<int64_t>(distinct.size()) != p.top_k) problem << "ids not distinct; ";
      for (int64_t j = 0; j < p.top_k; ++j) {
        if (ids[j] < 0 || ids[j] >= p.experts) problem << "id " << j << " out of [0, E); ";
        if (!std::isfinite(weights[j]) || weights[j] < 0.0f)
          problem << "weight " << j << " not finite and >= 0; ";
      }
    }
    if (!problem.str().empty()) {
      ++reported;
      ADD_FAILURE() << "row " << t << (t >= valid ? " (padding)" : "") << ": " << problem.str()
                    << "ids " << ids_string(ids, p.top_k) << " weights "
                    << row_string(weights, p.top_k) << " logits "
                    << row_string(logits.data() + t * p.experts, p.experts);
    }
  }
}

void expect_matches_reference(const RouteProblem& p, const RouteOutput& got) {
  const RouteOutput ref = reference_route(p);
  const std::vector<float> logits = logits_as_stored(p);
  const double tolerance = 2e-6 * std::max(1.0, double{p.routing.routed_scaling_factor});
  int reported = 0;
  for (int64_t t = 0; t < p.tokens && reported < kMaxReportedRows; ++t) {
    const int64_t first = t * p.top_k;
    bool same_ids = true;
    bool close_weights = true;
    for (int64_t j = 0; j < p.top_k; ++j) {
      same_ids = same_ids && got.ids[first + j] == ref.ids[first + j];
      close_weights = close_weights && std::abs(double{got.weights[first + j]} -
                                                ref.weights[first + j]) <= tolerance;
    }
    if (!same_ids || !close_weights) {
      ++reported;
      ADD_FAILURE() << "row " << t << ": " << (same_ids ? "weights" : "ids")
                    << " differ from the reference\n  got ids "
                    << ids_string(got.ids.data() + first, p.top_k) << " weights "
                    << row_string(got.weights.data() + first, p.top_k) << "\n  ref ids "
                    << ids_string(ref.ids.data() + first, p.top_k) << " weights "
                    << row_string(ref.weights.data() + first, p.top_k) << "\n  logits "
                    << row_string(logits.data() + t * p.experts, p.experts);
    }
  }
}

const char* pattern_name(RowPattern pattern) {
  switch (pattern) {
    case RowPattern::random: return "random";
    case RowPattern::all_nan: return "all_nan";
    case RowPattern::all_equal: return "all_equal";
    case RowPattern::all_pos_inf: return "all_pos_inf";
    case RowPattern::all_neg_inf: return "all_neg_inf";
    case RowPattern::nan_and_neg_inf: return "nan_and_neg_inf";
    case RowPattern::mixed_nonfinite: return "mixed_nonfinite";
    case RowPattern::mixed_all: return "mixed_all";
    case RowPattern::nan_and_numbers: return "nan_and_numbers";
    case RowPattern::few_values: return "few_values";
    case RowPattern::one_usable: return "one_usable";
  }
  return "?";
}

void fill_row(RowPattern pattern, float* row, int64_t experts, Rng& rng) {
  const float nonfinite[] = {kNaN, kInf, -kInf};
  const float same = rng.nonzero(3.0f);
  const float three[] = {rng.nonzero(3.0f), rng.nonzero(3.0f), rng.nonzero(3.0f)};
  const int64_t usable_at = rng.integer(0, experts - 1);
  for (int64_t e = 0; e < experts; ++e) {
    float& v = row[e];
    switch (pattern) {
      case RowPattern::random: v = rng.nonzero(3.0f); break;
      case RowPattern::all_nan: v = kNaN; break;
      case RowPattern::all_equal: v = same; break;
      case RowPattern::all_pos_inf: v = kInf; break;
      case RowPattern::all_neg_inf: v = -kInf; break;
      case RowPattern::nan_and_neg_inf: v = rng.chance(0.5) ? kNaN : -kInf; break;
      case RowPattern::mixed_nonfinite: v = nonfinite[rng.integer(0, 2)]; break;
      case RowPattern::mixed_all:
        v = rng.chance(0.5) ? nonfinite[rng.integer(0, 2)] : rng.nonzero(3.0f);
        break;
      case RowPattern::nan_and_numbers:
        v = (e == 0 || rng.chance(0.4)) ? kNaN : rng.nonzero(3.0f);
        break;
      case RowPattern::few_values: v = three[rng.integer(0, 2)]; break;
      case RowPattern::one_usable:
        v = e == usable_at ? rng.nonzero(3.0f) : (rng.chance(0.5) ? kNaN : -kInf);
        break;
    }
  }
}

RouteProblem make_route_problem(const RoutingConfig& routing, int64_t tokens, int64_t experts,
                                int64_t top_k, const std::vector<RowPattern>& patterns, Rng& rng) {
  RouteProblem p;
  p.routing = routing;
  p.tokens = tokens;
  p.experts = experts;
  p.top_k = top_k;
  p.logits.resize(static_cast<size_t>(tokens * experts));
  for (int64_t t = 0; t < tokens; ++t)
    fill_row(patterns[static_cast<size_t>(t) % patterns.size()], p.logits.data() + t * experts,
             experts, rng);
  if (routing.kind == RoutingKind::grouped_topk) p.bias = rng.nonzero_vector(experts, 0.5f);
  return p;
}

std::string row_string(const float* row, int64_t n) {
  std::ostringstream text;
  text << "[";
  for (int64_t i = 0; i < n; ++i) text << (i ? ", " : "") << row[i];
  text << "]";
  return text.str();
}

std::string ids_string(const int32_t* ids, int64_t n) {
  std::ostringstream text;
  text << "[";
  for (int64_t i = 0; i < n; ++i) text << (i ? ", " : "") << ids[i];
  text << "]";
  return text.str();
}

}  // namespace ironmoe::test
