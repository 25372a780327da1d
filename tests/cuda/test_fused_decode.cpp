// Layer::forward's fused decode path (src/cuda/fused_decode.cu) against the same layer run stage
// by stage with the weight_stream expert kernels: the output and the diagnostics must be equal
// bit for bit. Precomputed routing with hostile ids (duplicates within a token, -1, ids >= E,
// INT_MIN, ids outside the expert-parallel range) and NaN weights on every slot that is not
// placed, num_valid_tokens absent, below T, 0 or negative, strided x (NaN between rows) and
// output rows, every slot count from 1 to one past the path's limit, bf16 and f16, SiLU and GELU,
// and poisoned outputs and workspaces. Routed through router logits as well, and in a CUDA graph.
// The fused path's result against the CPU backend is covered by test_layer.cpp (T = 1 takes this
// path there for qwen3-30b-a3b, qwen3-next-80b-a3b and mixtral-8x7b) and by
// test_layer_capture.cpp (T = 1 and 2, against the CPU at T = 1).
#include <algorithm>
#include <climits>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "cuda/cuda_backend.h"
#include "cuda/device_info.h"
#include "cuda_test_util.h"

namespace ironmoe::cuda_test {
namespace {

struct FusedCase {
  std::string name;
  int64_t num_experts;
  int64_t top_k;
  int64_t expert_begin;
  int64_t expert_end;  // -1: all
  DType dtype;
  Activation activation;
  ExpertKernel kernel;  // automatic takes the fused path only where weight streaming is preferred
};

MoeConfig config_for(const FusedCase& c, int64_t max_tokens) {
  MoeConfig config;
  config.hidden = 256;
  config.intermediate = 136;  // not a multiple of the 16 columns of a gate/up block
  config.num_experts = c.num_experts;
  config.top_k = c.top_k;
  config.max_tokens = max_tokens;
  config.expert_begin = c.expert_begin;
  config.expert_end = c.expert_end;
  config.activation = c.activation;
  config.dtype = c.dtype;
  config.expert_kernel = c.kernel;
  return config;
}

// Ids that exercise every rule of the plan: mostly local ids, with duplicates, remote ids, -1,
// ids past E and INT_MIN mixed in.
std::vector<int32_t> hostile_ids(const MoeConfig& config, int64_t tokens, std::mt19937_64& rng) {
  const int64_t k = config.top_k;
  std::uniform_int_distribution<int32_t> any_expert(0,
                                                    static_cast<int32_t>(config.num_experts - 1));
  std::uniform_int_distribution<int32_t> local(static_cast<int32_t>(config.expert_begin),
                                               static_cast<int32_t>(config.local_expert_end() - 1));
  std::uniform_int_distribution<int> kind(0, 9);
  std::vector<int32_t> ids(static_cast<size_t>(tokens * k));
  for (int64_t s = 0; s < tokens * k; ++s) {
    switch (kind(rng)) {
      case 0: ids[s] = s % k > 0 ? ids[s - 1] : local(rng); break;  // duplicate within the token
      case 1: ids[s] = any_expert(rng); break;                      // possibly remote
      case 2: ids[s] = -1; break;
      case 3: ids[s] = static_cast<int32_t>(config.num_experts + s); break;
      case 4: ids[s] = INT_MIN; break;
      default: ids[s] = local(rng); break;
    }
  }
  return ids;
}

struct LayerResult {
  std::vector<uint8_t> out;  // [T, out_stride] bytes, poison between rows left as found
  std::vector<int32_t> diagnostics;
  bool fused = false;  // fused_decode_applies for these arguments
};

// num_valid_tokens by T: none, T - 1, 0 or negative, so every rule of valid_tokens is met. T = 1
// and 2 (the only sizes where an automatic layer with k = 8 fuses) keep valid rows.
std::optional<int32_t> num_valid_for(int64_t tokens) {
  switch (tokens % 4) {
    case 1: return std::nullopt;
    case 2: return static_cast<int32_t>(tokens - 1);
    case 3: return 0;
    default: return -3;
  }
}

class FusedDecode : public CudaTestWithParam<FusedCase> {
 protected:
  // forward() (fused when it applies) or the five stages with weight_stream experts. x rows are
  // x_stride apart and out rows out_stride apart.
  LayerResult run(const MoeConfig& config, const LayerWeights& weights,
                  const DeviceBuffer<uint8_t>& x, int64_t x_stride,
                  const DeviceBuffer<int32_t>& ids, const DeviceBuffer<float>& topk_weights,
                  const DeviceBuffer<int32_t>& num_valid, bool has_num_valid, int64_t tokens,
                  int64_t out_stride, bool staged) const {
    const Device device = Device::cuda(0);
    const Layer layer(config, device);
    DeviceBuffer<uint8_t> workspace(static_cast<int64_t>(layer.workspace_bytes()));
    workspace.fill_bytes(kPoisonFloatByte);
    const int64_t element = static_cast<int64_t>(dtype_size(config.dtype));
    DeviceBuffer<uint8_t> out(std::max<int64_t>(tokens * out_stride * element, 1));
    out.fill_bytes(kPoisonFloatByte);
    DeviceBuffer<int32_t> diagnostics(std::vector<int32_t>(kDiagnosticCount, 7));

    Inputs inputs;
    inputs.x = rows_view(x.data(), config.dtype, tokens, config.hidden, x_stride, device);
    inputs.topk_ids =
        TensorView::contiguous(ids.data(), DType::i32, {tokens, config.top_k}, device);
    inputs.topk_weights =
        TensorView::contiguous(topk_weights.data(), DType::f32, {tokens, config.top_k}, device);
    inputs.num_valid_tokens = has_num_valid ? num_valid.data() : nullptr;
    inputs.diagnostics = diagnostics.data();
    const Outputs outputs{
        rows_view(out.data(), config.dtype, tokens, config.hidden, out_stride, device)};
    const Workspace space{workspace.data(), workspace.bytes()};
    LayerStages s = layer.stages(inputs, weights.on_device(config), outputs, space, gpu());
    const bool fused = cuda::fused_decode_applies(config, s);
    if (staged) {
      // Where the fused path does not apply, forward() runs exactly these stages.
      if (fused) s.experts.kernel = ExpertKernel::weight_stream;
      plan(s.plan, gpu());
      if (s.has_gather) gather(s.gather, gpu());
      experts(s.experts, gpu());
      combine(s.combine, gpu());
    } else {
      layer.forward(inputs, weights.on_device(config), outputs, space, gpu());
    }
    sync();
    return {out.download(), diagnostics.download(), fused};
  }
};

TEST_P(FusedDecode, EqualsStagesBitForBit) {
  const FusedCase& c = GetParam();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const int64_t max_tokens = cuda::kFusedDecodeMaxSlots / c.top_k + 1;  // one size past the path
  const MoeConfig config = config_for(c, max_tokens);
  const LayerWeights weights = make_layer_weights(config, rng(), false, stream());
  const int64_t x_stride = config.hidden + 16;  // still 16-byte rows: the fused path reads x here
  const int64_t out_stride = config.hidden + 24;
  int fused_sizes = 0;
  for (int64_t tokens = 1; tokens <= max_tokens; ++tokens) {
    SCOPED_TRACE("T = " + std::to_string(tokens));
    const std::optional<int32_t> num_valid = num_valid_for(tokens);
    const int64_t valid = num_valid ? std::clamp<int64_t>(*num_valid, 0, tokens) : tokens;
    SCOPED_TRACE("num_valid_tokens = " + (num_valid ? std::to_string(*num_valid) : "none"));
    // x with NaN between the rows: a read outside a row would show in the output.
    std::normal_distribution<float> normal;
    std::vector<float> x(static_cast<size_t>(tokens * x_stride), std::nanf(""));
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t col = 0; col < config.hidden; ++col) x[t * x_stride + col] = normal(rng);
    const std::vector<int32_t> id_values = hostile_ids(config, tokens, rng);
    // Slots that are not placed get NaN weights: neither path may read them.
    auto is_placed = [&](int64_t s) {
      return s / config.top_k < valid && id_values[s] >= config.expert_begin &&
             id_values[s] < config.local_expert_end();
    };
    std::uniform_real_distribution<float> weight(-1.0f, 1.0f);
    std::vector<float> topk_weights(static_cast<size_t>(tokens * config.top_k));
    bool placed = false;
    for (int64_t s = 0; s < tokens * config.top_k; ++s) {
      topk_weights[s] = is_placed(s) ? weight(rng) : std::nanf("");
      placed = placed || is_placed(s);
    }
    const DeviceBuffer<uint8_t> x_device(encode(config.dtype, x));
    const DeviceBuffer<int32_t> ids(id_values);
    const DeviceBuffer<float> weights_device(topk_weights);
    const DeviceBuffer<int32_t> num_valid_device(std::vector<int32_t>{num_valid.value_or(0)});

    const LayerResult staged =
        run(config, weights, x_device, x_stride, ids, weights_device, num_valid_device,
            num_valid.has_value(), tokens, out_stride, true);
    const LayerResult fused =
        run(config, weights, x_device, x_stride, ids, weights_device, num_valid_device,
            num_valid.has_value(), tokens, out_stride, false);
    ASSERT_EQ(fused.out, staged.out) << "fused and staged outputs differ";
    ASSERT_EQ(fused.diagnostics, staged.diagnostics);
    const bool slots_fit = tokens * config.top_k <= cuda::kFusedDecodeMaxSlots;
    if (c.kernel == ExpertKernel::weight_stream) {
      EXPECT_EQ(fused.fused, slots_fit) << "a forced weight_stream layer fuses up to 32 slots";
    }
    if (c.kernel == ExpertKernel::grouped_gemm) {
      EXPECT_FALSE(fused.fused);
    }
    // The comparison means something only if the staged output is a real one: finite, zero on
    // padding rows, and not all zero when some slot is placed.
    const std::vector<float> values = decode(config.dtype, staged.out);
    bool nonzero = false;
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t col = 0; col < config.hidden; ++col) {
        const float v = values[static_cast<size_t>(t * out_stride + col)];
        ASSERT_TRUE(std::isfinite(v)) << "token " << t << ", column " << col;
        if (t >= valid) {
          ASSERT_EQ(v, 0.0f) << "padding token " << t;
        }
        nonzero = nonzero || v != 0.0f;
      }
    }
    EXPECT_EQ(nonzero, placed) << "an output with placed slots must not be all zero";
    fused_sizes += fused.fused && placed ? 1 : 0;
  }
  // Every case but the forced grouped GEMM must have compared a real fused result.
  if (c.kernel != ExpertKernel::grouped_gemm) {
    EXPECT_GT(fused_sizes, 0);
  }
}

// Whether the Layer takes the fused path is decided on the host from the shapes alone.
TEST_P(FusedDecode, AppliesWhereDocumented) {
  const FusedCase& c = GetParam();
  const MoeConfig config = config_for(c, 64);
  const Device device = Device::cuda(0);
  const Layer layer(config, device);
  const LayerWeights weights = make_layer_weights(config, fresh_seed(), false, stream());
  DeviceBuffer<uint8_t> workspace(static_cast<int64_t>(layer.workspace_bytes()));
  DeviceBuffer<uint8_t> x(64 * config.hidden * 2);
  DeviceBuffer<uint8_t> out(64 * config.hidden * 2);
  DeviceBuffer<int32_t> ids(64 * config.top_k);
  DeviceBuffer<float> topk_weights(64 * config.top_k);
  for (int64_t tokens : {int64_t{1}, int64_t{2}, int64_t{4}, int64_t{16}, int64_t{64}}) {
    Inputs inputs;
    inputs.x = TensorView::contiguous(x.data(), config.dtype, {tokens, config.hidden}, device);
    inputs.topk_ids =
        TensorView::contiguous(ids.data(), DType::i32, {tokens, config.top_k}, device);
    inputs.topk_weights =
        TensorView::contiguous(topk_weights.data(), DType::f32, {tokens, config.top_k}, device);
    const Outputs outputs{
        TensorView::contiguous(out.data(), config.dtype, {tokens, config.hidden}, device)};
    const LayerStages s = layer.stages(inputs, weights.on_device(config), outputs,
                                       {workspace.data(), workspace.bytes()}, gpu());
    const int64_t slots = tokens * config.top_k;
    const int64_t local = config.num_local_experts();
    // The measured crossover of gemm/weight_stream.h: H100-class memory streams up to 16 rows at
    // one per four local experts, H200-class (>= 4 TB/s peak) up to 256 at one per two.
    const bool fast_memory = cuda::peak_memory_bandwidth(0) >= 4.0e12;
    const bool preferred = fast_memory ? slots <= 256 && 2 * slots <= local
                                       : slots <= 16 && 4 * slots <= local;
    const bool streamed = c.kernel == ExpertKernel::weight_stream ||
                          (c.kernel == ExpertKernel::automatic && preferred);
    EXPECT_EQ(cuda::fused_decode_applies(config, s),
              slots <= cuda::kFusedDecodeMaxSlots && streamed)
        << "T = " << tokens;
  }
}

// Experts whose w2 exceeds kFusedDecodeMaxRereadBytes fuse one token only (the fused down kernel
// would stream w2 again from memory for each further token on an expert). Decided from the shapes
// alone, so the weight views may lie over a small buffer: nothing runs.
class FusedDecodeRule : public CudaTest {};

TEST_F(FusedDecodeRule, ExpertsTooLargeForTheL2FuseOneTokenOnly) {
  const Device device = Device::cuda(0);
  // Real allocations for the largest case (450 MiB): a view may not claim memory it does not
  // own, and the layer refuses a workspace inside a weight tensor's span (contract L7).
  constexpr int64_t kHidden = 4096, kExperts = 8, kLargestIntermediate = 2304;
  DeviceBuffer<uint16_t> w13_bytes(kExperts * 2 * kLargestIntermediate * kHidden);
  DeviceBuffer<uint16_t> w2_bytes(kExperts * kHidden * kLargestIntermediate);
  for (const int64_t intermediate : {int64_t{2048}, kLargestIntermediate}) {  // w2: 16, 18 MiB
    MoeConfig config;
    config.hidden = kHidden;
    config.intermediate = intermediate;
    config.num_experts = kExperts;
    config.top_k = 2;
    config.max_tokens = 4;
    config.dtype = DType::bf16;
    config.expert_kernel = ExpertKernel::weight_stream;
    const Layer layer(config, device);
    Weights weights;
    weights.w13 = TensorView::contiguous(w13_bytes.data(), DType::bf16,
                                         {kExperts, 2 * intermediate, kHidden}, device);
    weights.w2 = TensorView::contiguous(w2_bytes.data(), DType::bf16,
                                        {kExperts, kHidden, intermediate}, device);
    DeviceBuffer<uint8_t> workspace(static_cast<int64_t>(layer.workspace_bytes()));
    DeviceBuffer<uint8_t> x(4 * config.hidden * 2), out(4 * config.hidden * 2);
    DeviceBuffer<int32_t> ids(4 * 2);
    DeviceBuffer<float> topk_weights(4 * 2);
    const bool small = 2 * config.hidden * intermediate <= cuda::kFusedDecodeMaxRereadBytes;
    for (const int64_t tokens : {int64_t{1}, int64_t{2}, int64_t{4}}) {
      Inputs inputs;
      inputs.x = TensorView::contiguous(x.data(), DType::bf16, {tokens, config.hidden}, device);
      inputs.topk_ids = TensorView::contiguous(ids.data(), DType::i32, {tokens, 2}, device);
      inputs.topk_weights =
          TensorView::contiguous(topk_weights.data(), DType::f32, {tokens, 2}, device);
      const Outputs outputs{
          TensorView::contiguous(out.data(), DType::bf16, {tokens, config.hidden}, device)};
      const LayerStages s = layer.stages(inputs, weights, outputs,
                                         {workspace.data(), workspace.bytes()}, gpu());
      EXPECT_EQ(cuda::fused_decode_applies(config, s), tokens == 1 || small)
          << "I = " << intermediate << ", T = " << tokens;
    }
  }
}

std::vector<FusedCase> fused_cases() {
  return {
      {"qwen3_like_auto_bf16", 128, 8, 0, -1, DType::bf16, Activation::silu_and_mul,
       ExpertKernel::automatic},
      {"qwen3_like_stream_bf16", 128, 8, 0, -1, DType::bf16, Activation::silu_and_mul,
       ExpertKernel::weight_stream},
      {"mixtral_like_stream_f16_gelu", 8, 2, 0, -1, DType::f16, Activation::gelu_and_mul,
       ExpertKernel::weight_stream},
      {"ep_range_stream_bf16", 32, 4, 8, 20, DType::bf16, Activation::silu_and_mul,
       ExpertKernel::weight_stream},
      {"k1_stream_bf16", 16, 1, 0, -1, DType::bf16, Activation::silu_and_mul,
       ExpertKernel::weight_stream},
      {"grouped_gemm_forced_bf16", 64, 4, 0, -1, DType::bf16, Activation::silu_and_mul,
       ExpertKernel::grouped_gemm},
  };
}

std::string fused_case_name(const ::testing::TestParamInfo<FusedCase>& info) {
  return info.param.name;
}

INSTANTIATE_TEST_SUITE_P(Cases, FusedDecode, ::testing::ValuesIn(fused_cases()), fused_case_name);

// Routed from logits (hard rows included), in a CUDA graph replayed with new contents: the
// replay equals a direct forward(), which takes the same fused path.
class FusedDecodeCapture : public CudaTest {};

TEST_F(FusedDecodeCapture, GraphReplayEqualsDirectRun) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  MoeConfig config = preset("qwen3-30b-a3b", 2);
  config.hidden = 256;
  config.intermediate = 128;
  const Device device = Device::cuda(0);
  const Layer layer(config, device);
  const LayerWeights weights = make_layer_weights(config, rng(), false, stream());
  DeviceBuffer<uint8_t> workspace(static_cast<int64_t>(layer.workspace_bytes()));
  workspace.fill_bytes(kPoisonFloatByte);
  for (int64_t tokens : {int64_t{1}, int64_t{2}}) {
    SCOPED_TRACE("T = " + std::to_string(tokens));
    DeviceBuffer<uint8_t> x(tokens * config.hidden * 2);
    DeviceBuffer<float> logits(tokens * config.num_experts);
    DeviceBuffer<uint8_t> out(tokens * config.hidden * 2);
    Inputs inputs;
    inputs.x = TensorView::contiguous(x.data(), config.dtype, {tokens, config.hidden}, device);
    inputs.router_logits =
        TensorView::contiguous(logits.data(), DType::f32, {tokens, config.num_experts}, device);
    const Outputs outputs{
        TensorView::contiguous(out.data(), config.dtype, {tokens, config.hidden}, device)};
    const Workspace space{workspace.data(), workspace.bytes()};
    {
      const LayerStages s = layer.stages(inputs, weights.on_device(config), outputs, space, gpu());
      ASSERT_TRUE(cuda::fused_decode_applies(config, s));
    }
    const CapturedGraph graph(
        stream(), [&] { layer.forward(inputs, weights.on_device(config), outputs, space, gpu()); });
    for (int replay = 0; replay < 3; ++replay) {
      std::normal_distribution<float> normal;
      std::vector<float> xs(static_cast<size_t>(tokens * config.hidden));
      for (float& v : xs) v = normal(rng);
      x.upload(encode(config.dtype, xs));
      logits.upload(make_logits(rng, tokens, config.num_experts, config.num_experts, true));
      out.fill_bytes(kPoisonFloatByte);
      graph.launch(stream());
      sync();
      const std::vector<uint8_t> replayed = out.download();
      out.fill_bytes(kPoisonFloatByte);
      layer.forward(inputs, weights.on_device(config), outputs, space, gpu());
      sync();
      expect_replay_output(replayed, out.download(), config.dtype, config.hidden, tokens);
    }
  }
}

}  // namespace
}  // namespace ironmoe::cuda_test
