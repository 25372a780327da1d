// Layer contract clauses end to end: padding rows are zero and cost no expert work, ids outside
// the local range contribute zero and are counted, duplicated ids are independent slots, expert-
// parallel shards sum to the single-rank output, batched overflow drops exactly the late slots,
// and the workspace stays within the documented bound.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>

#include "core/workspace_layout.h"
#include "reference_moe.h"
#include "test_util.h"

namespace ironmoe::test {
namespace {

void expect_close_to_reference(const LayerProblem& p, const LayerRun& run,
                               const std::string& what) {
  const std::vector<double> ref = reference_output(p);
  const std::vector<float> got = run.out.to_float();
  const double error =
      reference::max_relative_error(ref.data(), got.data(), p.tokens, p.config.hidden);
  EXPECT_LE(error, layer_tolerance(p.config.dtype))
      << what << ": max relative error " << error << " vs the reference; "
      << describe_worst(ref, got, p.config.hidden);
}

// expert_counts as the layer's plan left them in the workspace.
std::vector<int32_t> workspace_counts(const LayerProblem& p, const LayerRun& run) {
  const core::WorkspaceLayout layout = core::workspace_layout(p.config, Device::cpu());
  const auto* counts = reinterpret_cast<const int32_t*>(
      static_cast<const char*>(run.workspace->data()) + layout.expert_counts);
  return std::vector<int32_t>(counts, counts + p.config.num_local_experts());
}

std::string layout_name(Layout layout) {
  return layout == Layout::contiguous ? "contiguous" : "batched";
}

TEST(LayerContract, PaddingRowsAreZeroAndCostNoExpertWork) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  constexpr int64_t kTokens = 40;
  for (Layout layout : {Layout::contiguous, Layout::batched})
    for (bool from_logits : {true, false})
      for (int32_t num_valid : {0, -2, 1, static_cast<int32_t>(rng.integer(2, kTokens - 1))}) {
        SCOPED_TRACE(layout_name(layout) + (from_logits ? " logits" : " ids") + " num_valid " +
                     std::to_string(num_valid));
        MoeConfig config = small_config(16, 4, 64);
        config.layout = layout;
        LayerProblem p = make_problem(config, kTokens, from_logits, rng);
        p.num_valid = num_valid;
        const int64_t valid = std::max(num_valid, 0);
        // Padding rows hold what a stale buffer might: NaN logits, garbage ids and weights.
        for (int64_t t = valid; t < kTokens; ++t)
          for (int64_t i = 0; i < (from_logits ? config.num_experts : config.top_k); ++i) {
            if (from_logits) {
              p.logits[t * config.num_experts + i] = std::nanf("");
            } else {
              p.ids[t * config.top_k + i] = i % 2 ? INT32_MIN : 1000;
              p.weights[t * config.top_k + i] = std::nanf("");
            }
          }
        const LayerRun run = run_layer(p);
        const std::vector<float> out = run.out.to_float();
        for (int64_t i = valid * config.hidden; i < kTokens * config.hidden; ++i)
          ASSERT_EQ(out[i], 0.0f) << "padding token " << i / config.hidden << " column "
                                  << i % config.hidden << " is not zero";
        expect_close_to_reference(p, run, "valid rows");
        int64_t rows = 0;
        for (int32_t count : workspace_counts(p, run)) rows += count;
        EXPECT_EQ(rows, valid * config.top_k) << "expert rows planned for padding tokens";
        for (int d = 0; d < kDiagnosticCount; ++d)
          EXPECT_EQ(run.diagnostics[d], 0) << "diagnostics[" << d << "] counted padding rows";
      }
}

TEST(LayerContract, IdsOutsideTheLocalRangeContributeZeroAndAreCounted) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const int32_t invalid[] = {-1, 16, 17, 1000, INT32_MIN, INT32_MAX, -7};
  for (Layout layout : {Layout::contiguous, Layout::batched})
    for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, 16}, {4, 12}}) {
      SCOPED_TRACE(layout_name(layout) + " experts [" + std::to_string(begin) + ", " +
                   std::to_string(end) + ")");
      MoeConfig config = small_config(16, 4, 64);
      config.layout = layout;
      config.expert_begin = begin;
      config.expert_end = end;
      LayerProblem p = make_problem(config, 50, false, rng);
      int32_t out_of_range = 0, remote = 0;
      for (int32_t& id : p.ids) {
        if (rng.chance(0.3)) id = invalid[rng.integer(0, std::size(invalid) - 1)];
        if (id < 0 || id >= 16) {
          ++out_of_range;
        } else if (id < begin || id >= end) {
          ++remote;
        }
      }
      const LayerRun run = run_layer(p);
      expect_close_to_reference(p, run, "invalid and remote ids");
      EXPECT_EQ(run.diagnostics[kDiagIdOutOfRange], out_of_range);
      EXPECT_EQ(run.diagnostics[kDiagIdRemote], remote);
      EXPECT_EQ(run.diagnostics[kDiagCapacityOverflow], 0);
    }
}

// ids [e, e] with weights [a, b] give exactly what [e, -1] with weights [a + b, 0] gives, up to
// rounding: each duplicate is computed and weighted on its own.
TEST(LayerContract, DuplicatedIdsAreIndependentSlots) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  for (Layout layout : {Layout::contiguous, Layout::batched}) {
    SCOPED_TRACE(layout_name(layout));
    MoeConfig config = small_config(8, 2, 32);
    config.layout = layout;
    LayerProblem dup = make_problem(config, 20, false, rng);
    for (int64_t t = 0; t < dup.tokens; ++t) dup.ids[t * 2 + 1] = dup.ids[t * 2];
    LayerProblem merged = dup;
    for (int64_t t = 0; t < dup.tokens; ++t) {
      merged.ids[t * 2 + 1] = -1;
      merged.weights[t * 2] = dup.weights[t * 2] + dup.weights[t * 2 + 1];
      merged.weights[t * 2 + 1] = 0.0f;
    }
    const LayerRun dup_run = run_layer(dup);
    const LayerRun merged_run = run_layer(merged);
    expect_close_to_reference(dup, dup_run, "duplicated ids");
    std::vector<double> merged_out;
    for (float v : merged_run.out.to_float()) merged_out.push_back(v);
    const std::vector<float> got = dup_run.out.to_float();
    const double error =
        reference::max_relative_error(merged_out.data(), got.data(), dup.tokens, config.hidden);
    EXPECT_LE(error, 1e-5) << "[e, e] with weights [a, b] differs from [e] with weight a + b; "
                           << describe_worst(merged_out, got, config.hidden);
  }
}

// Shards [0, a), [a, b), [b, E), one of them empty, each with its own slice of the weights: their
// outputs sum to the single-rank output, and each matches the reference for its range.
TEST(LayerContract, ExpertParallelShardsSumToTheSingleRankOutput) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  constexpr int64_t kExperts = 16;
  for (Layout layout : {Layout::contiguous, Layout::batched})
    for (bool from_logits : {true, false}) {
      SCOPED_TRACE(layout_name(layout) + (from_logits ? " logits" : " ids"));
      MoeConfig config = small_config(kExperts, 4, 48);
      config.layout = layout;
      LayerProblem full = make_problem(config, 45, from_logits, rng);
      full.num_valid = 41;
      if (!from_logits)
        for (int32_t& id : full.ids)
          if (rng.chance(0.1)) id = rng.chance(0.5) ? -1 : INT32_MAX;
      const int64_t a = rng.integer(1, kExperts - 2);
      const int64_t b = a;  // [a, b) is the empty shard
      const LayerRun whole = run_layer(full);
      expect_close_to_reference(full, whole, "single rank");

      std::vector<double> sum(static_cast<size_t>(full.tokens * config.hidden), 0.0);
      for (auto [begin, end] : {std::pair<int64_t, int64_t>{0, a}, {a, b}, {b, kExperts}}) {
        SCOPED_TRACE("shard [" + std::to_string(begin) + ", " + std::to_string(end) + ")");
        const LayerProblem shard = shard_of(full, begin, end);
        const LayerRun run = run_layer(shard);
        expect_close_to_reference(shard, run, "shard");
        // Every valid slot is either computed here, remote, or out of [0, E).
        std::vector<int32_t> ids;
        std::vector<float> weights;
        reference_routing(full, ids, weights);
        int32_t remote = 0, out_of_range = 0;
        for (int64_t s = 0; s < *full.num_valid * config.top_k; ++s) {
          if (ids[s] < 0 || ids[s] >= kExperts) {
            ++out_of_range;
          } else if (ids[s] < begin || ids[s] >= end) {
            ++remote;
          }
        }
        EXPECT_EQ(run.diagnostics[kDiagIdRemote], remote) << "remote slots miscounted";
        EXPECT_EQ(run.diagnostics[kDiagIdOutOfRange], out_of_range) << "invalid ids miscounted";
        const std::vector<float> out = run.out.to_float();
        for (size_t i = 0; i < sum.size(); ++i) sum[i] += out[i];
      }
      const std::vector<float> got = whole.out.to_float();
      const double error =
          reference::max_relative_error(sum.data(), got.data(), full.tokens, config.hidden);
      EXPECT_LE(error, 1e-5) << "sum of the shards differs from the single-rank output; "
                             << describe_worst(sum, got, config.hidden);
    }
}

// Batched layout with a small capacity: the slots of an expert beyond its first `capacity` (in
// slot order) are dropped and counted; everything else is computed.
TEST(LayerContract, BatchedOverflowDropsTheLateSlotsOfAnExpert) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  for (bool from_logits : {true, false}) {
    MoeConfig config = small_config(8, 4, 64);
    config.layout = Layout::batched;
    config.batched_capacity = 5;
    LayerProblem p = make_problem(config, 40, from_logits, rng);
    p.num_valid = 37;
    const LayerRun run = run_layer(p);

    // The reference gets the surviving slots only.
    LayerProblem expected = p;
    reference_routing(p, expected.ids, expected.weights);
    expected.logits.clear();
    std::vector<int64_t> seen(8, 0);
    int32_t dropped = 0;
    for (int64_t s = 0; s < *p.num_valid * config.top_k; ++s) {
      int32_t& id = expected.ids[s];
      if (seen[id]++ >= config.batched_capacity) {
        id = -1;
        ++dropped;
      }
    }
    expect_close_to_reference(expected, run, from_logits ? "logits" : "ids");
    EXPECT_EQ(run.diagnostics[kDiagCapacityOverflow], dropped) << "dropped slots miscounted";
  }
}

// x, router logits and out may be row slices of wider buffers (layer.h): the result has the same
// bits as with contiguous tensors, and the gaps between out rows stay untouched.
TEST(LayerContract, StridedRowsGiveTheSameBitsAsContiguousRows) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  for (DType dtype : {DType::f32, DType::bf16}) {
    SCOPED_TRACE(dtype_name(dtype));
    const MoeConfig config = small_config(16, 4, 32, dtype);
    const LayerProblem p = make_problem(config, 23, true, rng);
    const LayerRun contiguous = run_layer(p);
    const int64_t tokens = p.tokens, hidden = config.hidden, experts = config.num_experts;
    const int64_t x_stride = hidden + 7, logit_stride = experts + 3, out_stride = hidden + 5;

    std::vector<float> x_wide(static_cast<size_t>(tokens * x_stride), 1e30f);
    std::vector<float> logits_wide(static_cast<size_t>(tokens * logit_stride), std::nanf(""));
    const std::vector<float> x = p.x.to_float();
    for (int64_t t = 0; t < tokens; ++t) {
      std::copy_n(&x[t * hidden], hidden, &x_wide[t * x_stride]);
      std::copy_n(&p.logits[t * experts], experts, &logits_wide[t * logit_stride]);
    }
    Buffer x_buffer = Buffer::from(dtype, x_wide);
    Buffer out = Buffer::poisoned(dtype, tokens * out_stride);

    const Layer layer(config, Device::cpu());
    AlignedBuffer workspace(layer.workspace_bytes());
    Inputs in;
    in.x = TensorView::rows(x_buffer.data(), dtype, tokens, hidden, x_stride);
    in.router_logits =
        TensorView::rows(logits_wide.data(), DType::f32, tokens, experts, logit_stride);
    Weights w;
    w.w13 = TensorView::contiguous(p.w13.data(), dtype, {experts, 2 * config.intermediate, hidden});
    w.w2 = TensorView::contiguous(p.w2.data(), dtype, {experts, hidden, config.intermediate});
    Outputs o;
    o.out = TensorView::rows(out.data(), dtype, tokens, hidden, out_stride);
    ThreadPool pool(2);
    layer.forward(in, w, o, {workspace.data(), workspace.bytes()}, Stream::cpu(&pool));

    const std::vector<uint8_t> want = contiguous.out.bytes(), got = out.bytes();
    const std::vector<uint8_t> poison = Buffer::poisoned(dtype, 1).bytes();
    const size_t element = dtype_size(dtype);
    for (int64_t t = 0; t < tokens; ++t)
      for (int64_t c = 0; c < out_stride; ++c) {
        const uint8_t* g = &got[(t * out_stride + c) * element];
        const uint8_t* expected = c < hidden ? &want[(t * hidden + c) * element] : poison.data();
        ASSERT_TRUE(std::equal(g, g + element, expected))
            << "token " << t << " column " << c
            << (c < hidden ? ": differs from the contiguous run" : ": row gap was written");
      }
  }
}

// DESIGN.md section 3: the workspace holds at most the permuted activations, the activated GEMM1
// output and the GEMM2 output plus O(E + T k) index words, and is a pure function of the config.
TEST(LayerContract, WorkspaceStaysWithinTheDocumentedBound) {
  for (DType dtype : {DType::f32, DType::bf16})
    for (Layout layout : {Layout::contiguous, Layout::batched})
      for (int64_t max_tokens : {1, 17, 256, 4096}) {
        MoeConfig config = small_config(64, 8, max_tokens, dtype);
        config.layout = layout;
        const int64_t rows = config.permuted_rows(max_tokens);
        const int64_t slots = max_tokens * config.top_k;
        const size_t element = dtype_size(dtype);
        const size_t data = static_cast<size_t>(rows) *
                            static_cast<size_t>(2 * config.hidden + config.intermediate) * element;
        const size_t index_words = static_cast<size_t>(3 * slots + rows + 2 * 64 + 1);
        const size_t bound = data + 4 * index_words + 16 * 256;  // + alignment of each buffer
        const size_t bytes = workspace_bytes(config, Device::cpu());
        EXPECT_LE(bytes, bound) << dtype_name(dtype) << " " << layout_name(layout) << " max_tokens "
                                << max_tokens;
        EXPECT_EQ(bytes, Layer(config, Device::cpu()).workspace_bytes())
            << "workspace_bytes differs between the free function and the layer";
      }
}

}  // namespace
}  // namespace ironmoe::test
