// CUDA graphs: forward() captured once for T tokens must replay correctly for new contents of x
// and the logits and for a smaller num_valid_tokens, matching an eager call bitwise and the
// float64 reference within tolerance.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "check/expect.h"
#include "check/harness.h"
#include "ironmoe/layer.h"

namespace ironmoe::tools::check {
namespace {

void cuda_ok(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
  }
}

// Device buffers of one captured layer call; their contents may change between replays, their
// addresses may not.
class CapturedLayer {
 public:
  CapturedLayer(Context& context, const LayerInput& input)
      : config_(input.config),
        tokens_(input.tokens),
        device_(context.device()),
        x_(upload_as(device_, input.x, config_.dtype)),
        logits_(upload_as(device_, input.logits, DType::f32)),
        w13_(upload_as(device_, input.w13, config_.dtype)),
        w2_(upload_as(device_, input.w2, config_.dtype)),
        out_(device_, static_cast<size_t>(tokens_ * config_.hidden) * dtype_size(config_.dtype)),
        num_valid_(to_device(device_, std::vector<int32_t>{static_cast<int32_t>(tokens_)})),
        workspace_(device_, workspace_bytes(config_, device_)) {
    workspace_.fill_bytes(0xff);  // dirty, as a caller's workspace would be
    capture(context);
  }
  ~CapturedLayer() {
    if (exec_ != nullptr) static_cast<void>(cudaGraphExecDestroy(exec_));
  }
  CapturedLayer(const CapturedLayer&) = delete;
  CapturedLayer& operator=(const CapturedLayer&) = delete;

  // New x, logits and valid count for the next replay (weights stay).
  void set_inputs(const LayerInput& input) {
    upload_into(x_, input.x, config_.dtype);
    upload_into(logits_, input.logits, DType::f32);
    num_valid_.upload_vector(
        std::vector<int32_t>{input.num_valid.value_or(static_cast<int32_t>(tokens_))});
  }

  std::vector<float> replay(Context& context) {
    const auto stream = static_cast<cudaStream_t>(context.cuda_stream());
    out_.fill_bytes(0xff);  // NaN: rows the replay does not write show up
    cuda_ok(cudaGraphLaunch(exec_, stream), "cudaGraphLaunch");
    cuda_ok(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    return download_as(out_, static_cast<size_t>(tokens_ * config_.hidden), config_.dtype);
  }

 private:
  void capture(Context& context) {
    const Layer layer(config_, device_);
    Inputs inputs;
    inputs.x = x_.view(config_.dtype, {tokens_, config_.hidden});
    inputs.router_logits = logits_.view(DType::f32, {tokens_, config_.num_experts});
    inputs.num_valid_tokens = num_valid_.as<int32_t>();
    Weights weights;
    weights.w13 =
        w13_.view(config_.dtype, {config_.num_experts, 2 * config_.intermediate, config_.hidden});
    weights.w2 =
        w2_.view(config_.dtype, {config_.num_experts, config_.hidden, config_.intermediate});
    Outputs outputs;
    outputs.out = out_.view(config_.dtype, {tokens_, config_.hidden});
    const auto stream = static_cast<cudaStream_t>(context.cuda_stream());
    cuda_ok(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal),
            "cudaStreamBeginCapture");
    cudaGraph_t graph = nullptr;
    try {
      layer.forward(inputs, weights, outputs, Workspace{workspace_.data(), workspace_.bytes()},
                    context.stream());
    } catch (...) {
      static_cast<void>(cudaStreamEndCapture(stream, &graph));
      if (graph != nullptr) static_cast<void>(cudaGraphDestroy(graph));
      throw;
    }
    cuda_ok(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
    const cudaError_t status = cudaGraphInstantiate(&exec_, graph, 0);
    static_cast<void>(cudaGraphDestroy(graph));
    cuda_ok(status, "cudaGraphInstantiate");
  }

  MoeConfig config_;
  int64_t tokens_;
  Device device_;
  DeviceBuffer x_, logits_, w13_, w2_, out_, num_valid_, workspace_;
  cudaGraphExec_t exec_ = nullptr;
};

Outcome graph_case(Context& context, Random& random, int64_t tokens) {
  constexpr int kSampled = 16;
  const MoeConfig config = small_config(64, 8, tokens, DType::bf16, RoutingConfig{});
  LayerInput input = random_layer(config, tokens, random);
  CapturedLayer captured(context, input);
  Expect expect;
  // Round 0 replays what was captured; rounds 1 and 2 bring new x and logits, round 2 also makes
  // only a third of the rows valid.
  for (int round = 0; round < 3; ++round) {
    if (round > 0) {
      input.x = round_trip(random_values(input.x.size(), 1.7f, random), config.dtype);
      input.logits = random_logits(tokens, config.num_experts, random);
    }
    input.num_valid = static_cast<int32_t>(round == 2 ? tokens / 3 : tokens);
    captured.set_inputs(input);
    const std::vector<float> replayed = captured.replay(context);
    const LayerRun eager = run_layer(context, input);
    const std::string what = "round " + std::to_string(round);
    expect_bitwise_equal(expect, replayed.data(), eager.out.data(),
                         static_cast<int64_t>(replayed.size()), what + ": replay vs eager call");
    Expect round_expect;
    expect_layer_output(round_expect, input, replayed, pick_tokens(tokens, kSampled, random));
    if (!round_expect.ok()) expect.fail(what + ": " + round_expect.outcome().reason);
  }
  return expect.outcome();
}

}  // namespace

std::vector<Case> graph_cases(Device device) {
  std::vector<Case> cases;
  if (!device.is_cuda()) return cases;
  for (int64_t tokens : {1, 255, 256, 257, 8192}) {
    cases.push_back(
        {"graph/replay/T=" + std::to_string(tokens),
         [=](Context& context, Random& random) { return graph_case(context, random, tokens); }});
  }
  return cases;
}

}  // namespace ironmoe::tools::check
