// Stage 4 on CUDA with FP8 experts (ExpertArgs::quant != none), in the CPU backend's steps
// (cpu/experts_fp8.cpp): quantise GEMM1's input rows (per-tensor: an amax pass first unless a
// static scale is given), GEMM1 with the activation into fp32 h, quantise h, GEMM2 into
// permuted_out. Two GEMM families on E4M3 codes and scales:
//   weight_stream  (gemm/weight_stream_fp8.h) up to kFp8StreamMaxRows rows: each weight byte
//                  read once per 4 rows of its expert, at memory speed;
//   cuda_cores     (gemm/grouped_gemm_simt.h) every shape: correct, not fast (no FP8 tensor-core
//                  GEMM yet).
// Every buffer is carved from the scratch by core::fp8_scratch; nothing syncs with the host.
#include "core/check.h"
#include "core/fp8_scales.h"
#include "core/fp8_scratch.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/fp8_quantize.h"
#include "cuda/gemm/grouped_gemm_simt.h"
#include "cuda/gemm/weight_stream.h"
#include "cuda/gemm/weight_stream_fp8.h"

namespace ironmoe::cuda {
namespace {

// Up to this many permuted rows the streaming kernels run (automatic). Measured on an H100
// against the CUDA-core GEMM, the only other FP8 path so far (docs/performance.md, qwen3-30b-a3b):
// streaming is 4.5-18x faster from 8 to 512 rows and 2.4-3.4x at 2048 (256 tokens); larger
// batches are not measured yet.
constexpr int64_t kFp8StreamMaxRows = 2048;

// Whether the GEMMs stream weights (else the CUDA-core GEMM); a forced kernel that cannot run
// is an error.
bool choose_fp8_stream(ExpertKernel kernel, bool stream_ok, int64_t rows) {
  switch (kernel) {
    case ExpertKernel::automatic: return stream_ok && rows <= kFp8StreamMaxRows;
    case ExpertKernel::weight_stream:
      IRONMOE_CHECK(stream_ok, "experts", "kernel (config.expert_kernel): FP8 weight_stream ",
                    "needs H and I multiples of 16, 16-byte aligned weights and at most ",
                    gemm::kWeightStreamMaxExperts, " local experts");
      return true;
    case ExpertKernel::cuda_cores: return false;
    case ExpertKernel::grouped_gemm: break;
  }
  core::fail("experts", "kernel (config.expert_kernel): FP8 experts run on weight_stream or ",
             "cuda_cores so far, got ", expert_kernel_name(kernel));
}

// Quantises the experts' rows of src ([R, k], contiguous) into codes and row scales; fp8_tensor
// uses `given` or, when null, a dynamic scale computed into `dynamic`. Returns the tensor scale
// (null for the other schemes).
const float* quantize_input(const gemm::ExpertRows& rows, const void* src, DType dtype, int64_t k,
                            QuantScheme quant, const float* given, float* dynamic, uint8_t* codes,
                            float* row_scales, cudaStream_t stream) {
  const float* tensor_scale = nullptr;
  if (quant == QuantScheme::fp8_tensor) {
    tensor_scale = given;
    if (tensor_scale == nullptr) {
      fp8_tensor_scale_of_rows(rows, src, dtype, k, k, dynamic, stream);
      tensor_scale = dynamic;
    }
  }
  fp8_quantize_rows(rows, src, dtype, k, k, quant, tensor_scale, codes, row_scales, stream);
  return tensor_scale;
}

}  // namespace

void experts_fp8(const ExpertArgs& args, void* stream_handle) {
  const cudaStream_t stream = as_cuda_stream(stream_handle);
  const QuantScheme quant = args.quant;
  const int64_t num_rows = args.permuted_in.size(0);
  const int64_t hidden = args.permuted_in.size(1);
  const int64_t local_experts = args.w13.size(0);
  const int64_t inter = args.w13.size(1) / 2;
  const bool stream_ok =
      gemm::stream_fp8_supports(hidden, inter, args.w13.data, args.w2.data, local_experts);
  const bool streamed = choose_fp8_stream(args.kernel, stream_ok, num_rows);
  if (num_rows == 0 || local_experts == 0) return;
  const gemm::ExpertRows rows{args.expert_offsets.ptr<const int32_t>(),
                              args.expert_counts.ptr<const int32_t>(), local_experts, num_rows};
  const core::Fp8Scratch layout = core::fp8_scratch(quant, num_rows, hidden, inter);
  char* scratch = static_cast<char*>(args.scratch);
  auto* a_codes = reinterpret_cast<uint8_t*>(scratch + layout.a_codes);
  auto* a_scales = reinterpret_cast<float*>(scratch + layout.a_scales);
  auto* h_values = reinterpret_cast<float*>(scratch + layout.h_values);
  auto* h_codes = reinterpret_cast<uint8_t*>(scratch + layout.h_codes);
  auto* h_scales = reinterpret_cast<float*>(scratch + layout.h_scales);
  auto* tensor_scales = reinterpret_cast<float*>(scratch + layout.tensor_scales);
  const DType dtype = args.permuted_in.dtype;
  const auto run = [&](const gemm::Fp8GemmArgs& gemm_args) {
    if (streamed) {
      gemm::stream_fp8_gemm(rows, gemm_args, stream);
    } else {
      gemm::grouped_gemm_simt_fp8(rows, gemm_args, stream);
    }
  };

  // 1. GEMM1's input.
  const float* a_tensor_scale = quantize_input(rows, args.permuted_in.data, dtype, hidden, quant,
                                               args.w13_input_scale.ptr<const float>(),
                                               &tensor_scales[0], a_codes, a_scales, stream);

  // 2. GEMM1 + activation into fp32 h.
  gemm::Fp8GemmArgs gemm1;
  gemm1.a = a_codes;
  gemm1.a_scales = core::fp8_activation_scale_map(quant, a_scales, a_tensor_scale, hidden);
  gemm1.w = static_cast<const uint8_t*>(args.w13.data);
  gemm1.w_scales = args.w13_scale.ptr<const float>();
  gemm1.quant = quant;
  gemm1.out = h_values;
  gemm1.out_stride = inter;
  gemm1.out_dtype = DType::f32;
  gemm1.n = inter;
  gemm1.k = hidden;
  gemm1.gated = true;
  gemm1.activation = args.activation;
  run(gemm1);

  // 3. GEMM2's input, from fp32.
  const float* h_tensor_scale = quantize_input(rows, h_values, DType::f32, inter, quant,
                                               args.w2_input_scale.ptr<const float>(),
                                               &tensor_scales[1], h_codes, h_scales, stream);

  // 4. GEMM2 into permuted_out.
  gemm::Fp8GemmArgs gemm2;
  gemm2.a = h_codes;
  gemm2.a_scales = core::fp8_activation_scale_map(quant, h_scales, h_tensor_scale, inter);
  gemm2.w = static_cast<const uint8_t*>(args.w2.data);
  gemm2.w_scales = args.w2_scale.ptr<const float>();
  gemm2.quant = quant;
  gemm2.out = args.permuted_out.data;
  gemm2.out_stride = args.permuted_out.strides[0];
  gemm2.out_dtype = dtype;
  gemm2.n = hidden;
  gemm2.k = inter;
  run(gemm2);
}

void fp8_input_scale(const Fp8InputScaleArgs& args, void* stream_handle) {
  fp8_tensor_scale_of_tokens(args.x.data, args.x.dtype, args.x.strides[0], args.x.size(0),
                             args.x.size(1), args.num_valid_tokens, args.scale.ptr<float>(),
                             as_cuda_stream(stream_handle));
}

}  // namespace ironmoe::cuda
