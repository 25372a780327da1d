#pragma once
// act(gate) * up in fp32, the formulas of include/ironmoe/types.h:
//   silu(x) = x / (1 + exp(-x)),  gelu(x) = 0.5 x (1 + erf(x / sqrt 2))  (exact, not tanh).
// Accurate expf/erff, not the fast intrinsics, so the GPU stays within an ulp or two of the CPU.
#include "ironmoe/types.h"

namespace ironmoe::cuda::gemm {

__device__ __forceinline__ float gated_activation(float gate, float up, Activation activation) {
  if (activation == Activation::gelu_and_mul) {
    constexpr float kInvSqrt2 = 0.70710678118654752440f;
    return 0.5f * gate * (1.0f + erff(gate * kInvSqrt2)) * up;
  }
  return gate / (1.0f + expf(-gate)) * up;
}

}  // namespace ironmoe::cuda::gemm
