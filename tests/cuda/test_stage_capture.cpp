// Graph capture of the stages this backend owns besides the expert GEMMs: route -> plan ->
// gather -> combine (the gathered rows stand in for the expert output), captured at every T from
// 1 to 512 and at buckets up to 16384, then replayed with new contents, once with a device-side
// num_valid_tokens smaller than T (padding rows NaN) and once with all rows valid. Each replay
// must equal, bit for bit, a direct (uncaptured) run on the same inputs, and padding rows must be
// zero. Runs without the expert stage, so it checks capture of these kernels on its own.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_test_util.h"

namespace ironmoe::cuda_test {
namespace {

constexpr int64_t kMaxTokens = 16384;
constexpr int64_t kHidden = 256;
constexpr int64_t kExperts = 64;
constexpr int64_t kTopK = 8;
constexpr DType kDtype = DType::bf16;

class StageCapture : public CudaTestWithParam<int64_t> {
 protected:
  void SetUp() override {
    CudaTest::SetUp();
    if (IsSkipped()) return;
    x_ = DeviceBuffer<uint8_t>(kMaxTokens * kHidden * 2);
    logits_ = DeviceBuffer<float>(kMaxTokens * kExperts);
    ids_ = DeviceBuffer<int32_t>(kMaxTokens * kTopK);
    weights_ = DeviceBuffer<float>(kMaxTokens * kTopK);
    counts_ = DeviceBuffer<int32_t>(kExperts);
    offsets_ = DeviceBuffer<int32_t>(kExperts + 1);
    slot_to_row_ = DeviceBuffer<int32_t>(kMaxTokens * kTopK);
    row_to_slot_ = DeviceBuffer<int32_t>(kMaxTokens * kTopK);
    permuted_ = DeviceBuffer<uint8_t>(kMaxTokens * kTopK * kHidden * 2);
    out_ = DeviceBuffer<uint8_t>(kMaxTokens * kHidden * 2);
    num_valid_ = DeviceBuffer<int32_t>(1);
    scratch_ = DeviceBuffer<uint8_t>(
        static_cast<int64_t>(plan_scratch_bytes(kMaxTokens, kTopK, kExperts, Device::cuda(0))));
  }

  // The four stages for the first `tokens` rows, launched on the test's stream.
  void enqueue(int64_t tokens) {
    const Device device = Device::cuda(0);
    const Stream cuda_stream = gpu();
    auto i32 = [&](int32_t* data, std::initializer_list<int64_t> shape) {
      return TensorView::contiguous(data, DType::i32, shape, device);
    };
    RouteArgs route_args;
    route_args.logits =
        TensorView::contiguous(logits_.data(), DType::f32, {tokens, kExperts}, device);
    route_args.topk_ids = i32(ids_.data(), {tokens, kTopK});
    route_args.topk_weights =
        TensorView::contiguous(weights_.data(), DType::f32, {tokens, kTopK}, device);
    route_args.num_valid_tokens = num_valid_.data();
    RoutingConfig routing;
    route(routing, route_args, cuda_stream);

    PlanArgs plan_args;
    plan_args.topk_ids = route_args.topk_ids;
    plan_args.num_experts = kExperts;
    plan_args.expert_counts = i32(counts_.data(), {kExperts});
    plan_args.expert_offsets = i32(offsets_.data(), {kExperts + 1});
    plan_args.slot_to_row = i32(slot_to_row_.data(), {tokens, kTopK});
    plan_args.row_to_slot = i32(row_to_slot_.data(), {tokens * kTopK});
    plan_args.num_valid_tokens = num_valid_.data();
    plan_args.scratch = scratch_.data();
    plan_args.scratch_bytes = scratch_.bytes();
    plan(plan_args, cuda_stream);

    GatherArgs gather_args;
    gather_args.x = TensorView::contiguous(x_.data(), kDtype, {tokens, kHidden}, device);
    gather_args.row_to_slot = plan_args.row_to_slot;
    gather_args.top_k = kTopK;
    gather_args.permuted =
        TensorView::contiguous(permuted_.data(), kDtype, {tokens * kTopK, kHidden}, device);
    gather(gather_args, cuda_stream);

    CombineArgs combine_args;
    combine_args.permuted_out = gather_args.permuted;
    combine_args.slot_to_row = plan_args.slot_to_row;
    combine_args.topk_weights = route_args.topk_weights;
    combine_args.out = TensorView::contiguous(out_.data(), kDtype, {tokens, kHidden}, device);
    combine_args.num_valid_tokens = num_valid_.data();
    combine(combine_args, cuda_stream);
  }

  // New inputs for `tokens` rows, rows >= valid NaN; every intermediate and the output poisoned.
  void refill(int64_t tokens, int32_t valid, std::mt19937_64& rng) {
    std::normal_distribution<float> normal;
    std::vector<float> x(static_cast<size_t>(tokens * kHidden));
    std::vector<float> logits(static_cast<size_t>(tokens * kExperts));
    for (float& v : x) v = normal(rng);
    for (float& v : logits) v = normal(rng);
    std::fill(x.begin() + valid * kHidden, x.end(), std::nanf(""));
    std::fill(logits.begin() + valid * kExperts, logits.end(), std::nanf(""));
    const std::vector<uint8_t> x_bytes = encode(kDtype, x);
    CUDA_TEST_OK(cudaMemcpy(x_.data(), x_bytes.data(), x_bytes.size(), cudaMemcpyHostToDevice));
    CUDA_TEST_OK(cudaMemcpy(logits_.data(), logits.data(), logits.size() * sizeof(float),
                            cudaMemcpyHostToDevice));
    CUDA_TEST_OK(cudaMemcpy(num_valid_.data(), &valid, sizeof valid, cudaMemcpyHostToDevice));
    poison_outputs();
  }

  void poison_outputs() {
    for (DeviceBuffer<int32_t>* b : {&ids_, &counts_, &offsets_, &slot_to_row_, &row_to_slot_})
      b->fill_bytes(kPoisonIndexByte);
    weights_.fill_bytes(kPoisonFloatByte);
    permuted_.fill_bytes(kPoisonFloatByte);
    out_.fill_bytes(kPoisonFloatByte);
  }

  std::vector<uint8_t> output(int64_t tokens) const {
    std::vector<uint8_t> bytes(static_cast<size_t>(tokens * kHidden * 2));
    CUDA_TEST_OK(cudaMemcpy(bytes.data(), out_.data(), bytes.size(), cudaMemcpyDeviceToHost));
    return bytes;
  }

  DeviceBuffer<uint8_t> x_, permuted_, out_, scratch_;
  DeviceBuffer<float> logits_, weights_;
  DeviceBuffer<int32_t> ids_, counts_, offsets_, slot_to_row_, row_to_slot_, num_valid_;
};

std::vector<int64_t> capture_sizes() {
  std::vector<int64_t> sizes;
  for (int64_t t = 1; t <= 512; ++t) sizes.push_back(t);
  for (int64_t t : {513, 1000, 1024, 1984, 2000, 2048, 2049, 4096, 8191, 8192, 16384})
    sizes.push_back(t);
  return sizes;
}

std::string size_name(const ::testing::TestParamInfo<int64_t>& param_info) {
  std::string name = std::to_string(param_info.param);
  return name.insert(0, 1, 'T');
}

TEST_P(StageCapture, ReplayMatchesDirectRun) {
  const int64_t tokens = GetParam();
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const CapturedGraph graph(stream(), [&] { enqueue(tokens); });
  const auto padded_valid =
      static_cast<int32_t>(std::uniform_int_distribution<int64_t>(0, tokens - 1)(rng));
  for (int32_t valid : {padded_valid, static_cast<int32_t>(tokens)}) {
    SCOPED_TRACE("num_valid_tokens = " + std::to_string(valid));
    const uint64_t contents = rng();
    std::mt19937_64 fill(contents);
    refill(tokens, valid, fill);
    graph.launch(stream());
    sync();
    const std::vector<uint8_t> replayed = output(tokens);

    std::mt19937_64 same(contents);
    refill(tokens, valid, same);
    enqueue(tokens);
    sync();
    expect_replay_output(replayed, output(tokens), kDtype, kHidden, valid);
  }
}

INSTANTIATE_TEST_SUITE_P(Sizes, StageCapture, ::testing::ValuesIn(capture_sizes()), size_name);

}  // namespace
}  // namespace ironmoe::cuda_test
