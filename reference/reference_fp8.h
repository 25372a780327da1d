#pragma once
// The float64 reference of FP8 (E4M3) experts, the three schemes of docs/formats.md "FP8 experts",
// written independently of src/ like reference_moe.h: its E4M3 encoder searches the code table
// for the nearest value instead of doing the arithmetic of src/core/fp8.h, so the two check each
// other. Products of FP8 values and scales are exact in double, so the order of sums does not
// matter here; the device may differ from it by its fp32 accumulation and by an activation code
// that rounds the other way from an fp32 (not float64) GEMM1 result.
#include <cstdint>
#include <vector>

#include "ironmoe/config.h"

namespace ironmoe::reference {

enum class Fp8Scheme { per_tensor, per_channel, block };
inline constexpr int64_t kFp8BlockSize = 128;

uint8_t to_fp8_bits(float value);  // nearest finite code, ties to the even code, saturating
float from_fp8_bits(uint8_t bits);
float fp8_group_scale(double amax);  // max(amax / 448, 1 / (448 * 512)); NaN stays NaN

struct Fp8Weights {
  Fp8Scheme scheme = Fp8Scheme::per_tensor;
  std::vector<uint8_t> w13;  // [E_local, 2I, H] codes
  std::vector<uint8_t> w2;   // [E_local, H, I] codes
  // per_tensor [E_local]; per_channel [E_local, 2I] and [E_local, H]; block
  // [E_local, ceil(2I/128), ceil(H/128)] and [E_local, ceil(H/128), ceil(I/128)].
  std::vector<float> w13_scale;
  std::vector<float> w2_scale;
};

// Quantises float weights with dynamic scales per expert tensor, output row or 128x128 block.
Fp8Weights quantize_weights(Fp8Scheme scheme, int64_t local_experts, int64_t hidden,
                            int64_t intermediate, const float* w13, const float* w2);

// The layer with FP8 experts, as reference::layer (same arguments and output) but with weights
// `w` and activations quantised per its scheme: per_tensor with `static_scales` = {GEMM1 input,
// GEMM2 input} or, when null, one dynamic scale per activation tensor over the valid tokens'
// rows with NaN ignored (so one bad row does not poison the batch; such a scale depends on the
// batch, which the other schemes' do not); per_channel one dynamic scale per row; block one per
// row and 128 columns of K. h is quantised straight from the GEMM1 result (no bf16 rounding).
void layer_fp8(const MoeConfig& config, int64_t tokens, const float* x, const int32_t* topk_ids,
               const float* topk_weights, const Fp8Weights& w, const float* static_scales,
               int64_t num_valid, const std::vector<int64_t>& token_list, double* out);

}  // namespace ironmoe::reference
