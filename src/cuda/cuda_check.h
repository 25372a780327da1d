#pragma once
// Error checking for every CUDA runtime call of the backend, and the stream handle it launches on.
//
//   IRONMOE_CUDA_CHECK(cudaMemsetAsync(...));   throws ironmoe::Error naming the call, file, line
//                                               and CUDA's own error string
//   IRONMOE_CUDA_CHECK_LAUNCH(stream);          after each kernel launch
//
// A launch is always followed by cudaGetLastError (it costs no synchronisation and catches bad
// launch configurations). Debug builds (NDEBUG unset) also wait for the stream when it is not
// being captured, so a kernel that faults is reported at its own launch rather than at some later
// call; release builds never wait.
#include <cuda_runtime.h>

namespace ironmoe::cuda {

[[noreturn]] void throw_cuda_error(cudaError_t error, const char* call, const char* file, int line);

// The public API carries the caller's cudaStream_t as void* (nullptr: the legacy default stream).
inline cudaStream_t as_cuda_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

// Waits for `stream` unless it is being captured into a graph (debug builds only, see above).
void debug_sync_after_launch(cudaStream_t stream, const char* file, int line);

// Lets `kernel` launch with `bytes` of dynamic shared memory, raising its limit past the default
// 48 KiB where the current device allows. Throws ironmoe::Error from `where`, saying that `what`
// for `experts` experts needs the memory, when the device offers less (the message is built only
// then: forward() allocates nothing, docs/contract.md L4). A host-side attribute, so it is allowed
// while the caller's stream is being captured.
void reserve_dynamic_shared_memory(const void* kernel, size_t bytes, const char* where,
                                   const char* what, int64_t experts);

}  // namespace ironmoe::cuda

#define IRONMOE_CUDA_CHECK(call)                                                          \
  do {                                                                                    \
    const cudaError_t ironmoe_cuda_status_ = (call);                                      \
    if (ironmoe_cuda_status_ != cudaSuccess)                                              \
      ::ironmoe::cuda::throw_cuda_error(ironmoe_cuda_status_, #call, __FILE__, __LINE__); \
  } while (0)

#ifdef NDEBUG
#define IRONMOE_CUDA_CHECK_LAUNCH(stream) IRONMOE_CUDA_CHECK(cudaGetLastError())
#else
#define IRONMOE_CUDA_CHECK_LAUNCH(stream)                                   \
  do {                                                                      \
    IRONMOE_CUDA_CHECK(cudaGetLastError());                                 \
    ::ironmoe::cuda::debug_sync_after_launch((stream), __FILE__, __LINE__); \
  } while (0)
#endif
