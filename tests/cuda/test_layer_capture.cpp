// Layer::forward captured in a CUDA graph at every T from 1 to 512 and at buckets up to 16384
// (1984, 2000, 2048, 8192 among them), replayed with new contents: once with a device-side
// num_valid_tokens below T (padding rows of x and logits NaN) and once with every row valid.
// A replay must equal a direct forward() on the same inputs bit for bit (same T, same kernels),
// padding rows must be zero, and at a few sizes the replay is also checked against the CPU
// backend (bf16 tolerance 2e-2, as in test_layer.cpp).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cuda_test_util.h"

namespace ironmoe::cuda_test {
namespace {

constexpr int64_t kMaxTokens = 16384;

MoeConfig capture_config() {
  MoeConfig config = preset("qwen3-30b-a3b", kMaxTokens);
  config.hidden = 256;
  config.intermediate = 128;
  config.dtype = DType::bf16;
  return config;
}

std::vector<int64_t> capture_sizes() {
  std::vector<int64_t> sizes;
  for (int64_t t = 1; t <= 512; ++t) sizes.push_back(t);
  for (int64_t t : {640, 1024, 1984, 2000, 2048, 4096, 8192, 16384}) sizes.push_back(t);
  return sizes;
}

bool checked_against_cpu(int64_t tokens) {
  return tokens == 1 || tokens == 7 || tokens == 256 || tokens == 512 || tokens == 2000;
}

class LayerCapture : public CudaTestWithParam<int64_t> {
 protected:
  void SetUp() override {
    CudaTest::SetUp();
    if (IsSkipped()) return;
    config_ = capture_config();
    const Layer layer(config_, Device::cuda(0));
    workspace_ = DeviceBuffer<uint8_t>(static_cast<int64_t>(layer.workspace_bytes()));
    x_ = DeviceBuffer<uint8_t>(kMaxTokens * config_.hidden * 2);
    logits_ = DeviceBuffer<float>(kMaxTokens * config_.num_experts);
    out_ = DeviceBuffer<uint8_t>(kMaxTokens * config_.hidden * 2);
    num_valid_ = DeviceBuffer<int32_t>(1);
    weights_ = make_layer_weights(config_, fresh_seed(), checked_against_cpu(GetParam()), stream());
  }

  void enqueue(int64_t tokens) const {
    const Device device = Device::cuda(0);
    const Layer layer(config_, device);
    Inputs inputs;
    inputs.x = TensorView::contiguous(x_.data(), config_.dtype, {tokens, config_.hidden}, device);
    inputs.router_logits =
        TensorView::contiguous(logits_.data(), DType::f32, {tokens, config_.num_experts}, device);
    inputs.num_valid_tokens = num_valid_.data();
    const Outputs outputs{
        TensorView::contiguous(out_.data(), config_.dtype, {tokens, config_.hidden}, device)};
    layer.forward(inputs, weights_.on_device(config_), outputs,
                  {workspace_.data(), workspace_.bytes()}, gpu());
  }

  // New inputs for `tokens` rows (rows >= valid NaN), returned as floats for the CPU check;
  // the workspace and the output poisoned.
  void refill(int64_t tokens, int32_t valid, std::mt19937_64& rng, std::vector<float>& x,
              std::vector<float>& logits) {
    std::normal_distribution<float> normal;
    x.assign(static_cast<size_t>(tokens * config_.hidden), 0.0f);
    logits.assign(static_cast<size_t>(tokens * config_.num_experts), 0.0f);
    for (float& v : x) v = normal(rng);
    for (float& v : logits) v = normal(rng);
    std::fill(x.begin() + valid * config_.hidden, x.end(), std::nanf(""));
    std::fill(logits.begin() + valid * config_.num_experts, logits.end(), std::nanf(""));
    x = round_to(config_.dtype, x);
    const std::vector<uint8_t> x_bytes = encode(config_.dtype, x);
    CUDA_TEST_OK(cudaMemcpy(x_.data(), x_bytes.data(), x_bytes.size(), cudaMemcpyHostToDevice));
    CUDA_TEST_OK(cudaMemcpy(logits_.data(), logits.data(), logits.size() * sizeof(float),
                            cudaMemcpyHostToDevice));
    CUDA_TEST_OK(cudaMemcpy(num_valid_.data(), &valid, sizeof valid, cudaMemcpyHostToDevice));
    workspace_.fill_bytes(kPoisonFloatByte);
    out_.fill_bytes(kPoisonFloatByte);
  }

  std::vector<uint8_t> output(int64_t tokens) const {
    std::vector<uint8_t> bytes(static_cast<size_t>(tokens * config_.hidden * 2));
    CUDA_TEST_OK(cudaMemcpy(bytes.data(), out_.data(), bytes.size(), cudaMemcpyDeviceToHost));
    return bytes;
  }

  // The same forward on the CPU backend.
  std::vector<float> cpu_forward(int64_t tokens, int32_t valid, const std::vector<float>& x,
                                 const std::vector<float>& logits) const {
    const Layer layer(config_, Device::cpu());
    HostWorkspace workspace(layer.workspace_bytes());
    const std::vector<uint8_t> x_bytes = encode(config_.dtype, x);
    std::vector<uint8_t> out(x_bytes.size());
    Inputs inputs;
    inputs.x = TensorView::contiguous(x_bytes.data(), config_.dtype, {tokens, config_.hidden});
    inputs.router_logits =
        TensorView::contiguous(logits.data(), DType::f32, {tokens, config_.num_experts});
    inputs.num_valid_tokens = &valid;
    const Outputs outputs{
        TensorView::contiguous(out.data(), config_.dtype, {tokens, config_.hidden})};
    layer.forward(inputs, weights_.on_host(config_), outputs, {workspace.data(), workspace.bytes()},
                  cpu_stream());
    return decode(config_.dtype, out);
  }

  MoeConfig config_;
  LayerWeights weights_;
  DeviceBuffer<uint8_t> workspace_, x_, out_;
  DeviceBuffer<float> logits_;
  DeviceBuffer<int32_t> num_valid_;
};

std::string size_name(const ::testing::TestParamInfo<int64_t>& param_info) {
  std::string name = std::to_string(param_info.param);
  return name.insert(0, 1, 'T');
}

TEST_P(LayerCapture, ReplayMatchesDirectForward) {
  const int64_t tokens = GetParam();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  std::vector<float> x, logits;
  const CapturedGraph graph(stream(), [&] { enqueue(tokens); });
  const auto padded_valid =
      static_cast<int32_t>(std::uniform_int_distribution<int64_t>(0, tokens - 1)(rng));
  for (int32_t valid : {padded_valid, static_cast<int32_t>(tokens)}) {
    SCOPED_TRACE("num_valid_tokens = " + std::to_string(valid));
    const uint64_t contents = rng();
    std::mt19937_64 fill(contents);
    refill(tokens, valid, fill, x, logits);
    graph.launch(stream());
    sync();
    const std::vector<uint8_t> replayed = output(tokens);

    std::mt19937_64 same(contents);
    refill(tokens, valid, same, x, logits);
    enqueue(tokens);
    sync();
    const std::vector<float> values =
        expect_replay_output(replayed, output(tokens), config_.dtype, config_.hidden, valid);
    if (checked_against_cpu(tokens)) {
      const RowError error = max_row_relative_error(cpu_forward(tokens, valid, x, logits), values,
                                                    tokens, config_.hidden, nullptr);
      EXPECT_LE(error.value, 2e-2) << error.worst;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, LayerCapture, ::testing::ValuesIn(capture_sizes()), size_name);

}  // namespace
}  // namespace ironmoe::cuda_test
