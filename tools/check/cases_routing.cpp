// Routing: every kind of routing on rows built to break it (NaN, infinities, ties, padding), each
// compared with the float64 reference and checked for the contract's properties.
#include <algorithm>
#include <cmath>
#include <limits>

#include "check/expect.h"
#include "check/harness.h"

namespace ironmoe::tools::check {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

// A row generator: fills row t of [T, E] logits.
using RowMaker = std::function<void(float* row, int64_t num_experts, int64_t t, Random& random)>;

void random_row(float* row, int64_t e, int64_t, Random& random) {
  for (int64_t i = 0; i < e; ++i) row[i] = random.uniform(-3.0f, 3.0f);
}

void all_nan_row(float* row, int64_t e, int64_t, Random&) { std::fill(row, row + e, NAN); }

void all_neg_inf_row(float* row, int64_t e, int64_t, Random&) { std::fill(row, row + e, -kInf); }

// Every row a different mix: NaN, +Inf and -Inf scattered over finite values, and rows made only
// of non-finite values (degenerate when no +Inf is present).
void mixed_row(float* row, int64_t e, int64_t t, Random& random) {
  const float specials[] = {NAN, kInf, -kInf};
  const int64_t pattern = t % 6;
  for (int64_t i = 0; i < e; ++i) {
    const float special = specials[random.below(3)];
    switch (pattern) {
      case 0: row[i] = random.below(4) == 0 ? special : random.uniform(-3.0f, 3.0f); break;
      case 1: row[i] = special; break;
      case 2: row[i] = random.below(2) == 0 ? NAN : -kInf; break;
      case 3: row[i] = random.below(3) == 0 ? kInf : NAN; break;
      case 4: row[i] = i == e - 1 ? kInf : NAN; break;
      default: row[i] = random.below(2) == 0 ? NAN : random.uniform(-3.0f, 3.0f); break;
    }
  }
}

void all_equal_row(float* row, int64_t e, int64_t t, Random&) {
  std::fill(row, row + e, t % 2 == 0 ? 0.5f : -2.0f);
}

// Few distinct values, so most rows hold ties at the top-k boundary.
void tied_row(float* row, int64_t e, int64_t, Random& random) {
  for (int64_t i = 0; i < e; ++i) row[i] = static_cast<float>(random.below(3));
}

// Finite but huge values: a softmax without max-subtraction overflows to Inf/NaN here.
void huge_row(float* row, int64_t e, int64_t, Random& random) {
  for (int64_t i = 0; i < e; ++i) row[i] = 3e38f * random.uniform(-1.0f, 1.0f);
}

RouteInput make_input(const RoutingConfig& routing, int64_t tokens, int64_t num_experts,
                      int64_t top_k, const RowMaker& make_row, Random& random) {
  RouteInput input;
  input.routing = routing;
  input.tokens = tokens;
  input.num_experts = num_experts;
  input.top_k = top_k;
  input.logits.resize(static_cast<size_t>(tokens * num_experts));
  for (int64_t t = 0; t < tokens; ++t) {
    make_row(input.logits.data() + t * num_experts, num_experts, t, random);
  }
  if (routing.kind == RoutingKind::grouped_topk) {
    input.bias.resize(static_cast<size_t>(num_experts));
    for (float& b : input.bias) b = random.uniform(-0.1f, 0.1f);
  }
  return input;
}

int64_t valid_rows(const RouteInput& input) {
  return input.num_valid ? std::clamp<int64_t>(*input.num_valid, 0, input.tokens) : input.tokens;
}

// The checks every routing case makes: properties, agreement with the reference, diagnostics.
Expect check_route(Context& context, const RouteInput& input, RouteRun* result = nullptr) {
  const RouteRun got = run_route(context, input);
  const RouteRun reference = reference_route(input);
  const int64_t valid = valid_rows(input);
  Expect expect;
  expect_routing_valid(expect, got, input.tokens, input.num_experts, input.top_k, valid);
  expect_routing_equal(expect, got, reference, input.top_k, kWeightTolerance);
  const std::vector<float> seen = round_trip(input.logits, input.logit_dtype);
  Diagnostics diag{};
  for (int64_t i = 0; i < valid * input.num_experts; ++i) {
    if (!std::isfinite(seen[i])) ++diag[kDiagNonFiniteLogit];
  }
  expect_diagnostics(expect, got.diagnostics, diag);
  if (result != nullptr) *result = got;
  return expect;
}

// Rows whose ranking is fully determined by the tie rule: ids 0..k-1 in order.
void expect_first_k(Expect& expect, const RouteRun& run, int64_t tokens, int64_t top_k,
                    float weight) {
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t j = 0; j < top_k; ++j) {
      const size_t s = static_cast<size_t>(t * top_k + j);
      if (run.ids[s] != j || std::abs(run.weights[s] - weight) > 1e-6f * weight) {
        expect.fail("token " + std::to_string(t) + " slot " + std::to_string(j) + ": id " +
                    std::to_string(run.ids[s]) + " weight " + std::to_string(run.weights[s]) +
                    ", expected id " + std::to_string(j) + " weight " + std::to_string(weight));
        return;
      }
    }
  }
}

struct Shape {
  int64_t experts;
  int64_t top_k;
};

}  // namespace

std::vector<Case> routing_cases(Device) {
  std::vector<Case> cases;
  const Shape shapes[] = {{16, 4}, {64, 8}};
  struct RowKind {
    const char* name;
    RowMaker make;
  };
  const RowKind row_kinds[] = {{"random", random_row},           {"all-nan", all_nan_row},
                               {"all-neg-inf", all_neg_inf_row}, {"nan-inf-mix", mixed_row},
                               {"all-equal", all_equal_row},     {"ties", tied_row},
                               {"huge-finite", huge_row}};
  for (const Shape& shape : shapes) {
    for (const NamedRouting& named : every_routing(shape.experts)) {
      const std::string prefix = "route/" + named.name + "/e" + std::to_string(shape.experts) +
                                 "k" + std::to_string(shape.top_k) + "/";
      const RoutingConfig routing = named.routing;
      for (const RowKind& kind : row_kinds) {
        cases.push_back(
            {prefix + kind.name, [=](Context& context, Random& random) {
               const RouteInput input =
                   make_input(routing, 257, shape.experts, shape.top_k, kind.make, random);
               RouteRun got;
               Expect expect = check_route(context, input, &got);
               const std::string name = kind.name;
               // Degenerate rows: experts 0..k-1 with weights 1/k (times scaling).
               if (name == "all-nan" || name == "all-neg-inf") {
                 expect_first_k(expect, got, input.tokens, shape.top_k,
                                routing.routed_scaling_factor / static_cast<float>(shape.top_k));
               }
               return expect.outcome();
             }});
      }
      cases.push_back({prefix + "bf16-logits", [=](Context& context, Random& random) {
                         RouteInput input = make_input(routing, 257, shape.experts, shape.top_k,
                                                       random_row, random);
                         input.logit_dtype = DType::bf16;
                         return check_route(context, input).outcome();
                       }});
      cases.push_back(
          {prefix + "padding-nan", [=](Context& context, Random& random) {
             RouteInput input =
                 make_input(routing, 300, shape.experts, shape.top_k, random_row, random);
             input.num_valid = 113;
             std::fill(input.logits.begin() + 113 * shape.experts, input.logits.end(), NAN);
             return check_route(context, input).outcome();
           }});
      for (int32_t num_valid : {0, -5, 1000}) {
        cases.push_back({prefix + "num-valid=" + std::to_string(num_valid),
                         [=](Context& context, Random& random) {
                           RouteInput input = make_input(routing, 64, shape.experts, shape.top_k,
                                                         random_row, random);
                           input.num_valid = num_valid;
                           return check_route(context, input).outcome();
                         }});
      }
    }
  }
  // k at its limits: one expert per token, and every expert (k = E).
  for (const NamedRouting& named : every_routing(16)) {
    for (int64_t top_k : {int64_t{1}, int64_t{16}}) {
      if (named.routing.kind == RoutingKind::grouped_topk && top_k == 16) continue;
      const RoutingConfig routing = named.routing;
      cases.push_back({"route/" + named.name + "/e16k" + std::to_string(top_k) + "/random+mix",
                       [=](Context& context, Random& random) {
                         RouteInput input = make_input(routing, 256, 16, top_k, mixed_row, random);
                         return check_route(context, input).outcome();
                       }});
    }
  }
  // Grouped routing keeping every group: k = E is allowed there.
  cases.push_back(
      {"route/grouped/e16k16-all-groups/nan-inf-mix", [](Context& context, Random& random) {
         RoutingConfig routing = every_routing(16).back().routing;
         routing.topk_groups = routing.num_groups;
         const RouteInput input = make_input(routing, 256, 16, 16, mixed_row, random);
         return check_route(context, input).outcome();
       }});
  return cases;
}

}  // namespace ironmoe::tools::check
