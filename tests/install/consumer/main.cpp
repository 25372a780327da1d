// A user of the installed ironmoe: one small MoE layer forward on the CPU, checked against the
// same layer computed directly (softmax top-2, renormalised, SiLU-and-mul experts).
#include <ironmoe/ironmoe.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <vector>

namespace {

constexpr int kTokens = 3, kHidden = 8, kInter = 4, kExperts = 4, kTopK = 2;

// Deterministic values in [-1, 1] with no zeros.
std::vector<float> values(int count, unsigned seed) {
  std::vector<float> out(static_cast<size_t>(count));
  unsigned state = seed;
  for (float& v : out) {
    state = state * 1664525u + 1013904223u;
    v = (static_cast<float>(state >> 8) / 16777216.0f) * 1.8f - 0.9f;
    v += v < 0 ? -0.1f : 0.1f;
  }
  return out;
}

double expected(const std::vector<float>& x, const std::vector<float>& logits,
                const std::vector<float>& w13, const std::vector<float>& w2, int t, int c) {
  const float* row = &logits[t * kExperts];
  int best[kTopK];
  std::vector<int> order = {0, 1, 2, 3};
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return row[a] > row[b]; });
  std::copy(order.begin(), order.begin() + kTopK, best);
  double sum = 0.0;
  for (int e : best) sum += std::exp(static_cast<double>(row[e]));
  double out = 0.0;
  for (int e : best) {
    const double weight = std::exp(static_cast<double>(row[e])) / sum;
    double y = 0.0;
    for (int i = 0; i < kInter; ++i) {
      double gate = 0.0, up = 0.0;
      for (int h = 0; h < kHidden; ++h) {
        gate += x[t * kHidden + h] * w13[(e * 2 * kInter + i) * kHidden + h];
        up += x[t * kHidden + h] * w13[(e * 2 * kInter + kInter + i) * kHidden + h];
      }
      y += gate / (1.0 + std::exp(-gate)) * up * w2[(e * kHidden + c) * kInter + i];
    }
    out += weight * y;
  }
  return out;
}

}  // namespace

int main() {
  using namespace ironmoe;
  MoeConfig config;
  config.hidden = kHidden;
  config.intermediate = kInter;
  config.num_experts = kExperts;
  config.top_k = kTopK;
  config.max_tokens = kTokens;
  config.dtype = DType::f32;

  const std::vector<float> x = values(kTokens * kHidden, 1);
  const std::vector<float> logits = values(kTokens * kExperts, 2);
  const std::vector<float> w13 = values(kExperts * 2 * kInter * kHidden, 3);
  const std::vector<float> w2 = values(kExperts * kHidden * kInter, 4);
  std::vector<float> out(kTokens * kHidden, NAN);

  try {
    const Layer layer(config, Device::cpu());
    const size_t bytes = layer.workspace_bytes();
    std::unique_ptr<void, decltype(&std::free)> workspace(
        std::aligned_alloc(256, (bytes + 255) / 256 * 256), &std::free);

    Inputs inputs;
    inputs.x = TensorView::contiguous(x.data(), DType::f32, {kTokens, kHidden});
    inputs.router_logits = TensorView::contiguous(logits.data(), DType::f32, {kTokens, kExperts});
    Weights weights;
    weights.w13 = TensorView::contiguous(w13.data(), DType::f32, {kExperts, 2 * kInter, kHidden});
    weights.w2 = TensorView::contiguous(w2.data(), DType::f32, {kExperts, kHidden, kInter});
    Outputs outputs;
    outputs.out = TensorView::contiguous(out.data(), DType::f32, {kTokens, kHidden});
    ThreadPool threads(2);
    layer.forward(inputs, weights, outputs, {workspace.get(), bytes}, Stream::cpu(&threads));
  } catch (const Error& error) {
    std::fprintf(stderr, "ironmoe::Error: %s\n", error.what());
    return 1;
  }

  double worst = 0.0;
  for (int t = 0; t < kTokens; ++t)
    for (int c = 0; c < kHidden; ++c) {
      const double want = expected(x, logits, w13, w2, t, c);
      const double error = std::abs(out[t * kHidden + c] - want);
      if (!(error <= 1e-4 * std::max(1.0, std::abs(want)))) {
        std::fprintf(stderr, "token %d column %d: got %g, expected %g\n", t, c,
                     static_cast<double>(out[t * kHidden + c]), want);
        return 1;
      }
      worst = std::max(worst, error);
    }
  std::printf(
      "ironmoe consumer: %d tokens through the installed library, max error %.2e (cuda %s)\n",
      kTokens, worst, cuda_compiled() ? "compiled" : "not compiled");
  return 0;
}
