// Device peaks measured with the vendor's own paths: a device-to-device cudaMemcpyAsync for
// bandwidth and cuBLAS's dense bf16 GEMM for the matmul rate.
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <functional>

#include "bench/cuda_check.h"
#include "bench/peak.h"
#include "bench/timing.h"

namespace ironmoe::tools {
namespace {

// Median seconds of 10 timed runs of `work` after one warm-up.
double median_seconds(cudaStream_t stream, const std::function<void()>& work) {
  return time_cuda_stream(work, stream, 1, 10).median_s;
}

double measure_copy(cudaStream_t stream) {
  constexpr size_t kBytes = size_t{1} << 30;
  void* src = nullptr;
  void* dst = nullptr;
  IRONMOE_CUDA_CHECK(cudaMalloc(&src, kBytes));
  IRONMOE_CUDA_CHECK(cudaMalloc(&dst, kBytes));
  IRONMOE_CUDA_CHECK(cudaMemsetAsync(src, 1, kBytes, stream));
  const double seconds = median_seconds(stream, [&] {
    IRONMOE_CUDA_CHECK(cudaMemcpyAsync(dst, src, kBytes, cudaMemcpyDeviceToDevice, stream));
  });
  IRONMOE_CUDA_CHECK(cudaFree(src));
  IRONMOE_CUDA_CHECK(cudaFree(dst));
  return 2.0 * static_cast<double>(kBytes) / seconds;  // read + written
}

double measure_gemm(cudaStream_t stream) {
  constexpr int kN = 8192;
  const size_t bytes = size_t{kN} * kN * sizeof(__nv_bfloat16);
  void* a = nullptr;
  void* b = nullptr;
  void* c = nullptr;
  IRONMOE_CUDA_CHECK(cudaMalloc(&a, bytes));
  IRONMOE_CUDA_CHECK(cudaMalloc(&b, bytes));
  IRONMOE_CUDA_CHECK(cudaMalloc(&c, bytes));
  // 0x3c00 bf16 = 0.0078125: small finite inputs, so nothing overflows in the products.
  IRONMOE_CUDA_CHECK(cudaMemsetAsync(a, 0x3c, bytes, stream));
  IRONMOE_CUDA_CHECK(cudaMemsetAsync(b, 0x3c, bytes, stream));
  cublasHandle_t handle = nullptr;
  IRONMOE_CUBLAS_CHECK(cublasCreate(&handle));
  IRONMOE_CUBLAS_CHECK(cublasSetStream(handle, stream));
  const float alpha = 1.0f;
  const float beta = 0.0f;
  const double seconds = median_seconds(stream, [&] {
    IRONMOE_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, kN, kN, kN, &alpha, a,
                                      CUDA_R_16BF, kN, b, CUDA_R_16BF, kN, &beta, c, CUDA_R_16BF,
                                      kN, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  });
  IRONMOE_CUBLAS_CHECK(cublasDestroy(handle));
  IRONMOE_CUDA_CHECK(cudaFree(a));
  IRONMOE_CUDA_CHECK(cudaFree(b));
  IRONMOE_CUDA_CHECK(cudaFree(c));
  return 2.0 * kN * static_cast<double>(kN) * kN / seconds;
}

// cuBLASLt's dense E4M3 GEMM (its only FP8 layout: A transposed, "TN"), bf16 output, scales 1.
double measure_fp8_gemm(cudaStream_t stream) {
  constexpr int kN = 8192;
  constexpr size_t kWorkspaceBytes = size_t{32} << 20;
  const size_t operand_bytes = size_t{kN} * kN;
  void* a = nullptr;
  void* b = nullptr;
  void* d = nullptr;
  void* workspace = nullptr;
  IRONMOE_CUDA_CHECK(cudaMalloc(&a, operand_bytes));
  IRONMOE_CUDA_CHECK(cudaMalloc(&b, operand_bytes));
  IRONMOE_CUDA_CHECK(cudaMalloc(&d, operand_bytes * sizeof(__nv_bfloat16)));
  IRONMOE_CUDA_CHECK(cudaMalloc(&workspace, kWorkspaceBytes));
  // 0x20 = 2^-5 in E4M3: finite products, no overflow over K = 8192.
  IRONMOE_CUDA_CHECK(cudaMemsetAsync(a, 0x20, operand_bytes, stream));
  IRONMOE_CUDA_CHECK(cudaMemsetAsync(b, 0x20, operand_bytes, stream));
  cublasLtHandle_t handle = nullptr;
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a_layout = nullptr, b_layout = nullptr, d_layout = nullptr;
  IRONMOE_CUBLAS_CHECK(cublasLtCreate(&handle));
  IRONMOE_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t transpose = CUBLAS_OP_T;
  IRONMOE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &transpose,
                                                      sizeof(transpose)));
  IRONMOE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&a_layout, CUDA_R_8F_E4M3, kN, kN, kN));
  IRONMOE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&b_layout, CUDA_R_8F_E4M3, kN, kN, kN));
  IRONMOE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d_layout, CUDA_R_16BF, kN, kN, kN));
  const float alpha = 1.0f;
  const float beta = 0.0f;
  const double seconds = median_seconds(stream, [&] {
    IRONMOE_CUBLAS_CHECK(cublasLtMatmul(handle, desc, &alpha, a, a_layout, b, b_layout, &beta, d,
                                        d_layout, d, d_layout, nullptr, workspace, kWorkspaceBytes,
                                        stream));
  });
  IRONMOE_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(a_layout));
  IRONMOE_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(b_layout));
  IRONMOE_CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(d_layout));
  IRONMOE_CUBLAS_CHECK(cublasLtMatmulDescDestroy(desc));
  IRONMOE_CUBLAS_CHECK(cublasLtDestroy(handle));
  for (void* p : {a, b, d, workspace}) IRONMOE_CUDA_CHECK(cudaFree(p));
  return 2.0 * kN * static_cast<double>(kN) * kN / seconds;
}

}  // namespace

MachinePeak measure_cuda_peak(int device, void* stream) {
  IRONMOE_CUDA_CHECK(cudaSetDevice(device));
  const auto cuda_stream = static_cast<cudaStream_t>(stream);
  MachinePeak peak;
  cudaDeviceProp properties{};
  IRONMOE_CUDA_CHECK(cudaGetDeviceProperties(&properties, device));
  peak.device_name = properties.name;
  peak.bandwidth_bytes_per_s = measure_copy(cuda_stream);
  peak.bandwidth_method = "cudaMemcpyAsync device-to-device, 1 GiB";
  peak.gemm_flops_per_s = measure_gemm(cuda_stream);
  peak.gemm_method = "cublasGemmEx bf16 8192^3, fp32 compute";
  peak.fp8_gemm_flops_per_s = measure_fp8_gemm(cuda_stream);
  peak.fp8_gemm_method = "cublasLtMatmul e4m3 8192^3 (A transposed), bf16 out, fp32 compute";
  return peak;
}

}  // namespace ironmoe::tools
