#pragma once
// The few CUDA runtime calls the tools make, each checked (a failure throws std::runtime_error
// with the CUDA error string). Defined only in builds with IRONMOE_WITH_CUDA (cuda_runtime.cpp).
#include <cstddef>

namespace ironmoe::tools::cuda_rt {

void* allocate(int device, size_t bytes);
void release(int device, void* pointer);
void copy_to_device(int device, void* dst, const void* src, size_t bytes);
void copy_to_host(int device, void* dst, const void* src, size_t bytes);
void fill_bytes(int device, void* dst, int value, size_t bytes);
void synchronize(int device);
size_t free_bytes(int device);
void* create_stream(int device);
void destroy_stream(int device, void* stream);

}  // namespace ironmoe::tools::cuda_rt
