#include "check/expect.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <sstream>

#include "reference_moe.h"

namespace ironmoe::tools::check {
namespace {

constexpr size_t kKeptMessages = 3;

std::string join_ids(const int32_t* ids, int64_t count) {
  std::ostringstream text;
  text << '[';
  for (int64_t j = 0; j < count; ++j) text << (j == 0 ? "" : ",") << ids[j];
  text << ']';
  return text.str();
}

}  // namespace

void Expect::fail(const std::string& message) {
  if (messages_.size() < kKeptMessages) messages_.push_back(message);
  ++failures_;
}

Outcome Expect::outcome(const std::string& note) const {
  if (ok()) return {true, note};
  std::string reason;
  for (size_t i = 0; i < messages_.size(); ++i) reason += (i == 0 ? "" : "; ") + messages_[i];
  if (failures_ > static_cast<int64_t>(messages_.size())) {
    reason += " (" + std::to_string(failures_ - static_cast<int64_t>(messages_.size())) +
              " more failures)";
  }
  return {false, reason};
}

void expect_routing_valid(Expect& expect, const RouteRun& run, int64_t tokens, int64_t num_experts,
                          int64_t top_k, int64_t num_valid) {
  for (int64_t t = 0; t < tokens; ++t) {
    const int32_t* ids = run.ids.data() + t * top_k;
    const float* weights = run.weights.data() + t * top_k;
    const std::string where = "token " + std::to_string(t) + " ids " + join_ids(ids, top_k);
    if (t >= num_valid) {
      for (int64_t j = 0; j < top_k; ++j) {
        if (ids[j] != -1 || weights[j] != 0.0f) {
          expect.fail("padding " + where + ": expected ids -1 and weights 0, got weight " +
                      std::to_string(weights[j]));
          break;
        }
      }
      continue;
    }
    for (int64_t j = 0; j < top_k; ++j) {
      if (ids[j] < 0 || ids[j] >= num_experts) {
        expect.fail(where + ": id outside [0, " + std::to_string(num_experts) + ")");
        break;
      }
      if (std::find(ids, ids + j, ids[j]) != ids + j) {
        expect.fail(where + ": duplicate id " + std::to_string(ids[j]));
        break;
      }
      if (!std::isfinite(weights[j]) || weights[j] < 0.0f) {
        expect.fail(where + ": weight " + std::to_string(j) + " is " + std::to_string(weights[j]));
        break;
      }
    }
  }
}

void expect_routing_equal(Expect& expect, const RouteRun& got, const RouteRun& reference,
                          int64_t top_k, double tolerance) {
  if (!expect.check(got.ids.size() == reference.ids.size(), "routing sizes differ")) return;
  for (size_t s = 0; s < got.ids.size(); ++s) {
    const auto t = static_cast<int64_t>(s) / top_k;
    if (got.ids[s] != reference.ids[s]) {
      expect.fail("token " + std::to_string(t) + ": ids " + join_ids(&got.ids[t * top_k], top_k) +
                  ", reference " + join_ids(&reference.ids[t * top_k], top_k));
      s = static_cast<size_t>((t + 1) * top_k) - 1;  // one message per token
      continue;
    }
    const double ref = reference.weights[s];
    const double diff = std::abs(static_cast<double>(got.weights[s]) - ref);
    if (!(diff <= tolerance * std::max(1.0, std::abs(ref)))) {
      expect.fail("token " + std::to_string(t) + " slot " + std::to_string(s % top_k) +
                  ": weight " + std::to_string(got.weights[s]) + ", reference " +
                  std::to_string(ref));
    }
  }
}

void expect_plan_exact(Expect& expect, const PlanRun& run, const PlanInput& input) {
  const int64_t k = input.top_k;
  const int64_t slots = input.tokens * k;
  const int64_t begin = input.expert_begin;
  const int64_t end = input.expert_end < 0 ? input.num_experts : input.expert_end;
  const int64_t local = end - begin;
  const bool batched = input.layout == Layout::batched;
  int64_t valid = input.tokens;
  if (input.num_valid) valid = std::clamp<int64_t>(*input.num_valid, 0, input.tokens);

  // Pass 1: which slots go to which local expert, with their rank in slot order.
  std::vector<int64_t> seen(static_cast<size_t>(local), 0);
  std::vector<int64_t> expert_of(static_cast<size_t>(slots), -1);
  std::vector<int64_t> rank_of(static_cast<size_t>(slots), -1);
  Diagnostics diag{};
  for (int64_t s = 0; s < slots; ++s) {
    if (s / k >= valid) continue;  // padding: skipped, not counted
    const int64_t id = input.ids[s];
    if (id < 0 || id >= input.num_experts) {
      ++diag[kDiagIdOutOfRange];
      continue;
    }
    if (id < begin || id >= end) {
      ++diag[kDiagIdRemote];
      continue;
    }
    const int64_t rank = seen[id - begin]++;
    if (batched && rank >= input.capacity) {
      ++diag[kDiagCapacityOverflow];
      continue;
    }
    expert_of[s] = id - begin;
    rank_of[s] = rank;
  }

  // Counts and offsets.
  std::vector<int64_t> first_row(static_cast<size_t>(local) + 1, 0);
  for (int64_t e = 0; e < local; ++e) {
    const int64_t count = batched ? std::min(seen[e], input.capacity) : seen[e];
    first_row[e + 1] = batched ? (e + 1) * input.capacity : first_row[e] + count;
    if (run.counts[e] != count) {
      expect.fail("expert_counts[" + std::to_string(e) + "] = " + std::to_string(run.counts[e]) +
                  ", expected " + std::to_string(count));
    }
  }
  for (int64_t e = 0; e <= local; ++e) {
    if (run.offsets[e] != first_row[e]) {
      expect.fail("expert_offsets[" + std::to_string(e) + "] = " + std::to_string(run.offsets[e]) +
                  ", expected " + std::to_string(first_row[e]));
    }
  }

  // Both maps, every entry.
  std::vector<int64_t> expected_row_to_slot(run.row_to_slot.size(), -1);
  for (int64_t s = 0; s < slots; ++s) {
    const int64_t row = expert_of[s] < 0 ? -1 : first_row[expert_of[s]] + rank_of[s];
    if (row >= 0) {
      if (!expect.check(row < static_cast<int64_t>(expected_row_to_slot.size()),
                        "slot " + std::to_string(s) + " needs row " + std::to_string(row) +
                            " beyond row_to_slot")) {
        continue;
      }
      expected_row_to_slot[row] = s;
    }
    if (run.slot_to_row[s] != row) {
      expect.fail("slot_to_row[" + std::to_string(s) + "] (id " + std::to_string(input.ids[s]) +
                  ") = " + std::to_string(run.slot_to_row[s]) + ", expected " +
                  std::to_string(row));
    }
  }
  for (size_t r = 0; r < expected_row_to_slot.size(); ++r) {
    if (run.row_to_slot[r] != expected_row_to_slot[r]) {
      expect.fail("row_to_slot[" + std::to_string(r) + "] = " + std::to_string(run.row_to_slot[r]) +
                  ", expected " + std::to_string(expected_row_to_slot[r]));
    }
  }
  expect_diagnostics(expect, run.diagnostics, diag);
}

void expect_rows_close(Expect& expect, const std::vector<float>& out, int64_t hidden,
                       const std::vector<int64_t>& tokens, const std::vector<double>& reference,
                       double tolerance) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    const int64_t t = tokens[i];
    const float* got = out.data() + t * hidden;
    const double* ref = reference.data() + static_cast<int64_t>(i) * hidden;
    const double error = reference::max_relative_error(ref, got, 1, hidden);
    if (!(error <= tolerance)) {
      expect.fail("token " + std::to_string(t) + ": relative error " + std::to_string(error) +
                  " vs reference (tolerance " + std::to_string(tolerance) + ")");
    }
  }
}

void expect_rows_zero(Expect& expect, const std::vector<float>& out, int64_t hidden, int64_t first,
                      int64_t last) {
  for (int64_t t = first; t < last; ++t) {
    for (int64_t c = 0; c < hidden; ++c) {
      const float v = out[t * hidden + c];
      if (v != 0.0f) {
        expect.fail("row " + std::to_string(t) + " should be zero, column " + std::to_string(c) +
                    " is " + std::to_string(v));
        break;
      }
    }
  }
}

void expect_diagnostics(Expect& expect, const Diagnostics& got, const Diagnostics& expected) {
  const char* names[kDiagnosticCount] = {"id_out_of_range", "id_remote", "non_finite_logit",
                                         "capacity_overflow"};
  for (int c = 0; c < kDiagnosticCount; ++c) {
    if (got[c] != expected[c]) {
      expect.fail(std::string("diagnostics ") + names[c] + " = " + std::to_string(got[c]) +
                  ", expected " + std::to_string(expected[c]));
    }
  }
}

void expect_finite(Expect& expect, const std::vector<float>& out, int64_t hidden) {
  for (size_t i = 0; i < out.size(); ++i) {
    if (!std::isfinite(out[i])) {
      expect.fail("output row " + std::to_string(static_cast<int64_t>(i) / hidden) +
                  " holds a non-finite value");
      return;
    }
  }
}

void expect_bitwise_equal(Expect& expect, const float* got, const float* want, int64_t count,
                          const std::string& what) {
  if (std::memcmp(got, want, static_cast<size_t>(count) * sizeof(float)) != 0) {
    expect.fail(what + " differs bitwise");
  }
}

RouteInput route_input_of(const LayerInput& input) {
  RouteInput route;
  route.routing = input.config.routing;
  route.tokens = input.tokens;
  route.num_experts = input.config.num_experts;
  route.top_k = input.config.top_k;
  route.logits = input.logits;
  route.bias = input.bias;
  route.num_valid = input.num_valid;
  return route;
}

int64_t valid_rows(const LayerInput& input) {
  return input.num_valid ? std::clamp<int64_t>(*input.num_valid, 0, input.tokens) : input.tokens;
}

void expect_layer_output(Expect& expect, const LayerInput& input, const std::vector<float>& out,
                         const std::vector<int64_t>& tokens) {
  std::vector<int32_t> ids = input.ids;
  std::vector<float> weights = input.weights;
  if (ids.empty()) {
    const RouteRun routed = reference_route(route_input_of(input));
    ids = routed.ids;
    weights = routed.weights;
  }
  expect_finite(expect, out, input.config.hidden);
  expect_rows_close(expect, out, input.config.hidden, tokens,
                    reference_layer(input, ids, weights, tokens),
                    input.config.quant == QuantScheme::none ? layer_tolerance(input.config.dtype)
                                                            : kFp8LayerTolerance);
  expect_rows_zero(expect, out, input.config.hidden, valid_rows(input), input.tokens);
}

Expect check_layer(Context& context, const LayerInput& input, const std::vector<int64_t>& tokens,
                   LayerRun* result) {
  const LayerRun run = run_layer(context, input);
  Expect expect;
  expect_layer_output(expect, input, run.out, tokens);
  if (result != nullptr) *result = run;
  return expect;
}

double layer_tolerance(DType dtype) { return dtype == DType::bf16 ? 2e-2 : 1e-4; }

std::vector<int64_t> pick_tokens(int64_t tokens, int count, Random& random) {
  std::vector<int64_t> picked;
  auto add = [&](int64_t t) {
    if (t >= 0 && t < tokens && std::find(picked.begin(), picked.end(), t) == picked.end()) {
      picked.push_back(t);
    }
  };
  add(0);
  add(tokens - 1);
  add(tokens / 2);
  add(tokens / 2 - 1);
  while (static_cast<int64_t>(picked.size()) < std::min<int64_t>(count, tokens)) {
    add(random.below(tokens));
  }
  std::sort(picked.begin(), picked.end());
  return picked;
}

std::vector<int64_t> all_tokens(int64_t tokens) {
  std::vector<int64_t> list(static_cast<size_t>(tokens));
  for (int64_t t = 0; t < tokens; ++t) list[t] = t;
  return list;
}

}  // namespace ironmoe::tools::check
