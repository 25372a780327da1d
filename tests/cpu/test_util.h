#pragma once
// Shared helpers of the CPU tests: a per-test seeded RNG, host buffers in a storage dtype, an
// aligned workspace, and one routine that runs Layer::forward on a random problem and one that
// computes the same problem with the float64 reference.
#include <array>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "ironmoe/ironmoe.h"
#include "reference_fp8.h"

namespace ironmoe::test {

// Poison written into outputs before each call: a NaN with a recognisable payload for floats and
// a value no map ever holds for int32.
inline constexpr int32_t kPoisonInt = 0x5a5a5a5a;
float poison_float();

// Seeded from the running test's full name (plus a salt), so every case draws fresh inputs and a
// failure reproduces on rerun. The seed is printed with every failure through SCOPED_TRACE.
class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed), seed_(seed) {}
  static Rng for_current_test(uint64_t salt = 0);

  uint64_t seed() const { return seed_; }
  // Uniform in [-magnitude, -magnitude/10] U [magnitude/10, magnitude]: never zero.
  float nonzero(float magnitude);
  // Uniform in [lo, hi], inclusive.
  int64_t integer(int64_t lo, int64_t hi);
  bool chance(double probability);
  std::vector<float> nonzero_vector(int64_t n, float magnitude);
  std::mt19937_64& engine() { return engine_; }

 private:
  std::mt19937_64 engine_;
  uint64_t seed_;
};

// Values held in a storage dtype (f32 or bf16). to_float() widens exactly what the storage holds,
// which is what the reference consumes.
class Buffer {
 public:
  Buffer() = default;
  static Buffer from(DType dtype, const std::vector<float>& values);
  static Buffer filled(DType dtype, int64_t size, float value);
  static Buffer poisoned(DType dtype, int64_t size) { return filled(dtype, size, poison_float()); }

  DType dtype() const { return dtype_; }
  int64_t size() const { return size_; }
  void* data();
  const void* data() const;
  std::vector<float> to_float() const;
  std::vector<uint8_t> bytes() const;  // for bitwise comparisons

 private:
  DType dtype_ = DType::f32;
  int64_t size_ = 0;
  std::vector<float> f32_;
  std::vector<uint16_t> bf16_;
};

// Host memory aligned to 256 bytes (the workspace alignment), optionally shifted by `misalign`
// bytes to test the alignment check. Filled with 0xA5 so stale reads show.
class AlignedBuffer {
 public:
  explicit AlignedBuffer(size_t bytes, size_t misalign = 0);
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  std::unique_ptr<std::byte[]> storage_;
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// A random MoE layer problem on the host. Routing comes either from router logits (f32) or from
// precomputed ids/weights; exactly one of `logits` and `ids` is non-empty.
struct LayerProblem {
  MoeConfig config;
  int64_t tokens = 0;
  Buffer x;                    // [T, H]
  Buffer w13;                  // [E_local, 2I, H]
  Buffer w2;                   // [E_local, H, I]
  std::vector<float> logits;   // [T, E]
  std::vector<float> bias;     // [E], grouped_topk only
  std::vector<int32_t> ids;    // [T, k]
  std::vector<float> weights;  // [T, k]
  std::optional<int32_t> num_valid;
};

// Random inputs: x and weights never zero, logits in +-[0.3, 3], bias in +-[0.05, 0.5],
// precomputed ids distinct within a token, weights in [0.1, 1].
LayerProblem make_problem(const MoeConfig& config, int64_t tokens, bool from_logits, Rng& rng);

// Copies experts [begin, end) of a problem whose weights hold all E experts into a problem for the
// rank that owns exactly those experts.
LayerProblem shard_of(const LayerProblem& full, int64_t expert_begin, int64_t expert_end);

struct LayerRun {
  Buffer out;  // [T, H], poisoned before the call
  std::array<int32_t, kDiagnosticCount> diagnostics{};
  std::shared_ptr<AlignedBuffer> workspace;
};

// What run_layer hands to forward(): the problem's inputs (num_valid_tokens from `num_valid`,
// which must outlive the call, when the problem has one), its weights or `weights`, and `out` as
// the output [T, H].
struct LayerCall {
  Inputs in;
  Weights w;
  Outputs out;
};
LayerCall layer_call(const LayerProblem& problem, void* out, int32_t* diagnostics,
                     const int32_t* num_valid, const Weights* weights = nullptr);

// The reference's name for an FP8 scheme (fp8_tensor: per_tensor).
reference::Fp8Scheme reference_scheme(QuantScheme quant);

// Views of FP8 codes and scales as config.quant's Weights (docs/formats.md), with the static
// activation scales {GEMM1, GEMM2} when `static_scales` is not empty.
Weights fp8_weight_views(const MoeConfig& config, const reference::Fp8Weights& weights,
                         const std::vector<float>& static_scales);

// Runs Layer::forward on the CPU (diagnostics zeroed before the call), in `workspace` when given
// (to reuse one left dirty by an earlier call), else in a fresh one filled with 0xA5. With
// `by_stages`, runs the stages of Layer::stages() one by one instead of calling forward(), the
// experts stage as its gate_up phase then its down phase.
// `weights` replaces the problem's own (FP8 codes and scales).
LayerRun run_layer(const LayerProblem& problem, ThreadPool* threads = nullptr,
                   std::shared_ptr<AlignedBuffer> workspace = nullptr, bool by_stages = false,
                   const Weights* weights = nullptr);

// Reference output [T, H] in float64 (routing by reference::route when the problem has logits).
// round_intermediate defaults to "the storage dtype is bf16".
std::vector<double> reference_output(const LayerProblem& problem);

// Ids and weights the reference routes the problem to ([T, k] each), or the problem's own.
void reference_routing(const LayerProblem& problem, std::vector<int32_t>& ids,
                       std::vector<float>& weights);

// Relative tolerance of a full-layer comparison against the float64 reference:
//  f32:  fp32 accumulation over H and I terms of size ~1: observed ~1e-6, allowed 1e-5.
//  bf16: output rounded once to bf16 (2^-9 relative) and h rounded to bf16 between the GEMMs
//        (double vs float rounding may differ by one bf16 ulp in a few h): allowed 2e-2.
double layer_tolerance(DType dtype);

// "token 3, column 17: got 1.5, expected 1.25" for the worst element of a comparison.
std::string describe_worst(const std::vector<double>& ref, const std::vector<float>& got,
                           int64_t cols);

// Runs f; passes when it throws ironmoe::Error whose message contains every one of `names`.
void expect_error_naming(const std::function<void()>& f, const std::vector<std::string>& names,
                         const std::string& what);

// Element i of a buffer's storage as raw bits (2 or 4 bytes), for bitwise comparisons.
uint32_t storage_bits(const Buffer& buffer, int64_t i);

// The experts stage over host buffers: rows = in.size() / hidden, E_local = offsets.size()
// (offsets given without the trailing total), dtype that of `in`.
ExpertArgs expert_stage_args(const Buffer& in, const std::vector<int32_t>& offsets,
                             const std::vector<int32_t>& counts, const Buffer& w13,
                             const Buffer& w2, Buffer& intermediate, Buffer& out, int64_t hidden,
                             int64_t intermediate_size);

// A small valid config for contract tests (f32 unless told otherwise).
MoeConfig small_config(int64_t num_experts, int64_t top_k, int64_t max_tokens,
                       DType dtype = DType::f32);

}  // namespace ironmoe::test
