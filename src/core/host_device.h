#pragma once
// Index math in src/core is written once and compiled for both backends.
#if defined(__CUDACC__)
#define IRONMOE_HD __host__ __device__ __forceinline__
#else
#define IRONMOE_HD inline
#endif
