// Runtime services of the CUDA backend: device discovery and the error reporting of cuda_check.h.
#include <cuda_runtime.h>

#include <sstream>

#include "core/check.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "ironmoe/error.h"

namespace ironmoe::cuda {

bool available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    // No driver or no device: clear the error so later CUDA calls do not report it.
    static_cast<void>(cudaGetLastError());
    return false;
  }
  return count > 0;
}

void throw_cuda_error(cudaError_t error, const char* call, const char* file, int line) {
  std::ostringstream message;
  message << "ironmoe::cuda: " << call << " failed at " << file << ":" << line << ": "
          << cudaGetErrorName(error) << " (" << cudaGetErrorString(error) << ")";
  throw Error(message.str());
}

void debug_sync_after_launch(cudaStream_t stream, const char* file, int line) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  const cudaError_t query = cudaStreamIsCapturing(stream, &capture);
  if (query != cudaSuccess) throw_cuda_error(query, "cudaStreamIsCapturing(stream)", file, line);
  if (capture != cudaStreamCaptureStatusNone) return;
  const cudaError_t sync = cudaStreamSynchronize(stream);
  if (sync != cudaSuccess) throw_cuda_error(sync, "kernel (debug sync after launch)", file, line);
}

void reserve_dynamic_shared_memory(const void* kernel, size_t bytes, const char* where,
                                   const char* what, int64_t experts) {
  constexpr size_t kDefaultLimit = 48 * 1024;
  if (bytes <= kDefaultLimit) return;
  int device = 0;
  int optin = 0;
  IRONMOE_CUDA_CHECK(cudaGetDevice(&device));
  IRONMOE_CUDA_CHECK(
      cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  IRONMOE_CHECK(bytes <= static_cast<size_t>(optin), where, what, " over ", experts,
                " experts needs ", bytes, " bytes of shared memory per block, device ", device,
                " offers ", optin);
  IRONMOE_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(bytes)));
}

}  // namespace ironmoe::cuda
