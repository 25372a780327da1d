#pragma once
// Running ironmoe::route on a host problem, the same problem through the float64 reference, and
// the row patterns the routing clauses of the contract are about.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "ironmoe/ironmoe.h"
#include "test_util.h"

namespace ironmoe::test {

struct RouteProblem {
  RoutingConfig routing;
  int64_t tokens = 0;
  int64_t experts = 0;
  int64_t top_k = 0;
  std::vector<float> logits;  // [T, E]
  std::vector<float> bias;    // [E] or empty
  std::optional<int32_t> num_valid;
  DType logits_dtype = DType::f32;
};

struct RouteOutput {
  std::vector<int32_t> ids;    // [T, k]
  std::vector<float> weights;  // [T, k]
  std::array<int32_t, kDiagnosticCount> diagnostics{};
};

// The configs the routing tests use per kind: softmax and sigmoid renormalised with scaling 1;
// grouped as DeepSeek-V3 scaled down (num_groups 8, topk_groups 4, scaling 2.5). E must be a
// multiple of 8 for grouped.
RoutingConfig routing_for(RoutingKind kind);

// Outputs poisoned, diagnostics zeroed, then ironmoe::route on the CPU.
RouteOutput run_route(const RouteProblem& problem, ThreadPool* threads = nullptr);
RouteOutput reference_route(const RouteProblem& problem);

// Valid rows hold k distinct ids in [0, E) and finite weights >= 0; padding rows ids -1 and
// weights 0. Reports at most a few rows, each with its logits.
void expect_valid_rows(const RouteProblem& problem, const RouteOutput& got);
// Ids equal to the reference's, weights within 2e-6 * max(1, scaling).
void expect_matches_reference(const RouteProblem& problem, const RouteOutput& got);

enum class RowPattern {
  random,  // numbers in +-[0.3, 3]
  all_nan,
  all_equal,  // one number repeated
  all_pos_inf,
  all_neg_inf,
  nan_and_neg_inf,  // degenerate: no usable logit
  mixed_nonfinite,  // each entry NaN, +inf or -inf
  mixed_all,        // each entry NaN, +inf, -inf or a number
  nan_and_numbers,  // numbers with NaN holes (index 0 always NaN)
  few_values,       // numbers drawn from three values: many ties
  one_usable,       // one number, the rest NaN / -inf
};
inline constexpr RowPattern kAllPatterns[] = {
    RowPattern::random,          RowPattern::all_nan,     RowPattern::all_equal,
    RowPattern::all_pos_inf,     RowPattern::all_neg_inf, RowPattern::nan_and_neg_inf,
    RowPattern::mixed_nonfinite, RowPattern::mixed_all,   RowPattern::nan_and_numbers,
    RowPattern::few_values,      RowPattern::one_usable};

const char* pattern_name(RowPattern pattern);
void fill_row(RowPattern pattern, float* row, int64_t experts, Rng& rng);

// A problem whose rows cycle through `patterns` (row t gets patterns[t % size]).
RouteProblem make_route_problem(const RoutingConfig& routing, int64_t tokens, int64_t experts,
                                int64_t top_k, const std::vector<RowPattern>& patterns, Rng& rng);

// "[nan, inf, 0.5, ...]"
std::string row_string(const float* row, int64_t n);
std::string ids_string(const int32_t* ids, int64_t n);

}  // namespace ironmoe::test
