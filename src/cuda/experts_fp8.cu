// Stage 4 on CUDA with FP8 experts (ExpertArgs::quant != none), in the CPU backend's steps
// (cpu/experts_fp8.cpp): quantise GEMM1's input rows (per-tensor: an amax pass first unless a
// static scale is given), GEMM1 with the activation into fp32 h, quantise h, GEMM2 into
// permuted_out. The GEMMs are the CUDA-core grouped GEMM reading E4M3 codes and scales
// (gemm/grouped_gemm_simt.h): correct for every shape, scheme and batch size, not yet fast.
// Every buffer is carved from the scratch by core::fp8_scratch; nothing syncs with the host.
#include "core/check.h"
#include "core/fp8_scales.h"
#include "core/fp8_scratch.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/fp8_quantize.h"
#include "cuda/gemm/grouped_gemm_simt.h"

namespace ironmoe::cuda {

void experts_fp8(const ExpertArgs& args, void* stream_handle) {
  const cudaStream_t stream = as_cuda_stream(stream_handle);
  const QuantScheme quant = args.quant;
  const int64_t num_rows = args.permuted_in.size(0);
  const int64_t hidden = args.permuted_in.size(1);
  const int64_t local_experts = args.w13.size(0);
  const int64_t inter = args.w13.size(1) / 2;
  IRONMOE_CHECK(args.kernel == ExpertKernel::automatic || args.kernel == ExpertKernel::cuda_cores,
                "experts", "kernel (config.expert_kernel): FP8 experts run on cuda_cores so far, ",
                "got ", expert_kernel_name(args.kernel));
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
  const bool per_tensor = quant == QuantScheme::fp8_tensor;

  // 1. GEMM1's input.
  const float* a_tensor_scale = args.w13_input_scale.ptr<const float>();
  if (per_tensor && a_tensor_scale == nullptr) {
    fp8_tensor_scale_of_rows(rows, args.permuted_in.data, dtype, hidden, hidden, &tensor_scales[0],
                             stream);
    a_tensor_scale = &tensor_scales[0];
  }
  fp8_quantize_rows(rows, args.permuted_in.data, dtype, hidden, hidden, quant, a_tensor_scale,
                    a_codes, a_scales, stream);

  // 2. GEMM1 + activation into fp32 h.
  gemm::SimtFp8GemmArgs gemm1;
  gemm1.a = a_codes;
  gemm1.a_scales = core::fp8_activation_scale_map(quant, a_scales, a_tensor_scale, hidden);
  gemm1.b = static_cast<const uint8_t*>(args.w13.data);
  gemm1.b_scales = args.w13_scale.ptr<const float>();
  gemm1.quant = quant;
  gemm1.d = h_values;
  gemm1.d_stride = inter;
  gemm1.n = inter;
  gemm1.k = hidden;
  gemm1.gated = true;
  gemm1.activation = args.activation;
  gemm::grouped_gemm_simt_fp8(rows, gemm1, stream);

  // 3. GEMM2's input, from fp32.
  const float* h_tensor_scale = args.w2_input_scale.ptr<const float>();
  if (per_tensor && h_tensor_scale == nullptr) {
    fp8_tensor_scale_of_rows(rows, h_values, DType::f32, inter, inter, &tensor_scales[1], stream);
    h_tensor_scale = &tensor_scales[1];
  }
  fp8_quantize_rows(rows, h_values, DType::f32, inter, inter, quant, h_tensor_scale, h_codes,
                    h_scales, stream);

  // 4. GEMM2 into permuted_out.
  gemm::SimtFp8GemmArgs gemm2;
  gemm2.a = h_codes;
  gemm2.a_scales = core::fp8_activation_scale_map(quant, h_scales, h_tensor_scale, inter);
  gemm2.b = static_cast<const uint8_t*>(args.w2.data);
  gemm2.b_scales = args.w2_scale.ptr<const float>();
  gemm2.quant = quant;
  gemm2.d = args.permuted_out.data;
  gemm2.d_stride = args.permuted_out.strides[0];
  gemm2.d_dtype = dtype;
  gemm2.n = hidden;
  gemm2.k = inter;
  gemm::grouped_gemm_simt_fp8(rows, gemm2, stream);
}

void fp8_input_scale(const Fp8InputScaleArgs& args, void* stream_handle) {
  fp8_tensor_scale_of_tokens(args.x.data, args.x.dtype, args.x.strides[0], args.x.size(0),
                             args.x.size(1), args.num_valid_tokens, args.scale.ptr<float>(),
                             as_cuda_stream(stream_handle));
}

}  // namespace ironmoe::cuda
