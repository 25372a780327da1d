#pragma once
// h[r] = act(gate_up[r][:I]) * gate_up[r][I:] for every row r of every local expert, rounded once
// to the storage dtype. Used after the Hopper GEMM1, which writes gate and up side by side
// ([R, 2I], the layout of w13). Rows outside the experts' ranges are neither read nor written.
#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/gemm/expert_rows.h"
#include "ironmoe/types.h"

namespace ironmoe::cuda::gemm {

struct GatedActivationArgs {
  const void* gate_up = nullptr;  // [R, 2I], row stride gate_up_stride
  int64_t gate_up_stride = 0;
  void* out = nullptr;  // [R, I], row stride out_stride
  int64_t out_stride = 0;
  int64_t intermediate = 0;   // I
  DType dtype = DType::bf16;  // of both buffers
  Activation activation = Activation::silu_and_mul;
};

void gated_activation(const ExpertRows& rows, const GatedActivationArgs& args, cudaStream_t stream);

}  // namespace ironmoe::cuda::gemm
