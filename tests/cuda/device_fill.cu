// fill_uniform_device: test inputs generated on the GPU (full-size expert weights are gigabytes).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_test_util.h"

namespace ironmoe::cuda_test {
namespace {

// splitmix64: a counter-based hash, so every element is independent of the launch shape.
__device__ uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

template <class T>
__device__ T convert(float v);
template <>
__device__ float convert<float>(float v) {
  return v;
}
template <>
__device__ __nv_bfloat16 convert<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __half convert<__half>(float v) {
  return __float2half_rn(v);
}

template <class T>
__global__ void fill_uniform_kernel(T* data, int64_t count, uint64_t seed, float scale) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const uint64_t bits = mix(seed ^ mix(static_cast<uint64_t>(i)));
    const float unit = static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    data[i] = convert<T>((2.0f * unit - 1.0f) * scale);
  }
}

}  // namespace

void fill_uniform_device(void* data, DType dtype, int64_t count, uint64_t seed, float scale,
                         cudaStream_t stream) {
  if (count == 0) return;
  constexpr int kThreads = 256;
  const int blocks = 4096;
  switch (dtype) {
    case DType::f32:
      fill_uniform_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<float*>(data), count, seed,
                                                           scale);
      break;
    case DType::bf16:
      fill_uniform_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<__nv_bfloat16*>(data), count,
                                                           seed, scale);
      break;
    case DType::f16:
      fill_uniform_kernel<<<blocks, kThreads, 0, stream>>>(static_cast<__half*>(data), count, seed,
                                                           scale);
      break;
    case DType::i32:
    case DType::f8e4m3:
      throw std::runtime_error("fill_uniform_device: expected f32, bf16 or f16");
  }
  CUDA_TEST_OK(cudaGetLastError());
}

}  // namespace ironmoe::cuda_test
