// Layer::forward with FP8 experts on the CPU against the FP8 float64 reference (reference_fp8.h):
// every scheme, static and dynamic per-tensor scales, bf16 and f32 activations, H and I that are
// not multiples of 128 (partial scale blocks), hostile ids (out of range, -1, duplicates, remote),
// padding rows, NaN rows, expert-parallel shards, the stages run one by one, and the batch sizes
// around 8192 where an engine once indexed an FP8 scale array by token count.
//
// Tolerance: the layer sums code x scale products in fp32 where the reference uses float64, and
// quantises h from an fp32 GEMM1 result, so once in a while an h code rounds the other way (one
// E4M3 step, 1/16 to 1/8 of that element); bf16 output adds 2^-9. Observed below 1e-2 of a row's
// largest value; allowed 2e-2 (bf16) and 1e-2 (f32). Each case also checks that the layer is
// much closer to the FP8 reference than to the unquantised one, so an unquantised path fails.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/workspace_layout.h"
#include "reference_fp8.h"
#include "reference_moe.h"
#include "test_util.h"

namespace ironmoe::test {
namespace {

struct Fp8Problem {
  LayerProblem p;
  reference::Fp8Weights w;
  std::vector<float> static_scales;  // {GEMM1, GEMM2} input scales, fp8_tensor only; empty: dynamic
};

// Multiplies each element of a [count, rows, cols] tensor by 2^u per matrix, per row and per
// 128 x 128 block (u uniform in [-2, 2) each), so that every scale of every scheme differs from
// its neighbours and a scale read from the wrong expert, row or block shows in the output.
void vary_magnitudes(std::vector<float>& values, int64_t count, int64_t rows, int64_t cols,
                     Rng& rng) {
  std::uniform_real_distribution<float> exponent(-2.0f, 2.0f);
  const int64_t row_blocks = (rows + 127) / 128;
  const int64_t col_blocks = (cols + 127) / 128;
  for (int64_t m = 0; m < count; ++m) {
    const float matrix = std::exp2(exponent(rng.engine()));
    std::vector<float> block(static_cast<size_t>(row_blocks * col_blocks));
    for (float& b : block) b = std::exp2(exponent(rng.engine()));
    for (int64_t r = 0; r < rows; ++r) {
      const float row = std::exp2(exponent(rng.engine()));
      for (int64_t c = 0; c < cols; ++c) {
        values[(m * rows + r) * cols + c] *=
            matrix * row * block[static_cast<size_t>(r / 128 * col_blocks + c / 128)];
      }
    }
  }
}

Fp8Problem make_fp8_problem(MoeConfig config, int64_t tokens, Rng& rng,
                            bool static_scales = false) {
  Fp8Problem f;
  f.p = make_problem(config, tokens, false, rng);
  const int64_t local = config.num_local_experts();
  const int64_t h = config.hidden;
  const int64_t i = config.intermediate;
  std::vector<float> w13 = f.p.w13.to_float();
  std::vector<float> w2 = f.p.w2.to_float();
  std::vector<float> x = f.p.x.to_float();
  vary_magnitudes(w13, local, 2 * i, h, rng);
  vary_magnitudes(w2, local, h, i, rng);
  vary_magnitudes(x, 1, tokens, h, rng);  // rows and 128-column blocks of x differ too
  f.p.w13 = Buffer::from(config.dtype, w13);
  f.p.w2 = Buffer::from(config.dtype, w2);
  f.p.x = Buffer::from(config.dtype, x);
  f.w = reference::quantize_weights(reference_scheme(config.quant), local, config.hidden,
                                    config.intermediate, f.p.w13.to_float().data(),
                                    f.p.w2.to_float().data());
  if (static_scales) f.static_scales = {3.0f / 448.0f, 0.5f / 448.0f};
  return f;
}

// The problem's layer with its FP8 codes and scales (test_util's run_layer, precomputed routing).
LayerRun run_fp8(const Fp8Problem& f, ThreadPool* threads = nullptr, bool by_stages = false) {
  const Weights w = fp8_weight_views(f.p.config, f.w, f.static_scales);
  return run_layer(f.p, threads, nullptr, by_stages, &w);
}

std::vector<double> fp8_reference(const Fp8Problem& f, const std::vector<int64_t>& tokens) {
  const LayerProblem& p = f.p;
  std::vector<double> out(tokens.size() * static_cast<size_t>(p.config.hidden));
  reference::layer_fp8(p.config, p.tokens, p.x.to_float().data(), p.ids.data(), p.weights.data(),
                       f.w, f.static_scales.empty() ? nullptr : f.static_scales.data(),
                       p.num_valid.value_or(p.tokens), tokens, out.data());
  return out;
}

std::vector<double> plain_reference(const Fp8Problem& f, const std::vector<int64_t>& tokens) {
  const LayerProblem& p = f.p;
  std::vector<double> out(tokens.size() * static_cast<size_t>(p.config.hidden));
  reference::layer(p.config, p.tokens, p.x.to_float().data(), p.ids.data(), p.weights.data(),
                   p.w13.to_float().data(), p.w2.to_float().data(), p.num_valid.value_or(p.tokens),
                   tokens, false, out.data());
  return out;
}

// The worst over rows of max |got - ref| / max |ref| of the row; NaN must sit exactly where the
// reference has NaN (a NaN row's own output), and nothing else may be NaN.
double compare_rows(const std::vector<double>& ref, const std::vector<float>& out,
                    const std::vector<int64_t>& tokens, int64_t hidden) {
  double worst = 0.0;
  for (size_t n = 0; n < tokens.size(); ++n) {
    double diff = 0.0;
    double scale = 1e-30;
    for (int64_t c = 0; c < hidden; ++c) {
      const double r = ref[n * hidden + c];
      const double g = out[tokens[n] * hidden + c];
      EXPECT_EQ(std::isnan(r), std::isnan(g)) << "token " << tokens[n] << ", column " << c;
      if (std::isnan(r) || std::isnan(g)) continue;
      diff = std::max(diff, std::fabs(g - r));
      scale = std::max(scale, std::fabs(r));
    }
    worst = std::max(worst, diff / scale);
  }
  return worst;
}

double fp8_tolerance(DType dtype) { return dtype == DType::bf16 ? 2e-2 : 1e-2; }

// Checks the run against both references at `tokens`.
void expect_matches_fp8_reference(const Fp8Problem& f, const LayerRun& run,
                                  const std::vector<int64_t>& tokens) {
  const int64_t hidden = f.p.config.hidden;
  const std::vector<float> out = run.out.to_float();
  const double error = compare_rows(fp8_reference(f, tokens), out, tokens, hidden);
  EXPECT_LT(error, fp8_tolerance(f.p.config.dtype));
  const std::vector<double> plain = plain_reference(f, tokens);
  double distance_to_plain = 0.0;
  for (size_t n = 0; n < tokens.size(); ++n) {
    double diff = 0.0, scale = 1e-30;
    for (int64_t c = 0; c < hidden; ++c) {
      const double r = plain[n * hidden + c];
      const double g = out[tokens[n] * hidden + c];
      if (std::isnan(r) || std::isnan(g)) continue;
      diff = std::max(diff, std::fabs(g - r));
      scale = std::max(scale, std::fabs(r));
    }
    distance_to_plain = std::max(distance_to_plain, diff / scale);
  }
  EXPECT_LT(error, 0.5 * distance_to_plain) << "no closer to the FP8 reference than to the "
                                            << "unquantised layer: was it quantised?";
}

std::vector<int64_t> all_tokens(int64_t tokens) {
  std::vector<int64_t> list;
  for (int64_t t = 0; t < tokens; ++t) list.push_back(t);
  return list;
}

MoeConfig fp8_config(QuantScheme quant, DType dtype, int64_t max_tokens) {
  MoeConfig c;
  c.hidden = 320;        // 2.5 blocks of 128
  c.intermediate = 200;  // 2I = 400: 3.1 blocks
  c.num_experts = 12;
  c.top_k = 3;
  c.max_tokens = max_tokens;
  c.dtype = dtype;
  c.quant = quant;
  return c;
}

struct SchemeCase {
  QuantScheme quant;
  DType dtype;
  bool static_scales;
};

class LayerFp8 : public ::testing::TestWithParam<SchemeCase> {};

INSTANTIATE_TEST_SUITE_P(Schemes, LayerFp8,
                         ::testing::Values(SchemeCase{QuantScheme::fp8_tensor, DType::bf16, false},
                                           SchemeCase{QuantScheme::fp8_tensor, DType::bf16, true},
                                           SchemeCase{QuantScheme::fp8_tensor, DType::f32, false},
                                           SchemeCase{QuantScheme::fp8_channel, DType::bf16, false},
                                           SchemeCase{QuantScheme::fp8_channel, DType::f32, false},
                                           SchemeCase{QuantScheme::fp8_block, DType::bf16, false},
                                           SchemeCase{QuantScheme::fp8_block, DType::f32, false}),
                         [](const auto& test) {
                           return std::string(quant_scheme_name(test.param.quant)) + "_" +
                                  dtype_name(test.param.dtype) +
                                  (test.param.static_scales ? "_static" : "");
                         });

TEST_P(LayerFp8, MatchesTheReferenceWithHostileIdsAndPaddingRows) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE(rng.seed());
  const SchemeCase& param = GetParam();
  for (int64_t tokens : {1, 5, 37}) {
    Fp8Problem f = make_fp8_problem(fp8_config(param.quant, param.dtype, 64), tokens, rng,
                                    param.static_scales);
    const int64_t k = f.p.config.top_k;
    f.p.ids[0] = -1;  // no expert
    if (tokens > 1) {
      f.p.ids[k] = 99;                  // out of range
      f.p.ids[k + 1] = f.p.ids[k + 2];  // one expert twice in a token
      f.p.num_valid = static_cast<int32_t>(tokens - 1);
      // The padding row holds huge values: a per-tensor scale that saw them would crush every
      // valid row (the reference takes the scale over valid rows only).
      std::vector<float> x = f.p.x.to_float();
      for (int64_t c = 0; c < f.p.config.hidden; ++c) {
        x[(tokens - 1) * f.p.config.hidden + c] *= 3e4f;
      }
      f.p.x = Buffer::from(param.dtype, x);
    }
    const LayerRun run = run_fp8(f);
    expect_matches_fp8_reference(f, run, all_tokens(tokens));
    EXPECT_EQ(run.diagnostics[kDiagIdOutOfRange], tokens > 1 ? 2 : 1);
    if (tokens > 1) {  // the padding row is zero
      const std::vector<float> out = run.out.to_float();
      for (int64_t c = 0; c < f.p.config.hidden; ++c)
        ASSERT_EQ(out[(tokens - 1) * f.p.config.hidden + c], 0.0f);
    }
  }
}

TEST_P(LayerFp8, StagesOneByOneEqualForwardBitForBit) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE(rng.seed());
  const SchemeCase& param = GetParam();
  const Fp8Problem f =
      make_fp8_problem(fp8_config(param.quant, param.dtype, 16), 16, rng, param.static_scales);
  ThreadPool threads(3);
  EXPECT_EQ(run_fp8(f).out.bytes(), run_fp8(f, &threads, true).out.bytes());
}

TEST_P(LayerFp8, NanRowStaysInItsRow) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE(rng.seed());
  const SchemeCase& param = GetParam();
  Fp8Problem f =
      make_fp8_problem(fp8_config(param.quant, param.dtype, 8), 8, rng, param.static_scales);
  std::vector<float> x = f.p.x.to_float();
  x[3 * f.p.config.hidden + 200] = std::numeric_limits<float>::quiet_NaN();
  f.p.x = Buffer::from(param.dtype, x);
  const LayerRun run = run_fp8(f);
  const std::vector<float> out = run.out.to_float();
  for (int64_t c = 0; c < f.p.config.hidden; ++c)
    ASSERT_TRUE(std::isnan(out[3 * f.p.config.hidden + c])) << c;
  expect_matches_fp8_reference(f, run, {0, 1, 2, 4, 5, 6, 7});
}

// An expert-parallel shard: only local ids are computed, the remote ones counted.
TEST(LayerFp8Shards, ShardMatchesTheReference) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE(rng.seed());
  for (QuantScheme quant :
       {QuantScheme::fp8_tensor, QuantScheme::fp8_channel, QuantScheme::fp8_block}) {
    MoeConfig c = fp8_config(quant, DType::bf16, 24);
    c.expert_begin = 4;
    c.expert_end = 9;
    Fp8Problem f = make_fp8_problem(c, 24, rng);
    // Token 5 has the batch's largest values and only remote experts: fp8_tensor's GEMM1 scale
    // is taken over every valid token before dispatch, so it must still see them.
    for (int64_t j = 0; j < c.top_k; ++j) f.p.ids[5 * c.top_k + j] = static_cast<int32_t>(j);
    std::vector<float> x = f.p.x.to_float();
    for (int64_t col = 0; col < c.hidden; ++col) x[5 * c.hidden + col] *= 3e4f;
    f.p.x = Buffer::from(c.dtype, x);
    const LayerRun run = run_fp8(f);
    expect_matches_fp8_reference(f, run, all_tokens(24));
    EXPECT_GT(run.diagnostics[kDiagIdRemote], 0);
  }
}

// Batch sizes around 8192 (and its neighbours) with every scheme: first, middle and last tokens
// against the reference; the scale indices depend on the permuted row only.
TEST(LayerFp8Sizes, AroundEightThousandTokens) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE(rng.seed());
  ThreadPool threads(2);
  for (QuantScheme quant :
       {QuantScheme::fp8_tensor, QuantScheme::fp8_channel, QuantScheme::fp8_block}) {
    for (int64_t tokens : {8191, 8192, 8193}) {
      if (quant != QuantScheme::fp8_block && tokens != 8192) continue;
      MoeConfig c;
      c.hidden = 136;  // a partial second block
      c.intermediate = 72;
      c.num_experts = 8;
      c.top_k = 2;
      c.max_tokens = 8193;
      c.dtype = DType::bf16;
      c.quant = quant;
      Fp8Problem f = make_fp8_problem(c, tokens, rng);
      f.p.ids[(tokens - 1) * 2] = f.p.ids[(tokens - 1) * 2 + 1];  // the last token: duplicate
      const LayerRun run = run_fp8(f, &threads);
      expect_matches_fp8_reference(f, run, {0, 1, tokens / 2, tokens - 2, tokens - 1});
    }
  }
}

// fp8_channel, fp8_block and fp8_tensor with static scales quantise each token on its own, so a
// token alone and the same token inside a batch give the same bits (contract D1).
TEST(LayerFp8Determinism, TokenAloneAndInsideABatchGiveTheSameBits) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE(rng.seed());
  for (QuantScheme quant :
       {QuantScheme::fp8_tensor, QuantScheme::fp8_channel, QuantScheme::fp8_block}) {
    const Fp8Problem batch = make_fp8_problem(fp8_config(quant, DType::bf16, 9), 9, rng,
                                              quant == QuantScheme::fp8_tensor);
    const std::vector<uint8_t> batch_out = run_fp8(batch).out.bytes();
    const int64_t hidden = batch.p.config.hidden;
    const int64_t k = batch.p.config.top_k;
    for (int64_t t : {0, 4, 8}) {
      Fp8Problem alone = batch;
      alone.p.tokens = 1;
      alone.p.config.max_tokens = 1;
      const std::vector<float> x = batch.p.x.to_float();
      alone.p.x = Buffer::from(
          DType::bf16, std::vector<float>(x.begin() + t * hidden, x.begin() + (t + 1) * hidden));
      alone.p.ids.assign(batch.p.ids.begin() + t * k, batch.p.ids.begin() + (t + 1) * k);
      alone.p.weights.assign(batch.p.weights.begin() + t * k,
                             batch.p.weights.begin() + (t + 1) * k);
      const std::vector<uint8_t> row = run_fp8(alone).out.bytes();
      const auto first = batch_out.begin() + t * hidden * 2;  // bf16 bytes
      EXPECT_TRUE(std::equal(row.begin(), row.end(), first))
          << quant_scheme_name(quant) << ", token " << t;
    }
  }
}

// The experts stage on its own with FP8 experts (an engine's dispatch feeding it rows directly):
// each row of an fp8_channel stage equals the FP8 reference's one-slot layer of that row, and
// the scratch must be 256-byte aligned.
TEST(LayerFp8Stage, ExpertsStageAloneMatchesTheReferenceAndChecksItsScratch) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE(rng.seed());
  MoeConfig c = fp8_config(QuantScheme::fp8_channel, DType::f32, 10);
  const Fp8Problem f = make_fp8_problem(c, 10, rng);
  const int64_t hidden = c.hidden;
  const int64_t inter = c.intermediate;
  const int64_t experts = c.num_experts;
  // Rows 0-2 to expert 3, rows 3-9 to expert 7; the rest own none.
  std::vector<int32_t> offsets(static_cast<size_t>(experts), 0);
  std::vector<int32_t> counts(static_cast<size_t>(experts), 0);
  offsets[3] = 0;
  counts[3] = 3;
  offsets[7] = 3;
  counts[7] = 7;
  Buffer h = Buffer::poisoned(DType::f32, 10 * inter);
  Buffer out = Buffer::poisoned(DType::f32, 10 * hidden);
  const size_t scratch_bytes =
      expert_scratch_bytes(10, hidden, inter, experts, DType::f32, Device::cpu(), c.quant);
  AlignedBuffer scratch(scratch_bytes + 256);
  ExpertArgs args;
  args.permuted_in = TensorView::contiguous(f.p.x.data(), DType::f32, {10, hidden});
  args.expert_offsets = TensorView::contiguous(offsets.data(), DType::i32, {experts});
  args.expert_counts = TensorView::contiguous(counts.data(), DType::i32, {experts});
  args.w13 = TensorView::contiguous(f.w.w13.data(), DType::f8e4m3, {experts, 2 * inter, hidden});
  args.w2 = TensorView::contiguous(f.w.w2.data(), DType::f8e4m3, {experts, hidden, inter});
  args.quant = c.quant;
  args.w13_scale = TensorView::contiguous(f.w.w13_scale.data(), DType::f32, {experts, 2 * inter});
  args.w2_scale = TensorView::contiguous(f.w.w2_scale.data(), DType::f32, {experts, hidden});
  args.intermediate = TensorView::contiguous(h.data(), DType::f32, {10, inter});
  args.permuted_out = TensorView::contiguous(out.data(), DType::f32, {10, hidden});
  args.scratch = static_cast<char*>(scratch.data()) + 16;
  args.scratch_bytes = scratch_bytes;
  expect_error_naming([&] { ironmoe::experts(args, Stream::cpu()); }, {"scratch", "256"},
                      "misaligned FP8 scratch");
  args.scratch = scratch.data();
  ironmoe::experts(args, Stream::cpu());

  const std::vector<float> x = f.p.x.to_float();
  const std::vector<float> got = out.to_float();
  MoeConfig one = c;
  one.top_k = 1;
  one.max_tokens = 1;
  for (int64_t r = 0; r < 10; ++r) {
    const int32_t id = r < 3 ? 3 : 7;
    const float weight = 1.0f;
    std::vector<double> ref(static_cast<size_t>(hidden));
    reference::layer_fp8(one, 1, x.data() + r * hidden, &id, &weight, f.w, nullptr, 1, {0},
                         ref.data());
    double diff = 0.0, largest = 1e-30;
    for (int64_t col = 0; col < hidden; ++col) {
      diff = std::max(diff, std::fabs(got[r * hidden + col] - ref[col]));
      largest = std::max(largest, std::fabs(ref[col]));
    }
    EXPECT_LT(diff / largest, fp8_tolerance(DType::f32)) << "row " << r;
  }
}

// ExpertArgs::gathered on the CPU: the stage reading its rows from strided tokens through
// row_to_slot gives the bytes of the stage over the rows gathered beforehand, every scheme and
// storage dtype, an entry of -1 and one past the slots reading zeros and permuted_in poisoned;
// and every misuse of the gathered input is a clear error.
TEST(LayerFp8Stage, GatheredInputGivesTheBytesOfThePermutedRowsAndChecksItsArguments) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE(rng.seed());
  constexpr int64_t kRows = 10;
  constexpr int64_t kTokens = 6;
  for (QuantScheme quant :
       {QuantScheme::fp8_tensor, QuantScheme::fp8_channel, QuantScheme::fp8_block}) {
    for (DType dtype : {DType::f32, DType::bf16}) {
      SCOPED_TRACE(std::string(quant_scheme_name(quant)) + " " + dtype_name(dtype));
      const MoeConfig c = fp8_config(quant, dtype, kTokens);
      const Fp8Problem f = make_fp8_problem(c, kTokens, rng);
      const int64_t hidden = c.hidden;
      const int64_t inter = c.intermediate;
      const int64_t experts = c.num_experts;
      const int64_t stride = hidden + 3;
      const int64_t slots = kTokens * c.top_k;
      const std::vector<float> x = f.p.x.to_float();
      std::vector<float> strided(static_cast<size_t>(kTokens * stride), poison_float());
      for (int64_t t = 0; t < kTokens; ++t) {
        std::copy_n(x.begin() + t * hidden, hidden, strided.begin() + t * stride);
      }
      std::uniform_int_distribution<int32_t> any_slot(0, static_cast<int32_t>(slots - 1));
      std::vector<int32_t> row_to_slot(kRows);
      for (int32_t& slot : row_to_slot) slot = any_slot(rng.engine());
      row_to_slot[1] = -1;
      row_to_slot[5] = static_cast<int32_t>(slots);
      std::vector<float> gathered(static_cast<size_t>(kRows * hidden), 0.0f);
      for (int64_t r = 0; r < kRows; ++r) {
        const int32_t slot = row_to_slot[r];
        if (slot < 0 || slot >= slots) continue;
        std::copy_n(x.begin() + slot / c.top_k * hidden, hidden, gathered.begin() + r * hidden);
      }
      Buffer tokens = Buffer::from(dtype, strided);
      Buffer permuted = Buffer::from(dtype, gathered);
      // Rows 0-2 to expert 3, rows 3-9 to expert 7; the rest own none.
      std::vector<int32_t> offsets(static_cast<size_t>(experts), 0);
      std::vector<int32_t> counts(static_cast<size_t>(experts), 0);
      counts[3] = 3;
      offsets[7] = 3;
      counts[7] = 7;
      const size_t scratch_bytes =
          expert_scratch_bytes(kRows, hidden, inter, experts, dtype, Device::cpu(), quant);
      AlignedBuffer scratch(scratch_bytes);
      Buffer h = Buffer::poisoned(dtype, kRows * inter);
      const Weights w = fp8_weight_views(c, f.w, {});
      ExpertArgs args;
      args.permuted_in = TensorView::contiguous(permuted.data(), dtype, {kRows, hidden});
      args.expert_offsets = TensorView::contiguous(offsets.data(), DType::i32, {experts});
      args.expert_counts = TensorView::contiguous(counts.data(), DType::i32, {experts});
      args.w13 = w.w13;
      args.w2 = w.w2;
      args.quant = quant;
      args.w13_scale = w.w13_scale;
      args.w2_scale = w.w2_scale;
      args.intermediate = TensorView::contiguous(h.data(), dtype, {kRows, inter});
      args.scratch = scratch.data();
      args.scratch_bytes = scratch_bytes;
      const auto run = [&](ExpertArgs call) {
        Buffer out = Buffer::poisoned(dtype, kRows * hidden);
        call.permuted_out = TensorView::contiguous(out.data(), dtype, {kRows, hidden});
        ironmoe::experts(call, Stream::cpu());
        return out.bytes();
      };
      const std::vector<uint8_t> from_permuted = run(args);

      permuted = Buffer::poisoned(dtype, kRows * hidden);  // any read of permuted_in shows
      args.permuted_in = TensorView::contiguous(permuted.data(), dtype, {kRows, hidden});
      args.gathered.x = TensorView::contiguous(tokens.data(), dtype, {kTokens, hidden});
      args.gathered.x.strides[0] = stride;
      args.gathered.row_to_slot = TensorView::contiguous(row_to_slot.data(), DType::i32, {kRows});
      args.gathered.top_k = c.top_k;
      EXPECT_TRUE(run(args) == from_permuted) << "the gathered input changed the stage's bytes";

      if (quant != QuantScheme::fp8_block || dtype != DType::bf16) continue;
      const std::pair<const char*, std::function<void(ExpertArgs&)>> misuses[] = {
          {"bf16 experts", [](ExpertArgs& a) { a.quant = QuantScheme::none; }},
          {"no row_to_slot", [](ExpertArgs& a) { a.gathered.row_to_slot = {}; }},
          {"row_to_slot rows", [](ExpertArgs& a) { a.gathered.row_to_slot.shape[0] -= 1; }},
          {"row_to_slot dtype", [](ExpertArgs& a) { a.gathered.row_to_slot.dtype = DType::f32; }},
          {"x columns", [](ExpertArgs& a) { a.gathered.x.shape[1] -= 1; }},
          {"x dtype", [](ExpertArgs& a) { a.gathered.x.dtype = DType::f32; }},
          {"x column stride", [](ExpertArgs& a) { a.gathered.x.strides[1] = 2; }},
          {"top_k 0", [](ExpertArgs& a) { a.gathered.top_k = 0; }},
          {"top_k past kMaxTopK", [](ExpertArgs& a) { a.gathered.top_k = kMaxTopK + 1; }},
      };
      Buffer spare_out = Buffer::poisoned(dtype, kRows * hidden);
      for (const auto& [what, breaks] : misuses) {
        ExpertArgs bad = args;
        bad.permuted_out = TensorView::contiguous(spare_out.data(), dtype, {kRows, hidden});
        breaks(bad);
        expect_error_naming([&] { ironmoe::experts(bad, Stream::cpu()); }, {"gathered"}, what);
      }
      // The scratch over the tokens: refused, naming both.
      ExpertArgs overlap = args;
      overlap.permuted_out = TensorView::contiguous(spare_out.data(), dtype, {kRows, hidden});
      overlap.gathered.x = TensorView::contiguous(scratch.data(), dtype, {kTokens, hidden});
      expect_error_naming([&] { ironmoe::experts(overlap, Stream::cpu()); },
                          {"scratch", "gathered.x"}, "scratch over the tokens");
    }
  }
}

// A layer's workspace holds one permuted buffer (the experts stage runs in place), and an FP8
// layer's no h buffer either (h lives in the expert scratch, fp32 then E4M3): against the same
// layer without quantisation, less its h buffer, only the expert scratch and the 256-byte
// alignment of each buffer differ.
TEST(LayerFp8Workspace, HoldsOnePermutedBufferAndNoHBuffer) {
  for (DType dtype : {DType::bf16, DType::f32}) {
    for (QuantScheme quant :
         {QuantScheme::fp8_tensor, QuantScheme::fp8_channel, QuantScheme::fp8_block}) {
      SCOPED_TRACE(std::string(quant_scheme_name(quant)) + " " + dtype_name(dtype));
      const MoeConfig fp8 = fp8_config(quant, dtype, 4096);
      MoeConfig plain = fp8;
      plain.quant = QuantScheme::none;
      const core::WorkspaceLayout with = core::workspace_layout(fp8, Device::cpu());
      const core::WorkspaceLayout without = core::workspace_layout(plain, Device::cpu());
      const auto rows = static_cast<size_t>(fp8.permuted_rows(fp8.max_tokens));
      const size_t element = dtype_size(dtype);
      const size_t dropped = rows * static_cast<size_t>(fp8.intermediate) * element;
      const size_t fp8_only = with.expert_scratch_bytes - without.expert_scratch_bytes +
                              sizeof(float);  // + fp8_tensor's dynamic input scale
      EXPECT_LE(with.total_bytes, without.total_bytes - dropped + fp8_only + 4 * 256);
      EXPECT_EQ(with.permuted_in, with.permuted_out);
      EXPECT_EQ(without.permuted_in, without.permuted_out);
      EXPECT_EQ(workspace_bytes(fp8, Device::cpu()), with.total_bytes);
    }
  }
}

TEST(LayerFp8Validation, BadScalesAreClearErrors) {
  Rng rng = Rng::for_current_test();
  Fp8Problem f = make_fp8_problem(fp8_config(QuantScheme::fp8_block, DType::bf16, 4), 4, rng);
  const MoeConfig& c = f.p.config;
  const Layer layer(c, Device::cpu());
  AlignedBuffer space(layer.workspace_bytes());
  Buffer out = Buffer::poisoned(c.dtype, 4 * c.hidden);
  Inputs in;
  in.x = TensorView::contiguous(f.p.x.data(), c.dtype, {4, c.hidden});
  in.topk_ids = TensorView::contiguous(f.p.ids.data(), DType::i32, {4, c.top_k});
  in.topk_weights = TensorView::contiguous(f.p.weights.data(), DType::f32, {4, c.top_k});
  Outputs outputs;
  outputs.out = TensorView::contiguous(out.data(), c.dtype, {4, c.hidden});
  const Workspace ws{space.data(), space.bytes()};
  const int64_t inter = c.intermediate;
  Weights w;
  w.w13 = TensorView::contiguous(f.w.w13.data(), DType::f8e4m3, {12, 2 * inter, c.hidden});
  w.w2 = TensorView::contiguous(f.w.w2.data(), DType::f8e4m3, {12, c.hidden, inter});
  w.w13_scale = TensorView::contiguous(f.w.w13_scale.data(), DType::f32, {12, 4, 3});
  w.w2_scale = TensorView::contiguous(f.w.w2_scale.data(), DType::f32, {12, 3, 2});
  auto forward = [&](const Weights& weights) {
    return [&, weights] { layer.forward(in, weights, outputs, ws, Stream::cpu()); };
  };
  forward(w)();  // the valid call

  Weights bad = w;
  bad.w13_scale = TensorView::contiguous(f.w.w13_scale.data(), DType::f32, {12, 3, 3});
  expect_error_naming(forward(bad), {"weights.w13_scale", "[12, 4, 3]"}, "w13 block scale rows");
  bad = w;
  bad.w2_scale = TensorView();
  expect_error_naming(forward(bad), {"weights.w2_scale", "none"}, "missing w2 scale");
  bad = w;
  bad.w13 = TensorView::contiguous(f.p.w13.data(), DType::bf16, {12, 2 * inter, c.hidden});
  expect_error_naming(forward(bad), {"weights.w13", "f8e4m3"}, "bf16 weights with fp8");
  bad = w;
  const float scale = 0.01f;
  bad.w13_input_scale = TensorView::contiguous(&scale, DType::f32, {1});
  expect_error_naming(forward(bad), {"weights.w13_input_scale", "fp8_tensor"},
                      "static scale with blocks");

  // Scales given to a layer without quantisation.
  MoeConfig plain = c;
  plain.quant = QuantScheme::none;
  const Layer plain_layer(plain, Device::cpu());
  AlignedBuffer plain_space(plain_layer.workspace_bytes());
  Weights plain_weights;
  plain_weights.w13 = TensorView::contiguous(f.p.w13.data(), c.dtype, {12, 2 * inter, c.hidden});
  plain_weights.w2 = TensorView::contiguous(f.p.w2.data(), c.dtype, {12, c.hidden, inter});
  plain_weights.w13_scale = w.w13_scale;
  expect_error_naming(
      [&] {
        plain_layer.forward(in, plain_weights, outputs, {plain_space.data(), plain_space.bytes()},
                            Stream::cpu());
      },
      {"weights.w13_scale", "quant is none"}, "scales without fp8");

  // Every scheme has a grouped GEMM form (on an sm_90 GPU; the CPU backend has one kernel).
  MoeConfig grouped = c;
  grouped.expert_kernel = ExpertKernel::grouped_gemm;
  for (QuantScheme quant :
       {QuantScheme::fp8_tensor, QuantScheme::fp8_channel, QuantScheme::fp8_block}) {
    grouped.quant = quant;
    EXPECT_NO_THROW(grouped.validate()) << quant_scheme_name(quant);
  }
}

}  // namespace
}  // namespace ironmoe::test
