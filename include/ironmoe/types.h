#pragma once
// Small value types shared by every part of the API.
#include <cstddef>
#include <cstdint>

namespace ironmoe {

// Storage types. Arithmetic is always fp32 (accumulation included), whatever the storage.
// f8e4m3: OCP E4M3 "fn" bytes, for FP8 expert weights only (MoeConfig::quant, docs/formats.md).
enum class DType : uint8_t { f32, bf16, f16, i32, f8e4m3 };

size_t dtype_size(DType dtype);
const char* dtype_name(DType dtype);

enum class DeviceType : uint8_t { cpu, cuda };

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  static constexpr Device cpu() { return {DeviceType::cpu, 0}; }
  static constexpr Device cuda(int index = 0) { return {DeviceType::cuda, index}; }
  bool is_cpu() const { return type == DeviceType::cpu; }
  bool is_cuda() const { return type == DeviceType::cuda; }
  friend bool operator==(const Device& a, const Device& b) {
    return a.type == b.type && (a.type == DeviceType::cpu || a.index == b.index);
  }
};

const char* device_name(DeviceType type);

// act(gate) * up, gate = rows [0, I) of w13, up = rows [I, 2I).
// gelu_and_mul uses the exact (erf) GELU.
enum class Activation : uint8_t { silu_and_mul, gelu_and_mul };

// How permuted rows are laid out between dispatch and combine (DESIGN.md section 4). Both are
// described to the expert stage the same way: per local expert a first row and a row count.
//  contiguous: experts' rows back to back, first_row[e] = sum of counts before e.
//  batched:    a fixed capacity per expert, first_row[e] = e * capacity.
enum class Layout : uint8_t { contiguous, batched };

// The kernel family of the expert stage on CUDA (the CPU backend has one and ignores this).
//  automatic      the dispatch tables in src/cuda/experts.cu and experts_fp8.cu
//                 (docs/performance.md says why)
//  grouped_gemm   Hopper tensor-core grouped GEMM (bf16 activations, sm_90, 16-byte aligned
//                 operands; with FP8 weights, every scheme on E4M3 tensor cores)
//  weight_stream  CUDA-core kernels that read each expert's weights once per 8 rows (FP8: per 2
//                 rows): decode
//  cuda_cores     the general CUDA-core fallback (any dtype, shape and alignment)
// A forced kernel that cannot take the operands is an error, never a silent fallback.
enum class ExpertKernel : uint8_t { automatic, grouped_gemm, weight_stream, cuda_cores };
const char* expert_kernel_name(ExpertKernel kernel);

// How the expert GEMMs quantise (docs/formats.md "FP8 experts"): none keeps the weights in the
// storage dtype; the fp8 schemes take E4M3 weights with f32 scales and quantise the activations
// of both GEMMs to E4M3 on the fly.
//  fp8_tensor   one scale per expert weight tensor; activations: one scale per tensor, static
//               (given) or dynamic (computed from the batch)
//  fp8_channel  one scale per output channel of each weight; activations: one scale per row
//  fp8_block    one scale per 128x128 weight block (DeepSeek-V3); activations: one per row and
//               128 columns of K
enum class QuantScheme : uint8_t { none, fp8_tensor, fp8_channel, fp8_block };
const char* quant_scheme_name(QuantScheme quant);

// Counters of the optional diagnostics buffer (int32[kDiagnosticCount] on the stage's device).
// Counting is the only thing atomics are used for; no result depends on them. Counts add to what
// the buffer holds (the caller zeroes it) and stop at INT32_MAX rather than wrap.
enum DiagnosticCounter : int {
  kDiagIdOutOfRange = 0,    // valid-row slot whose id is outside [0, E) (includes -1)
  kDiagIdRemote = 1,        // valid-row slot whose id is in [0, E) but outside the local range
  kDiagNonFiniteLogit = 2,  // NaN or +-Inf router logits in valid rows
  kDiagCapacityOverflow = 3,  // batched layout: slots dropped because an expert was full
  kDiagnosticCount = 4,
};

}  // namespace ironmoe
