// CPU FP8 experts: the reference semantics of FP8 expert kernels on any device.
//   1. GEMM1's input rows are quantised per the scheme (codes + scales in the scratch);
//   2. h = act(a . gate) * (a . up) with a = code * scale and w = code * scale widened to fp32
//      (the tile matmul of tile_matmul.h, same summation order as the bf16 stage), kept in fp32;
//   3. h is quantised per the scheme, straight from fp32;
//   4. out = h . w2, rounded once to the storage dtype.
// A per-tensor dynamic scale is the largest magnitude over the stage's rows (NaN ignored; the
// layer passes the one over all valid tokens instead, quantize.h), a row or block scale the
// largest over its group (NaN propagates to the group, a token-local result).
#include "cpu/experts_fp8.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>

#include "core/fp8.h"
#include "core/fp8_scales.h"
#include "core/fp8_scratch.h"
#include "core/plan_math.h"
#include "cpu/parallel.h"
#include "cpu/quantize.h"

namespace ironmoe::cpu {
namespace {

using namespace tiles;

const std::array<float, 256>& fp8_values() {
  static const std::array<float, 256> table = [] {
    std::array<float, 256> values{};
    for (int code = 0; code < 256; ++code) {
      values[static_cast<size_t>(code)] = core::fp8_e4m3_to_float(static_cast<uint8_t>(code));
    }
    return values;
  }();
  return table;
}

// E4M3 rows for the tile matmul: element (row, k) widens to value(code) * scale(row, k).
struct Fp8Rows {
  const uint8_t* codes;
  int64_t stride;  // codes between rows
  core::Fp8ScaleMap scales;
  const float* values;  // fp8_values()

  [[gnu::always_inline]] void widen(int64_t row, int64_t k0, int64_t count, int64_t padded,
                                    float* dst) const {
    const uint8_t* src = codes + row * stride + k0;
    for (int64_t k = 0; k < count;) {
      // One scale per run of k up to the next k_group boundary.
      const int64_t group_end =
          scales.k_group == 0
              ? count
              : std::min(count, ((k0 + k) / scales.k_group + 1) * scales.k_group - k0);
      const float scale = scales.at(row, k0 + k);
      for (; k < group_end; ++k) dst[k] = values[src[k]] * scale;
    }
    std::fill(dst + count, dst + padded, 0.0f);
  }
};

// Local expert e's [rows, cols] matrix of an [E_local, rows, cols] FP8 weight with its scales.
Fp8Rows expert_weights(QuantScheme quant, const uint8_t* codes, const float* scales, int64_t e,
                       int64_t rows, int64_t cols) {
  return {codes + e * rows * cols, cols, core::fp8_weight_scale_map(quant, scales, e, rows, cols),
          fp8_values().data()};
}

// Calls body(row) for every permuted row of a local expert, in parallel (blocks of rows).
template <class Body>
void for_each_expert_row(const Problem& problem, ThreadPool* threads, Body body) {
  Problem rows = problem;
  rows.col_blocks = 1;
  parallel_for(threads, rows.items(), [&](int64_t begin, int64_t end) {
    rows.for_items(begin, end, [&](int64_t, int64_t row0, int64_t count, int64_t) {
      for (int64_t r = row0; r < row0 + count; ++r) body(r);
    });
  });
}

// Quantises the experts' rows of a [R, k] activation read by value(row, column): codes [R, k],
// scales [R, per row] and, for fp8_tensor, *tensor_scale (given: used; absent: dynamic over the
// rows, NaN ignored).
template <class Value>
void quantize_rows(QuantScheme quant, const Problem& problem, int64_t k,
                   const TensorView& given_scale, Value value, uint8_t* codes, float* row_scales,
                   float* tensor_scale, ThreadPool* threads) {
  const int64_t per_row = core::fp8_activation_scales_per_row(quant, k);
  if (quant == QuantScheme::fp8_tensor) {
    if (given_scale.data != nullptr) {
      *tensor_scale = *given_scale.ptr<const float>();
    } else {
      uint32_t largest = 0;
      for_each_expert_row(problem, threads, [&](int64_t r) {
        raise_amax(&largest, amax([&](int64_t c) { return value(r, c); }, 0, k, false));
      });
      *tensor_scale = core::fp8_dynamic_scale(std::bit_cast<float>(largest));
    }
  }
  for_each_expert_row(problem, threads, [&](int64_t r) {
    quantize_row(
        quant, [&](int64_t c) { return value(r, c); }, k, *tensor_scale, codes + r * k,
        row_scales + r * per_row);
  });
}

template <class Storage>
void run_fp8(const ExpertArgs& args, const Problem& problem, ThreadPool* threads) {
  const QuantScheme quant = args.quant;
  const int64_t num_rows = args.permuted_in.size(0);
  const int64_t hidden = args.permuted_in.size(1);
  const int64_t inter = args.w13.size(1) / 2;
  const core::Fp8Scratch layout = core::fp8_scratch(quant, num_rows, hidden, inter);
  char* scratch = static_cast<char*>(args.scratch);
  auto* a_codes = reinterpret_cast<uint8_t*>(scratch + layout.a_codes);
  auto* a_scales = reinterpret_cast<float*>(scratch + layout.a_scales);
  auto* h_values = reinterpret_cast<float*>(scratch + layout.h_values);
  auto* h_codes = reinterpret_cast<uint8_t*>(scratch + layout.h_codes);
  auto* h_scales = reinterpret_cast<float*>(scratch + layout.h_scales);
  auto* tensor_scales = reinterpret_cast<float*>(scratch + layout.tensor_scales);
  const auto* x = static_cast<const Storage*>(args.permuted_in.data);
  const auto* w13 = static_cast<const uint8_t*>(args.w13.data);
  const auto* w2 = static_cast<const uint8_t*>(args.w2.data);
  const auto* w13_scale = args.w13_scale.ptr<const float>();
  const auto* w2_scale = args.w2_scale.ptr<const float>();
  auto* y = static_cast<Storage*>(args.permuted_out.data);
  const float* values = fp8_values().data();

  if (args.phase != ExpertPhase::down) {
    // 1. GEMM1 input, from permuted_in or straight from the tokens.
    const GatheredInput& gathered = args.gathered;
    if (gathered.given()) {
      const auto* tokens = static_cast<const Storage*>(gathered.x.data);
      const int64_t slots = gathered.x.size(0) * gathered.top_k;
      const auto* row_to_slot = gathered.row_to_slot.ptr<const int32_t>();
      quantize_rows(
          quant, problem, hidden, args.w13_input_scale,
          [&](int64_t r, int64_t c) {
            const int64_t token = core::row_token(row_to_slot[r], slots, gathered.top_k);
            if (token < 0) return 0.0f;  // not a slot of x: a row of zeros
            return load(tokens + token * gathered.x.strides[0], c);
          },
          a_codes, a_scales, &tensor_scales[0], threads);
    } else {
      quantize_rows(
          quant, problem, hidden, args.w13_input_scale,
          [&](int64_t r, int64_t c) { return load(x + r * hidden, c); }, a_codes, a_scales,
          &tensor_scales[0], threads);
    }
    const Fp8Rows a{a_codes, hidden,
                    core::fp8_activation_scale_map(quant, a_scales, &tensor_scales[0], hidden),
                    values};

    // 2. GEMM1 + activation, kept in fp32.
    gate_up_pass(
        problem, inter, hidden, a,
        [&](int64_t e) { return expert_weights(quant, w13, w13_scale, e, 2 * inter, hidden); },
        [&](int64_t row, int64_t n, float gate, float up) {
          h_values[row * inter + n] = activate(args.activation, gate) * up;
        },
        threads);
  }
  if (args.phase == ExpertPhase::gate_up) return;

  // 3. GEMM2 input, from fp32.
  quantize_rows(
      quant, problem, inter, args.w2_input_scale,
      [&](int64_t r, int64_t c) { return h_values[r * inter + c]; }, h_codes, h_scales,
      &tensor_scales[1], threads);
  const Fp8Rows h{h_codes, inter,
                  core::fp8_activation_scale_map(quant, h_scales, &tensor_scales[1], inter),
                  values};

  // 4. GEMM2, rounded to the storage dtype.
  down_pass(
      problem, hidden, inter, h,
      [&](int64_t e) { return expert_weights(quant, w2, w2_scale, e, hidden, inter); },
      [&](int64_t row, int64_t n, float value) { store(y + row * hidden, n, value); }, threads);
}

}  // namespace

void experts_fp8(const ExpertArgs& args, const Problem& problem, ThreadPool* threads) {
  if (args.permuted_in.dtype == DType::bf16) {
    run_fp8<uint16_t>(args, problem, threads);
  } else {
    run_fp8<float>(args, problem, threads);
  }
}

}  // namespace ironmoe::cpu
