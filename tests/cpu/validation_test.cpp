// Host-side validation (contract, "Layer"): every bad argument throws ironmoe::Error whose message
// names the argument. Each case starts from a call that works and breaks one thing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>

#include "test_util.h"

namespace ironmoe::test {
namespace {

// A Layer::forward call that works: grouped routing from logits with a correction bias.
struct Call {
  MoeConfig config;
  LayerProblem problem;
  std::vector<int32_t> ids;
  std::vector<float> weights;
  Buffer out;
  std::shared_ptr<AlignedBuffer> workspace;
  Inputs inputs;
  Weights layer_weights;
  Outputs outputs;
  Workspace space;
  Stream stream = Stream::cpu();

  explicit Call(Rng& rng, int64_t tokens = 8) {
    config = small_config(16, 4, 8);
    config.routing.kind = RoutingKind::grouped_topk;
    config.routing.num_groups = 4;
    config.routing.topk_groups = 2;
    problem = make_problem(config, tokens, true, rng);
    ids.assign(static_cast<size_t>(tokens * 4), 1);
    weights.assign(static_cast<size_t>(tokens * 4), 0.25f);
    out = Buffer::poisoned(config.dtype, tokens * config.hidden);
    workspace = std::make_shared<AlignedBuffer>(workspace_bytes(config, Device::cpu()));
    const int64_t h = config.hidden, inter = config.intermediate, e = config.num_experts;
    inputs.x = TensorView::contiguous(problem.x.data(), DType::f32, {tokens, h});
    inputs.router_logits = TensorView::contiguous(problem.logits.data(), DType::f32, {tokens, e});
    inputs.correction_bias = TensorView::contiguous(problem.bias.data(), DType::f32, {e});
    layer_weights.w13 = TensorView::contiguous(problem.w13.data(), DType::f32, {e, 2 * inter, h});
    layer_weights.w2 = TensorView::contiguous(problem.w2.data(), DType::f32, {e, h, inter});
    outputs.out = TensorView::contiguous(out.data(), DType::f32, {tokens, h});
    space = {workspace->data(), workspace->bytes()};
  }
  void use_ids() {
    inputs.router_logits = {};
    inputs.correction_bias = {};
    inputs.topk_ids = TensorView::contiguous(ids.data(), DType::i32, {problem.tokens, 4});
    inputs.topk_weights = TensorView::contiguous(weights.data(), DType::f32, {problem.tokens, 4});
  }
  void forward() const {
    Layer(config, Device::cpu()).forward(inputs, layer_weights, outputs, space, stream);
  }
};

struct ForwardCase {
  const char* what;
  std::function<void(Call&)> breaks;
  std::vector<std::string> names;
};

TEST(Validation, TheBaseCallsWork) {
  Rng rng = Rng::for_current_test();
  Call logits(rng);
  EXPECT_NO_THROW(logits.forward());
  Call ids(rng);
  ids.use_ids();
  EXPECT_NO_THROW(ids.forward());
}

TEST(Validation, LayerForwardNamesTheBadArgument) {
  Rng rng = Rng::for_current_test();
  // Aligned to 64 bytes but not to the 256 the workspace needs, and to nothing at all.
  AlignedBuffer misaligned_64(1 << 20, 64);
  AlignedBuffer misaligned_1(1 << 20, 1);
  const ForwardCase cases[] = {
      {"x dtype", [](Call& c) { c.inputs.x.dtype = DType::bf16; }, {"inputs.x"}},
      {"x hidden", [](Call& c) { c.inputs.x.shape[1] += 1; }, {"inputs.x"}},
      {"x rank",
       [](Call& c) {
         c.inputs.x.ndim = 3;
         c.inputs.x.shape[2] = 1;
       },
       {"inputs.x"}},
      {"x column stride", [](Call& c) { c.inputs.x.strides[1] = 2; }, {"inputs.x"}},
      {"x null", [](Call& c) { c.inputs.x.data = nullptr; }, {"inputs.x"}},
      {"x device", [](Call& c) { c.inputs.x.device = Device::cuda(); }, {"inputs.x"}},
      {"T > max_tokens", [](Call& c) { c.config.max_tokens = 7; }, {"max_tokens"}},
      {"logits columns",
       [](Call& c) { c.inputs.router_logits.shape[1] -= 1; },
       {"inputs.router_logits"}},
      {"logits rows",
       [](Call& c) { c.inputs.router_logits.shape[0] += 1; },
       {"inputs.router_logits"}},
      {"logits dtype",
       [](Call& c) { c.inputs.router_logits.dtype = DType::i32; },
       {"inputs.router_logits"}},
      {"logits device",
       [](Call& c) { c.inputs.router_logits.device = Device::cuda(); },
       {"inputs.router_logits"}},
      {"logits and ids",
       [](Call& c) {
         c.inputs.topk_ids = TensorView::contiguous(c.ids.data(), DType::i32, {8, 4});
         c.inputs.topk_weights = TensorView::contiguous(c.weights.data(), DType::f32, {8, 4});
       },
       {"router_logits", "topk_ids"}},
      {"neither logits nor ids",
       [](Call& c) { c.inputs.router_logits = {}; },
       {"router_logits", "topk_ids"}},
      {"ids without weights",
       [](Call& c) {
         c.use_ids();
         c.inputs.topk_weights = {};
       },
       {"topk_weights"}},
      {"ids shape",
       [](Call& c) {
         c.use_ids();
         c.inputs.topk_ids.shape[1] = 3;
       },
       {"inputs.topk_ids"}},
      {"ids dtype",
       [](Call& c) {
         c.use_ids();
         c.inputs.topk_ids.dtype = DType::f32;
       },
       {"inputs.topk_ids"}},
      {"weights dtype",
       [](Call& c) {
         c.use_ids();
         c.inputs.topk_weights.dtype = DType::bf16;
       },
       {"inputs.topk_weights"}},
      {"bias shape",
       [](Call& c) { c.inputs.correction_bias.shape[0] += 1; },
       {"inputs.correction_bias"}},
      {"bias without grouped routing",
       [](Call& c) { c.config.routing = RoutingConfig{}; },
       {"correction_bias"}},
      {"w13 experts", [](Call& c) { c.layer_weights.w13.shape[0] -= 1; }, {"weights.w13"}},
      {"w13 dtype", [](Call& c) { c.layer_weights.w13.dtype = DType::bf16; }, {"weights.w13"}},
      {"w13 strides", [](Call& c) { c.layer_weights.w13.strides[0] += 1; }, {"weights.w13"}},
      {"w13 null", [](Call& c) { c.layer_weights.w13.data = nullptr; }, {"weights.w13"}},
      {"w13 device", [](Call& c) { c.layer_weights.w13.device = Device::cuda(); }, {"weights.w13"}},
      {"w2 shape", [](Call& c) { c.layer_weights.w2.shape[2] += 1; }, {"weights.w2"}},
      {"w2 dtype", [](Call& c) { c.layer_weights.w2.dtype = DType::i32; }, {"weights.w2"}},
      {"out shape", [](Call& c) { c.outputs.out.shape[0] -= 1; }, {"outputs.out"}},
      {"out dtype", [](Call& c) { c.outputs.out.dtype = DType::bf16; }, {"outputs.out"}},
      {"out null", [](Call& c) { c.outputs.out.data = nullptr; }, {"outputs.out"}},
      {"workspace too small", [](Call& c) { c.space.bytes -= 1; }, {"workspace"}},
      {"workspace null", [](Call& c) { c.space.data = nullptr; }, {"workspace"}},
      {"workspace misaligned by 64",
       [&](Call& c) { c.space.data = misaligned_64.data(); },
       {"workspace"}},
      {"workspace misaligned by 1",
       [&](Call& c) { c.space.data = misaligned_1.data(); },
       {"workspace"}},
      {"stream device", [](Call& c) { c.stream = Stream::cuda(nullptr); }, {"stream"}},
  };
  for (const ForwardCase& test_case : cases) {
    Call call(rng);
    test_case.breaks(call);
    expect_error_naming([&] { call.forward(); }, test_case.names, test_case.what);
  }
}

TEST(Validation, ConfigNamesTheBadField) {
  struct ConfigCase {
    const char* what;
    std::function<void(MoeConfig&)> breaks;
    const char* name;
  };
  const ConfigCase cases[] = {
      {"hidden 0", [](MoeConfig& c) { c.hidden = 0; }, "hidden"},
      {"hidden < 0", [](MoeConfig& c) { c.hidden = -4; }, "hidden"},
      {"intermediate 0", [](MoeConfig& c) { c.intermediate = 0; }, "intermediate"},
      {"num_experts 0", [](MoeConfig& c) { c.num_experts = 0; }, "num_experts"},
      {"top_k 0", [](MoeConfig& c) { c.top_k = 0; }, "top_k"},
      {"top_k > E", [](MoeConfig& c) { c.top_k = 17; }, "top_k"},
      {"max_tokens 0", [](MoeConfig& c) { c.max_tokens = 0; }, "max_tokens"},
      {"max_tokens < 0", [](MoeConfig& c) { c.max_tokens = -1; }, "max_tokens"},
      {"expert_begin < 0", [](MoeConfig& c) { c.expert_begin = -1; }, "expert_begin"},
      {"expert_begin > end",
       [](MoeConfig& c) {
         c.expert_begin = 9;
         c.expert_end = 8;
       },
       "expert_begin"},
      {"expert_end > E", [](MoeConfig& c) { c.expert_end = 17; }, "expert_end"},
      {"num_groups not a divisor",
       [](MoeConfig& c) {
         c.routing.kind = RoutingKind::grouped_topk;
         c.routing.num_groups = 3;
       },
       "num_groups"},
      {"topk_groups 0",
       [](MoeConfig& c) {
         c.routing.kind = RoutingKind::grouped_topk;
         c.routing.num_groups = 4;
         c.routing.topk_groups = 0;
       },
       "topk_groups"},
      {"topk_groups > num_groups",
       [](MoeConfig& c) {
         c.routing.kind = RoutingKind::grouped_topk;
         c.routing.num_groups = 4;
         c.routing.topk_groups = 5;
       },
       "topk_groups"},
      {"kept groups hold fewer than k experts",
       [](MoeConfig& c) {
         c.routing.kind = RoutingKind::grouped_topk;
         c.routing.num_groups = 8;
         c.routing.topk_groups = 1;
       },
       "topk_groups"},
      {"scaling 0", [](MoeConfig& c) { c.routing.routed_scaling_factor = 0.0f; },
       "routed_scaling_factor"},
      {"scaling NaN", [](MoeConfig& c) { c.routing.routed_scaling_factor = std::nanf(""); },
       "routed_scaling_factor"},
      {"batched_capacity < 0", [](MoeConfig& c) { c.batched_capacity = -1; }, "batched_capacity"},
      {"expert_kernel not one of the four",
       [](MoeConfig& c) { c.expert_kernel = static_cast<ExpertKernel>(7); }, "expert_kernel"},
      {"dtype i32", [](MoeConfig& c) { c.dtype = DType::i32; }, "dtype"},
      {"dtype f16 on the CPU", [](MoeConfig& c) { c.dtype = DType::f16; }, "dtype"},
  };
  for (const ConfigCase& test_case : cases) {
    MoeConfig config = small_config(16, 4, 8);
    test_case.breaks(config);
    expect_error_naming([&] { Layer layer(config, Device::cpu()); }, {test_case.name},
                        std::string("Layer: ") + test_case.what);
    expect_error_naming([&] { (void)workspace_bytes(config, Device::cpu()); }, {test_case.name},
                        std::string("workspace_bytes: ") + test_case.what);
  }
  expect_error_naming([] { (void)preset("qwen4", 8); }, {"name", "qwen3-30b-a3b"},
                      "unknown preset");
  if (!cuda_compiled())
    expect_error_naming([] { Layer layer(small_config(16, 4, 8), Device::cuda()); }, {"cuda"},
                        "cuda layer in a CPU-only build");
}

// DESIGN.md section 1, the table the presets come from.
TEST(Validation, PresetsFollowTheDesignTable) {
  struct Row {
    const char* name;
    int64_t hidden, intermediate, experts, top_k;
    RoutingKind kind;
  };
  const Row table[] = {{"qwen3-30b-a3b", 2048, 768, 128, 8, RoutingKind::softmax_topk},
                       {"qwen3-next-80b-a3b", 2048, 512, 512, 10, RoutingKind::softmax_topk},
                       {"mixtral-8x7b", 4096, 14336, 8, 2, RoutingKind::softmax_topk},
                       {"deepseek-v3", 7168, 2048, 256, 8, RoutingKind::grouped_topk}};
  EXPECT_EQ(preset_names().size(), std::size(table));
  for (const Row& row : table) {
    const MoeConfig c = preset(row.name, 16);
    EXPECT_TRUE(c.hidden == row.hidden && c.intermediate == row.intermediate &&
                c.num_experts == row.experts && c.top_k == row.top_k &&
                c.routing.kind == row.kind && c.routing.renormalize && c.max_tokens == 16)
        << row.name << " differs from DESIGN.md section 1";
    if (row.kind == RoutingKind::grouped_topk) {
      EXPECT_TRUE(c.routing.num_groups == 8 && c.routing.topk_groups == 4 &&
                  c.routing.routed_scaling_factor == 2.5f)
          << row.name << " grouping differs from DESIGN.md section 1";
    }
  }
}

// Zero tokens is a valid batch: nothing is computed, nothing is counted.
TEST(Validation, ZeroTokensIsValidAndDoesNothing) {
  Rng rng = Rng::for_current_test();
  for (bool from_logits : {true, false}) {
    Call call(rng, 0);
    if (!from_logits) call.use_ids();
    std::array<int32_t, kDiagnosticCount> diagnostics{};
    call.inputs.diagnostics = diagnostics.data();
    EXPECT_NO_THROW(call.forward()) << (from_logits ? "logits" : "ids");
    EXPECT_EQ(diagnostics, (std::array<int32_t, kDiagnosticCount>{}));
  }
}

// Shapes and strides so large that their element count or byte span overflows int64 are refused
// with an error naming the argument, before anything multiplies them out (under
// scripts/sanitize-cpu.sh an overflow would fail the run as undefined behaviour).
TEST(Validation, ShapesAndStridesBeyondInt64AreClearErrors) {
  constexpr int64_t kHuge = int64_t{1} << 40;
  float cell = 0.0f;
  expect_error_naming(
      [&] {
        TensorView::contiguous(&cell, DType::f32, {kHuge, kHuge});
      },
      {"TensorView::contiguous", "int64"}, "a contiguous view of 2^80 elements");
  TensorView huge = TensorView::contiguous(&cell, DType::f32, {1, 1});
  huge.shape = {kHuge, kHuge, kHuge, 0};
  huge.ndim = 3;
  EXPECT_EQ(huge.numel(), INT64_MAX) << "numel saturates instead of overflowing";
  EXPECT_FALSE(huge.is_contiguous());
  huge.ndim = 4;
  EXPECT_EQ(huge.numel(), 0) << "a zero dimension makes any shape empty";
  // An ndim outside [0, kMaxDims] reads no dimension past the arrays (the sanitizer build would
  // flag it) and is neither small nor contiguous; check_tensor refuses it by name.
  for (const int bad_ndim : {kMaxDims + 1, 1 << 30, -1}) {
    TensorView odd = TensorView::contiguous(&cell, DType::f32, {1});
    odd.ndim = bad_ndim;
    EXPECT_EQ(odd.numel(), INT64_MAX) << "ndim " << bad_ndim;
    EXPECT_FALSE(odd.is_contiguous()) << "ndim " << bad_ndim;
  }
  // The permuted row count of a config nobody validated saturates instead of wrapping.
  MoeConfig unchecked;
  unchecked.top_k = 8;
  EXPECT_EQ(unchecked.permuted_rows(int64_t{1} << 61), INT64_MAX);
  EXPECT_EQ(unchecked.permuted_rows(-5), 0);
  EXPECT_EQ(unchecked.permuted_rows(3), 24);

  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const auto forward_with_x = [&](const TensorView& x) {
    Call call(rng);
    call.inputs.x = x;
    call.forward();
  };
  const Call reference_call(rng);
  const int64_t h = reference_call.config.hidden;
  const void* x = reference_call.problem.x.data();
  // Rows whose stride spans past int64, and one whose stride is INT64_MIN.
  expect_error_naming([&] { forward_with_x(TensorView::rows(x, DType::f32, 8, h, INT64_MAX / 4)); },
                      {"inputs.x"}, "x rows with a stride of INT64_MAX / 4");
  TensorView negative = TensorView::rows(x, DType::f32, 8, h, h);
  negative.strides[0] = INT64_MIN;
  expect_error_naming([&] { forward_with_x(negative); }, {"inputs.x"},
                      "x rows with a stride of INT64_MIN");

  // The experts stage takes any [R, H]: rows beyond int64 bytes are an error, not an overflow.
  const int64_t rows = 4, inter = 4, hidden = 4;
  const Buffer in = Buffer::from(DType::f32, rng.nonzero_vector(rows * hidden, 1.0f));
  const Buffer w13 = Buffer::from(DType::f32, rng.nonzero_vector(2 * inter * hidden, 0.3f));
  const Buffer w2 = Buffer::from(DType::f32, rng.nonzero_vector(hidden * inter, 0.3f));
  Buffer h_buffer = Buffer::poisoned(DType::f32, rows * inter);
  Buffer out = Buffer::poisoned(DType::f32, rows * hidden);
  ExpertArgs args = expert_stage_args(in, {0}, {rows}, w13, w2, h_buffer, out, hidden, inter);
  args.permuted_in.shape[0] = kHuge;
  args.permuted_in.strides[0] = kHuge;
  expect_error_naming([&] { experts(args, Stream::cpu()); }, {"permuted_in"},
                      "permuted_in spanning 2^82 bytes");
}

// An out-of-range QuantScheme is an error naming `quant` in expert_scratch_bytes as in experts()
// and MoeConfig::validate; before, it was sized as an FP8 scheme (found by a review helper).
TEST(Validation, ExpertScratchBytesRefusesAnUnknownQuantScheme) {
  for (const int bad : {4, 7, -1}) {
    const auto quant = static_cast<QuantScheme>(bad);
    expect_error_naming(
        [&] { (void)expert_scratch_bytes(16, 32, 24, 4, DType::f32, Device::cpu(), quant); },
        {"quant"}, "expert_scratch_bytes with quant " + std::to_string(bad));
  }
}

// Sizes past the documented limits (hidden and intermediate 2^20, rows and experts int32) are
// errors naming the size; before, hidden = 2^62 made workspace_bytes wrap around to 795904 bytes.
TEST(Validation, SizesPastTheLimitsAreErrorsNotWrappedByteCounts) {
  const int64_t too_large[] = {(int64_t{1} << 20) + 1, int64_t{1} << 40, int64_t{1} << 62,
                               INT64_MAX};
  for (const int64_t size : too_large) {
    SCOPED_TRACE("size " + std::to_string(size));
    MoeConfig hidden = preset("qwen3-30b-a3b", 64);
    hidden.hidden = size;
    expect_error_naming([&] { workspace_bytes(hidden, Device::cpu()); }, {"hidden"},
                        "a hidden size past 2^20");
    MoeConfig inter = preset("qwen3-30b-a3b", 64);
    inter.intermediate = size;
    expect_error_naming([&] { workspace_bytes(inter, Device::cpu()); }, {"intermediate"},
                        "an intermediate size past 2^20");
    for (const QuantScheme quant : {QuantScheme::none, QuantScheme::fp8_block}) {
      expect_error_naming(
          [&] { expert_scratch_bytes(8, size, 64, 4, DType::bf16, Device::cpu(), quant); },
          {"hidden"}, "expert_scratch_bytes with a hidden size past 2^20");
      expect_error_naming(
          [&] { expert_scratch_bytes(8, 64, size, 4, DType::bf16, Device::cpu(), quant); },
          {"intermediate"}, "expert_scratch_bytes with an intermediate size past 2^20");
    }
  }
  // Rows and tokens past int32: expert scratch and plan scratch.
  for (const int64_t count : {int64_t{1} << 31, int64_t{1} << 40, INT64_MAX}) {
    SCOPED_TRACE("count " + std::to_string(count));
    for (const QuantScheme quant : {QuantScheme::none, QuantScheme::fp8_block}) {
      expect_error_naming(
          [&] { expert_scratch_bytes(count, 64, 64, 4, DType::bf16, Device::cpu(), quant); },
          {"max_rows"}, "expert_scratch_bytes with more rows than int32");
    }
    expect_error_naming([&] { plan_scratch_bytes(count / 8 + 1, 8, 4, Device::cpu()); },
                        {"max_tokens"}, "plan_scratch_bytes with max_tokens * top_k past int32");
  }
  // The limits themselves are valid, and their byte counts do not wrap.
  MoeConfig widest = preset("qwen3-30b-a3b", 1);
  widest.hidden = int64_t{1} << 20;
  widest.intermediate = int64_t{1} << 20;
  const size_t bytes = workspace_bytes(widest, Device::cpu());
  EXPECT_GE(bytes, size_t{8} * 2 * (size_t{1} << 20) * 2)
      << "the permuted rows (in and out share them) and h, bf16";
}

// What forward() writes (workspace, out, diagnostics) must share no memory with another argument,
// or the result would depend on the order of the device's accesses: an error naming both. out may
// be x itself (in place), with the bits of a separate out.
TEST(Validation, BuffersTheCallWritesMustNotOverlapOthers) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  Call separate(rng);
  separate.forward();
  Call in_place = separate;  // copies of the problem's buffers; views re-pointed below
  const int64_t tokens = separate.problem.tokens, h = separate.config.hidden;
  in_place.inputs.x = TensorView::contiguous(in_place.problem.x.data(), DType::f32, {tokens, h});
  in_place.outputs.out = in_place.inputs.x;
  in_place.inputs.router_logits = TensorView::contiguous(in_place.problem.logits.data(), DType::f32,
                                                         {tokens, separate.config.num_experts});
  in_place.inputs.correction_bias = TensorView::contiguous(in_place.problem.bias.data(), DType::f32,
                                                           {separate.config.num_experts});
  in_place.forward();
  EXPECT_EQ(in_place.problem.x.bytes(), separate.out.bytes()) << "out == x (in place)";

  // out inside the workspace, the workspace over x, out over the logits, diagnostics in the
  // workspace: each an error naming the two arguments.
  {
    Call call(rng);
    call.outputs.out = TensorView::contiguous(call.workspace->data(), DType::f32, {tokens, h});
    expect_error_naming([&] { call.forward(); }, {"workspace", "outputs.out"},
                        "out inside the workspace");
  }
  {
    Call call(rng);
    AlignedBuffer shared(call.space.bytes + static_cast<size_t>(tokens * h) * sizeof(float));
    std::memcpy(shared.data(), call.problem.x.data(), static_cast<size_t>(tokens * h) * 4);
    call.inputs.x = TensorView::contiguous(shared.data(), DType::f32, {tokens, h});
    call.space = {shared.data(), call.space.bytes};
    expect_error_naming([&] { call.forward(); }, {"workspace", "inputs.x"}, "the workspace over x");
  }
  {
    // One buffer holding the logits, with out starting at its last logit.
    Call call(rng);
    const int64_t e = call.config.num_experts;
    std::vector<float> shared(static_cast<size_t>(tokens * e + tokens * h));
    std::copy(call.problem.logits.begin(), call.problem.logits.end(), shared.begin());
    call.inputs.router_logits = TensorView::contiguous(shared.data(), DType::f32, {tokens, e});
    call.outputs.out =
        TensorView::contiguous(shared.data() + tokens * e - 1, DType::f32, {tokens, h});
    expect_error_naming([&] { call.forward(); }, {"outputs.out", "inputs.router_logits"},
                        "out over the router logits");
  }
  {
    Call call(rng);
    int32_t* inside = static_cast<int32_t*>(call.workspace->data()) + 3;
    call.inputs.diagnostics = inside;
    expect_error_naming([&] { call.forward(); }, {"inputs.diagnostics", "workspace"},
                        "diagnostics inside the workspace");
  }
}

}  // namespace
}  // namespace ironmoe::test
