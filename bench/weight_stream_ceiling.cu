// How fast can a weight-streaming gate/up kernel be at qwen3-30b-a3b's decode shape (H 2048,
// I 768, 8 of 128 experts with one row each), and how fast does a plain read of the same 50 MB
// go? A stand-alone experiment behind the constants of src/cuda/gemm/weight_stream.cu (columns
// per warp, K strides loaded before use, blocks per SM, and the cost of the per-block expert
// list): each variant runs 16 times in a CUDA graph over 16 disjoint sets of 8 experts (800 MB,
// so nothing stays in L2), median of 20 replays. docs/performance.md has the H100 results.
// The bulk_read variants read the same bytes with the copy engine instead: one thread per block
// issues cp.async.bulk copies of contiguous chunks into a ring of shared-memory stages, completing
// on mbarriers, and the block's threads consume each stage from shared memory; bulk_gate_up
// computes gate/up that way. Measured on an H200 (2026-12-02, 4.23 TB/s copy rate): plain 16-byte
// loads read the 48 MiB at 3.75 TB/s (13.4 us a call), the best register-streaming gate/up (1
// column, 4 K strides in flight, 3 blocks per SM) at 3.73 TB/s (13.5 us), every bulk_read shape
// at 3.67-3.78 TB/s (13.3-13.7 us): the copy engine reads no faster. bulk_gate_up ran at 1.6-2.6
// TB/s (19-32 us), its warps waiting on each stage in turn. So weight streaming stays on
// per-lane loads, which already reach the read ceiling in this setting (16 back-to-back calls in
// one graph); what the layer loses at T = 1 lies outside the stream itself.
//
//   nvcc -std=c++17 -O3 -gencode=arch=compute_90a,code=sm_90a bench/weight_stream_ceiling.cu \
//     -o weight_stream_ceiling && ./weight_stream_ceiling
#include <cuda_bf16.h>
#include <cstdint>
#include <cstdio>
#include <vector>
#include <algorithm>
typedef __nv_bfloat16 T;
constexpr int H = 2048, I = 768, E = 128;

__device__ __forceinline__ uint4 load16(const T* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }
__device__ __forceinline__ float dot8(float s, const uint4& w, const uint4& x) {
  const T* wv = reinterpret_cast<const T*>(&w); const T* xv = reinterpret_cast<const T*>(&x);
#pragma unroll
  for (int i = 0; i < 8; ++i) s = fmaf(__bfloat162float(wv[i]), __bfloat162float(xv[i]), s);
  return s;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <int kCols, int kSteps, int kMinBlocks, bool kPrologue>
__global__ void __launch_bounds__(256, kMinBlocks)
    gate_up(const int* experts, const int* offsets, const T* x, const T* w13, T* h) {
  if (kPrologue) {  // stand-in for list_active_experts: read E+1 offsets, 3 barriers
    __shared__ int cnt;
    if (threadIdx.x == 0) cnt = 0;
    __syncthreads();
    if (threadIdx.x < E && offsets[threadIdx.x + 1] > offsets[threadIdx.x]) atomicAdd(&cnt, 1);
    __syncthreads();
    if (cnt == 0) return;
    __syncthreads();
  }
  const int e = experts[blockIdx.y];
  const int lane = threadIdx.x & 31;
  const int first = (blockIdx.x * 8 + (threadIdx.x >> 5)) * kCols;
  if (first >= I) return;
  constexpr int R = 2 * kCols;
  const T* w[R];
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    w[c] = w13 + (size_t)e * 2 * I * H + (size_t)(first + c) * H;
    w[kCols + c] = w[c] + (size_t)I * H;
  }
  float acc[R] = {};
  for (int k0 = lane * 8; k0 < H; k0 += kSteps * 256) {
    uint4 wv[kSteps][R];
#pragma unroll
    for (int s = 0; s < kSteps; ++s)
#pragma unroll
      for (int r = 0; r < R; ++r) wv[s][r] = (k0 + s * 256 < H) ? load16(w[r] + k0 + s * 256) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      if (k0 + s * 256 >= H) break;
      const uint4 xr = load16(x + k0 + s * 256);
#pragma unroll
      for (int r = 0; r < R; ++r) acc[r] = dot8(acc[r], wv[s][r], xr);
    }
  }
#pragma unroll
  for (int c = 0; c < kCols; ++c) {
    float g = warp_sum(acc[c]), u = warp_sum(acc[kCols + c]);
    if (lane == c) h[blockIdx.y * I + first + c] = __float2bfloat16(g / (1.f + __expf(-g)) * u);
  }
}

__global__ void read_all(const uint4* p, size_t n, float* out) {
  float s = 0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint4 v = __ldg(p + i); s += __uint_as_float(v.x ^ v.y ^ v.z ^ v.w);
  }
  if (s == 1.2345f) out[0] = s;
}

// mbarrier and bulk-copy primitives (PTX ISA: mbarrier, cp.async.bulk).
__device__ __forceinline__ unsigned smem_address(const void* p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void bar_init(uint64_t* bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(smem_address(bar)), "r"(count));
}
__device__ __forceinline__ void bar_expect(uint64_t* bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(smem_address(bar)),
               "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void bar_wait(uint64_t* bar, unsigned phase) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "wait_%=:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait_%=;\n"
      "}\n" ::"r"(smem_address(bar)),
      "r"(phase)
      : "memory");
}
__device__ __forceinline__ void bulk_copy(void* dst, const void* src, unsigned bytes, uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
          smem_address(dst)),
      "l"(src), "r"(bytes), "r"(smem_address(bar))
      : "memory");
}

// Block b reads bytes [b * per_block, (b + 1) * per_block) of p in kStageBytes chunks through a
// ring of kStages shared-memory stages.
template <int kStageBytes, int kStages>
__global__ void bulk_read(const char* p, size_t per_block, float* out) {
  extern __shared__ __align__(128) char stage[];
  __shared__ __align__(8) uint64_t full[kStages];
  const char* base = p + blockIdx.x * per_block;
  const int chunks = static_cast<int>(per_block / kStageBytes);
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) bar_init(&full[s], 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages && s < chunks; ++s) {
      bar_expect(&full[s], kStageBytes);
      bulk_copy(stage + s * kStageBytes, base + (size_t)s * kStageBytes, kStageBytes, &full[s]);
    }
  }
  unsigned acc = 0;
  for (int c = 0; c < chunks; ++c) {
    const int s = c % kStages;
    bar_wait(&full[s], (c / kStages) & 1);
    const uint4* v = reinterpret_cast<const uint4*>(stage + s * kStageBytes);
    for (int i = threadIdx.x; i < kStageBytes / 16; i += blockDim.x) acc ^= v[i].x ^ v[i].w;
    __syncthreads();  // stage s consumed by every thread before it is refilled
    if (threadIdx.x == 0 && c + kStages < chunks) {
      bar_expect(&full[s], kStageBytes);
      bulk_copy(stage + s * kStageBytes, base + (size_t)(c + kStages) * kStageBytes, kStageBytes,
                &full[s]);
    }
  }
  if (acc == 0x12345u) out[0] = 1.0f;
}


// gate/up (one token row) on bulk copies: block (blockIdx.x, blockIdx.y) owns kPairs * kChunks
// output columns of expert experts[blockIdx.y]; each stage holds the kPairs gate rows and the
// kPairs up rows of one chunk (two contiguous copies of kPairs * H elements). The 2 * kPairs rows
// of a stage are split over the 8 warps: kWarpsPerRow warps per row, each over H / kWarpsPerRow.
template <int kPairs, int kStages, int kChunks>
__global__ void __launch_bounds__(256) bulk_gate_up(const int* experts, const T* x, const T* w13, T* h) {
  constexpr int kRows = 2 * kPairs;
  static_assert(8 % kRows == 0 || kRows % 8 == 0, "rows per stage vs warps");
  constexpr int kWarpsPerRow = kRows >= 8 ? 1 : 8 / kRows;
  constexpr int kRowsPerWarp = kRows >= 8 ? kRows / 8 : 1;
  constexpr int kSegment = H / kWarpsPerRow;          // elements of a row per warp
  constexpr int kPerLane = kSegment / 32 / 8;         // uint4 per lane per row
  constexpr unsigned kHalfBytes = kPairs * H * sizeof(T);
  constexpr unsigned kStageBytes = 2 * kHalfBytes;
  extern __shared__ __align__(128) char stage[];
  __shared__ __align__(8) uint64_t full[kStages];
  __shared__ float part[kRows][kWarpsPerRow];
  const int e = experts[blockIdx.y];
  const int first = blockIdx.x * kPairs * kChunks;
  const T* gate = w13 + (size_t)e * 2 * I * H + (size_t)first * H;
  const T* up = gate + (size_t)I * H;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (threadIdx.x == 0) {
    for (int s = 0; s < kStages; ++s) bar_init(&full[s], 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
  auto issue = [&](int c, int s) {
    bar_expect(&full[s], kStageBytes);
    bulk_copy(stage + s * kStageBytes, gate + (size_t)c * kPairs * H, kHalfBytes, &full[s]);
    bulk_copy(stage + s * kStageBytes + kHalfBytes, up + (size_t)c * kPairs * H, kHalfBytes, &full[s]);
  };
  if (threadIdx.x == 0)
    for (int s = 0; s < kStages && s < kChunks; ++s) issue(s, s);
  const int seg = kWarpsPerRow > 1 ? warp % kWarpsPerRow : 0;
  uint4 xr[kPerLane];
#pragma unroll
  for (int i = 0; i < kPerLane; ++i) xr[i] = load16(x + seg * kSegment + (i * 32 + lane) * 8);
  for (int c = 0; c < kChunks; ++c) {
    const int s = c % kStages;
    bar_wait(&full[s], (c / kStages) & 1);
#pragma unroll
    for (int j = 0; j < kRowsPerWarp; ++j) {
      const int row = kWarpsPerRow > 1 ? warp / kWarpsPerRow : warp * kRowsPerWarp + j;
      const uint4* w = reinterpret_cast<const uint4*>(stage + s * kStageBytes) + (size_t)row * (H / 8) + seg * (kSegment / 8);
      float acc = 0;
#pragma unroll
      for (int i = 0; i < kPerLane; ++i) acc = dot8(acc, w[i * 32 + lane], xr[i]);
      acc = warp_sum(acc);
      if (lane == 0) part[row][seg] = acc;
    }
    __syncthreads();
    if (threadIdx.x == 0 && c + kStages < kChunks) issue(c + kStages, s);
    if (threadIdx.x < kPairs) {
      float g = 0, u = 0;
      for (int q = 0; q < kWarpsPerRow; ++q) { g += part[threadIdx.x][q]; u += part[kPairs + threadIdx.x][q]; }
      h[blockIdx.y * I + first + c * kPairs + threadIdx.x] = __float2bfloat16(g / (1.f + __expf(-g)) * u);
    }
    __syncthreads();
  }
}

int main() {
  T *w13, *x, *h; int *experts, *offsets; float* out;
  size_t wbytes = (size_t)E * 2 * I * H * sizeof(T);
  cudaMalloc(&w13, wbytes); cudaMemset(w13, 0, wbytes);
  cudaMalloc(&x, H * sizeof(T)); cudaMemset(x, 0, H * sizeof(T));
  cudaMalloc(&h, 8 * I * sizeof(T)); cudaMalloc(&out, 4);
  std::vector<int> ids(E); for (int i = 0; i < E; ++i) ids[i] = (i * 37) % E;
  cudaMalloc(&experts, E * sizeof(int)); cudaMemcpy(experts, ids.data(), E * sizeof(int), cudaMemcpyHostToDevice);
  std::vector<int> off(E + 1); for (int i = 0; i <= E; ++i) off[i] = i < 8 ? i : 8;
  cudaMalloc(&offsets, (E + 1) * sizeof(int)); cudaMemcpy(offsets, off.data(), (E + 1) * 4, cudaMemcpyHostToDevice);
  cudaStream_t st; cudaStreamCreate(&st);
  cudaEvent_t a, b; cudaEventCreate(&a); cudaEventCreate(&b);
  const double bytes = 8.0 * 2 * I * H * sizeof(T);
  auto time = [&](const char* name, auto launch) {
    // 16 groups of 8 experts in turn: 800 MB of weights, no L2 reuse between calls.
    cudaGraph_t g; cudaGraphExec_t ge;
    cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal);
    for (int it = 0; it < 16; ++it) launch(experts + 8 * it);
    cudaStreamEndCapture(st, &g); cudaGraphInstantiate(&ge, g, 0);
    cudaGraphLaunch(ge, st);
    std::vector<float> ms;
    for (int rep = 0; rep < 20; ++rep) {
      cudaEventRecord(a, st); cudaGraphLaunch(ge, st); cudaEventRecord(b, st); cudaEventSynchronize(b);
      float t; cudaEventElapsedTime(&t, a, b); ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    double us = ms[10] * 1e3 / 16;
    printf("%-40s %7.2f us per call  %5.2f TB/s  (%s)\n", name, us, bytes / us / 1e6, cudaGetErrorString(cudaGetLastError()));
  };
#define V(C, S, M, P) time(#C " cols " #S " steps " #M " blocks/SM prologue " #P, [&](const int* ex) { \
    gate_up<C, S, M, P><<<dim3((I + 8 * C - 1) / (8 * C), 8), 256, 0, st>>>(ex, offsets, x, w13, h); })
  V(1, 4, 3, false); V(1, 4, 3, true); V(1, 8, 2, false); V(2, 2, 4, false); V(2, 2, 4, true); V(2, 4, 3, false);
  V(2, 4, 2, false); V(4, 1, 4, false); V(4, 2, 2, false); V(1, 2, 8, false); V(1, 1, 8, false);
  time("read 50 MB, 132*8 blocks of 256", [&](const int* ex) {
    size_t off = (size_t)(ex - experts) / 8 * 8 * 2 * I * H;
    read_all<<<132 * 8, 256, 0, st>>>(reinterpret_cast<const uint4*>(w13 + off), bytes / 16, out); });
  time("read 50 MB, 132*4 blocks of 512", [&](const int* ex) {
    size_t off = (size_t)(ex - experts) / 8 * 8 * 2 * I * H;
    read_all<<<132 * 4, 512, 0, st>>>(reinterpret_cast<const uint4*>(w13 + off), bytes / 16, out); });
  // The same 48 MiB with the copy engine: blocks x stages x stage size.
#define BULK(BLOCKS, STAGE, STAGES, THREADS)                                                       \
  {                                                                                                \
    auto kernel = bulk_read<STAGE, STAGES>;                                                        \
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, STAGE * STAGES);     \
    time("bulk read 48 MiB: " #BLOCKS " blocks, " #STAGES " x " #STAGE " B stages", [&](const int* ex) { \
      size_t off = (size_t)(ex - experts) / 8 * 8 * 2 * I * H;                                     \
      kernel<<<BLOCKS, THREADS, STAGE * STAGES, st>>>(reinterpret_cast<const char*>(w13 + off),     \
                                                      (size_t)bytes / BLOCKS, out);                \
    });                                                                                            \
  }
  BULK(128, 32768, 4, 256);
  BULK(256, 16384, 4, 256);
  BULK(256, 32768, 3, 256);
  BULK(384, 16384, 4, 256);
  BULK(384, 8192, 4, 128);
  BULK(768, 8192, 4, 128);
#define BGU(P, S, C)                                                                               \
  {                                                                                                \
    auto kernel = bulk_gate_up<P, S, C>;                                                           \
    constexpr int smem = 2 * P * H * 2 * S;                                                        \
    cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);               \
    time("bulk gate/up: " #P " pairs x " #S " stages, " #C " chunks", [&](const int* ex) {         \
      kernel<<<dim3(I / (P * C), 8), 256, smem, st>>>(ex, x, w13, h);                              \
    });                                                                                            \
  }
  BGU(4, 4, 12); BGU(4, 3, 6); BGU(4, 2, 6); BGU(2, 4, 12); BGU(2, 3, 6); BGU(2, 6, 6); BGU(1, 8, 12); BGU(1, 6, 8); BGU(8, 2, 6); BGU(4, 3, 4);
  return 0;
}
