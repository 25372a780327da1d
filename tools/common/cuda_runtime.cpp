#include "common/cuda_runtime.h"

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace ironmoe::tools::cuda_rt {
namespace {

void check(cudaError_t status, const char* call) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string(call) + " failed: " + cudaGetErrorString(status));
  }
}

void use(int device) { check(cudaSetDevice(device), "cudaSetDevice"); }

}  // namespace

void* allocate(int device, size_t bytes) {
  use(device);
  void* pointer = nullptr;
  check(cudaMalloc(&pointer, bytes), "cudaMalloc");
  return pointer;
}

void release(int device, void* pointer) {
  // Called from destructors: a failure here has nowhere to go.
  if (cudaSetDevice(device) == cudaSuccess) static_cast<void>(cudaFree(pointer));
}

void copy_to_device(int device, void* dst, const void* src, size_t bytes) {
  use(device);
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy(host to device)");
  // The tools run the library on a non-blocking stream, which does not wait for the legacy
  // stream: a pageable copy may still be in flight when cudaMemcpy returns.
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

void copy_to_host(int device, void* dst, const void* src, size_t bytes) {
  use(device);
  // Work enqueued on the tools' non-blocking stream must finish before the legacy-stream copy.
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
  check(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy(device to host)");
}

void fill_bytes(int device, void* dst, int value, size_t bytes) {
  use(device);
  check(cudaMemset(dst, value, bytes), "cudaMemset");
  // cudaMemset is asynchronous and the non-blocking stream would not wait for it.
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

void synchronize(int device) {
  use(device);
  check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

size_t free_bytes(int device) {
  use(device);
  size_t free = 0;
  size_t total = 0;
  check(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
  return free;
}

void* create_stream(int device) {
  use(device);
  cudaStream_t stream = nullptr;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  return stream;
}

void destroy_stream(int device, void* stream) {
  if (cudaSetDevice(device) == cudaSuccess) {
    static_cast<void>(cudaStreamDestroy(static_cast<cudaStream_t>(stream)));
  }
}

}  // namespace ironmoe::tools::cuda_rt
