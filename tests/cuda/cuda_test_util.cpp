#include "cuda_test_util.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <sstream>

#include "reference_moe.h"

namespace ironmoe::cuda_test {

void cuda_ok(cudaError_t status, const char* call, const char* file, int line) {
  if (status == cudaSuccess) return;
  std::ostringstream message;
  message << call << " failed at " << file << ":" << line << ": " << cudaGetErrorName(status)
          << " (" << cudaGetErrorString(status) << ")";
  throw std::runtime_error(message.str());
}

void CudaTest::SetUp() {
  if (!cuda_available()) GTEST_SKIP() << kNoGpuMessage;
  CUDA_TEST_OK(cudaStreamCreate(&stream_));
}

void CudaTest::TearDown() {
  if (stream_ == nullptr) return;
  const cudaError_t sync = cudaStreamSynchronize(stream_);
  cudaStreamDestroy(stream_);
  stream_ = nullptr;
  CUDA_TEST_OK(sync);
}

Stream cpu_stream() {
  static ThreadPool pool;
  return Stream::cpu(&pool);
}

CapturedGraph::CapturedGraph(cudaStream_t stream, const std::function<void()>& enqueue) {
  CUDA_TEST_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  try {
    enqueue();
  } catch (...) {
    cudaGraph_t broken = nullptr;
    cudaStreamEndCapture(stream, &broken);
    if (broken != nullptr) cudaGraphDestroy(broken);
    throw;
  }
  CUDA_TEST_OK(cudaStreamEndCapture(stream, &graph_));
  const cudaError_t status = cudaGraphInstantiate(&exec_, graph_, 0);
  if (status != cudaSuccess) cudaGraphDestroy(graph_);
  CUDA_TEST_OK(status);
}

CapturedGraph::~CapturedGraph() {
  if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
  if (graph_ != nullptr) cudaGraphDestroy(graph_);
}

std::vector<float> expect_replay_output(const std::vector<uint8_t>& replayed,
                                        const std::vector<uint8_t>& direct, DType dtype,
                                        int64_t hidden, int64_t valid) {
  EXPECT_TRUE(replayed == direct) << "graph replay differs from a direct run on the same inputs";
  const std::vector<float> values = decode(dtype, replayed);
  const auto valid_end = values.begin() + valid * hidden;
  EXPECT_TRUE(std::all_of(values.begin(), valid_end, [](float v) { return std::isfinite(v); }))
      << "a valid row holds a non-finite value (poison left unwritten?)";
  EXPECT_TRUE(std::all_of(valid_end, values.end(), [](float v) { return v == 0.0f; }))
      << "padding rows are not zero";
  return values;
}

uint64_t fresh_seed() {
  std::random_device device;
  return (static_cast<uint64_t>(device()) << 32) ^ device();
}

std::string seed_trace(uint64_t seed) { return "random seed " + std::to_string(seed); }

std::vector<uint8_t> encode(DType dtype, const std::vector<float>& values) {
  const size_t element = dtype_size(dtype);
  std::vector<uint8_t> bytes(values.size() * element);
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::f32) {
      std::memcpy(&bytes[i * element], &values[i], element);
    } else {
      const uint16_t bits = dtype == DType::bf16 ? reference::to_bf16_bits(values[i])
                                                 : __half_as_ushort(__float2half_rn(values[i]));
      std::memcpy(&bytes[i * element], &bits, element);
    }
  }
  return bytes;
}

std::vector<float> decode(DType dtype, const std::vector<uint8_t>& bytes) {
  const size_t element = dtype_size(dtype);
  std::vector<float> values(bytes.size() / element);
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::f32) {
      std::memcpy(&values[i], &bytes[i * element], element);
    } else {
      uint16_t bits;
      std::memcpy(&bits, &bytes[i * element], element);
      values[i] = dtype == DType::bf16 ? reference::from_bf16_bits(bits)
                                       : __half2float(__ushort_as_half(bits));
    }
  }
  return values;
}

std::vector<float> round_to(DType dtype, std::vector<float> values) {
  return decode(dtype, encode(dtype, values));
}

std::vector<float> make_logits(std::mt19937_64& rng, int64_t tokens, int64_t experts,
                               int64_t stride, bool special_rows) {
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  constexpr float kInf = std::numeric_limits<float>::infinity();
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::uniform_int_distribution<int> pick(0, 26);
  std::uniform_int_distribution<int64_t> column(0, experts - 1);
  std::bernoulli_distribution coin(0.5);
  std::vector<float> logits(static_cast<size_t>(tokens * stride), 6e4f);
  for (int64_t t = 0; t < tokens; ++t) {
    float* row = logits.data() + t * stride;
    const int kind = special_rows ? pick(rng) : 26;
    for (int64_t e = 0; e < experts; ++e) {
      switch (kind) {
        case 0: row[e] = kNaN; break;
        case 1: row[e] = -kInf; break;
        case 2: row[e] = coin(rng) ? kNaN : -kInf; break;
        case 3: row[e] = 0.75f; break;
        case 4: row[e] = coin(rng) && coin(rng) ? kNaN : normal(rng); break;
        case 5: row[e] = static_cast<float>(static_cast<int>(column(rng) % 3) - 1); break;
        case 6: row[e] = coin(rng) ? 1e4f : -1e4f; break;
        default: row[e] = normal(rng); break;
      }
    }
    if (kind == 7 || kind == 8) {  // one or several +inf among ordinary logits (and a NaN)
      const int count = kind == 7 ? 1 : 3;
      for (int i = 0; i < count; ++i) row[column(rng)] = kInf;
      row[column(rng)] = kNaN;
    }
  }
  return logits;
}

LayerWeights make_layer_weights(const MoeConfig& config, uint64_t seed, bool host_copy,
                                cudaStream_t stream) {
  const int64_t experts = config.num_local_experts();
  const int64_t w13_count = experts * 2 * config.intermediate * config.hidden;
  const int64_t w2_count = experts * config.hidden * config.intermediate;
  const auto element = static_cast<int64_t>(dtype_size(config.dtype));
  LayerWeights weights;
  weights.w13 = DeviceBuffer<uint8_t>(w13_count * element);
  weights.w2 = DeviceBuffer<uint8_t>(w2_count * element);
  fill_uniform_device(weights.w13.data(), config.dtype, w13_count, seed,
                      1.0f / std::sqrt(static_cast<float>(config.hidden)), stream);
  fill_uniform_device(weights.w2.data(), config.dtype, w2_count, seed ^ 0x5bd1e995u,
                      1.0f / std::sqrt(static_cast<float>(config.intermediate)), stream);
  CUDA_TEST_OK(cudaStreamSynchronize(stream));
  if (host_copy) {
    weights.host_w13.reset(new uint8_t[weights.w13.bytes()]);
    weights.host_w2.reset(new uint8_t[weights.w2.bytes()]);
    CUDA_TEST_OK(cudaMemcpy(weights.host_w13.get(), weights.w13.data(), weights.w13.bytes(),
                            cudaMemcpyDeviceToHost));
    CUDA_TEST_OK(cudaMemcpy(weights.host_w2.get(), weights.w2.data(), weights.w2.bytes(),
                            cudaMemcpyDeviceToHost));
  }
  return weights;
}

Weights LayerWeights::on_device(const MoeConfig& c) const {
  const int64_t experts = c.num_local_experts();
  const Device gpu = Device::cuda(0);
  Weights weights;
  weights.w13 =
      TensorView::contiguous(w13.data(), c.dtype, {experts, 2 * c.intermediate, c.hidden}, gpu);
  weights.w2 = TensorView::contiguous(w2.data(), c.dtype, {experts, c.hidden, c.intermediate}, gpu);
  return weights;
}

Weights LayerWeights::on_host(const MoeConfig& c) const {
  if (!host_w13 || !host_w2) throw std::runtime_error("LayerWeights: no host copy was made");
  const int64_t experts = c.num_local_experts();
  Weights weights;
  weights.w13 =
      TensorView::contiguous(host_w13.get(), c.dtype, {experts, 2 * c.intermediate, c.hidden});
  weights.w2 = TensorView::contiguous(host_w2.get(), c.dtype, {experts, c.hidden, c.intermediate});
  return weights;
}

TensorView rows_view(const void* data, DType dtype, int64_t rows, int64_t cols, int64_t stride,
                     Device device) {
  return TensorView::rows(data, dtype, rows, cols, stride, device);
}

HostWorkspace::HostWorkspace(size_t bytes) : storage_(bytes + 256), bytes_(bytes) {
  void* base = storage_.data();
  size_t space = storage_.size();
  data_ = std::align(256, bytes, base, space);
}

namespace {

struct Keyed {
  float key;
  int64_t index;
};

bool keyed_before(const Keyed& a, const Keyed& b) {
  return a.key > b.key || (a.key == b.key && a.index < b.index);
}

float rank_key(float v) { return std::isnan(v) ? -std::numeric_limits<float>::infinity() : v; }

// Adjacent entries among the first `count` of a sorted list that differ, but by no more than
// `relative` of the larger (plus 1e-8).
bool has_near_tie(const std::vector<Keyed>& sorted, size_t count, double relative) {
  for (size_t i = 1; i < std::min(count, sorted.size()); ++i) {
    const double a = sorted[i - 1].key;
    const double b = sorted[i].key;
    const double scale = std::max(std::abs(a), std::abs(b));
    if (a != b && std::abs(a - b) <= relative * scale + 1e-8) return true;
  }
  return false;
}

}  // namespace

bool grouped_row_has_near_tie(const RoutingConfig& routing, const float* logits, const float* bias,
                              int64_t num_experts, int64_t top_k, double relative) {
  const int64_t groups = routing.num_groups;
  const int64_t group_size = num_experts / groups;
  std::vector<float> keys(static_cast<size_t>(num_experts));
  for (int64_t e = 0; e < num_experts; ++e) {
    const float sigmoid = 1.0f / (1.0f + std::exp(-logits[e]));
    keys[e] = rank_key(sigmoid + (bias != nullptr ? bias[e] : 0.0f));
  }
  std::vector<Keyed> scores;
  for (int64_t g = 0; g < groups; ++g) {
    std::vector<Keyed> members;
    for (int64_t e = g * group_size; e < (g + 1) * group_size; ++e) members.push_back({keys[e], e});
    std::sort(members.begin(), members.end(), keyed_before);
    const float score = group_size >= 2 ? members[0].key + members[1].key : members[0].key;
    scores.push_back({rank_key(score), g});
  }
  std::sort(scores.begin(), scores.end(), keyed_before);
  if (has_near_tie(scores, static_cast<size_t>(routing.topk_groups) + 1, relative)) return true;
  std::vector<Keyed> candidates;
  for (int64_t i = 0; i < routing.topk_groups; ++i)
    for (int64_t e = scores[i].index * group_size; e < (scores[i].index + 1) * group_size; ++e)
      candidates.push_back({keys[e], e});
  std::sort(candidates.begin(), candidates.end(), keyed_before);
  return has_near_tie(candidates, static_cast<size_t>(top_k) + 1, relative);
}

RowError max_row_relative_error(const std::vector<float>& ref, const std::vector<float>& got,
                                int64_t rows, int64_t cols, const std::vector<bool>* skip_rows) {
  RowError result;
  for (int64_t r = 0; r < rows; ++r) {
    if (skip_rows != nullptr && (*skip_rows)[r]) continue;
    double norm = 0.0;
    for (int64_t c = 0; c < cols; ++c) norm = std::max(norm, std::abs(double{ref[r * cols + c]}));
    norm = std::max(norm, 1e-30);
    for (int64_t c = 0; c < cols; ++c) {
      const double g = got[r * cols + c];
      const double e = ref[r * cols + c];
      const double error = std::isnan(g) != std::isnan(e) ? INFINITY
                           : std::isnan(g)                ? 0.0
                                                          : std::abs(g - e) / norm;
      if (error > result.value || (result.worst.empty() && std::isnan(error))) {
        result.value = error;
        std::ostringstream text;
        text << "row " << r << ", column " << c << ": got " << g << ", expected " << e;
        result.worst = text.str();
      }
    }
  }
  return result;
}

}  // namespace ironmoe::cuda_test
