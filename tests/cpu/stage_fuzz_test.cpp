// The stages after plan with maps an engine could hand them directly, drawn from every int32
// (contract: nothing upstream is trusted): gather's row_to_slot, combine's slot_to_row and the
// experts' row ranges hold -1, INT_MIN, INT_MAX, values just past the end and valid entries.
// gather copies exactly the rows whose entry is a slot of the batch and leaves the others alone;
// combine writes every row, zero for padding and for rows without a valid slot; experts either
// refuses the ranges (contract E1) or writes exactly the rows inside them, also when run as its
// gate_up then down phases (gate_up writing no output). Under
// scripts/sanitize-cpu.sh (CI) a stray access fails the run as well.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <string>
#include <vector>

#include "reference_fp8.h"
#include "test_util.h"

namespace ironmoe::test {
namespace {

constexpr int kRounds = 60;

// An entry of a map into [0, n): mostly valid, else -1, INT_MIN, INT_MAX, n or a little past it.
int32_t hostile_index(Rng& rng, int64_t n) {
  switch (rng.integer(0, 9)) {
    case 0: return -1;
    case 1: return INT_MIN;
    case 2: return INT_MAX;
    case 3: return static_cast<int32_t>(n + rng.integer(0, 3));
    default: return n > 0 ? static_cast<int32_t>(rng.integer(0, n - 1)) : -1;
  }
}

// The sizes of one gather or combine round.
struct MapShape {
  DType dtype;
  int64_t tokens, hidden, k, rows;
};

MapShape draw_shape(Rng& rng) {
  MapShape m{};
  m.dtype = rng.chance(0.5) ? DType::f32 : DType::bf16;
  m.tokens = rng.integer(0, 20);
  m.hidden = rng.integer(1, 40);
  m.k = rng.integer(1, 6);
  m.rows = rng.integer(0, 60);
  return m;
}

TEST(StageFuzz, GatherCopiesExactlyTheRowsWithASlot) {
  Rng rng = Rng::for_current_test();
  ThreadPool pool(2);
  for (int round = 0; round < kRounds; ++round) {
    const auto [dtype, tokens, hidden, k, rows] = draw_shape(rng);
    SCOPED_TRACE("round " + std::to_string(round));
    const Buffer x = Buffer::from(dtype, rng.nonzero_vector(tokens * hidden, 1.0f));
    std::vector<int32_t> row_to_slot(static_cast<size_t>(rows));
    for (int32_t& slot : row_to_slot) slot = hostile_index(rng, tokens * k);
    Buffer permuted = Buffer::poisoned(dtype, rows * hidden);
    const Buffer poison = Buffer::poisoned(dtype, 1);
    GatherArgs args;
    args.x = TensorView::contiguous(x.data(), dtype, {tokens, hidden});
    args.row_to_slot = TensorView::contiguous(row_to_slot.data(), DType::i32, {rows});
    args.top_k = k;
    args.permuted = TensorView::contiguous(permuted.data(), dtype, {rows, hidden});
    gather(args, Stream::cpu(&pool));
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t slot = row_to_slot[static_cast<size_t>(r)];
      const bool used = slot >= 0 && slot < tokens * k;
      for (int64_t c = 0; c < hidden; ++c) {
        ASSERT_EQ(storage_bits(permuted, r * hidden + c),
                  used ? storage_bits(x, slot / k * hidden + c) : storage_bits(poison, 0))
            << "row " << r << " (slot " << slot << ") column " << c;
      }
    }
  }
}

TEST(StageFuzz, CombineSkipsEveryRowThatIsNotOne) {
  Rng rng = Rng::for_current_test();
  ThreadPool pool(2);
  for (int round = 0; round < kRounds; ++round) {
    const auto [dtype, tokens, hidden, k, rows] = draw_shape(rng);
    SCOPED_TRACE("round " + std::to_string(round));
    const Buffer y = Buffer::from(dtype, rng.nonzero_vector(rows * hidden, 1.0f));
    std::vector<int32_t> slot_to_row(static_cast<size_t>(tokens * k));
    for (int32_t& row : slot_to_row) row = hostile_index(rng, rows);
    const std::vector<float> weights = rng.nonzero_vector(tokens * k, 1.0f);
    const auto num_valid = static_cast<int32_t>(rng.integer(-2, tokens + 2));
    Buffer out = Buffer::poisoned(dtype, tokens * hidden);
    CombineArgs args;
    args.permuted_out = TensorView::contiguous(y.data(), dtype, {rows, hidden});
    args.slot_to_row = TensorView::contiguous(slot_to_row.data(), DType::i32, {tokens, k});
    args.topk_weights = TensorView::contiguous(weights.data(), DType::f32, {tokens, k});
    args.out = TensorView::contiguous(out.data(), dtype, {tokens, hidden});
    const bool given = rng.chance(0.5);
    if (given) args.num_valid_tokens = &num_valid;
    combine(args, Stream::cpu(&pool));
    const int64_t valid = given ? std::clamp<int64_t>(num_valid, 0, tokens) : tokens;
    const std::vector<float> y_f = y.to_float(), got = out.to_float();
    for (int64_t t = 0; t < tokens; ++t) {
      std::vector<double> want(static_cast<size_t>(hidden), 0.0);
      for (int64_t j = 0; t < valid && j < k; ++j) {
        const int64_t r = slot_to_row[static_cast<size_t>(t * k + j)];
        if (r < 0 || r >= rows) continue;
        for (int64_t c = 0; c < hidden; ++c)
          want[static_cast<size_t>(c)] += double{weights[static_cast<size_t>(t * k + j)]} *
                                          y_f[static_cast<size_t>(r * hidden + c)];
      }
      for (int64_t c = 0; c < hidden; ++c) {
        const double w = want[static_cast<size_t>(c)];
        const float g = got[static_cast<size_t>(t * hidden + c)];
        ASSERT_NEAR(g, w, 1e-2 * (1.0 + std::abs(w))) << "token " << t << " column " << c;
      }
    }
  }
}

TEST(StageFuzz, ExpertsRefuseBadRangesOrWriteExactlyTheirRows) {
  Rng rng = Rng::for_current_test();
  ThreadPool pool(2);
  int refused = 0, computed = 0;
  for (int round = 0; round < kRounds; ++round) {
    const int64_t local = rng.integer(1, 6), rows = rng.integer(0, 40);
    const int64_t hidden = rng.integer(1, 24), inter = rng.integer(1, 24);
    SCOPED_TRACE("round " + std::to_string(round));
    std::vector<int32_t> offsets(static_cast<size_t>(local)), counts(static_cast<size_t>(local));
    // A third of the rounds draw ranges that stay apart, so that the stage runs as often as it
    // refuses; a third draw hostile offsets and counts; a third ranges that stay apart but for
    // one that starts inside another.
    const int64_t mode = rng.integer(0, 2);
    int32_t next = 0;
    for (int64_t e = 0; e < local; ++e) {
      const auto i = static_cast<size_t>(e);
      if (mode != 1) {
        offsets[i] = next + static_cast<int32_t>(rng.integer(0, 2));
        counts[i] = static_cast<int32_t>(rng.integer(0, 5));
        next = offsets[i] + counts[i];
      } else {
        offsets[i] = hostile_index(rng, rows);
        counts[i] =
            rng.chance(0.2) ? hostile_index(rng, rows) : static_cast<int32_t>(rng.integer(0, 6));
      }
    }
    if (mode == 2 && local > 1) {
      const auto a = static_cast<size_t>(rng.integer(0, local - 1));
      auto b = static_cast<size_t>(rng.integer(0, local - 2));
      if (b >= a) ++b;
      counts[a] = std::max(counts[a], 1);
      counts[b] = std::max(counts[b], 1);
      offsets[b] = offsets[a] + static_cast<int32_t>(rng.integer(0, counts[a] - 1));
    }
    const Buffer in = Buffer::from(DType::f32, rng.nonzero_vector(rows * hidden, 1.0f));
    const Buffer w13 =
        Buffer::from(DType::f32, rng.nonzero_vector(local * 2 * inter * hidden, 0.3f));
    const Buffer w2 = Buffer::from(DType::f32, rng.nonzero_vector(local * hidden * inter, 0.3f));
    Buffer intermediate = Buffer::poisoned(DType::f32, rows * inter);
    Buffer out = Buffer::poisoned(DType::f32, rows * hidden);
    const Buffer poison = Buffer::poisoned(DType::f32, 1);
    ExpertArgs args =
        expert_stage_args(in, offsets, counts, w13, w2, intermediate, out, hidden, inter);
    // Half the rounds run the stage as its two phases (ExpertPhase): the first must refuse or
    // write no output, the second then behaves as one whole call.
    const bool phased = rng.chance(0.5);
    try {
      if (phased) {
        args.phase = ExpertPhase::gate_up;
        experts(args, Stream::cpu(&pool));
        for (int64_t i = 0; i < rows * hidden; ++i)
          ASSERT_EQ(storage_bits(out, i), storage_bits(poison, 0))
              << "the gate_up phase wrote output element " << i;
        args.phase = ExpertPhase::down;
      }
      experts(args, Stream::cpu(&pool));
    } catch (const Error&) {
      ++refused;
      for (int64_t i = 0; i < rows * hidden; ++i)
        ASSERT_EQ(storage_bits(out, i), storage_bits(poison, 0))
            << "a refused call wrote element " << i;
      continue;
    }
    ++computed;
    std::vector<bool> inside(static_cast<size_t>(rows), false);
    for (int64_t e = 0; e < local; ++e) {
      const int64_t first = offsets[static_cast<size_t>(e)];
      const int64_t count = counts[static_cast<size_t>(e)];
      ASSERT_TRUE(count == 0 || (first >= 0 && count > 0 && first + count <= rows))
          << "expert " << e << " ran with rows [" << first << ", " << first + count << ")";
      for (int64_t r = first; r < first + count; ++r) {
        ASSERT_FALSE(inside[static_cast<size_t>(r)]) << "row " << r << " is in two ranges";
        inside[static_cast<size_t>(r)] = true;
      }
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < hidden; ++c) {
        const bool poisoned = storage_bits(out, r * hidden + c) == storage_bits(poison, 0);
        ASSERT_EQ(poisoned, !inside[static_cast<size_t>(r)])
            << "row " << r << " column " << c
            << (poisoned ? ": a row inside a range was not written"
                         : ": a row outside every range was written");
      }
  }
  EXPECT_GT(refused, 0);
  EXPECT_GT(computed, 0);
}

// FP8 experts reading their input rows through a hostile row_to_slot (ExpertArgs::gathered):
// every scheme gives the bytes of the same stage over the rows gathered beforehand, a row whose
// entry is not a slot of x (-1, INT_MIN, INT_MAX, just past the end) reading zeros, whatever the
// token count (0 included) and the sizes.
TEST(StageFuzz, Fp8ExpertsGatherExactlyTheRowsWithASlot) {
  Rng rng = Rng::for_current_test();
  ThreadPool pool(2);
  constexpr QuantScheme kSchemes[] = {QuantScheme::fp8_tensor, QuantScheme::fp8_channel,
                                      QuantScheme::fp8_block};
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE("round " + std::to_string(round));
    MoeConfig c;
    c.num_experts = rng.integer(1, 5);
    c.hidden = rng.integer(1, 40);
    c.intermediate = rng.integer(1, 24);
    c.top_k = rng.integer(1, 6);
    c.quant = kSchemes[rng.integer(0, 2)];
    const DType dtype = rng.chance(0.5) ? DType::f32 : DType::bf16;
    const int64_t tokens = rng.integer(0, 20);
    const int64_t rows = rng.integer(0, 60);
    const int64_t local = c.num_experts;
    // Ranges that stay apart (the experts stage's own contract), covering some of the rows.
    std::vector<int32_t> offsets(static_cast<size_t>(local)), counts(static_cast<size_t>(local));
    int32_t next = 0;
    for (int64_t e = 0; e < local; ++e) {
      const int32_t first = next + static_cast<int32_t>(rng.integer(0, 2));
      const int32_t count = static_cast<int32_t>(rng.integer(0, 12));
      const bool fits = first + count <= rows;
      offsets[static_cast<size_t>(e)] = fits ? first : 0;
      counts[static_cast<size_t>(e)] = fits ? count : 0;
      if (fits) next = first + count;
    }
    std::vector<int32_t> row_to_slot(static_cast<size_t>(rows));
    for (int32_t& slot : row_to_slot) slot = hostile_index(rng, tokens * c.top_k);
    const std::vector<float> x = rng.nonzero_vector(tokens * c.hidden, 2.0f);
    std::vector<float> gathered(static_cast<size_t>(rows * c.hidden), 0.0f);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t slot = row_to_slot[static_cast<size_t>(r)];
      if (slot < 0 || slot >= tokens * c.top_k) continue;
      std::copy_n(x.begin() + slot / c.top_k * c.hidden, c.hidden, gathered.begin() + r * c.hidden);
    }
    const Buffer tokens_buffer = Buffer::from(dtype, x);
    const Buffer permuted = Buffer::from(dtype, gathered);
    const std::vector<float> w13 = rng.nonzero_vector(local * 2 * c.intermediate * c.hidden, 0.3f);
    const std::vector<float> w2 = rng.nonzero_vector(local * c.hidden * c.intermediate, 0.3f);
    const reference::Fp8Weights quantized = reference::quantize_weights(
        reference_scheme(c.quant), local, c.hidden, c.intermediate, w13.data(), w2.data());
    const Weights w = fp8_weight_views(c, quantized, {});
    const size_t scratch_bytes =
        expert_scratch_bytes(rows, c.hidden, c.intermediate, local, dtype, Device::cpu(), c.quant);
    AlignedBuffer scratch(scratch_bytes);
    ExpertArgs args;
    args.permuted_in = TensorView::contiguous(permuted.data(), dtype, {rows, c.hidden});
    args.expert_offsets = TensorView::contiguous(offsets.data(), DType::i32, {local});
    args.expert_counts = TensorView::contiguous(counts.data(), DType::i32, {local});
    args.w13 = w.w13;
    args.w2 = w.w2;
    args.quant = c.quant;
    args.w13_scale = w.w13_scale;
    args.w2_scale = w.w2_scale;
    args.scratch = scratch.data();
    args.scratch_bytes = scratch_bytes;
    const auto run = [&](const ExpertArgs& call) {
      Buffer out = Buffer::poisoned(dtype, rows * c.hidden);
      ExpertArgs with_out = call;
      with_out.permuted_out = TensorView::contiguous(out.data(), dtype, {rows, c.hidden});
      experts(with_out, Stream::cpu(&pool));
      return out.bytes();
    };
    const std::vector<uint8_t> from_permuted = run(args);
    const Buffer poisoned_in = Buffer::poisoned(dtype, rows * c.hidden);
    args.permuted_in = TensorView::contiguous(poisoned_in.data(), dtype, {rows, c.hidden});
    args.gathered.x = TensorView::contiguous(tokens_buffer.data(), dtype, {tokens, c.hidden});
    args.gathered.row_to_slot = TensorView::contiguous(row_to_slot.data(), DType::i32, {rows});
    args.gathered.top_k = c.top_k;
    ASSERT_TRUE(run(args) == from_permuted)
        << quant_scheme_name(c.quant) << ": the gathered input changed the stage's bytes";
  }
}

}  // namespace
}  // namespace ironmoe::test
