// Layer::forward on the CPU with randomly drawn configs, inputs and argument views (contract:
// every input gets a defined result or a clear error, never a fault). Each call either throws
// ironmoe::Error or returns with every output element written (no poison left), every padding
// row zero and no diagnostics counter negative. Configs range over valid and invalid sizes,
// expert-parallel ranges, routing kinds, dtypes, layouts, capacities and FP8 schemes; inputs hold
// NaN, +-Inf, huge and tiny values, hostile ids (-1, INT_MIN, >= E, duplicates) and any
// num_valid_tokens; FP8 codes are any byte (NaN codes too) and scales any float. Views are
// sometimes broken in ways validation must catch (null data, a smaller shape, a stride below the
// row, another dtype or rank, a pointer off its element alignment, a size or stride at the edge
// of int64); a broken view that validation accepts never claims memory the caller does not own.
// scripts/sanitize-cpu.sh (CI) runs this under AddressSanitizer and UndefinedBehaviorSanitizer
// too, where a stray access fails the run.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "test_util.h"

namespace ironmoe::test {
namespace {

constexpr int kCalls = 400;

// A value for an input: mostly normal, sometimes NaN, +-Inf, zero, huge or tiny.
float hostile_value(Rng& rng) {
  switch (rng.integer(0, 19)) {
    case 0: return std::nanf("");
    case 1: return INFINITY;
    case 2: return -INFINITY;
    case 3: return 0.0f;
    case 4: return 1e30f;
    case 5: return -1e-30f;
    default: return rng.nonzero(2.0f);
  }
}

std::vector<float> hostile_values(int64_t count, Rng& rng) {
  std::vector<float> values(static_cast<size_t>(std::max<int64_t>(count, 0)));
  for (float& v : values) v = hostile_value(rng);
  return values;
}

// A config that validates, or (with `anything`) one drawn without regard to the rules, which
// Layer's constructor must then refuse or accept.
MoeConfig random_config(Rng& rng, bool anything) {
  MoeConfig c;
  c.hidden = rng.integer(1, 300);
  c.intermediate = rng.integer(1, 300);
  c.num_experts = rng.integer(1, 40);
  c.top_k = rng.integer(1, c.num_experts);
  c.max_tokens = rng.integer(0, 40);
  if (rng.chance(0.3)) {  // an expert-parallel rank
    c.expert_begin = rng.integer(0, c.num_experts - 1);
    c.expert_end = rng.integer(c.expert_begin + 1, c.num_experts);
  }
  c.activation = rng.chance(0.5) ? Activation::silu_and_mul : Activation::gelu_and_mul;
  c.routing.kind = static_cast<RoutingKind>(rng.integer(0, 2));
  c.routing.renormalize = rng.chance(0.5);
  if (c.routing.kind == RoutingKind::grouped_topk) {
    // Groups that divide E and keep at least k experts.
    std::vector<int64_t> divisors;
    for (int64_t g = 1; g <= c.num_experts; ++g)
      if (c.num_experts % g == 0) divisors.push_back(g);
    c.routing.num_groups =
        divisors[static_cast<size_t>(rng.integer(0, static_cast<int64_t>(divisors.size()) - 1))];
    const int64_t group_size = c.num_experts / c.routing.num_groups;
    const int64_t least = (c.top_k + group_size - 1) / group_size;
    c.routing.topk_groups = rng.integer(least, c.routing.num_groups);
  }
  if (rng.chance(0.2)) c.routing.routed_scaling_factor = 2.5f;
  c.dtype = rng.chance(0.5) ? DType::f32 : DType::bf16;
  c.layout = rng.chance(0.5) ? Layout::contiguous : Layout::batched;
  if (rng.chance(0.4)) c.batched_capacity = rng.integer(1, 10);
  c.quant = static_cast<QuantScheme>(rng.integer(0, 3));
  c.expert_kernel = static_cast<ExpertKernel>(rng.integer(0, 3));
  if (!anything) return c;
  switch (rng.integer(0, 9)) {  // one field drawn past its rules
    case 0: c.hidden = rng.integer(-2, 0); break;
    case 1: c.intermediate = rng.integer(-2, 0); break;
    case 2: c.num_experts = rng.integer(-1, 0); break;
    case 3: c.top_k = rng.integer(-1, 0) + (rng.chance(0.5) ? c.num_experts + 1 : 0); break;
    case 4:
      c.expert_begin = rng.integer(-1, c.num_experts);
      c.expert_end = rng.integer(-2, c.num_experts + 1);
      break;
    case 5:
      c.routing.num_groups = rng.integer(-1, 8);
      c.routing.topk_groups = rng.integer(-1, 8);
      break;
    case 6: {
      const float scales[] = {0.0f, -1.0f, std::nanf(""), INFINITY};
      c.routing.routed_scaling_factor = scales[rng.integer(0, 3)];
      break;
    }
    case 7: {
      const DType others[] = {DType::f16, DType::i32, DType::f8e4m3};
      c.dtype = others[rng.integer(0, 2)];
      break;
    }
    case 8: c.batched_capacity = -1; break;
    default:
      c.activation = static_cast<Activation>(rng.integer(2, 5));
      c.routing.kind = static_cast<RoutingKind>(rng.integer(3, 5));
      c.quant = static_cast<QuantScheme>(rng.integer(4, 7));
      break;
  }
  return c;
}

std::string describe(const MoeConfig& c, int64_t tokens) {
  std::ostringstream text;
  text << "H " << c.hidden << ", I " << c.intermediate << ", E " << c.num_experts << ", k "
       << c.top_k << ", experts [" << c.expert_begin << ", " << c.expert_end << "), T " << tokens
       << " of " << c.max_tokens << ", routing " << static_cast<int>(c.routing.kind) << ", "
       << dtype_name(c.dtype) << ", layout " << static_cast<int>(c.layout) << " capacity "
       << c.batched_capacity << ", quant " << static_cast<int>(c.quant);
  return text.str();
}

// Breaks one thing about a view, now and then, in a way that claims no memory beyond the view's:
// validation must turn each into an ironmoe::Error (or accept it when harmless).
TensorView maybe_break(TensorView view, Rng& rng) {
  if (!rng.chance(0.03)) return view;
  switch (rng.integer(0, 6)) {
    case 0:
      if (view.ndim > 0) view.shape[rng.integer(0, view.ndim - 1)] -= rng.integer(1, 2);
      break;
    case 1:
      if (view.ndim > 0) {
        const auto dim = static_cast<int>(rng.integer(0, view.ndim - 1));
        view.strides[dim] = rng.integer(-3, std::max<int64_t>(0, view.strides[dim] - 1));
      }
      break;
    case 2: view.data = nullptr; break;
    case 3: view.dtype = static_cast<DType>(rng.integer(0, 4)); break;
    case 4: view.ndim = static_cast<int>(rng.integer(-1, kMaxDims + 1)); break;
    case 5:  // a size or stride at the edge of int64: refused before anything is multiplied out
      if (view.ndim > 0) {
        const auto dim = static_cast<int>(rng.integer(0, view.ndim - 1));
        const int64_t extremes[] = {INT64_MAX, INT64_MIN, int64_t{1} << 40, INT64_MAX / 2 + 1};
        const int64_t extreme = extremes[rng.integer(0, 3)];
        (rng.chance(0.5) ? view.shape : view.strides)[dim] = extreme;
      }
      break;
    default: view.data = static_cast<char*>(view.data) + 1; break;  // the buffers have slack
  }
  return view;
}

// Host storage of `count` elements of `dtype` (plus slack for a pointer moved by one byte).
struct HostTensor {
  std::vector<uint8_t> bytes;
  HostTensor(DType dtype, const std::vector<float>& values) {
    const size_t n = values.size();
    if (dtype == DType::bf16 || dtype == DType::f32) {
      const Buffer buffer = Buffer::from(dtype, values);
      bytes = buffer.bytes();
    } else {
      bytes.assign(n * dtype_size(dtype), 0x3c);
    }
    bytes.resize(bytes.size() + 16);
  }
  HostTensor(const void* data, size_t size) : bytes(size + 16) {
    if (size > 0) std::memcpy(bytes.data(), data, size);
  }
  void* data() { return bytes.data(); }
};

// The f32 or bf16 value stored at `bytes`.
float to_float_at(const uint8_t* bytes, DType dtype) {
  uint32_t bits = 0;
  if (dtype == DType::f32) {
    std::memcpy(&bits, bytes, sizeof bits);
  } else {
    uint16_t half = 0;
    std::memcpy(&half, bytes, sizeof half);
    bits = static_cast<uint32_t>(half) << 16;
  }
  float value = 0.0f;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

std::vector<uint8_t> random_codes(int64_t count, Rng& rng) {
  std::vector<uint8_t> codes(static_cast<size_t>(std::max<int64_t>(count, 0)));
  for (uint8_t& code : codes) code = static_cast<uint8_t>(rng.integer(0, 255));
  return codes;
}

// One random call; `completed` counts those that reached a result rather than an error.
void fuzz_call(Rng& rng, ThreadPool& threads, int call, int& completed) {
  const MoeConfig c = random_config(rng, rng.chance(0.2));
  const int64_t tokens = rng.integer(0, c.max_tokens + 1);
  SCOPED_TRACE("call " + std::to_string(call) + ": " + describe(c, tokens));
  const int64_t h = c.hidden, inter = c.intermediate, e = c.num_experts, k = c.top_k;
  const int64_t local = c.num_local_experts();
  const bool fp8 = c.quant != QuantScheme::none;
  const auto count = [](std::initializer_list<int64_t> dims) {
    int64_t n = 1;
    for (int64_t d : dims) n *= std::max<int64_t>(d, 0);
    return n;
  };

  // Storage first (never throws); the views over it may throw for sizes < 0, as a caller's would.
  HostTensor x(c.dtype, hostile_values(count({tokens, h}), rng));
  const DType out_dtype = c.dtype == DType::bf16 ? DType::bf16 : DType::f32;
  const Buffer poisoned = Buffer::poisoned(out_dtype, count({tokens, h}));
  HostTensor out(poisoned.bytes().data(), poisoned.bytes().size());
  const DType logits_dtype = rng.chance(0.5) ? DType::f32 : DType::bf16;
  HostTensor logits(logits_dtype, hostile_values(count({tokens, e}), rng));
  HostTensor bias(DType::f32, hostile_values(std::max<int64_t>(e, 0), rng));
  std::vector<int32_t> ids(static_cast<size_t>(count({tokens, k})));
  for (int32_t& id : ids) {
    id = rng.chance(0.05) ? INT_MIN : static_cast<int32_t>(rng.integer(-2, e + 2));
  }
  HostTensor ids_storage(ids.data(), ids.size() * sizeof(int32_t));
  HostTensor weights(DType::f32, hostile_values(count({tokens, k}), rng));
  const DType weight_dtype = fp8 ? DType::f8e4m3 : c.dtype;
  const int64_t w13_count = count({local, 2 * inter, h});
  const int64_t w2_count = count({local, h, inter});
  HostTensor w13 =
      fp8 ? HostTensor(random_codes(w13_count, rng).data(), static_cast<size_t>(w13_count))
          : HostTensor(weight_dtype, hostile_values(w13_count, rng));
  HostTensor w2 =
      fp8 ? HostTensor(random_codes(w2_count, rng).data(), static_cast<size_t>(w2_count))
          : HostTensor(weight_dtype, hostile_values(w2_count, rng));
  const auto blocks = [](int64_t n) { return (n + 127) / 128; };
  // The scale tensors of the scheme (formats.md): w13's when `gate_up`, else w2's.
  const auto scale_view = [&](HostTensor& t, bool gate_up) {
    switch (c.quant) {
      case QuantScheme::fp8_channel:
        return gate_up ? TensorView::contiguous(t.data(), DType::f32, {local, 2 * inter})
                       : TensorView::contiguous(t.data(), DType::f32, {local, h});
      case QuantScheme::fp8_block:
        return gate_up ? TensorView::contiguous(t.data(), DType::f32,
                                                {local, blocks(2 * inter), blocks(h)})
                       : TensorView::contiguous(t.data(), DType::f32,
                                                {local, blocks(h), blocks(inter)});
      default: return TensorView::contiguous(t.data(), DType::f32, {local});
    }
  };
  const bool block = c.quant == QuantScheme::fp8_block;
  const bool channel = c.quant == QuantScheme::fp8_channel;
  const int64_t s13_count = block ? count({local, blocks(2 * inter), blocks(h)})
                                  : (channel ? count({local, 2 * inter}) : count({local}));
  const int64_t s2_count = block ? count({local, blocks(h), blocks(inter)})
                                 : (channel ? count({local, h}) : count({local}));
  HostTensor s13(DType::f32, hostile_values(s13_count, rng));
  HostTensor s2(DType::f32, hostile_values(s2_count, rng));
  HostTensor input_scales(DType::f32, hostile_values(2, rng));
  const auto num_valid = static_cast<int32_t>(rng.integer(-5, tokens + 5));
  std::vector<int32_t> diagnostics(kDiagnosticCount, 0);

  Inputs in;
  try {
    in.x = maybe_break(TensorView::contiguous(x.data(), c.dtype, {tokens, h}), rng);
    if (rng.chance(0.6)) {
      in.router_logits =
          maybe_break(TensorView::contiguous(logits.data(), logits_dtype, {tokens, e}), rng);
      if (c.routing.kind == RoutingKind::grouped_topk && rng.chance(0.8)) {
        in.correction_bias = TensorView::contiguous(bias.data(), DType::f32, {e});
      }
    } else {
      in.topk_ids =
          maybe_break(TensorView::contiguous(ids_storage.data(), DType::i32, {tokens, k}), rng);
      in.topk_weights =
          maybe_break(TensorView::contiguous(weights.data(), DType::f32, {tokens, k}), rng);
    }
    if (rng.chance(0.4)) in.num_valid_tokens = &num_valid;
    in.diagnostics = diagnostics.data();
    Weights w;
    w.w13 =
        maybe_break(TensorView::contiguous(w13.data(), weight_dtype, {local, 2 * inter, h}), rng);
    w.w2 = maybe_break(TensorView::contiguous(w2.data(), weight_dtype, {local, h, inter}), rng);
    if (fp8) {
      w.w13_scale = maybe_break(scale_view(s13, true), rng);
      w.w2_scale = maybe_break(scale_view(s2, false), rng);
      if (rng.chance(0.3)) {
        w.w13_input_scale = TensorView::contiguous(input_scales.data(), DType::f32, {1});
        w.w2_input_scale =
            TensorView::contiguous(static_cast<float*>(input_scales.data()) + 1, DType::f32, {1});
      }
    }
    Outputs outputs;
    outputs.out = maybe_break(TensorView::contiguous(out.data(), c.dtype, {tokens, h}), rng);
    const Layer layer(c, Device::cpu());
    const size_t bytes = layer.workspace_bytes();
    AlignedBuffer workspace(bytes + 256);
    const size_t given = rng.chance(0.03) && bytes > 0 ? bytes - 1 : bytes;
    layer.forward(in, w, outputs, {workspace.data(), given}, Stream::cpu(&threads));
  } catch (const Error&) {
    return;  // a clear error is a defined result
  }
  ++completed;
  // Defined result: every row written; padding rows zero; counters never negative.
  const int64_t valid =
      in.num_valid_tokens == nullptr ? tokens : std::clamp<int64_t>(num_valid, 0, tokens);
  const std::vector<uint8_t> poison_bytes = poisoned.bytes();
  const size_t element = dtype_size(out_dtype);
  for (int64_t i = 0; i < count({tokens, h}); ++i) {
    const size_t at = static_cast<size_t>(i) * element;
    ASSERT_NE(std::memcmp(out.bytes.data() + at, poison_bytes.data() + at, element), 0)
        << "output element " << i << " was not written";
    if (i / h >= valid) {
      ASSERT_EQ(to_float_at(out.bytes.data() + at, out_dtype), 0.0f) << "padding element " << i;
    }
  }
  for (int32_t counter : diagnostics) ASSERT_GE(counter, 0);
}

TEST(ForwardFuzz, EveryCallGivesAResultOrAnError) {
  Rng rng = Rng::for_current_test();
  ThreadPool threads(2);
  int completed = 0;
  for (int call = 0; call < kCalls; ++call) {
    fuzz_call(rng, threads, call, completed);
    if (::testing::Test::HasFatalFailure()) return;
  }
  // The draw must reach forward()'s result often enough to mean something.
  EXPECT_GT(completed, kCalls / 10);
}

}  // namespace
}  // namespace ironmoe::test
