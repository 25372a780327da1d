#pragma once
// Stage 4: the expert MLPs on permuted rows. For local expert e and its rows
// r in [expert_offsets[e], expert_offsets[e] + expert_counts[e]):
//   h[r]   = act(permuted_in[r] @ w13[e][:I]^T) * (permuted_in[r] @ w13[e][I:]^T)
//   out[r] = h[r] @ w2[e]^T
// fp32 accumulation; h is stored in the weights' dtype between the two GEMMs. The offsets/counts
// pair describes both layouts (contiguous and batched), so every dispatch path feeds this stage.
// Rows outside every expert's range are neither read nor written.
#include "ironmoe/stream.h"
#include "ironmoe/tensor.h"

namespace ironmoe {

struct ExpertArgs {
  TensorView permuted_in;     // [R, H]
  TensorView expert_offsets;  // [E_local] or [E_local + 1] i32 (only the first E_local are read)
  TensorView expert_counts;   // [E_local] i32
  TensorView w13;             // [E_local, 2I, H], contiguous
  TensorView w2;              // [E_local, H, I], contiguous
  Activation activation = Activation::silu_and_mul;
  ExpertKernel kernel = ExpertKernel::automatic;  // CUDA only (types.h)
  TensorView intermediate;    // scratch [R, I], same dtype
  TensorView permuted_out;    // out [R, H], same dtype
  // Scratch for the device backends (expert_scratch_bytes); may be null on the CPU.
  void* scratch = nullptr;
  size_t scratch_bytes = 0;
};

// Scratch the device backends need for up to max_rows permuted rows (the gate/up GEMM output,
// the grouped-GEMM problem list and the GEMM library's own workspace); 0 on the CPU.
size_t expert_scratch_bytes(int64_t max_rows, int64_t hidden, int64_t intermediate,
                            int64_t num_local_experts, DType dtype, Device device);
void experts(const ExpertArgs& args, const Stream& stream);

}  // namespace ironmoe
