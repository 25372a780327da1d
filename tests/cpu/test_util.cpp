#include "test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <sstream>

#include "reference_moe.h"

namespace ironmoe::test {

float poison_float() {
  const uint32_t bits = 0x7fa5a5a5u;  // NaN with a payload no computation produces
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

Rng Rng::for_current_test(uint64_t salt) {
  // FNV-1a over the full test name: stable across runs and platforms.
  uint64_t hash = 1469598103934665603ull;
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = info != nullptr ? std::string(info->test_suite_name()) + "." + info->name()
                                     : std::string("no-test");
  for (char c : name) {
    hash ^= static_cast<uint8_t>(c);
    hash *= 1099511628211ull;
  }
  return Rng(hash ^ (salt * 0x9e3779b97f4a7c15ull));
}

float Rng::nonzero(float magnitude) {
  std::uniform_real_distribution<float> size(0.1f * magnitude, magnitude);
  const float value = size(engine_);
  return chance(0.5) ? value : -value;
}

int64_t Rng::integer(int64_t lo, int64_t hi) {
  return std::uniform_int_distribution<int64_t>(lo, hi)(engine_);
}

bool Rng::chance(double probability) { return std::bernoulli_distribution(probability)(engine_); }

std::vector<float> Rng::nonzero_vector(int64_t n, float magnitude) {
  std::vector<float> values(static_cast<size_t>(n));
  for (float& v : values) v = nonzero(magnitude);
  return values;
}

Buffer Buffer::from(DType dtype, const std::vector<float>& values) {
  Buffer buffer;
  buffer.dtype_ = dtype;
  buffer.size_ = static_cast<int64_t>(values.size());
  if (dtype == DType::f32) {
    buffer.f32_ = values;
  } else if (dtype == DType::bf16) {
    buffer.bf16_.resize(values.size());
    for (size_t i = 0; i < values.size(); ++i) buffer.bf16_[i] = reference::to_bf16_bits(values[i]);
  } else {
    throw std::invalid_argument("test::Buffer holds f32 or bf16 only");
  }
  return buffer;
}

Buffer Buffer::filled(DType dtype, int64_t size, float value) {
  return from(dtype, std::vector<float>(static_cast<size_t>(size), value));
}

void* Buffer::data() {
  return dtype_ == DType::f32 ? static_cast<void*>(f32_.data()) : static_cast<void*>(bf16_.data());
}

const void* Buffer::data() const {
  return dtype_ == DType::f32 ? static_cast<const void*>(f32_.data())
                              : static_cast<const void*>(bf16_.data());
}

std::vector<float> Buffer::to_float() const {
  if (dtype_ == DType::f32) return f32_;
  std::vector<float> values(bf16_.size());
  for (size_t i = 0; i < bf16_.size(); ++i) values[i] = reference::from_bf16_bits(bf16_[i]);
  return values;
}

std::vector<uint8_t> Buffer::bytes() const {
  const auto* begin = static_cast<const uint8_t*>(data());
  return std::vector<uint8_t>(begin, begin + size_ * static_cast<int64_t>(dtype_size(dtype_)));
}

AlignedBuffer::AlignedBuffer(size_t bytes, size_t misalign) : bytes_(bytes) {
  constexpr size_t kAlignment = 256;
  storage_ = std::make_unique<std::byte[]>(bytes + kAlignment + misalign);
  const auto base = reinterpret_cast<uintptr_t>(storage_.get());
  const uintptr_t aligned = (base + kAlignment - 1) / kAlignment * kAlignment;
  data_ = reinterpret_cast<void*>(aligned + misalign);
  std::memset(data_, 0xA5, bytes);
}

uint32_t storage_bits(const Buffer& buffer, int64_t i) {
  uint32_t bits = 0;
  const size_t size = dtype_size(buffer.dtype());
  std::memcpy(&bits, static_cast<const uint8_t*>(buffer.data()) + static_cast<size_t>(i) * size,
              size);
  return bits;
}

ExpertArgs expert_stage_args(const Buffer& in, const std::vector<int32_t>& offsets,
                             const std::vector<int32_t>& counts, const Buffer& w13,
                             const Buffer& w2, Buffer& intermediate, Buffer& out, int64_t hidden,
                             int64_t intermediate_size) {
  const DType dtype = in.dtype();
  const int64_t rows = in.size() / hidden;
  const auto local = static_cast<int64_t>(offsets.size());
  const int64_t inter = intermediate_size;
  ExpertArgs args;
  args.permuted_in = TensorView::contiguous(in.data(), dtype, {rows, hidden});
  args.expert_offsets = TensorView::contiguous(offsets.data(), DType::i32, {local});
  args.expert_counts = TensorView::contiguous(counts.data(), DType::i32, {local});
  args.w13 = TensorView::contiguous(w13.data(), dtype, {local, 2 * inter, hidden});
  args.w2 = TensorView::contiguous(w2.data(), dtype, {local, hidden, inter});
  args.intermediate = TensorView::contiguous(intermediate.data(), dtype, {rows, inter});
  args.permuted_out = TensorView::contiguous(out.data(), dtype, {rows, hidden});
  return args;
}

MoeConfig small_config(int64_t num_experts, int64_t top_k, int64_t max_tokens, DType dtype) {
  MoeConfig config;
  config.hidden = 32;
  config.intermediate = 24;
  config.num_experts = num_experts;
  config.top_k = top_k;
  config.max_tokens = max_tokens;
  config.dtype = dtype;
  return config;
}

LayerProblem make_problem(const MoeConfig& config, int64_t tokens, bool from_logits, Rng& rng) {
  LayerProblem p;
  p.config = config;
  p.tokens = tokens;
  const int64_t hidden = config.hidden;
  const int64_t inter = config.intermediate;
  const int64_t local = config.num_local_experts();
  const int64_t experts = config.num_experts;
  const int64_t k = config.top_k;
  p.x = Buffer::from(config.dtype, rng.nonzero_vector(tokens * hidden, 1.0f));
  p.w13 = Buffer::from(
      config.dtype,
      rng.nonzero_vector(local * 2 * inter * hidden, 1.0f / std::sqrt(static_cast<float>(hidden))));
  p.w2 = Buffer::from(
      config.dtype,
      rng.nonzero_vector(local * hidden * inter, 2.0f / std::sqrt(static_cast<float>(inter))));
  if (from_logits) {
    std::vector<float> logits(static_cast<size_t>(tokens * experts));
    for (float& v : logits) v = rng.nonzero(3.0f);
    p.logits = logits;
    if (config.routing.kind == RoutingKind::grouped_topk)
      p.bias = rng.nonzero_vector(experts, 0.5f);
  } else {
    p.ids.resize(static_cast<size_t>(tokens * k));
    std::vector<int32_t> all(static_cast<size_t>(experts));
    std::iota(all.begin(), all.end(), 0);
    for (int64_t t = 0; t < tokens; ++t) {
      std::shuffle(all.begin(), all.end(), rng.engine());
      std::copy(all.begin(), all.begin() + k, p.ids.begin() + t * k);
    }
    p.weights.resize(static_cast<size_t>(tokens * k));
    for (float& w : p.weights) w = std::abs(rng.nonzero(1.0f));
  }
  return p;
}

LayerProblem shard_of(const LayerProblem& full, int64_t expert_begin, int64_t expert_end) {
  LayerProblem shard = full;
  shard.config.expert_begin = expert_begin;
  shard.config.expert_end = expert_end;
  const int64_t w13_size = 2 * full.config.intermediate * full.config.hidden;
  const int64_t w2_size = full.config.hidden * full.config.intermediate;
  const std::vector<float> w13 = full.w13.to_float();
  const std::vector<float> w2 = full.w2.to_float();
  shard.w13 =
      Buffer::from(full.config.dtype, std::vector<float>(w13.begin() + expert_begin * w13_size,
                                                         w13.begin() + expert_end * w13_size));
  shard.w2 = Buffer::from(full.config.dtype, std::vector<float>(w2.begin() + expert_begin * w2_size,
                                                                w2.begin() + expert_end * w2_size));
  return shard;
}

LayerCall layer_call(const LayerProblem& p, void* out, int32_t* diagnostics,
                     const int32_t* num_valid, const Weights* weights) {
  const MoeConfig& c = p.config;
  LayerCall call;
  Inputs& in = call.in;
  in.x = TensorView::contiguous(p.x.data(), c.dtype, {p.tokens, c.hidden});
  if (!p.logits.empty()) {
    in.router_logits =
        TensorView::contiguous(p.logits.data(), DType::f32, {p.tokens, c.num_experts});
    if (!p.bias.empty())
      in.correction_bias = TensorView::contiguous(p.bias.data(), DType::f32, {c.num_experts});
  } else {
    in.topk_ids = TensorView::contiguous(p.ids.data(), DType::i32, {p.tokens, c.top_k});
    in.topk_weights = TensorView::contiguous(p.weights.data(), DType::f32, {p.tokens, c.top_k});
  }
  in.num_valid_tokens = p.num_valid ? num_valid : nullptr;
  in.diagnostics = diagnostics;
  const int64_t local = c.num_local_experts();
  if (weights != nullptr) {
    call.w = *weights;
  } else {
    call.w.w13 =
        TensorView::contiguous(p.w13.data(), c.dtype, {local, 2 * c.intermediate, c.hidden});
    call.w.w2 = TensorView::contiguous(p.w2.data(), c.dtype, {local, c.hidden, c.intermediate});
  }
  call.out.out = TensorView::contiguous(out, c.dtype, {p.tokens, c.hidden});
  return call;
}

reference::Fp8Scheme reference_scheme(QuantScheme quant) {
  switch (quant) {
    case QuantScheme::fp8_channel: return reference::Fp8Scheme::per_channel;
    case QuantScheme::fp8_block: return reference::Fp8Scheme::block;
    default: return reference::Fp8Scheme::per_tensor;
  }
}

Weights fp8_weight_views(const MoeConfig& c, const reference::Fp8Weights& f,
                         const std::vector<float>& static_scales) {
  const int64_t local = c.num_local_experts();
  const int64_t inter = c.intermediate;
  Weights w;
  w.w13 = TensorView::contiguous(f.w13.data(), DType::f8e4m3, {local, 2 * inter, c.hidden});
  w.w2 = TensorView::contiguous(f.w2.data(), DType::f8e4m3, {local, c.hidden, inter});
  if (c.quant == QuantScheme::fp8_tensor) {
    w.w13_scale = TensorView::contiguous(f.w13_scale.data(), DType::f32, {local});
    w.w2_scale = TensorView::contiguous(f.w2_scale.data(), DType::f32, {local});
  } else if (c.quant == QuantScheme::fp8_channel) {
    w.w13_scale = TensorView::contiguous(f.w13_scale.data(), DType::f32, {local, 2 * inter});
    w.w2_scale = TensorView::contiguous(f.w2_scale.data(), DType::f32, {local, c.hidden});
  } else {
    const auto blocks = [](int64_t n) { return (n + 127) / 128; };
    w.w13_scale = TensorView::contiguous(f.w13_scale.data(), DType::f32,
                                         {local, blocks(2 * inter), blocks(c.hidden)});
    w.w2_scale = TensorView::contiguous(f.w2_scale.data(), DType::f32,
                                        {local, blocks(c.hidden), blocks(inter)});
  }
  if (!static_scales.empty()) {
    w.w13_input_scale = TensorView::contiguous(&static_scales[0], DType::f32, {1});
    w.w2_input_scale = TensorView::contiguous(&static_scales[1], DType::f32, {1});
  }
  return w;
}

LayerRun run_layer(const LayerProblem& p, ThreadPool* threads,
                   std::shared_ptr<AlignedBuffer> workspace, bool by_stages,
                   const Weights* weights) {
  const MoeConfig& c = p.config;
  const Layer layer(c, Device::cpu());
  LayerRun run;
  run.out = Buffer::poisoned(c.dtype, p.tokens * c.hidden);
  run.workspace = workspace ? workspace : std::make_shared<AlignedBuffer>(layer.workspace_bytes());
  const int32_t num_valid = p.num_valid.value_or(0);
  const LayerCall call = layer_call(p, run.out.data(), run.diagnostics.data(), &num_valid, weights);
  const Inputs& in = call.in;
  const Weights& w = call.w;
  const Outputs& out = call.out;
  const Workspace space{run.workspace->data(), run.workspace->bytes()};
  const Stream stream = Stream::cpu(threads);
  if (!by_stages) {
    layer.forward(in, w, out, space, stream);
    return run;
  }
  const LayerStages s = layer.stages(in, w, out, space, stream);
  if (s.has_route) route(s.routing, s.route, stream);
  if (s.has_input_scale) fp8_input_scale(s.input_scale, stream);
  plan(s.plan, stream);
  if (s.has_gather) gather(s.gather, stream);
  // The experts stage in its two phases (ExpertPhase), which must give the bits of one call.
  ExpertArgs phase = s.experts;
  phase.phase = ExpertPhase::gate_up;
  experts(phase, stream);
  phase.phase = ExpertPhase::down;
  experts(phase, stream);
  combine(s.combine, stream);
  return run;
}

void reference_routing(const LayerProblem& p, std::vector<int32_t>& ids,
                       std::vector<float>& weights) {
  if (p.logits.empty()) {
    ids = p.ids;
    weights = p.weights;
    return;
  }
  const int64_t k = p.config.top_k;
  ids.assign(static_cast<size_t>(p.tokens * k), 0);
  weights.assign(static_cast<size_t>(p.tokens * k), 0.0f);
  reference::route(p.config.routing, p.tokens, p.config.num_experts, k, p.logits.data(),
                   p.bias.empty() ? nullptr : p.bias.data(), p.num_valid.value_or(p.tokens),
                   ids.data(), weights.data());
}

std::vector<double> reference_output(const LayerProblem& p) {
  std::vector<int32_t> ids;
  std::vector<float> weights;
  reference_routing(p, ids, weights);
  std::vector<int64_t> tokens(static_cast<size_t>(p.tokens));
  std::iota(tokens.begin(), tokens.end(), 0);
  std::vector<double> out(static_cast<size_t>(p.tokens * p.config.hidden));
  const std::vector<float> x = p.x.to_float();
  const std::vector<float> w13 = p.w13.to_float();
  const std::vector<float> w2 = p.w2.to_float();
  // A negative num_valid means no valid token (plan_math's rule), as does 0.
  const int64_t num_valid = p.num_valid ? std::max<int64_t>(*p.num_valid, 0) : p.tokens;
  reference::layer(p.config, p.tokens, x.data(), ids.data(), weights.data(), w13.data(), w2.data(),
                   num_valid, tokens, p.config.dtype == DType::bf16, out.data());
  return out;
}

double layer_tolerance(DType dtype) { return dtype == DType::bf16 ? 2e-2 : 1e-5; }

std::string describe_worst(const std::vector<double>& ref, const std::vector<float>& got,
                           int64_t cols) {
  size_t worst = 0;
  double worst_error = -1.0;
  for (size_t i = 0; i < ref.size() && i < got.size(); ++i) {
    const double error = std::isfinite(got[i]) ? std::abs(got[i] - ref[i]) : INFINITY;
    if (error > worst_error) {
      worst_error = error;
      worst = i;
    }
  }
  std::ostringstream text;
  text << "worst at token " << static_cast<int64_t>(worst) / cols << ", column "
       << static_cast<int64_t>(worst) % cols << ": got " << got[worst] << ", expected "
       << ref[worst];
  return text.str();
}

void expect_error_naming(const std::function<void()>& f, const std::vector<std::string>& names,
                         const std::string& what) {
  try {
    f();
  } catch (const Error& error) {
    const std::string message = error.what();
    for (const std::string& name : names)
      EXPECT_NE(message.find(name), std::string::npos)
          << what << ": the message does not name '" << name << "': " << message;
    return;
  } catch (const std::exception& other) {
    ADD_FAILURE() << what << ": threw something other than ironmoe::Error: " << other.what();
    return;
  }
  ADD_FAILURE() << what << ": no ironmoe::Error was thrown";
}

}  // namespace ironmoe::test
