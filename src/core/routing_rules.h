#pragma once
// The routing rules of the contract, as plain functions both backends call.
//
// Ranking: a NaN ranks as -inf, and among equal keys the lower expert index ranks first, so a
// row always yields k distinct experts (k <= E), whatever it holds. Selected ids come out in rank
// order (best first); the CUDA kernels produce exactly this order.
//
// Weights: always finite and >= 0. A "degenerate" row, where no logit is a number above -inf
// (all NaN / -inf), gets weights 1/k. Otherwise:
//   softmax_topk: p_e = softmax over the E logits (NaN entries count as -inf, i.e. p = 0); if
//                 some logits are +inf they share the mass equally and every other p is 0.
//   sigmoid_topk: raw weight = sigmoid(logit), NaN -> 0.
//   grouped_topk: raw weight = sigmoid(logit), NaN -> 0; the bias only steers selection.
// renormalize divides the k weights by their sum (uniform 1/k if that sum is 0), and every
// final weight is multiplied by routed_scaling_factor.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/host_device.h"
#include "ironmoe/config.h"

namespace ironmoe::core {

using ironmoe::kMaxTopK;
inline constexpr float kNegInf = -INFINITY;

IRONMOE_HD float rank_key(float v) { return v != v ? kNegInf : v; }

// Whether (key_a, index_a) ranks strictly before (key_b, index_b).
IRONMOE_HD bool ranks_before(float key_a, int index_a, float key_b, int index_b) {
  return key_a > key_b || (key_a == key_b && index_a < index_b);
}

// A rank key as 32 bits that order as the keys do, for integer max/min reductions (the CUDA
// route's redux.sync): a > b iff rank_key_bits(a) > rank_key_bits(b) as unsigned, and -0 and +0,
// which compare equal, map to the same bits. Keys must not be NaN (rank_key). Negative keys have
// their bits flipped (larger magnitude, smaller key), others get the sign bit set.
IRONMOE_HD uint32_t rank_key_bits(float key) {
  const float zero_as_plus = key + 0.0f;  // -0 + 0 = +0
#if defined(__CUDA_ARCH__)
  const uint32_t bits = __float_as_uint(zero_as_plus);
#else
  uint32_t bits;
  std::memcpy(&bits, &zero_as_plus, sizeof bits);
#endif
  return (bits & 0x80000000u) != 0 ? ~bits : bits | 0x80000000u;
}

// The inverse of rank_key_bits (a zero comes back as +0).
IRONMOE_HD float rank_key_from_bits(uint32_t ordered) {
  const uint32_t bits = (ordered & 0x80000000u) != 0 ? ordered & 0x7fffffffu : ~ordered;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float key;
  std::memcpy(&key, &bits, sizeof key);
  return key;
#endif
}

IRONMOE_HD float sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }

IRONMOE_HD bool is_usable_logit(float v) { return v == v && v > kNegInf; }

// Keeps the k best (key, index) pairs seen so far in rank order. Indices must be offered in
// increasing order; then an equal key never displaces an earlier index, which is the tie rule.
struct TopK {
  int k = 0;
  int count = 0;
  float keys[kMaxTopK];
  int ids[kMaxTopK];

  IRONMOE_HD explicit TopK(int k_) : k(k_) {}

  IRONMOE_HD void offer(float key, int index) {
    if (count == k && !ranks_before(key, index, keys[k - 1], ids[k - 1])) return;
    int pos = count < k ? count++ : k - 1;
    while (pos > 0 && ranks_before(key, index, keys[pos - 1], ids[pos - 1])) {
      keys[pos] = keys[pos - 1];
      ids[pos] = ids[pos - 1];
      --pos;
    }
    keys[pos] = key;
    ids[pos] = index;
  }
};

// Softmax statistics of one row of logits, NaN counted as -inf.
struct SoftmaxStats {
  float max = kNegInf;  // largest usable logit (+inf possible)
  float sum = 0.0f;     // sum of exp(v - max) over finite v (when max is finite)
  int num_pos_inf = 0;  // logits equal to +inf
};

// p for one logit given the row's statistics (0 for NaN; see the rules above).
IRONMOE_HD float softmax_prob(float v, const SoftmaxStats& s) {
  if (v != v) return 0.0f;
  if (s.num_pos_inf > 0) return v == INFINITY ? 1.0f / static_cast<float>(s.num_pos_inf) : 0.0f;
  return expf(v - s.max) / s.sum;
}

IRONMOE_HD float sigmoid_weight(float v) { return v != v ? 0.0f : sigmoid(v); }

// One raw weight of a non-degenerate row, finalised: divided by `sum` (the row's k raw weights
// added in order j = 0..k-1, from 0) when renormalising, 1/k instead when that sum is not a
// positive finite number, then scaled. A GPU lane holding one weight calls this directly.
IRONMOE_HD float finalize_weight(float weight, float sum, int k, bool renormalize, float scaling) {
  if (renormalize) {
    const bool usable = sum > 0.0f && sum < INFINITY;
    weight = usable ? weight / sum : 1.0f / static_cast<float>(k);
  }
  return weight * scaling;
}

// Renormalise (optionally) and scale k raw weights in place. `degenerate` rows get 1/k.
IRONMOE_HD void finalize_weights(float* weights, int k, bool degenerate, bool renormalize,
                                 float scaling) {
  const float uniform = 1.0f / static_cast<float>(k);
  if (degenerate) {
    for (int j = 0; j < k; ++j) weights[j] = uniform * scaling;
    return;
  }
  float sum = 0.0f;
  if (renormalize) {
    for (int j = 0; j < k; ++j) sum += weights[j];
  }
  for (int j = 0; j < k; ++j)
    weights[j] = finalize_weight(weights[j], sum, k, renormalize, scaling);
}

// grouped_topk: the key an expert is selected by (bias steers selection only).
IRONMOE_HD float grouped_selection_key(float logit, float bias) {
  return rank_key(sigmoid(logit) + bias);
}

// grouped_topk: a group's score is the sum of its two best selection keys (one if the group has
// a single expert); NaN (from +inf + -inf) ranks as -inf.
IRONMOE_HD float group_score(float best, float second, int group_size) {
  return rank_key(group_size >= 2 ? best + second : best);
}

}  // namespace ironmoe::core
