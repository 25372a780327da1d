// The FP8 reference (reference_fp8.h): code-table search for E4M3, dequantised float64 GEMMs.
#include "reference_fp8.h"

#include <array>
#include <cmath>
#include <limits>
#include <stdexcept>

#include "reference_moe.h"

namespace ironmoe::reference {
namespace {

constexpr double kLargest = 448.0;

const std::array<double, 256>& code_values() {
  static const std::array<double, 256> values = [] {
    std::array<double, 256> table{};
    for (int code = 0; code < 256; ++code) {
      const int exponent = (code >> 3) & 15;
      const int mantissa = code & 7;
      double magnitude = exponent == 0 ? mantissa / 512.0
                                       : (1.0 + mantissa / 8.0) * std::pow(2.0, exponent - 7);
      if (exponent == 15 && mantissa == 7) magnitude = std::numeric_limits<double>::quiet_NaN();
      table[static_cast<size_t>(code)] = (code & 0x80) ? -magnitude : magnitude;
    }
    return table;
  }();
  return values;
}

int64_t blocks_of(int64_t n) { return (n + kFp8BlockSize - 1) / kFp8BlockSize; }

// The largest magnitude of values[0..n), NaN when any value is NaN.
double amax_of(const double* values, int64_t n) {
  double amax = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(values[i])) return std::numeric_limits<double>::quiet_NaN();
    amax = std::max(amax, std::fabs(values[i]));
  }
  return amax;
}

double quantized(double value, float scale) {
  return from_fp8_bits(to_fp8_bits(static_cast<float>(value) / scale)) * static_cast<double>(scale);
}

// values quantised and dequantised in place: one scale for all (per_tensor, `tensor_scale`), one
// per row (per_channel) or one per 128 values (block).
void quantize_row(Fp8Scheme scheme, float tensor_scale, std::vector<double>& values) {
  const auto n = static_cast<int64_t>(values.size());
  const int64_t group = scheme == Fp8Scheme::block ? kFp8BlockSize : n;
  for (int64_t first = 0; first < n; first += group) {  // n = 0: no pass
    const int64_t count = std::min(group, n - first);
    const float scale = scheme == Fp8Scheme::per_tensor
                            ? tensor_scale
                            : fp8_group_scale(amax_of(values.data() + first, count));
    for (int64_t i = first; i < first + count; ++i) values[i] = quantized(values[i], scale);
  }
}

// One weight matrix [rows, cols] quantised per scheme: codes, and its scales appended to `scales`.
void quantize_matrix(Fp8Scheme scheme, int64_t rows, int64_t cols, const float* w, uint8_t* codes,
                     std::vector<float>& scales) {
  auto amax_over = [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    double amax = 0.0;
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(double{w[r * cols + c]}));
    return amax;
  };
  auto encode = [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1, float scale) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t c = c0; c < c1; ++c) codes[r * cols + c] = to_fp8_bits(w[r * cols + c] / scale);
  };
  if (scheme == Fp8Scheme::per_tensor) {
    scales.push_back(fp8_group_scale(amax_over(0, rows, 0, cols)));
    encode(0, rows, 0, cols, scales.back());
  } else if (scheme == Fp8Scheme::per_channel) {
    for (int64_t r = 0; r < rows; ++r) {
      scales.push_back(fp8_group_scale(amax_over(r, r + 1, 0, cols)));
      encode(r, r + 1, 0, cols, scales.back());
    }
  } else {
    for (int64_t rb = 0; rb < blocks_of(rows); ++rb) {
      for (int64_t cb = 0; cb < blocks_of(cols); ++cb) {
        const int64_t r0 = rb * kFp8BlockSize, r1 = std::min(rows, r0 + kFp8BlockSize);
        const int64_t c0 = cb * kFp8BlockSize, c1 = std::min(cols, c0 + kFp8BlockSize);
        scales.push_back(fp8_group_scale(amax_over(r0, r1, c0, c1)));
        encode(r0, r1, c0, c1, scales.back());
      }
    }
  }
}

// Weight element (r, c) of local expert e's [rows, cols] matrix, dequantised.
double weight_value(Fp8Scheme scheme, const uint8_t* codes, const float* scales, int64_t e,
                    int64_t rows, int64_t cols, int64_t r, int64_t c) {
  const double value = from_fp8_bits(codes[(e * rows + r) * cols + c]);
  switch (scheme) {
    case Fp8Scheme::per_tensor: return value * scales[e];
    case Fp8Scheme::per_channel: return value * scales[e * rows + r];
    case Fp8Scheme::block:
      return value * scales[(e * blocks_of(rows) + r / kFp8BlockSize) * blocks_of(cols) +
                            c / kFp8BlockSize];
  }
  throw std::invalid_argument("reference::layer_fp8: unknown scheme");
}

// The largest magnitude over rows, NaN values ignored (per-tensor dynamic scales).
double amax_ignoring_nan(const std::vector<std::vector<double>>& rows) {
  double amax = 0.0;
  for (const auto& row : rows)
    for (double v : row)
      if (!std::isnan(v)) amax = std::max(amax, std::fabs(v));
  return amax;
}

}  // namespace

uint8_t to_fp8_bits(float value) {
  if (std::isnan(value)) return 0x7f;
  const uint8_t sign = std::signbit(value) ? 0x80 : 0x00;
  const double magnitude = std::fabs(static_cast<double>(value));
  if (magnitude >= kLargest) return static_cast<uint8_t>(sign | 0x7e);
  int best = 0;
  for (int code = 1; code <= 0x7e; ++code) {
    const double here = std::fabs(code_values()[code] - magnitude);
    const double there = std::fabs(code_values()[best] - magnitude);
    if (here < there || (here == there && code % 2 == 0)) best = code;
  }
  return static_cast<uint8_t>(sign | best);
}

float from_fp8_bits(uint8_t bits) { return static_cast<float>(code_values()[bits]); }

float fp8_group_scale(double amax) {
  if (std::isnan(amax)) return std::numeric_limits<float>::quiet_NaN();
  const float scale = static_cast<float>(amax) / static_cast<float>(kLargest);
  const float floor = 1.0f / (static_cast<float>(kLargest) * 512.0f);
  return scale > floor ? scale : floor;
}

Fp8Weights quantize_weights(Fp8Scheme scheme, int64_t local_experts, int64_t hidden,
                            int64_t intermediate, const float* w13, const float* w2) {
  Fp8Weights q;
  q.scheme = scheme;
  const int64_t w13_size = 2 * intermediate * hidden;
  const int64_t w2_size = hidden * intermediate;
  q.w13.resize(static_cast<size_t>(local_experts * w13_size));
  q.w2.resize(static_cast<size_t>(local_experts * w2_size));
  for (int64_t e = 0; e < local_experts; ++e) {
    quantize_matrix(scheme, 2 * intermediate, hidden, w13 + e * w13_size,
                    q.w13.data() + e * w13_size, q.w13_scale);
    quantize_matrix(scheme, hidden, intermediate, w2 + e * w2_size, q.w2.data() + e * w2_size,
                    q.w2_scale);
  }
  return q;
}

void layer_fp8(const MoeConfig& config, int64_t tokens, const float* x, const int32_t* topk_ids,
               const float* topk_weights, const Fp8Weights& w, const float* static_scales,
               int64_t num_valid, const std::vector<int64_t>& token_list, double* out) {
  const int64_t hidden = config.hidden;
  const int64_t inter = config.intermediate;
  const int64_t k = config.top_k;
  const int64_t begin = config.expert_begin;
  const int64_t end = config.local_expert_end();
  if (static_scales != nullptr && w.scheme != Fp8Scheme::per_tensor)
    throw std::invalid_argument("reference::layer_fp8: static scales are per-tensor only");
  const int64_t valid = std::min(std::max<int64_t>(num_valid, 0), tokens);

  // GEMM1 inputs: every valid token's row (a per-tensor dynamic scale sees all of them).
  std::vector<std::vector<double>> rows(static_cast<size_t>(valid));
  for (int64_t t = 0; t < valid; ++t) rows[t].assign(x + t * hidden, x + (t + 1) * hidden);
  float x_scale = 0.0f;
  if (w.scheme == Fp8Scheme::per_tensor)
    x_scale = static_scales ? static_scales[0] : fp8_group_scale(amax_ignoring_nan(rows));
  for (auto& row : rows) quantize_row(w.scheme, x_scale, row);

  // h for every local slot of every valid token, before its (possibly per-tensor) scale.
  std::vector<std::vector<double>> h(static_cast<size_t>(valid * k));
  for (int64_t t = 0; t < valid; ++t) {
    for (int64_t j = 0; j < k; ++j) {
      const int64_t id = topk_ids[t * k + j];
      if (id < begin || id >= end) continue;
      const int64_t e = id - begin;
      std::vector<double>& slot = h[static_cast<size_t>(t * k + j)];
      slot.resize(static_cast<size_t>(inter));
      for (int64_t i = 0; i < inter; ++i) {
        double gate = 0.0, up = 0.0;
        for (int64_t c = 0; c < hidden; ++c) {
          const double xv = rows[t][c];
          gate += xv * weight_value(w.scheme, w.w13.data(), w.w13_scale.data(), e, 2 * inter,
                                    hidden, i, c);
          up += xv * weight_value(w.scheme, w.w13.data(), w.w13_scale.data(), e, 2 * inter,
                                  hidden, inter + i, c);
        }
        slot[i] = activation(config.activation, gate) * up;
      }
    }
  }
  float h_scale = 0.0f;
  if (w.scheme == Fp8Scheme::per_tensor)
    h_scale = static_scales ? static_scales[1] : fp8_group_scale(amax_ignoring_nan(h));
  for (auto& slot : h)
    if (!slot.empty()) quantize_row(w.scheme, h_scale, slot);

  for (size_t n = 0; n < token_list.size(); ++n) {
    const int64_t t = token_list[n];
    if (t < 0 || t >= tokens) throw std::out_of_range("reference::layer_fp8: token_list entry");
    double* row = out + static_cast<int64_t>(n) * hidden;
    std::fill(row, row + hidden, 0.0);
    if (t >= valid) continue;
    for (int64_t j = 0; j < k; ++j) {
      const std::vector<double>& slot = h[static_cast<size_t>(t * k + j)];
      if (slot.empty()) continue;
      const int64_t e = topk_ids[t * k + j] - begin;
      for (int64_t c = 0; c < hidden; ++c) {
        double y = 0.0;
        for (int64_t i = 0; i < inter; ++i)
          y += slot[i] * weight_value(w.scheme, w.w2.data(), w.w2_scale.data(), e, hidden, inter,
                                      c, i);
        row[c] += topk_weights[t * k + j] * y;
      }
    }
  }
}

}  // namespace ironmoe::reference
