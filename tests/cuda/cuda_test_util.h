#pragma once
// Shared helpers of the CUDA tests (tests/cuda/test_*.cpp, one executable each): the GPU-or-skip
// fixture, device buffers, poisoning, fresh random inputs, storage-dtype encoding and the CPU
// backend run beside the GPU one.
//
// Every test compares the CUDA backend with the CPU backend (the reference semantics) on fresh
// random inputs; outputs are poisoned before each run so an unwritten entry cannot pass.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "ironmoe/ironmoe.h"

namespace ironmoe::cuda_test {

// ctest marks a test binary "skipped" when its output holds this text (tests/cuda/CMakeLists.txt
// sets SKIP_REGULAR_EXPRESSION to it): printed by every test of a machine without a GPU.
inline constexpr const char* kNoGpuMessage =
    "IRONMOE_NO_CUDA_GPU: no CUDA GPU is visible (cudaGetDeviceCount found none); the CUDA "
    "tests need one";

// Byte patterns written into outputs before a run: int32 maps get 0x5a5a5a5a (no map holds it,
// unlike -1), floats get 0xffffffff / 0xffff (NaN).
inline constexpr uint8_t kPoisonIndexByte = 0x5a;
inline constexpr uint8_t kPoisonFloatByte = 0xff;

// Throws std::runtime_error (gtest reports it as a failure of the running test) when a CUDA call
// of the test itself fails.
void cuda_ok(cudaError_t status, const char* call, const char* file, int line);
#define CUDA_TEST_OK(call) ::ironmoe::cuda_test::cuda_ok((call), #call, __FILE__, __LINE__)

// The CPU backend (the reference semantics) on a thread pool shared by the whole binary.
Stream cpu_stream();

// Skips with kNoGpuMessage when no GPU is visible; otherwise owns a fresh stream. The stream is a
// blocking one on purpose: the tests' synchronous cudaMemcpy / cudaMemset run on the legacy
// default stream, which orders itself with blocking streams only.
class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  cudaStream_t stream() const { return stream_; }
  Stream gpu() const { return Stream::cuda(stream_, 0); }
  static Stream cpu() { return cpu_stream(); }
  void sync() const { CUDA_TEST_OK(cudaStreamSynchronize(stream_)); }

 private:
  cudaStream_t stream_ = nullptr;
};

template <class Param>
class CudaTestWithParam : public CudaTest, public ::testing::WithParamInterface<Param> {};

// Device memory for `count` elements of T, freed on destruction. Copies are synchronous.
template <class T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(int64_t count) : count_(count) {
    if (count > 0) CUDA_TEST_OK(cudaMalloc(&data_, bytes()));
  }
  explicit DeviceBuffer(const std::vector<T>& values)
      : DeviceBuffer(static_cast<int64_t>(values.size())) {
    upload(values);
  }
  ~DeviceBuffer() {
    if (data_ != nullptr) cudaFree(data_);
  }
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(count_, other.count_);
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* data() const { return data_; }
  int64_t size() const { return count_; }
  size_t bytes() const { return static_cast<size_t>(count_) * sizeof(T); }

  void upload(const std::vector<T>& values) {
    if (static_cast<int64_t>(values.size()) != count_)
      throw std::runtime_error("DeviceBuffer::upload: size mismatch");
    if (count_ > 0) CUDA_TEST_OK(cudaMemcpy(data_, values.data(), bytes(), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> values(static_cast<size_t>(count_));
    if (count_ > 0) CUDA_TEST_OK(cudaMemcpy(values.data(), data_, bytes(), cudaMemcpyDeviceToHost));
    return values;
  }
  void fill_bytes(uint8_t byte) {
    if (count_ > 0) CUDA_TEST_OK(cudaMemset(data_, byte, bytes()));
  }

 private:
  T* data_ = nullptr;
  int64_t count_ = 0;
};

// What `enqueue` launches on `stream`, captured once into an executable CUDA graph.
class CapturedGraph {
 public:
  CapturedGraph(cudaStream_t stream, const std::function<void()>& enqueue);
  ~CapturedGraph();
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;
  void launch(cudaStream_t stream) const { CUDA_TEST_OK(cudaGraphLaunch(exec_, stream)); }

 private:
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

// A graph replay's output [T, H] against a direct run's on the same inputs: identical bytes,
// rows < valid finite (no poison left), rows >= valid zero. Returns the replay as floats.
std::vector<float> expect_replay_output(const std::vector<uint8_t>& replayed,
                                        const std::vector<uint8_t>& direct, DType dtype,
                                        int64_t hidden, int64_t valid);

// A fresh seed per call (std::random_device); tests print it with SCOPED_TRACE so a failure can
// be replayed by pinning it.
uint64_t fresh_seed();
std::string seed_trace(uint64_t seed);

// Storage dtypes on the host: values encoded as the bytes a tensor of `dtype` holds (round to
// nearest even for bf16/f16), and decoded back exactly.
std::vector<uint8_t> encode(DType dtype, const std::vector<float>& values);
std::vector<float> decode(DType dtype, const std::vector<uint8_t>& bytes);
// Each value rounded to what `dtype` can hold.
std::vector<float> round_to(DType dtype, std::vector<float> values);

// Router logits [T, stride] as floats (round them to the logits' dtype before use). Most rows
// are N(0, 2) draws; with `special_rows`, about one row in three is a hard case: all NaN, all
// -inf, NaN mixed with -inf, all equal, a third NaN, one or several +inf, a few values from
// {-1, 0, 1} (many ties), +-1e4 extremes. Columns [E, stride) hold 6e4, a value that would win
// every selection if a kernel read past E.
std::vector<float> make_logits(std::mt19937_64& rng, int64_t tokens, int64_t experts,
                               int64_t stride, bool special_rows);

// Fills `count` elements of `dtype` at `data` (device) with uniform values in [-scale, scale]
// from a counter-based hash of (seed, index): for weights too large to generate on the host.
void fill_uniform_device(void* data, DType dtype, int64_t count, uint64_t seed, float scale,
                         cudaStream_t stream);

// A layer's expert weights, generated on the device (uniform in +-1/sqrt(fan-in), so outputs stay
// of order one), with an optional host copy for the CPU backend. Full-size presets hold
// gigabytes: the host copy is left uninitialised until the device data lands in it.
struct LayerWeights {
  DeviceBuffer<uint8_t> w13;  // [E_local, 2I, H]
  DeviceBuffer<uint8_t> w2;   // [E_local, H, I]
  std::unique_ptr<uint8_t[]> host_w13;
  std::unique_ptr<uint8_t[]> host_w2;

  Weights on_device(const MoeConfig& config) const;
  Weights on_host(const MoeConfig& config) const;  // needs the host copy
};
LayerWeights make_layer_weights(const MoeConfig& config, uint64_t seed, bool host_copy,
                                cudaStream_t stream);

// 2-D views over device or host memory with a row stride in elements.
TensorView rows_view(const void* data, DType dtype, int64_t rows, int64_t cols, int64_t stride,
                     Device device);

// Host memory aligned to 256 bytes (the workspace alignment).
class HostWorkspace {
 public:
  explicit HostWorkspace(size_t bytes);
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  std::vector<std::byte> storage_;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Grouped (DeepSeek) routing ranks sigmoid(logit) + bias, and the GPU's expf may differ from the
// host's by a few ulps, so two keys that close can swap. True when the row's selection hinges on
// such a near tie: two distinct keys within `relative` of the larger (plus 1e-8 absolute, for
// keys that cancel against a negative bias) among the k+1 best candidates of the kept groups, or
// two group scores that close among the topk_groups+1 best. Exact ties (equal keys) are not near
// ties: both backends break them by index.
bool grouped_row_has_near_tie(const RoutingConfig& routing, const float* logits, const float* bias,
                              int64_t num_experts, int64_t top_k, double relative = 1e-6);

// max over rows of max_c |got - ref| / max(max_c |ref|, tiny), and a text naming the worst
// element ("row 3, column 17: got 1.5, expected 1.25").
struct RowError {
  double value = 0.0;
  std::string worst;
};
RowError max_row_relative_error(const std::vector<float>& ref, const std::vector<float>& got,
                                int64_t rows, int64_t cols, const std::vector<bool>* skip_rows);

}  // namespace ironmoe::cuda_test
