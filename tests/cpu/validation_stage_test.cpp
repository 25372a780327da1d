// Host-side validation of the stage entry points (route, plan, gather, experts, combine), for
// engines that call them directly: each bad argument throws ironmoe::Error naming it. Each case
// starts from arguments that work and breaks one thing.
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>

#include "test_util.h"

namespace ironmoe::test {
namespace {

constexpr int64_t kTokens = 6, kExperts = 8, kTopK = 2, kHidden = 16, kInter = 8;
constexpr int64_t kRows = kTokens * kTopK;

// Host buffers big enough for every stage's arguments at the sizes above.
struct Buffers {
  std::vector<float> logits = std::vector<float>(kTokens * kExperts, 0.5f);
  std::vector<float> bias = std::vector<float>(kExperts, 0.1f);
  std::vector<int32_t> ids = std::vector<int32_t>(kRows, 1);
  std::vector<float> weights = std::vector<float>(kRows, 0.5f);
  std::vector<int32_t> counts = std::vector<int32_t>(kExperts, 0);
  std::vector<int32_t> offsets = std::vector<int32_t>(kExperts + 1, 0);
  std::vector<int32_t> slot_to_row = std::vector<int32_t>(kRows, -1);
  std::vector<int32_t> row_to_slot = std::vector<int32_t>(kExperts * kTokens, -1);
  std::vector<float> x = std::vector<float>(kTokens * kHidden, 0.25f);
  std::vector<float> permuted = std::vector<float>(kRows * kHidden, 0.0f);
  std::vector<float> w13 = std::vector<float>(kExperts * 2 * kInter * kHidden, 0.1f);
  std::vector<float> w2 = std::vector<float>(kExperts * kHidden * kInter, 0.1f);
  std::vector<float> inter = std::vector<float>(kRows * kInter, 0.0f);
  std::vector<float> out = std::vector<float>(kTokens * kHidden, 0.0f);
};

TensorView i32(std::vector<int32_t>& v, std::initializer_list<int64_t> shape) {
  return TensorView::contiguous(v.data(), DType::i32, shape);
}
TensorView f32(std::vector<float>& v, std::initializer_list<int64_t> shape) {
  return TensorView::contiguous(v.data(), DType::f32, shape);
}

// Route and plan arguments that work, over b.
RouteArgs valid_route(Buffers& b) {
  RouteArgs a;
  a.logits = f32(b.logits, {kTokens, kExperts});
  a.topk_ids = i32(b.ids, {kTokens, kTopK});
  a.topk_weights = f32(b.weights, {kTokens, kTopK});
  return a;
}
PlanArgs valid_plan(Buffers& b) {
  PlanArgs a;
  a.topk_ids = i32(b.ids, {kTokens, kTopK});
  a.num_experts = kExperts;
  a.expert_counts = i32(b.counts, {kExperts});
  a.expert_offsets = i32(b.offsets, {kExperts + 1});
  a.slot_to_row = i32(b.slot_to_row, {kTokens, kTopK});
  a.row_to_slot = i32(b.row_to_slot, {kRows});
  return a;
}

// Experts arguments that work over b, writing `out` ([kRows, kHidden]).
ExpertArgs experts_over(Buffers& b, std::vector<float>& out) {
  ExpertArgs a;
  a.permuted_in = f32(b.permuted, {kRows, kHidden});
  a.expert_offsets = i32(b.offsets, {kExperts});
  a.expert_counts = i32(b.counts, {kExperts});
  a.w13 = f32(b.w13, {kExperts, 2 * kInter, kHidden});
  a.w2 = f32(b.w2, {kExperts, kHidden, kInter});
  a.intermediate = f32(b.inter, {kRows, kInter});
  a.permuted_out = f32(out, {kRows, kHidden});
  return a;
}

template <class Args>
struct Case {
  const char* what;
  std::function<void(Args&, RoutingConfig&)> breaks;
  std::vector<std::string> names;
};

TEST(StageValidation, RouteNamesTheBadArgument) {
  Buffers b;
  auto valid = [&] { return valid_route(b); };
  RouteArgs ok = valid();
  EXPECT_NO_THROW(route(RoutingConfig{}, ok, Stream::cpu()));
  const Case<RouteArgs> cases[] = {
      {"no logits", [](RouteArgs& a, RoutingConfig&) { a.logits = {}; }, {"logits"}},
      {"logits dtype",
       [](RouteArgs& a, RoutingConfig&) { a.logits.dtype = DType::i32; },
       {"logits"}},
      {"logits device",
       [](RouteArgs& a, RoutingConfig&) { a.logits.device = Device::cuda(); },
       {"logits"}},
      {"ids rows", [](RouteArgs& a, RoutingConfig&) { a.topk_ids.shape[0] -= 1; }, {"topk_ids"}},
      {"k = 0", [](RouteArgs& a, RoutingConfig&) { a.topk_ids.shape[1] = 0; }, {"topk_ids"}},
      {"k > E",
       [](RouteArgs& a, RoutingConfig&) {
         a.logits.shape[1] = 1;
         a.logits.strides[0] = 1;
       },
       {"topk_ids"}},
      {"weights dtype",
       [](RouteArgs& a, RoutingConfig&) { a.topk_weights.dtype = DType::bf16; },
       {"topk_weights"}},
      {"weights absent",
       [](RouteArgs& a, RoutingConfig&) { a.topk_weights = {}; },
       {"topk_weights"}},
      {"ids null", [](RouteArgs& a, RoutingConfig&) { a.topk_ids.data = nullptr; }, {"topk_ids"}},
      {"bias without grouping",
       [&](RouteArgs& a, RoutingConfig&) { a.correction_bias = f32(b.bias, {kExperts}); },
       {"correction_bias"}},
      {"bias shape",
       [&](RouteArgs& a, RoutingConfig& r) {
         r.kind = RoutingKind::grouped_topk;
         r.num_groups = 2;
         a.correction_bias = f32(b.bias, {kExperts - 1});
       },
       {"correction_bias"}},
      {"num_groups",
       [](RouteArgs&, RoutingConfig& r) {
         r.kind = RoutingKind::grouped_topk;
         r.num_groups = 3;
       },
       {"num_groups"}},
      {"scaling",
       [](RouteArgs&, RoutingConfig& r) { r.routed_scaling_factor = -1.0f; },
       {"routed_scaling_factor"}},
  };
  for (const auto& c : cases) {
    RouteArgs args = valid();
    RoutingConfig routing;
    c.breaks(args, routing);
    expect_error_naming([&] { route(routing, args, Stream::cpu()); }, c.names, c.what);
  }
}

TEST(StageValidation, PlanNamesTheBadArgument) {
  Buffers b;
  auto valid = [&] { return valid_plan(b); };
  PlanArgs ok = valid();
  EXPECT_NO_THROW(plan(ok, Stream::cpu()));
  const Case<PlanArgs> cases[] = {
      {"no ids", [](PlanArgs& a, RoutingConfig&) { a.topk_ids = {}; }, {"topk_ids"}},
      {"ids dtype",
       [](PlanArgs& a, RoutingConfig&) { a.topk_ids.dtype = DType::f32; },
       {"topk_ids"}},
      {"k > E", [](PlanArgs& a, RoutingConfig&) { a.num_experts = 1; }, {"topk_ids"}},
      {"num_experts 0", [](PlanArgs& a, RoutingConfig&) { a.num_experts = 0; }, {"num_experts"}},
      {"expert_end > E",
       [](PlanArgs& a, RoutingConfig&) { a.expert_end = kExperts + 1; },
       {"expert_end"}},
      {"expert_begin > end",
       [](PlanArgs& a, RoutingConfig&) {
         a.expert_begin = 5;
         a.expert_end = 4;
       },
       {"expert_begin"}},
      {"batched capacity 0",
       [](PlanArgs& a, RoutingConfig&) { a.layout = Layout::batched; },
       {"capacity"}},
      {"batched row_to_slot size",
       [](PlanArgs& a, RoutingConfig&) {
         a.layout = Layout::batched;
         a.capacity = 2;
       },
       {"row_to_slot"}},
      {"counts size",
       [](PlanArgs& a, RoutingConfig&) { a.expert_counts.shape[0] += 1; },
       {"expert_counts"}},
      {"offsets size",
       [](PlanArgs& a, RoutingConfig&) { a.expert_offsets.shape[0] -= 1; },
       {"expert_offsets"}},
      {"slot_to_row shape",
       [](PlanArgs& a, RoutingConfig&) { a.slot_to_row.shape[1] = 3; },
       {"slot_to_row"}},
      {"row_to_slot null",
       [](PlanArgs& a, RoutingConfig&) { a.row_to_slot.data = nullptr; },
       {"row_to_slot"}},
      {"counts device",
       [](PlanArgs& a, RoutingConfig&) { a.expert_counts.device = Device::cuda(); },
       {"expert_counts"}},
  };
  for (const auto& c : cases) {
    PlanArgs args = valid();
    RoutingConfig unused;
    c.breaks(args, unused);
    expect_error_naming([&] { plan(args, Stream::cpu()); }, c.names, c.what);
  }
}

TEST(StageValidation, GatherExpertsAndCombineNameTheBadArgument) {
  Buffers b;
  auto valid_gather = [&] {
    GatherArgs a;
    a.x = f32(b.x, {kTokens, kHidden});
    a.row_to_slot = i32(b.row_to_slot, {kRows});
    a.top_k = kTopK;
    a.permuted = f32(b.permuted, {kRows, kHidden});
    return a;
  };
  auto valid_experts = [&] {
    ExpertArgs a;
    a.permuted_in = f32(b.permuted, {kRows, kHidden});
    a.expert_offsets = i32(b.offsets, {kExperts + 1});
    a.expert_counts = i32(b.counts, {kExperts});
    a.w13 = f32(b.w13, {kExperts, 2 * kInter, kHidden});
    a.w2 = f32(b.w2, {kExperts, kHidden, kInter});
    a.intermediate = f32(b.inter, {kRows, kInter});
    a.permuted_out = f32(b.permuted, {kRows, kHidden});
    return a;
  };
  auto valid_combine = [&] {
    CombineArgs a;
    a.permuted_out = f32(b.permuted, {kRows, kHidden});
    a.slot_to_row = i32(b.slot_to_row, {kTokens, kTopK});
    a.topk_weights = f32(b.weights, {kTokens, kTopK});
    a.out = f32(b.out, {kTokens, kHidden});
    return a;
  };
  GatherArgs gather_ok = valid_gather();
  ExpertArgs experts_ok = valid_experts();
  CombineArgs combine_ok = valid_combine();
  EXPECT_NO_THROW(gather(gather_ok, Stream::cpu()));
  EXPECT_NO_THROW(experts(experts_ok, Stream::cpu()));
  EXPECT_NO_THROW(combine(combine_ok, Stream::cpu()));

  const Case<GatherArgs> gather_cases[] = {
      {"x dtype", [](GatherArgs& a, RoutingConfig&) { a.x.dtype = DType::i32; }, {"x"}},
      {"top_k 0", [](GatherArgs& a, RoutingConfig&) { a.top_k = 0; }, {"top_k"}},
      {"permuted rows",
       [](GatherArgs& a, RoutingConfig&) { a.permuted.shape[0] += 1; },
       {"permuted"}},
      {"permuted dtype",
       [](GatherArgs& a, RoutingConfig&) { a.permuted.dtype = DType::bf16; },
       {"permuted"}},
      {"row_to_slot rank",
       [](GatherArgs& a, RoutingConfig&) {
         a.row_to_slot.ndim = 2;
         a.row_to_slot.shape[1] = 1;
       },
       {"row_to_slot"}},
  };
  for (const auto& c : gather_cases) {
    GatherArgs args = valid_gather();
    RoutingConfig unused;
    c.breaks(args, unused);
    expect_error_naming([&] { gather(args, Stream::cpu()); }, c.names, c.what);
  }

  const Case<ExpertArgs> expert_cases[] = {
      {"w13 odd rows",
       [](ExpertArgs& a, RoutingConfig&) { a.w13.shape[1] = 2 * kInter - 1; },
       {"w13"}},
      {"w13 hidden", [](ExpertArgs& a, RoutingConfig&) { a.w13.shape[2] += 1; }, {"w13"}},
      {"w2 shape", [](ExpertArgs& a, RoutingConfig&) { a.w2.shape[0] -= 1; }, {"w2"}},
      {"offsets size",
       [](ExpertArgs& a, RoutingConfig&) { a.expert_offsets.shape[0] += 1; },
       {"expert_offsets"}},
      {"counts size",
       [](ExpertArgs& a, RoutingConfig&) { a.expert_counts.shape[0] -= 1; },
       {"expert_counts"}},
      {"intermediate shape",
       [](ExpertArgs& a, RoutingConfig&) { a.intermediate.shape[1] += 1; },
       {"intermediate"}},
      // Only FP8 experts may go without it (they keep h in their scratch).
      {"no intermediate",
       [](ExpertArgs& a, RoutingConfig&) { a.intermediate = {}; },
       {"intermediate"}},
      {"gathered input for unquantised experts",
       [](ExpertArgs& a, RoutingConfig&) {
         a.gathered.x = a.permuted_in;
         a.gathered.row_to_slot = a.expert_counts;
         a.gathered.top_k = 1;
       },
       {"gathered"}},
      {"permuted_out dtype",
       [](ExpertArgs& a, RoutingConfig&) { a.permuted_out.dtype = DType::bf16; },
       {"permuted_out"}},
      {"no permuted_in",
       [](ExpertArgs& a, RoutingConfig&) { a.permuted_in = {}; },
       {"permuted_in"}},
      {"phase past down",
       [](ExpertArgs& a, RoutingConfig&) { a.phase = static_cast<ExpertPhase>(3); },
       {"phase"}},
  };
  for (const auto& c : expert_cases) {
    ExpertArgs args = valid_experts();
    RoutingConfig unused;
    c.breaks(args, unused);
    expect_error_naming([&] { experts(args, Stream::cpu()); }, c.names, c.what);
  }

  const Case<CombineArgs> combine_cases[] = {
      {"out rows", [](CombineArgs& a, RoutingConfig&) { a.out.shape[0] += 1; }, {"out"}},
      {"out dtype", [](CombineArgs& a, RoutingConfig&) { a.out.dtype = DType::bf16; }, {"out"}},
      {"weights shape",
       [](CombineArgs& a, RoutingConfig&) { a.topk_weights.shape[1] = 3; },
       {"topk_weights"}},
      {"slot_to_row dtype",
       [](CombineArgs& a, RoutingConfig&) { a.slot_to_row.dtype = DType::f32; },
       {"slot_to_row"}},
  };
  for (const auto& c : combine_cases) {
    CombineArgs args = valid_combine();
    RoutingConfig unused;
    c.breaks(args, unused);
    expect_error_naming([&] { combine(args, Stream::cpu()); }, c.names, c.what);
  }
  // A CUDA stream: a CPU-only build names the stream, a CUDA build the first host tensor.
  expect_error_naming([&] { combine(combine_ok, Stream::cuda(nullptr)); },
                      {cuda_compiled() ? "permuted_out" : "stream"}, "cuda stream, host tensors");
}

// A stage's outputs may share no memory with each other or with its inputs (contract L7): each
// overlap is an error naming both. The experts stage may run in place (permuted_out over
// permuted_in: GEMM1 reads every input row before GEMM2 writes), with the bits of a separate out.
TEST(StageValidation, OutputsSharingMemoryWithAnotherArgumentAreRefused) {
  Buffers b;
  RoutingConfig softmax;
  EXPECT_NO_THROW(route(softmax, valid_route(b), Stream::cpu()));
  RouteArgs route_bad = valid_route(b);
  route_bad.topk_weights = f32(b.logits, {kTokens, kTopK});
  expect_error_naming([&] { route(softmax, route_bad, Stream::cpu()); }, {"topk_weights", "logits"},
                      "route weights over the logits");
  route_bad = valid_route(b);
  route_bad.topk_ids = TensorView::contiguous(b.weights.data(), DType::i32, {kTokens, kTopK});
  expect_error_naming([&] { route(softmax, route_bad, Stream::cpu()); },
                      {"topk_ids", "topk_weights"}, "route ids over its weights");

  PlanArgs plan_bad = valid_plan(b);
  plan_bad.slot_to_row = i32(b.ids, {kTokens, kTopK});
  expect_error_naming([&] { plan(plan_bad, Stream::cpu()); }, {"slot_to_row", "topk_ids"},
                      "plan slot_to_row over the ids");
  plan_bad = valid_plan(b);
  plan_bad.expert_counts = i32(b.row_to_slot, {kExperts});
  expect_error_naming([&] { plan(plan_bad, Stream::cpu()); }, {"expert_counts", "row_to_slot"},
                      "plan counts over row_to_slot");

  GatherArgs gather_bad;
  gather_bad.x = f32(b.x, {kTokens, kHidden});
  gather_bad.row_to_slot = i32(b.row_to_slot, {kTokens});  // R = T rows, so x's shape fits
  gather_bad.top_k = kTopK;
  gather_bad.permuted = TensorView::contiguous(b.x.data(), DType::f32, {kTokens, kHidden});
  expect_error_naming([&] { gather(gather_bad, Stream::cpu()); }, {"permuted", "x"},
                      "gather into x");

  CombineArgs combine_bad;
  combine_bad.permuted_out = f32(b.permuted, {kRows, kHidden});
  combine_bad.slot_to_row = i32(b.slot_to_row, {kTokens, kTopK});
  combine_bad.topk_weights = f32(b.weights, {kTokens, kTopK});
  combine_bad.out = f32(b.permuted, {kTokens, kHidden});
  expect_error_naming([&] { combine(combine_bad, Stream::cpu()); }, {"out", "permuted_out"},
                      "combine into permuted_out");

  // Experts: two rows per expert for the first experts, so the stage computes something.
  std::fill(b.counts.begin(), b.counts.end(), 0);
  for (int64_t e = 0; e < kRows / 2; ++e) {
    b.offsets[static_cast<size_t>(e)] = static_cast<int32_t>(2 * e);
    b.counts[static_cast<size_t>(e)] = 2;
  }
  for (size_t i = 0; i < b.permuted.size(); ++i) b.permuted[i] = 0.01f * static_cast<float>(i % 17);
  std::vector<float> separate(b.permuted.size(), 0.0f);
  experts(experts_over(b, separate), Stream::cpu());
  experts(experts_over(b, b.permuted), Stream::cpu());  // in place
  EXPECT_EQ(b.permuted, separate) << "experts in place differs from a separate permuted_out";
  ExpertArgs experts_bad = experts_over(b, separate);
  experts_bad.intermediate = f32(b.w13, {kRows, kInter});
  expect_error_naming([&] { experts(experts_bad, Stream::cpu()); }, {"intermediate", "w13"},
                      "experts h over w13");
  experts_bad = experts_over(b, separate);
  experts_bad.permuted_out = f32(b.w2, {kRows, kHidden});
  expect_error_naming([&] { experts(experts_bad, Stream::cpu()); }, {"permuted_out", "w2"},
                      "experts out over w2");

  Fp8InputScaleArgs scale_bad;
  scale_bad.x = f32(b.x, {kTokens, kHidden});
  scale_bad.scale = TensorView::contiguous(b.x.data() + 5, DType::f32, {1});
  expect_error_naming([&] { fp8_input_scale(scale_bad, Stream::cpu()); }, {"scale", "x"},
                      "input scale inside x");
}

// Backends turn a row stride into bytes even where one row or none never steps by it, so a stride
// whose bytes overflow int64 is refused for those too (UBSan found the product in the CPU route).
TEST(StageValidation, StridesBeyondInt64BytesAreRefusedForOneRowOrNone) {
  Buffers b;
  const auto route_over = [&](int64_t rows, int64_t logits_stride) {
    RouteArgs a = valid_route(b);
    a.logits = f32(b.logits, {rows, kExperts});
    a.logits.strides[0] = logits_stride;
    a.topk_ids = i32(b.ids, {rows, kTopK});
    a.topk_weights = f32(b.weights, {rows, kTopK});
    return a;
  };
  for (const int64_t rows : {int64_t{1}, int64_t{0}}) {
    for (const int64_t stride : {INT64_MAX, INT64_MIN, INT64_MAX / 4 + 1}) {
      const RouteArgs bad = route_over(rows, stride);
      expect_error_naming(
          [&] { route(RoutingConfig{}, bad, Stream::cpu()); }, {"logits", "stride", "int64"},
          "route logits stride " + std::to_string(stride) + ", " + std::to_string(rows) + " rows");
    }
  }
  // The largest stride whose bytes fit is a stride like any other for one row.
  EXPECT_NO_THROW(route(RoutingConfig{}, route_over(1, INT64_MAX / 4), Stream::cpu()));
}

// A scratch declared larger than the address space above its start still overlaps every argument
// there: its byte range ends at the top instead of wrapping below its start, where the overlap
// test missed it and the stage wrote over the weights.
TEST(StageValidation, ScratchPastTheAddressSpaceStillOverlapsWhatLiesAboveIt) {
  Buffers b;
  std::vector<float> out(kRows * kHidden, 0.0f);
  ExpertArgs args = experts_over(b, out);
  args.scratch = b.w13.data();
  args.scratch_bytes = SIZE_MAX;
  expect_error_naming([&] { experts(args, Stream::cpu()); }, {"scratch", "overlaps"},
                      "a scratch of SIZE_MAX bytes starting in w13");
}

// num_valid_tokens and diagnostics are loaded and updated as int32 (atomically, for diagnostics):
// a pointer off int32 alignment is refused with its name instead of faulting in a kernel.
TEST(StageValidation, MisalignedInt32SideBuffersAreRefused) {
  Buffers b;
  alignas(8) unsigned char side[64] = {};
  const auto misaligned = reinterpret_cast<int32_t*>(side + 2);
  RouteArgs route_bad = valid_route(b);
  route_bad.num_valid_tokens = misaligned;
  expect_error_naming([&] { route(RoutingConfig{}, route_bad, Stream::cpu()); },
                      {"num_valid_tokens", "align"}, "route num_valid_tokens misaligned");
  route_bad = valid_route(b);
  route_bad.diagnostics = misaligned;
  expect_error_naming([&] { route(RoutingConfig{}, route_bad, Stream::cpu()); },
                      {"diagnostics", "align"}, "route diagnostics misaligned");
  PlanArgs plan_bad = valid_plan(b);
  plan_bad.diagnostics = misaligned;
  expect_error_naming([&] { plan(plan_bad, Stream::cpu()); }, {"diagnostics", "align"},
                      "plan diagnostics misaligned");
  // The same buffers, aligned, pass.
  RouteArgs route_ok = valid_route(b);
  route_ok.num_valid_tokens = reinterpret_cast<int32_t*>(side);
  route_ok.diagnostics = reinterpret_cast<int32_t*>(side + 8);
  EXPECT_NO_THROW(route(RoutingConfig{}, route_ok, Stream::cpu()));
}

// fp8_input_scale's x has int32 tokens and at least one column: a [2^62, 0] x would otherwise
// pass every byte check (it holds no bytes) and loop over empty rows.
TEST(StageValidation, InputScaleRefusesXWithoutColumnsOrTooManyTokens) {
  Buffers b;
  std::vector<float> scale(1, 0.0f);
  Fp8InputScaleArgs args;
  args.x = f32(b.x, {kTokens, kHidden});
  args.scale = f32(scale, {1});
  EXPECT_NO_THROW(fp8_input_scale(args, Stream::cpu()));
  EXPECT_GT(scale[0], 0.0f);
  Fp8InputScaleArgs bad = args;
  bad.x = f32(b.x, {kTokens, 0});
  expect_error_naming([&] { fp8_input_scale(bad, Stream::cpu()); }, {"x", "H"},
                      "x without columns");
  bad.x = f32(b.x, {int64_t{1} << 62, 0});
  expect_error_naming([&] { fp8_input_scale(bad, Stream::cpu()); }, {"x", "tokens"},
                      "x with 2^62 empty rows");
}

}  // namespace
}  // namespace ironmoe::test
