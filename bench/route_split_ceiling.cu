// How long does top-k routing of one token take when one warp does it alone, and how much do
// more warps per token save? A stand-alone experiment behind the planned change of
// src/cuda/route.cu (docs/performance.md, session 14: route takes 11.7 us under ncu at E = 512,
// k = 10 and T = 1, against 5 us at E = 128, because its one warp runs a serial chain of some
// 2000-3000 instructions with nothing to hide their latency).
//
// Softmax top-k (ties to the lower index, renormalised) over E = 512 fp32 logits:
//   one_warp<16, R>  the library's scheme: lane l holds experts l + 32 i (16 keys), sorts them
//                    once, then k rounds of a warp arg-best over the lanes' heads;
//   split<W, N>      W warps per token, N = E / (32 W) keys per lane: each warp finds the top k
//                    of its experts the same way, then warp 0 merges the W k candidates (sorted
//                    per lane, k rounds again); softmax statistics reduced over the block.
// Each variant runs 20 times in a row in one CUDA graph (each launch waits for the previous one,
// as route waits for the layer before it); the time per launch is printed next to an empty
// kernel's, and every variant's ids are checked against one_warp's. Result (H200, session 15):
// one warp 3.18 us per launch, 4/8/16 warps 3.76/3.88/4.28 us at every T tried, so the split
// was not built; what made the library's route slow was its loads (docs/performance.md).
// one_warp<16, true> (each round's arg-best by redux.sync instead of shuffles), session 16:
// 2.71 us against one_warp<16, false>'s 3.20 at T = 1 (2.82 / 3.29 at T = 64). In the library's
// route kernel the same change was slower at E = 512 and faster at E = 128 (src/cuda/route.cu,
// WarpReduce).
//
//   nvcc -std=c++20 -O3 -gencode=arch=compute_90a,code=sm_90a -I src bench/route_split_ceiling.cu \
//     -o route_split_ceiling && ./route_split_ceiling
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <random>
#include <vector>

#include "core/routing_rules.h"

constexpr int E = 512, K = 10;
constexpr unsigned kFull = 0xffffffffu;

__device__ __forceinline__ bool before(float ka, int ia, float kb, int ib) {
  return ka > kb || (ka == kb && ia < ib);
}

__device__ __forceinline__ void warp_best(float& key, int& index) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float k = __shfl_xor_sync(kFull, key, offset);
    const int i = __shfl_xor_sync(kFull, index, offset);
    if (before(k, i, key, index)) {
      key = k;
      index = i;
    }
  }
}

template <int N>
__device__ __forceinline__ void sort_pairs(float (&key)[N], int (&id)[N]) {
#pragma unroll
  for (int size = 2; size <= N; size <<= 1)
#pragma unroll
    for (int stride = size >> 1; stride > 0; stride >>= 1)
#pragma unroll
      for (int i = 0; i < N; ++i) {
        const int j = i ^ stride;
        if (j <= i) continue;
        const bool up = (i & size) == 0;
        const bool swap = up ? before(key[j], id[j], key[i], id[i]) : before(key[i], id[i], key[j], id[j]);
        if (swap) {
          const float k = key[i]; key[i] = key[j]; key[j] = k;
          const int e = id[i]; id[i] = id[j]; id[j] = e;
        }
      }
}

// Removes a lane's head (the round's winner) from its sorted list.
template <int N>
__device__ __forceinline__ void drop_head(float (&key)[N], int (&id)[N]) {
#pragma unroll
  for (int i = 0; i + 1 < N; ++i) {
    key[i] = key[i + 1];
    id[i] = id[i + 1];
  }
  key[N - 1] = -INFINITY;
  id[N - 1] = INT_MAX;
}

// k rounds over the lanes' sorted lists; lane j < k ends with the j-th best (key and id).
template <int N>
__device__ __forceinline__ void take_best(float (&key)[N], int (&id)[N], int lane, float* out_key,
                                          int* out_id) {
  for (int j = 0; j < K; ++j) {
    float best_key = key[0];
    int best = id[0];
    warp_best(best_key, best);
    if (id[0] == best && best != INT_MAX) drop_head(key, id);
    if (lane == j) {
      *out_key = best_key;
      *out_id = best;
    }
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, o));
  return v;
}

// Lane j < K writes expert j and its renormalised softmax weight.
__device__ __forceinline__ void write_row(const float* row, float max, float sum, int selected,
                                          int lane, int* ids, float* weights) {
  const float mine = lane < K ? expf(row[selected] - max) / sum : 0.0f;
  float total = 0.0f;
  for (int j = 0; j < K; ++j) total += __shfl_sync(kFull, mine, j);
  if (lane < K) {
    ids[lane] = selected;
    weights[lane] = mine / total;
  }
}

// The one-warp schemes' start: lane l loads experts l + 32 i, the softmax statistics are
// reduced over the warp, and the lane's pairs are sorted.
template <int N>
__device__ __forceinline__ void load_sorted_row(const float* row, int lane, float (&key)[N],
                                                int (&id)[N], float& max, float& sum) {
  max = -INFINITY;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    id[i] = lane + 32 * i;
    key[i] = row[id[i]];
    max = fmaxf(max, key[i]);
  }
  max = warp_max(max);
  sum = 0.0f;
#pragma unroll
  for (int i = 0; i < N; ++i) sum += expf(key[i] - max);
  sum = warp_sum(sum);
  sort_pairs(key, id);
}

// The library's scheme, each round's arg-best either by shuffles (take_best) or, kRedux, by the
// warp-reduce unit: redux.sync max over the heads' ordered key bits (core::rank_key_bits), then
// min over the ids of the lanes holding that key (ties to the lower index, as `before` breaks
// them): two instructions instead of five rounds of two shuffles.
template <int N, bool kRedux>
__global__ void one_warp(const float* logits, int tokens, int* ids, float* weights) {
  const int lane = threadIdx.x & 31;
  const int token = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
  if (token >= tokens) return;
  const float* row = logits + (size_t)token * E;
  float key[N];
  int id[N];
  float max, sum;
  load_sorted_row(row, lane, key, id, max, sum);
  int best = -1;
  if constexpr (kRedux) {
    for (int j = 0; j < K; ++j) {
      // -inf maps to the lowest bits, so an exhausted lane's head (-inf, INT_MAX) can only tie
      // with real -inf keys, and then loses on the id.
      const unsigned head = ironmoe::core::rank_key_bits(key[0]);
      const unsigned top = __reduce_max_sync(kFull, head);
      const int winner = static_cast<int>(
          __reduce_min_sync(kFull, head == top ? static_cast<unsigned>(id[0]) : 0xffffffffu));
      if (id[0] == winner) drop_head(key, id);
      if (lane == j) best = winner;
    }
  } else {
    float best_key = 0.0f;
    take_best(key, id, lane, &best_key, &best);
  }
  write_row(row, max, sum, best, lane, ids + token * K, weights + token * K);
}

template <int W, int N>
__global__ void __launch_bounds__(32 * W) split(const float* logits, int tokens, int* ids,
                                                float* weights) {
  static_assert(W * 32 * N == E, "W warps of N keys per lane cover E");
  // Candidates per lane of the merging warp, a power of two for the sorting network.
  constexpr int kNeeded = (W * K + 31) / 32;
  constexpr int kCandidates = kNeeded <= 1 ? 1 : kNeeded <= 2 ? 2 : kNeeded <= 4 ? 4 : 8;
  __shared__ float part_max[W], part_sum[W];
  __shared__ float cand_key[W * K];
  __shared__ int cand_id[W * K];
  const int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  const int token = blockIdx.x;
  if (token >= tokens) return;
  const float* row = logits + (size_t)token * E;
  float key[N];
  int id[N];
  float max = -INFINITY;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    id[i] = 32 * (warp + W * i) + lane;
    key[i] = row[id[i]];
    max = fmaxf(max, key[i]);
  }
  max = warp_max(max);
  if (lane == 0) part_max[warp] = max;
  __syncthreads();
  max = part_max[0];
#pragma unroll
  for (int w = 1; w < W; ++w) max = fmaxf(max, part_max[w]);
  float sum = 0.0f;
#pragma unroll
  for (int i = 0; i < N; ++i) sum += expf(key[i] - max);
  sum = warp_sum(sum);
  if (lane == 0) part_sum[warp] = sum;
  sort_pairs(key, id);
  float best_key = 0.0f;
  int best = -1;
  take_best(key, id, lane, &best_key, &best);
  if (lane < K) {
    cand_key[warp * K + lane] = best_key;
    cand_id[warp * K + lane] = best;
  }
  __syncthreads();
  if (warp != 0) return;
  sum = 0.0f;
#pragma unroll
  for (int w = 0; w < W; ++w) sum += part_sum[w];
  float ck[kCandidates];
  int ci[kCandidates];
#pragma unroll
  for (int c = 0; c < kCandidates; ++c) {
    const int at = lane + 32 * c;
    ck[c] = at < W * K ? cand_key[at] : -INFINITY;
    ci[c] = at < W * K ? cand_id[at] : INT_MAX;
  }
  if constexpr (kCandidates > 1) sort_pairs(ck, ci);
  take_best(ck, ci, lane, &best_key, &best);
  write_row(row, max, sum, best, lane, ids + token * K, weights + token * K);
}

__global__ void empty_kernel(int* p) {
  if (p == nullptr) p[threadIdx.x] = 0;
}

int main() {
  constexpr int kMaxTokens = 64;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> host(kMaxTokens * E);
  for (float& v : host) v = normal(rng);
  host[5] = host[6];  // a tie in token 0
  float *logits, *weights;
  int* ids;
  cudaMalloc(&logits, host.size() * 4);
  cudaMemcpy(logits, host.data(), host.size() * 4, cudaMemcpyHostToDevice);
  cudaMalloc(&ids, kMaxTokens * K * 4 * 2);
  cudaMalloc(&weights, kMaxTokens * K * 4 * 2);
  int* ref_ids = ids + kMaxTokens * K;
  cudaStream_t st;
  cudaStreamCreate(&st);
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  auto time = [&](const char* name, int tokens, auto launch) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal);
    for (int it = 0; it < 20; ++it) launch(tokens);
    cudaStreamEndCapture(st, &g);
    cudaGraphInstantiate(&ge, g, 0);
    cudaGraphLaunch(ge, st);
    std::vector<float> ms;
    for (int rep = 0; rep < 30; ++rep) {
      cudaEventRecord(a, st);
      cudaGraphLaunch(ge, st);
      cudaEventRecord(b, st);
      cudaEventSynchronize(b);
      float t;
      cudaEventElapsedTime(&t, a, b);
      ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    std::vector<int> got(tokens * K), want(tokens * K);
    cudaMemcpy(got.data(), ids, got.size() * 4, cudaMemcpyDeviceToHost);
    cudaMemcpy(want.data(), ref_ids, want.size() * 4, cudaMemcpyDeviceToHost);
    printf("T %2d  %-28s %6.2f us per launch  ids %s  (%s)\n", tokens, name, ms[15] * 1e3 / 20,
           got == want ? "match" : "DIFFER", cudaGetErrorString(cudaGetLastError()));
  };
  for (int tokens : {1, 4, 16, 64}) {
    one_warp<16, false><<<(tokens + 3) / 4, 128, 0, st>>>(logits, tokens, ref_ids, weights);
    cudaStreamSynchronize(st);
    time("empty kernel", tokens, [&](int) { empty_kernel<<<1, 32, 0, st>>>(ids); });
    cudaMemcpy(ids, ref_ids, tokens * K * 4, cudaMemcpyDeviceToDevice);
    time("one warp, 16 keys per lane", tokens, [&](int t) {
      one_warp<16, false><<<(t + 3) / 4, 128, 0, st>>>(logits, t, ids, weights);
    });
    time("one warp, redux arg-best", tokens, [&](int t) {
      one_warp<16, true><<<(t + 3) / 4, 128, 0, st>>>(logits, t, ids, weights);
    });
    time("4 warps, 4 keys per lane", tokens,
         [&](int t) { split<4, 4><<<t, 128, 0, st>>>(logits, t, ids, weights); });
    time("8 warps, 2 keys per lane", tokens,
         [&](int t) { split<8, 2><<<t, 256, 0, st>>>(logits, t, ids, weights); });
    time("16 warps, 1 key per lane", tokens,
         [&](int t) { split<16, 1><<<t, 512, 0, st>>>(logits, t, ids, weights); });
  }
  return 0;
}
