#pragma once
// One checking macro for the bench's CUDA and cuBLAS calls: a failure throws std::runtime_error
// naming the call, the file and the line. Only for builds with IRONMOE_WITH_CUDA.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace ironmoe::tools {

inline void cuda_check(cudaError_t status, const char* call, const char* file, int line) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string(call) + " failed at " + file + ":" + std::to_string(line) +
                             ": " + cudaGetErrorString(status));
  }
}

inline void cublas_check(cublasStatus_t status, const char* call, const char* file, int line) {
  if (status != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string(call) + " failed at " + file + ":" + std::to_string(line) +
                             ": cuBLAS status " + std::to_string(static_cast<int>(status)));
  }
}

}  // namespace ironmoe::tools

#define IRONMOE_CUDA_CHECK(call) ::ironmoe::tools::cuda_check((call), #call, __FILE__, __LINE__)
#define IRONMOE_CUBLAS_CHECK(call) ::ironmoe::tools::cublas_check((call), #call, __FILE__, __LINE__)
