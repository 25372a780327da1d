#pragma once
// Programmatic dependent launch (Hopper), opt-in (below): the stages' kernels can be launched so
// that the next kernel's blocks are scheduled while the current one still runs, instead of after
// its last block exits and the next launch is processed; at decode sizes those gaps are a large
// part of a layer.
//
// The rule that keeps it correct: every kernel launched overlapped calls wait_for_previous_kernel()
// before it touches memory that the previous kernel in the stream may write or read
// (griddepcontrol.wait returns once that kernel has completed and its writes are visible). Only
// then does it let its own successor launch, so a kernel that is running knows that the kernel
// two before it has completed: what that one wrote may be read before the wait (the fused decode
// path's down kernel reads the routing and its weights there). A plain launch after one of these
// kernels waits for it as always. CUDA graph capture records these launches as programmatic edges.
//
// launch_overlapped() is off unless IRONMOE_OVERLAP_LAUNCHES=1 is in the environment: without it
// the kernels launch plainly and their waits return at once. Measured on an H100
// (docs/performance.md, 2026-11-24), the overlap saved 1-2 us a layer on qwen3-30b-a3b at 1-64
// tokens but cost 3.5 us on qwen3-next-80b-a3b at one token, for a reason not yet found; it stays
// opt-in until it is. launch_with_overlap(true, ...) overlaps one launch regardless, where that
// launch was measured faster on its own (cuda/fused_decode.cu).
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <utility>

#include "cuda/cuda_check.h"

namespace ironmoe::cuda {

__device__ __forceinline__ void wait_for_previous_kernel() {
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
}

inline bool overlapped_launches_enabled() {
  static const bool enabled = [] {
    const char* overlap = std::getenv("IRONMOE_OVERLAP_LAUNCHES");
    return overlap != nullptr && std::strcmp(overlap, "1") == 0;
  }();
  return enabled;
}

// Launches `kernel`, overlapped with the previous kernel of the stream when `overlap`.
template <class... Params, class... Args>
void launch_with_overlap(bool overlap, void (*kernel)(Params...), dim3 grid, dim3 block,
                         size_t shared_bytes, cudaStream_t stream, Args&&... args) {
  cudaLaunchAttribute programmatic{};
  programmatic.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  programmatic.val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t config{};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = shared_bytes;
  config.stream = stream;
  config.attrs = &programmatic;
  config.numAttrs = overlap ? 1 : 0;
  IRONMOE_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...));
}

// Overlapped when IRONMOE_OVERLAP_LAUNCHES=1 (above).
template <class... Params, class... Args>
void launch_overlapped(void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
                       cudaStream_t stream, Args&&... args) {
  launch_with_overlap(overlapped_launches_enabled(), kernel, grid, block, shared_bytes, stream,
                      std::forward<Args>(args)...);
}

}  // namespace ironmoe::cuda
