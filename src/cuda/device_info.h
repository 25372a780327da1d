#pragma once
// What the expert stages ask of the device: its SM count (the persistent GEMMs' grid), whether
// sm_90a code runs on it (compute capability 9.0 exactly) and its peak memory bandwidth.
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

// The peak DRAM bandwidth the device reports, bytes per second: memory clock (kHz) x bus width x 2
// (double data rate). 3.35e12 on an H100 SXM, 4.8e12 on an H200.
inline double peak_memory_bandwidth(int device_index) {
  const double clock_hz = 1e3 * device_attribute(cudaDevAttrMemoryClockRate, device_index);
  const double bus_bytes = device_attribute(cudaDevAttrGlobalMemoryBusWidth, device_index) / 8.0;
  return 2.0 * clock_hz * bus_bytes;
}

}  // namespace ironmoe::cuda
