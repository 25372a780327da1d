#pragma once
// Stage 4: the expert MLPs on permuted rows. For local expert e and its rows
// r in [expert_offsets[e], expert_offsets[e] + expert_counts[e]):
//   h[r]   = act(permuted_in[r] @ w13[e][:I]^T) * (permuted_in[r] @ w13[e][I:]^T)
//   out[r] = h[r] @ w2[e]^T
// fp32 accumulation; h is stored in the weights' dtype between the two GEMMs. The offsets/counts
// pair describes both layouts (contiguous and batched), so every dispatch path feeds this stage.
// Rows outside every expert's range are neither read nor written.
//
// FP8 experts (quant != none, docs/formats.md "FP8 experts"): w13 and w2 hold E4M3 codes with f32
// scales; both GEMM inputs are quantised to E4M3 inside the stage (permuted_in per the scheme,
// h straight from GEMM1's fp32 result), each product is code x code, scaled per the scheme, and
// summed in fp32; out is rounded once to permuted_in's dtype (twice for fp8_channel on the Hopper
// FP8 GEMM, whose per-channel down scales are applied to its bf16 output). `intermediate` is not
// touched and may be absent. On CUDA the tensor cores' FP8 sums keep fewer bits than fp32 inside
// each 128-deep K block (docs/contract.md L6 gives the tolerances against the CPU backend).
#include "ironmoe/stream.h"
#include "ironmoe/tensor.h"

namespace ironmoe {

// The parts of the stage one call runs. gate_up: GEMM1 and the activation only, writing h (for
// FP8 experts, h lives in the scratch) and not permuted_out; down: GEMM2 only, reading h as the
// last gate_up call with the same arguments and scratch left it. Calling gate_up then down gives
// the same bits as all. For profiling (ironmoe-bench --breakdown times GEMM1 and GEMM2 apart);
// a down call without that gate_up call reads whatever h holds.
enum class ExpertPhase : uint8_t { all, gate_up, down };

// FP8 experts only: GEMM1's input rows read straight from the tokens and quantised there, the
// gather fused into the quantisation (no bf16 permuted copy is written or read). Row r of an
// expert's range is x[row_to_slot[r] / top_k]; a row whose row_to_slot entry is not a slot of x
// (outside [0, T * top_k), e.g. -1) is read as zeros. Layer::forward passes this for FP8 layers.
struct GatheredInput {
  TensorView x;            // [T, H], permuted_in's dtype and device, unit column stride
  TensorView row_to_slot;  // [R] i32, the plan's permuted row -> slot
  int64_t top_k = 0;       // slots per token, in [1, kMaxTopK]

  // In use when either tensor is given (experts() then checks all three); x may hold no token
  // and no data.
  bool given() const {
    return x.data != nullptr || x.ndim > 0 || row_to_slot.data != nullptr || row_to_slot.ndim > 0;
  }
};

struct ExpertArgs {
  TensorView permuted_in;     // [R, H]; with `gathered`, only its shape and dtype are used
  TensorView expert_offsets;  // [E_local] or [E_local + 1] i32 (only the first E_local are read)
  TensorView expert_counts;   // [E_local] i32
  TensorView w13;             // [E_local, 2I, H], contiguous
  TensorView w2;              // [E_local, H, I], contiguous
  Activation activation = Activation::silu_and_mul;
  ExpertKernel kernel = ExpertKernel::automatic;  // CUDA only (types.h)
  ExpertPhase phase = ExpertPhase::all;
  TensorView intermediate;  // scratch [R, I], same dtype; FP8 experts: optional, never touched
  TensorView permuted_out;  // out [R, H], same dtype
  // FP8 experts: the scheme, weight scales (f32, contiguous) and, for fp8_tensor only, optional
  // static activation scales (f32 [1] each; absent: dynamic, computed from the stage's rows).
  //   fp8_tensor   w13_scale [E_local]          w2_scale [E_local]
  //   fp8_channel  w13_scale [E_local, 2I]      w2_scale [E_local, H]
  //   fp8_block    w13_scale [E_local, ceil(2I/128), ceil(H/128)]
  //                w2_scale  [E_local, ceil(H/128), ceil(I/128)]
  QuantScheme quant = QuantScheme::none;
  TensorView w13_scale;
  TensorView w2_scale;
  TensorView w13_input_scale;
  TensorView w2_input_scale;
  // Optional (FP8 experts): where GEMM1's input rows come from instead of permuted_in, which is
  // then not read (it may be permuted_out itself).
  GatheredInput gathered;
  // Scratch for the device backends (expert_scratch_bytes); may be null on the CPU.
  void* scratch = nullptr;
  size_t scratch_bytes = 0;
};

// Scratch the stage needs for up to max_rows permuted rows: on CUDA the gate/up GEMM output, the
// grouped-GEMM problem list and the GEMM library's own workspace; with FP8 experts the quantised
// activations and their scales (core/fp8_scratch.h). 0 on the CPU without FP8.
size_t expert_scratch_bytes(int64_t max_rows, int64_t hidden, int64_t intermediate,
                            int64_t num_local_experts, DType dtype, Device device,
                            QuantScheme quant = QuantScheme::none);
void experts(const ExpertArgs& args, const Stream& stream);

}  // namespace ironmoe
