#pragma once
// The properties ironmoe-check verifies, each written from the contract (docs/contract.md) rather
// than from the library's code, and a collector that keeps the first few failures.
#include <cstdint>
#include <string>
#include <vector>

#include "check/harness.h"

namespace ironmoe::tools::check {

class Expect {
 public:
  // Records a failure; only the first few messages are kept, the rest are counted.
  void fail(const std::string& message);
  bool check(bool condition, const std::string& message) {
    if (!condition) fail(message);
    return condition;
  }
  bool ok() const { return failures_ == 0; }
  Outcome outcome(const std::string& note = "") const;

 private:
  std::vector<std::string> messages_;
  int64_t failures_ = 0;
};

// Routing properties: for rows below num_valid, k distinct ids in [0, E) and finite weights >= 0;
// rows at or beyond num_valid hold ids -1 and weights 0.
void expect_routing_valid(Expect& expect, const RouteRun& run, int64_t tokens, int64_t num_experts,
                          int64_t top_k, int64_t num_valid);
// Same ids as the reference, weights within tolerance (relative to max(1, |reference|)).
void expect_routing_equal(Expect& expect, const RouteRun& got, const RouteRun& reference,
                          int64_t top_k, double tolerance);

// The plan the contract defines, rebuilt independently: which slots are placed, every map entry
// and every diagnostics counter.
void expect_plan_exact(Expect& expect, const PlanRun& run, const PlanInput& input);

// Output rows `tokens` of `out` ([T, H]) against reference rows (same order) within tolerance
// (reference::max_relative_error per row); also requires every value finite.
void expect_rows_close(Expect& expect, const std::vector<float>& out, int64_t hidden,
                       const std::vector<int64_t>& tokens, const std::vector<double>& reference,
                       double tolerance);
// Rows [first, last) of out are exactly zero.
void expect_rows_zero(Expect& expect, const std::vector<float>& out, int64_t hidden, int64_t first,
                      int64_t last);
void expect_diagnostics(Expect& expect, const Diagnostics& got, const Diagnostics& expected);

void expect_finite(Expect& expect, const std::vector<float>& out, int64_t hidden);
void expect_bitwise_equal(Expect& expect, const float* got, const float* want, int64_t count,
                          const std::string& what);

// The routing a layer call does internally, as a standalone route input.
RouteInput route_input_of(const LayerInput& input);
int64_t valid_rows(const LayerInput& input);  // min(T, num_valid) clamped at 0

// A layer output against the contract: all finite, the listed tokens close to the reference fed
// the reference's own routing (or the precomputed one), rows at or beyond num_valid exactly zero.
void expect_layer_output(Expect& expect, const LayerInput& input, const std::vector<float>& out,
                         const std::vector<int64_t>& tokens);
// run_layer, then expect_layer_output.
Expect check_layer(Context& context, const LayerInput& input, const std::vector<int64_t>& tokens,
                   LayerRun* result = nullptr);

// Tolerance of a layer output against the float64 reference: bf16 storage rounds h and out to
// 8 bits of mantissa; f32 differs only by the order of fp32 sums.
double layer_tolerance(DType dtype);
// FP8 layers against the float64 FP8 reference: the layer quantises h from fp32 sums, the
// reference from float64 ones, so an h code can round the other way (one E4M3 step of that
// element); tests/cuda/test_fp8.cpp measured up to 3.3e-2 on rare rows.
inline constexpr double kFp8LayerTolerance = 5e-2;
inline constexpr double kWeightTolerance = 1e-5;

// The first, the last, the values around the middle and a few random tokens of [0, tokens).
std::vector<int64_t> pick_tokens(int64_t tokens, int count, Random& random);
std::vector<int64_t> all_tokens(int64_t tokens);

}  // namespace ironmoe::tools::check
