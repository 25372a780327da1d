// route on CUDA vs the CPU backend: every routing kind, hard rows (NaN, -inf, +inf, ties),
// E in {8, 128, 256, 512} and beyond, grouped_topk's group shapes, k in {1, 2, 8, 10, 16, 32},
// f32/bf16/f16 logits with strided rows, a device-side num_valid_tokens, diagnostics.
//
// Tolerances: ids must be identical (they depend only on comparisons of the same floats), except
// for grouped_topk rows whose selection hinges on two keys within 1e-6 relative (the GPU's expf
// and the host's may differ by a few ulps; grouped_row_has_near_tie); those rows are counted, not
// compared. Weights: |gpu - cpu| <= 2e-5 * |cpu| + 1e-7 * scaling (softmax sums are reduced in
// a different order; expf differs by up to 2 ulp).
#include <algorithm>
#include <climits>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "cuda_test_util.h"

namespace ironmoe::cuda_test {
namespace {

struct RouteProblem {
  RoutingConfig routing;
  int64_t tokens = 0;
  int64_t experts = 0;
  int64_t top_k = 0;
  int64_t stride = 0;
  DType dtype = DType::f32;
  std::vector<float> logits;         // [tokens, stride], already rounded to dtype
  std::vector<float> bias;           // [E] or empty
  std::optional<int32_t> num_valid;  // none: no num_valid_tokens pointer
  int32_t diagnostics_start = 0;     // every counter's value before the call
};

struct RouteResult {
  std::vector<int32_t> ids;
  std::vector<float> weights;
  std::vector<int32_t> diagnostics;
};

RouteResult route_on_cpu(const RouteProblem& p) {
  // The CPU backend reads f32 and bf16; f16 logits are handed over widened (exactly) to f32.
  const DType dtype = p.dtype == DType::f16 ? DType::f32 : p.dtype;
  const std::vector<uint8_t> logits = encode(dtype, p.logits);
  RouteResult result;
  result.ids.assign(static_cast<size_t>(p.tokens * p.top_k), 0x5a5a5a5a);
  result.weights.assign(result.ids.size(), std::nanf(""));
  result.diagnostics.assign(kDiagnosticCount, p.diagnostics_start);
  const int32_t num_valid = p.num_valid.value_or(0);
  RouteArgs args;
  args.logits = rows_view(logits.data(), dtype, p.tokens, p.experts, p.stride, Device::cpu());
  if (!p.bias.empty())
    args.correction_bias = TensorView::contiguous(p.bias.data(), DType::f32, {p.experts});
  args.topk_ids = TensorView::contiguous(result.ids.data(), DType::i32, {p.tokens, p.top_k});
  args.topk_weights =
      TensorView::contiguous(result.weights.data(), DType::f32, {p.tokens, p.top_k});
  args.num_valid_tokens = p.num_valid ? &num_valid : nullptr;
  args.diagnostics = result.diagnostics.data();
  route(p.routing, args, cpu_stream());
  return result;
}

RouteResult route_on_gpu(const RouteProblem& p, cudaStream_t stream) {
  const DeviceBuffer<uint8_t> logits(encode(p.dtype, p.logits));
  const DeviceBuffer<float> bias(p.bias);
  DeviceBuffer<int32_t> ids(p.tokens * p.top_k);
  DeviceBuffer<float> weights(p.tokens * p.top_k);
  DeviceBuffer<int32_t> diagnostics(std::vector<int32_t>(kDiagnosticCount, p.diagnostics_start));
  const DeviceBuffer<int32_t> num_valid(std::vector<int32_t>{p.num_valid.value_or(0)});
  ids.fill_bytes(kPoisonIndexByte);
  weights.fill_bytes(kPoisonFloatByte);
  const Device gpu = Device::cuda(0);
  RouteArgs args;
  args.logits = rows_view(logits.data(), p.dtype, p.tokens, p.experts, p.stride, gpu);
  if (!p.bias.empty())
    args.correction_bias = TensorView::contiguous(bias.data(), DType::f32, {p.experts}, gpu);
  args.topk_ids = TensorView::contiguous(ids.data(), DType::i32, {p.tokens, p.top_k}, gpu);
  args.topk_weights = TensorView::contiguous(weights.data(), DType::f32, {p.tokens, p.top_k}, gpu);
  args.num_valid_tokens = p.num_valid ? num_valid.data() : nullptr;
  args.diagnostics = diagnostics.data();
  route(p.routing, args, Stream::cuda(stream));
  CUDA_TEST_OK(cudaStreamSynchronize(stream));
  return {ids.download(), weights.download(), diagnostics.download()};
}

// Compares GPU with CPU; returns the number of grouped near-tie rows that were set aside.
int64_t expect_same_routing(const RouteProblem& p, const RouteResult& gpu, const RouteResult& cpu) {
  EXPECT_EQ(gpu.diagnostics, cpu.diagnostics) << "diagnostics differ";
  int64_t near_ties = 0;
  int reported = 0;
  for (int64_t t = 0; t < p.tokens && reported < 5; ++t) {
    bool ids_equal = true;
    for (int64_t j = 0; j < p.top_k; ++j)
      ids_equal = ids_equal && gpu.ids[t * p.top_k + j] == cpu.ids[t * p.top_k + j];
    if (!ids_equal && p.routing.kind == RoutingKind::grouped_topk &&
        grouped_row_has_near_tie(p.routing, p.logits.data() + t * p.stride,
                                 p.bias.empty() ? nullptr : p.bias.data(), p.experts, p.top_k)) {
      ++near_ties;
      continue;
    }
    for (int64_t j = 0; j < p.top_k; ++j) {
      const int64_t i = t * p.top_k + j;
      const float tolerance =
          2e-5f * std::abs(cpu.weights[i]) + 1e-7f * p.routing.routed_scaling_factor;
      const bool weight_ok = std::abs(gpu.weights[i] - cpu.weights[i]) <= tolerance;
      if (gpu.ids[i] != cpu.ids[i] || !weight_ok) {
        ADD_FAILURE() << "token " << t << ", choice " << j << ": gpu (id " << gpu.ids[i]
                      << ", weight " << gpu.weights[i] << "), cpu (id " << cpu.ids[i] << ", weight "
                      << cpu.weights[i] << ")";
        ++reported;
        break;
      }
    }
  }
  return near_ties;
}

RoutingConfig routing_for(RoutingKind kind, int64_t experts, int64_t top_k, std::mt19937_64& rng) {
  RoutingConfig routing;
  routing.kind = kind;
  routing.renormalize = std::bernoulli_distribution(0.7)(rng);
  routing.routed_scaling_factor = std::bernoulli_distribution(0.5)(rng) ? 1.0f : 2.5f;
  if (kind == RoutingKind::grouped_topk) {
    routing.num_groups = experts >= 16 ? 8 : experts / 2;
    const int64_t group_size = experts / routing.num_groups;
    const int64_t needed = (top_k + group_size - 1) / group_size;
    routing.topk_groups = std::min<int64_t>(routing.num_groups, std::max<int64_t>(needed, 4));
  }
  return routing;
}

RouteProblem make_problem(RoutingKind kind, int64_t experts, int64_t top_k, DType dtype,
                          int64_t tokens, std::mt19937_64& rng) {
  RouteProblem p;
  p.routing = routing_for(kind, experts, top_k, rng);
  p.tokens = tokens;
  p.experts = experts;
  p.top_k = top_k;
  p.stride = experts + (std::bernoulli_distribution(0.5)(rng) ? 3 : 0);
  p.dtype = dtype;
  p.logits = round_to(dtype, make_logits(rng, tokens, experts, p.stride, true));
  if (kind == RoutingKind::grouped_topk && std::bernoulli_distribution(0.8)(rng)) {
    std::uniform_real_distribution<float> bias(-0.1f, 0.1f);
    for (int64_t e = 0; e < experts; ++e) p.bias.push_back(bias(rng));
  }
  const int choice = std::uniform_int_distribution<int>(0, 2)(rng);
  if (choice == 1) p.num_valid = static_cast<int32_t>(tokens);
  if (choice == 2) p.num_valid = static_cast<int32_t>(tokens - tokens / 3);
  return p;
}

const char* kind_name(RoutingKind kind) { return routing_kind_name(kind); }

struct RouteCase {
  RoutingKind kind;
  int64_t experts;
  int64_t top_k;
  DType dtype;
};

std::string case_name(const ::testing::TestParamInfo<RouteCase>& info) {
  const RouteCase& c = info.param;
  return std::string(kind_name(c.kind)) + "_E" + std::to_string(c.experts) + "_k" +
         std::to_string(c.top_k) + "_" + dtype_name(c.dtype);
}

std::vector<RouteCase> all_cases() {
  std::vector<RouteCase> cases;
  for (RoutingKind kind :
       {RoutingKind::softmax_topk, RoutingKind::sigmoid_topk, RoutingKind::grouped_topk})
    for (int64_t experts : {8, 128, 256, 512})
      for (int64_t top_k : {1, 2, 8, 10, 16})
        for (DType dtype : {DType::f32, DType::bf16, DType::f16})
          if (top_k <= experts) cases.push_back({kind, experts, top_k, dtype});
  return cases;
}

class RouteVsCpu : public CudaTestWithParam<RouteCase> {};

TEST_P(RouteVsCpu, MatchesCpuBackend) {
  const RouteCase& c = GetParam();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const int64_t tokens = std::uniform_int_distribution<int64_t>(1, 700)(rng);
  const RouteProblem p = make_problem(c.kind, c.experts, c.top_k, c.dtype, tokens, rng);
  SCOPED_TRACE("T = " + std::to_string(tokens) + ", stride " + std::to_string(p.stride) +
               ", num_valid " + (p.num_valid ? std::to_string(*p.num_valid) : "none"));
  const int64_t near_ties = expect_same_routing(p, route_on_gpu(p, stream()), route_on_cpu(p));
  EXPECT_LE(near_ties, std::max<int64_t>(2, tokens / 100)) << "too many near-tie rows";
}

INSTANTIATE_TEST_SUITE_P(AllKinds, RouteVsCpu, ::testing::ValuesIn(all_cases()), case_name);

class RouteEdges : public CudaTest {};

// Beyond the presets: E up to 1024 (32 keys per lane in registers) and past it (the per-lane
// list kernel; grouped_topk's per-warp keys then need more than the default 48 KiB of shared
// memory per block), k = 32 (one lane per choice), and a long batch.
TEST_F(RouteEdges, LargeExpertCountsAndMaximalK) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  struct Shape {
    RoutingKind kind;
    int64_t experts, top_k, tokens;
  };
  for (const Shape& s : {Shape{RoutingKind::softmax_topk, 1024, 32, 300},
                         Shape{RoutingKind::sigmoid_topk, 4096, 16, 200},
                         Shape{RoutingKind::softmax_topk, 2048, 10, 300},
                         Shape{RoutingKind::sigmoid_topk, 1000, 16, 300},
                         Shape{RoutingKind::grouped_topk, 4096, 8, 200},
                         Shape{RoutingKind::softmax_topk, 32, 32, 500},
                         Shape{RoutingKind::softmax_topk, 64, 32, 500},
                         Shape{RoutingKind::grouped_topk, 256, 8, 20000}}) {
    SCOPED_TRACE(std::string(kind_name(s.kind)) + " E " + std::to_string(s.experts) + " k " +
                 std::to_string(s.top_k) + " T " + std::to_string(s.tokens));
    const RouteProblem p = make_problem(s.kind, s.experts, s.top_k, DType::bf16, s.tokens, rng);
    const int64_t near_ties = expect_same_routing(p, route_on_gpu(p, stream()), route_on_cpu(p));
    EXPECT_LE(near_ties, std::max<int64_t>(2, s.tokens / 100));
  }
}

// DeepSeek-V3's exact configuration, without special rows: the common case must match exactly.
TEST_F(RouteEdges, DeepSeekConfiguration) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  RouteProblem p;
  p.routing = preset("deepseek-v3", 1).routing;
  p.tokens = 4096;
  p.experts = 256;
  p.top_k = 8;
  p.stride = 256;
  p.dtype = DType::f32;
  p.logits = make_logits(rng, p.tokens, p.experts, p.stride, false);
  std::uniform_real_distribution<float> bias(-0.05f, 0.05f);
  for (int64_t e = 0; e < p.experts; ++e) p.bias.push_back(bias(rng));
  const int64_t near_ties = expect_same_routing(p, route_on_gpu(p, stream()), route_on_cpu(p));
  EXPECT_LE(near_ties, 4);
}

// grouped_topk scores groups in registers where the group size is a multiple of 32 and E <= 512
// (one to three register slots per group, groups short of a power of two, slots past E) and in
// shared memory elsewhere; topk_groups == num_groups drops nothing. Rows of tied keys (logits
// from {-2, 0.5, 3}, no bias: every pair sum distinct, so ties are exact on both backends) settle
// group and expert ties by index and must match the CPU exactly: no near-tie rows set aside.
TEST_F(RouteEdges, GroupShapes) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  struct Shape {
    int64_t experts, groups, topk_groups, top_k;
  };
  for (const Shape& s :
       {Shape{256, 8, 4, 8}, Shape{256, 4, 2, 8}, Shape{192, 3, 1, 6}, Shape{96, 3, 2, 4},
        Shape{64, 2, 1, 2}, Shape{512, 16, 4, 8}, Shape{384, 4, 3, 8}, Shape{384, 1, 1, 8},
        Shape{160, 5, 5, 8}, Shape{256, 16, 4, 8}, Shape{1024, 32, 8, 8}, Shape{2048, 64, 4, 8}}) {
    for (const bool tied : {false, true}) {
      SCOPED_TRACE("E " + std::to_string(s.experts) + ", groups " + std::to_string(s.groups) +
                   ", topk_groups " + std::to_string(s.topk_groups) + ", k " +
                   std::to_string(s.top_k) + (tied ? ", tied keys" : ""));
      RouteProblem p;
      p.routing.kind = RoutingKind::grouped_topk;
      p.routing.num_groups = s.groups;
      p.routing.topk_groups = s.topk_groups;
      p.routing.renormalize = true;
      p.routing.routed_scaling_factor = 2.5f;
      p.tokens = 300;
      p.experts = s.experts;
      p.top_k = s.top_k;
      p.stride = s.experts;
      p.dtype = DType::f32;
      if (tied) {
        std::uniform_int_distribution<int> pick(0, 2);
        const float values[] = {-2.0f, 0.5f, 3.0f};
        for (int64_t i = 0; i < p.tokens * p.stride; ++i) p.logits.push_back(values[pick(rng)]);
      } else {
        p.logits = make_logits(rng, p.tokens, p.experts, p.stride, true);
        std::uniform_real_distribution<float> bias(-0.1f, 0.1f);
        for (int64_t e = 0; e < p.experts; ++e) p.bias.push_back(bias(rng));
      }
      const int64_t near_ties = expect_same_routing(p, route_on_gpu(p, stream()), route_on_cpu(p));
      EXPECT_LE(near_ties, tied ? 0 : std::max<int64_t>(2, p.tokens / 100));
    }
  }
}

TEST_F(RouteEdges, ZeroTokensWritesNothing) {
  RouteProblem p;
  p.tokens = 0;
  p.experts = 16;
  p.top_k = 4;
  p.stride = 16;
  const RouteResult gpu = route_on_gpu(p, stream());
  EXPECT_TRUE(gpu.ids.empty());
  EXPECT_EQ(gpu.diagnostics, std::vector<int32_t>(kDiagnosticCount, 0));
}

// The non-finite counter adds up across calls and stops at INT32_MAX instead of wrapping: 64
// all-NaN rows of 128 logits from INT32_MAX - 100 end at INT32_MAX on both backends, and from 5
// at 5 + 64 * 128.
TEST_F(RouteEdges, NonFiniteCounterSaturates) {
  for (const int32_t start : {INT32_MAX - 100, 5}) {
    SCOPED_TRACE("start " + std::to_string(start));
    RouteProblem p;
    p.routing.kind = RoutingKind::softmax_topk;
    p.tokens = 64;
    p.experts = 128;
    p.top_k = 8;
    p.stride = 128;
    p.logits.assign(static_cast<size_t>(p.tokens * p.stride), std::nanf(""));
    p.diagnostics_start = start;
    const RouteResult gpu = route_on_gpu(p, stream());
    const RouteResult cpu = route_on_cpu(p);
    const int64_t expected = std::min<int64_t>(int64_t{start} + p.tokens * p.experts, INT32_MAX);
    EXPECT_EQ(gpu.diagnostics[kDiagNonFiniteLogit], expected);
    EXPECT_EQ(cpu.diagnostics[kDiagNonFiniteLogit], expected);
    expect_same_routing(p, gpu, cpu);
  }
}

// Every row past a device-side count, including a count of 0 and a negative one.
TEST_F(RouteEdges, NumValidTokensOnTheDevice) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (int32_t num_valid : {0, -3, 1, 63, 64, 1000}) {
    SCOPED_TRACE("num_valid " + std::to_string(num_valid));
    RouteProblem p = make_problem(RoutingKind::softmax_topk, 128, 8, DType::f32, 64, rng);
    p.num_valid = num_valid;
    const RouteResult gpu = route_on_gpu(p, stream());
    expect_same_routing(p, gpu, route_on_cpu(p));
    const int64_t valid = std::clamp<int64_t>(num_valid, 0, p.tokens);
    for (int64_t i = valid * p.top_k; i < p.tokens * p.top_k; ++i) {
      ASSERT_EQ(gpu.ids[i], -1) << "padding slot " << i;
      ASSERT_EQ(gpu.weights[i], 0.0f) << "padding slot " << i;
    }
  }
}

}  // namespace
}  // namespace ironmoe::cuda_test
