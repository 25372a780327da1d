#pragma once
// Programmatic dependent launch (Hopper): the stages' kernels are launched so that the next
// kernel's blocks are scheduled while the current one still runs, instead of after its last block
// exits and the next launch is processed; at decode sizes those gaps are a large part of a layer.
//
// The rule that keeps it correct: every kernel launched with launch_overlapped() calls
// wait_for_previous_kernel() before it touches any memory (griddepcontrol.wait returns once the
// previous kernel in the stream has completed and its writes are visible). Only then does it let
// its own successor launch, so a kernel that is running knows that the kernel two before it has
// completed. A plain launch after one of these kernels waits for it as always. CUDA graph capture
// records these launches as programmatic edges.
#include <cuda_runtime.h>

#include <utility>

#include "cuda/cuda_check.h"

namespace ironmoe::cuda {

__device__ __forceinline__ void wait_for_previous_kernel() {
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

template <class... Params, class... Args>
void launch_overlapped(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                       cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute overlap{};
  overlap.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  overlap.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = &overlap;
  config.numAttrs = 1;
  IRONMOE_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

}  // namespace ironmoe::cuda
