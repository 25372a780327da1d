#pragma once
// What the machine can do, measured in the same run as the layer: the floor of a layer call is
// max(bytes / bandwidth, flops / gemm rate).
#include <string>

#include "ironmoe/stream.h"

namespace ironmoe::tools {

struct MachinePeak {
  std::string device_name;             // CPU model and threads, or GPU name
  double bandwidth_bytes_per_s = 0.0;  // bytes read + written per second
  double gemm_flops_per_s = 0.0;       // dense matmul, 2*M*N*K per second
  std::string bandwidth_method;        // how it was measured, for the report
  std::string gemm_method;
  double fp8_gemm_flops_per_s = 0.0;  // dense E4M3 matmul (the CPU has none: its fp32 rate)
  std::string fp8_gemm_method;
};

// Best of a few passes of a copy and a stream triad over buffers several times the last-level
// cache, and of a blocked fp32 matmul sized to run ~0.2-0.5 s; both on `pool`'s threads.
MachinePeak measure_cpu_peak(ThreadPool& pool);

// Median of ~1 GiB device-to-device cudaMemcpyAsync, and of cuBLAS bf16 8192^3 GEMMs with fp32
// compute. Defined in builds with IRONMOE_WITH_CUDA (peak_cuda.cpp).
MachinePeak measure_cuda_peak(int device, void* stream);

}  // namespace ironmoe::tools
