#pragma once
// What the expert stages ask of the device: its SM count (the persistent GEMMs' grid) and whether
// sm_90a code runs on it (compute capability 9.0 exactly).
#include <cuda_runtime.h>

#include "cuda/cuda_check.h"

namespace ironmoe::cuda {

inline int device_attribute(cudaDeviceAttr attribute, int device_index) {
  int value = 0;
  IRONMOE_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device_index));
  return value;
}

inline int sm_count(int device_index) {
  return device_attribute(cudaDevAttrMultiProcessorCount, device_index);
}

inline bool is_sm90(int device_index) {
  return device_attribute(cudaDevAttrComputeCapabilityMajor, device_index) == 9 &&
         device_attribute(cudaDevAttrComputeCapabilityMinor, device_index) == 0;
}

}  // namespace ironmoe::cuda
