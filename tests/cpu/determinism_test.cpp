// Determinism and batch invariance (contract, "Layer"): the same call gives the same bits, a
// token's output bits do not depend on the other tokens of the batch, and the thread pool's size
// changes nothing.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include "test_util.h"

namespace ironmoe::test {
namespace {

using Params = std::tuple<DType, Layout>;

class Determinism : public ::testing::TestWithParam<Params> {
 protected:
  MoeConfig config() const {
    const auto& [dtype, layout] = GetParam();
    MoeConfig c = preset("deepseek-v3", 256);
    c.hidden = 48;
    c.intermediate = 32;
    c.num_experts = 32;
    c.dtype = dtype;
    c.layout = layout;
    return c;
  }
};

std::string param_name(const ::testing::TestParamInfo<Params>& info) {
  const auto& [dtype, layout] = info.param;
  return std::string(dtype_name(dtype)) + (layout == Layout::contiguous ? "_contig" : "_batched");
}

INSTANTIATE_TEST_SUITE_P(Variants, Determinism,
                         ::testing::Combine(::testing::Values(DType::f32, DType::bf16),
                                            ::testing::Values(Layout::contiguous, Layout::batched)),
                         param_name);

// Index of the first differing element, or -1.
int64_t first_difference(const Buffer& a, const Buffer& b) {
  const std::vector<uint8_t> x = a.bytes(), y = b.bytes();
  if (x.size() != y.size()) return 0;
  const auto diff = std::mismatch(x.begin(), x.end(), y.begin());
  if (diff.first == x.end()) return -1;
  return (diff.first - x.begin()) / static_cast<int64_t>(dtype_size(a.dtype()));
}

// Rows [first, first + count) of a problem as a problem of its own.
LayerProblem sub_batch(const LayerProblem& p, int64_t first, int64_t count) {
  LayerProblem sub = p;
  sub.tokens = count;
  const int64_t hidden = p.config.hidden, experts = p.config.num_experts;
  const std::vector<float> x = p.x.to_float();
  sub.x = Buffer::from(p.config.dtype, std::vector<float>(x.begin() + first * hidden,
                                                          x.begin() + (first + count) * hidden));
  sub.logits.assign(p.logits.begin() + first * experts,
                    p.logits.begin() + (first + count) * experts);
  return sub;
}

TEST_P(Determinism, SameCallGivesSameBitsEvenInADirtyWorkspace) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const LayerProblem p = make_problem(config(), 100, true, rng);
  const LayerRun first = run_layer(p);
  // The second call reuses the workspace, now holding the first call's buffers; a third call
  // follows a larger batch that left more rows behind.
  const LayerRun second = run_layer(p, nullptr, first.workspace);
  EXPECT_EQ(first_difference(first.out, second.out), -1) << "second call differs at element";
  const LayerProblem big = make_problem(config(), 256, true, rng);
  const LayerRun dirty = run_layer(big, nullptr, first.workspace);
  const LayerRun third = run_layer(p, nullptr, dirty.workspace);
  EXPECT_EQ(first_difference(first.out, third.out), -1)
      << "call after a larger batch differs at element";
}

// Runs 120 tokens of `config` as one batch and then in pieces, each piece alone; every piece's
// bytes must equal its rows of the batch. Pieces of one and two tokens give every expert one or
// two rows (the micro tiles' edge cases); the batch gives most experts 30.
void expect_pieces_equal_the_batch(const MoeConfig& config, Rng& rng) {
  const LayerProblem batch = make_problem(config, 120, true, rng);
  ThreadPool pool(4);
  const LayerRun whole = run_layer(batch, &pool);
  const std::vector<uint8_t> whole_bytes = whole.out.bytes();
  const int64_t row_bytes =
      batch.config.hidden * static_cast<int64_t>(dtype_size(batch.config.dtype));
  const std::pair<int64_t, int64_t> pieces[] = {{0, 1},
                                                {119, 1},
                                                {rng.integer(1, 118), 1},
                                                {rng.integer(0, 118), 2},
                                                {rng.integer(0, 60), 37},
                                                {7, 113}};
  for (const auto& [first, count] : pieces) {
    const LayerRun part = run_layer(sub_batch(batch, first, count));
    const std::vector<uint8_t> part_bytes = part.out.bytes();
    const auto diff = std::mismatch(part_bytes.begin(), part_bytes.end(),
                                    whole_bytes.begin() + first * row_bytes);
    EXPECT_TRUE(diff.first == part_bytes.end())
        << "tokens [" << first << ", " << first + count << ") alone differ from the batch at token "
        << first + (diff.first - part_bytes.begin()) / row_bytes;
  }
}

TEST_P(Determinism, TokenAloneAndInsideABatchGiveTheSameBits) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  expect_pieces_equal_the_batch(config(), rng);
}

// Widths that are no multiple of the 8 partial sums and cross the 256-element depth blocks
// (tile_matmul.h zero-pads the last partial vector) and column counts off the micro tiles.
TEST_P(Determinism, TokenAloneAndInsideABatchGiveTheSameBitsAtWidthsOffTheLanes) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  MoeConfig c = config();
  c.hidden = 300;       // depth blocks of 256 and 44 elements in GEMM1
  c.intermediate = 37;  // 37 in GEMM2, and 37 gate/up columns (not a multiple of 4 or 16)
  expect_pieces_equal_the_batch(c, rng);
}

// Layer::stages() hands out exactly what forward() runs: the stages run one by one by the caller
// give forward()'s bits and diagnostics, from logits and from precomputed routing.
TEST_P(Determinism, StagesRunOneByOneGiveForwardsBits) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  for (bool from_logits : {true, false}) {
    SCOPED_TRACE(from_logits ? "router logits" : "precomputed routing");
    LayerProblem p = make_problem(config(), 77, from_logits, rng);
    p.num_valid = 70;
    ThreadPool pool(2);
    const LayerRun forward = run_layer(p, &pool);
    const LayerRun staged = run_layer(p, &pool, nullptr, true);
    EXPECT_EQ(first_difference(forward.out, staged.out), -1) << "stages differ at element";
    EXPECT_EQ(forward.diagnostics, staged.diagnostics);
  }
}

TEST_P(Determinism, ThreadPoolSizeDoesNotChangeBits) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  const LayerProblem p = make_problem(config(), 250, true, rng);
  const LayerRun inline_run = run_layer(p);
  for (int threads : {1, 2, 3, 4, 0}) {
    ThreadPool pool(threads);
    const LayerRun run = run_layer(p, &pool);
    EXPECT_EQ(first_difference(inline_run.out, run.out), -1)
        << "ThreadPool(" << threads << ") differs from the calling thread at element";
    EXPECT_EQ(run.diagnostics, inline_run.diagnostics);
  }
}

}  // namespace
}  // namespace ironmoe::test
