// Stage 2 on CUDA: a counting sort of the slots by local expert, one algorithm for every T.
//
// The slots are cut into chunks of kChunkSlots; three kernels run on the caller's stream:
//   plan_count:   block b counts its chunk's slots per local expert into scratch row b, and
//                 every block helps to set all of row_to_slot to -1 (placed rows are overwritten
//                 by plan_scatter; the rest stay -1);
//   plan_scan:    one block turns each scratch column into exclusive prefixes over chunks (the
//                 rank of the chunk's first slot within its expert; up to 1024 experts at once,
//                 each column's chunks split over up to 32 threads) and writes expert_counts and
//                 expert_offsets (contiguous: a block scan of the counts; batched: e*capacity);
//   plan_scatter: block b re-walks its chunk in slot order, 256 slots at a time, and gives each
//                 slot its rank within its expert: warp peers by __match_any_sync, earlier warps
//                 of the tile by a per-warp count table in shared memory, earlier tiles and
//                 chunks by a running base. Writes slot_to_row for every slot and row_to_slot for
//                 every placed slot.
// When every slot fits in one chunk (T * k <= kChunkSlots, every decode and small prefill batch)
// and row_to_slot is small, plan_single_chunk does the same three steps in one block, one launch
// instead of three: at those sizes the launches, not the work, are the plan's cost. Its
// outputs are those of the three kernels, bit for bit (tests/cuda/test_plan.cpp covers both).
// A thread owns the same kSlotsPerThread slots of its chunk in every step and loads their ids
// once, all at the start, and the scatter keeps each expert's next row in shared memory: in one
// block the cost is the chain of dependent memory round trips, and a load per tile (ids, then
// expert_offsets) made 2048 slots take 16 us against 5 us for 8 (H200, session 14).
// Grid sizes depend only on the host-side T (and R), never on device data; num_valid_tokens is
// read on the device; nothing synchronises with the host, so the plan is capturable. Counts use
// shared-memory atomics (order-free); ranks use none, so every output is deterministic.
#include <string>

#include "core/check.h"
#include "core/plan_math.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/diagnostics.cuh"
#include "cuda/launch.cuh"

namespace ironmoe::cuda {
namespace {

constexpr int kWarpSize = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kPlanThreads = 256;  // plan_count and plan_scatter
constexpr int kPlanWarps = kPlanThreads / kWarpSize;
constexpr int kSlotsPerThread = 8;  // slots of a chunk per thread (one per tile of the scatter)
constexpr int64_t kChunkSlots = kSlotsPerThread * kPlanThreads;
constexpr int kScanThreads = 1024;  // plan_scan: one block
constexpr int kScanWarps = kScanThreads / kWarpSize;
// plan_single_chunk also fills row_to_slot alone: beyond this many rows the grid of plan_count
// does it faster.
constexpr int64_t kSingleChunkMaxRows = 32 * 1024;

int64_t num_chunks(int64_t slots) { return (slots + kChunkSlots - 1) / kChunkSlots; }

struct PlanParams {
  const int32_t* topk_ids;
  int64_t tokens;
  int64_t top_k;
  int64_t slots;   // tokens * top_k
  int64_t chunks;  // num_chunks(slots)
  int64_t num_experts;
  int64_t expert_begin;
  int64_t expert_end;
  int num_local;  // expert_end - expert_begin
  bool batched;
  int capacity;  // batched
  int64_t rows;  // entries of row_to_slot
  const int32_t* num_valid_tokens;
  int32_t* diagnostics;
  int32_t* chunk_counts;  // scratch [chunks, num_local]
  int32_t* expert_counts;
  int32_t* expert_offsets;
  int32_t* slot_to_row;
  int32_t* row_to_slot;
};

__device__ __forceinline__ int warp_sum(int v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2)
    v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Local experts of the thread's slots in the chunk, slot begin + tid + i * kPlanThreads in
// entry i: -1 past the end, for padding rows and for ids that are not local. Skipped ids are
// added to `out_of_range` and `remote`. All loads are issued before any id is used (a branch per
// slot between them kept one load in flight at a time), and the padding test compares slots,
// not tokens, so no 64-bit division runs per slot.
__device__ void load_chunk_experts(const PlanParams& p, int64_t chunk,
                                   int (&expert)[kSlotsPerThread], int& out_of_range,
                                   int& remote) {
  // Slots of padding rows (token >= valid) are not counted; valid <= tokens, so no overflow.
  const int64_t valid_slots = core::valid_tokens(p.tokens, p.num_valid_tokens) * p.top_k;
  const int64_t first = chunk * kChunkSlots + threadIdx.x;
  int32_t id[kSlotsPerThread];
#pragma unroll
  for (int i = 0; i < kSlotsPerThread; ++i) {
    const int64_t s = first + static_cast<int64_t>(i) * kPlanThreads;
    id[i] = s < valid_slots ? p.topk_ids[s] : 0;
  }
#pragma unroll
  for (int i = 0; i < kSlotsPerThread; ++i) {
    const int64_t s = first + static_cast<int64_t>(i) * kPlanThreads;
    expert[i] = -1;
    if (s >= valid_slots) continue;
    const core::SlotPlace place =
        core::place_slot(id[i], p.num_experts, p.expert_begin, p.expert_end);
    expert[i] = place.local_expert;
    out_of_range += place.out_of_range ? 1 : 0;
    remote += place.remote ? 1 : 0;
  }
}

// Adds the thread's slots to hist (shared, zeroed, num_local entries) and the block's skipped
// ids to the diagnostics; the caller synchronises before reading hist.
__device__ void count_chunk(const PlanParams& p, const int (&expert)[kSlotsPerThread],
                            int out_of_range, int remote, int* hist) {
#pragma unroll
  for (int i = 0; i < kSlotsPerThread; ++i)
    if (expert[i] >= 0) atomicAdd(&hist[expert[i]], 1);
  if (p.diagnostics == nullptr) return;
  out_of_range = warp_sum(out_of_range);
  remote = warp_sum(remote);
  if (threadIdx.x % kWarpSize == 0) {
    if (out_of_range > 0) add_diagnostic(p.diagnostics + kDiagIdOutOfRange, out_of_range);
    if (remote > 0) add_diagnostic(p.diagnostics + kDiagIdRemote, remote);
  }
}

__global__ void __launch_bounds__(kPlanThreads) plan_count_kernel(PlanParams p) {
  wait_for_previous_kernel();
  extern __shared__ int expert_hist[];  // [num_local]
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kPlanThreads;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kPlanThreads + tid; r < p.rows; r += stride)
    p.row_to_slot[r] = core::kNoSlot;
  if (static_cast<int64_t>(blockIdx.x) >= p.chunks) return;  // a fill-only block

  int expert[kSlotsPerThread];
  int out_of_range = 0;
  int remote = 0;
  load_chunk_experts(p, blockIdx.x, expert, out_of_range, remote);
  for (int e = tid; e < p.num_local; e += kPlanThreads) expert_hist[e] = 0;
  __syncthreads();
  count_chunk(p, expert, out_of_range, remote, expert_hist);
  __syncthreads();
  int32_t* row = p.chunk_counts + blockIdx.x * static_cast<int64_t>(p.num_local);
  for (int e = tid; e < p.num_local; e += kPlanThreads) row[e] = expert_hist[e];
}

// Exclusive prefix of `value` over the block's kWarps * 32 threads in thread order; `total` gets
// the block's sum. `warp_sums` is shared; the caller synchronises before the next call reuses it.
template <int kWarps>
__device__ int block_exclusive_scan(int value, int* warp_sums, int& total) {
  const int lane = static_cast<int>(threadIdx.x) % kWarpSize;
  const int warp = static_cast<int>(threadIdx.x) / kWarpSize;
  int inclusive = value;
  for (int offset = 1; offset < kWarpSize; offset *= 2) {
    const int below = __shfl_up_sync(kFullMask, inclusive, offset);
    if (lane >= offset) inclusive += below;
  }
  if (lane == kWarpSize - 1) warp_sums[warp] = inclusive;
  __syncthreads();
  if (warp == 0) {
    int warp_inclusive = lane < kWarps ? warp_sums[lane] : 0;
    for (int offset = 1; offset < kWarpSize; offset *= 2) {
      const int below = __shfl_up_sync(kFullMask, warp_inclusive, offset);
      if (lane >= offset) warp_inclusive += below;
    }
    if (lane < kWarps) warp_sums[lane] = warp_inclusive;
  }
  __syncthreads();
  total = warp_sums[kWarps - 1];
  return (warp == 0 ? 0 : warp_sums[warp - 1]) + inclusive - value;
}

// Writes expert_counts and expert_offsets for one pass over up to kWarps * 32 experts: the
// calling thread owns `expert` when `owner`, and `total` is its slot count (0 when not owner).
// Contiguous: the offsets are a block scan of the totals after the `carry` rows of earlier passes,
// and carry grows by this pass's rows. Batched: expert e's rows start at e * capacity, its count
// is capped at capacity and the slots beyond are added to `overflow`. Returns the offset written
// for the owner's expert (rank_base turns it into the scatter base). Every thread of the block calls it for the same pass; the caller
// synchronises before the next pass reuses warp_sums.
template <int kWarps>
__device__ int write_expert_ranges(const PlanParams& p, int expert, bool owner, int total,
                                   int* warp_sums, int& carry, int& overflow) {
  if (p.batched) {  // uniform over the block
    if (!owner) return 0;
    const int offset = static_cast<int>(core::batched_first_row(expert, p.capacity));
    p.expert_counts[expert] = total < p.capacity ? total : p.capacity;
    p.expert_offsets[expert] = offset;
    overflow += total > p.capacity ? total - p.capacity : 0;
    return offset;
  }
  int pass_total = 0;
  const int exclusive = block_exclusive_scan<kWarps>(total, warp_sums, pass_total);
  const int offset = carry + exclusive;
  if (owner) {
    p.expert_counts[expert] = total;
    p.expert_offsets[expert] = offset;
  }
  carry += pass_total;
  return offset;
}

// What scatter_chunk counts an expert's slots from: contiguous, the row of its first slot
// (expert_offsets), so a slot's row is base plus its rank; batched, 0, so the slot's rank is
// compared with the capacity first.
__device__ __forceinline__ int rank_base(const PlanParams& p, int offset) {
  return p.batched ? 0 : offset;
}

// After the last pass of write_expert_ranges: expert_offsets[num_local], the end of the last
// expert's rows, and the slots dropped for capacity into the diagnostics. Every thread of the
// block calls it, with its own carry (the same in every thread) and overflow.
__device__ void finish_expert_ranges(const PlanParams& p, int carry, int overflow) {
  const int tid = static_cast<int>(threadIdx.x);
  if (tid == 0) {
    p.expert_offsets[p.num_local] =
        p.batched ? static_cast<int>(core::batched_first_row(p.num_local, p.capacity)) : carry;
  }
  overflow = warp_sum(overflow);
  if (tid % kWarpSize == 0 && overflow > 0 && p.diagnostics != nullptr)
    add_diagnostic(p.diagnostics + kDiagCapacityOverflow, overflow);
}

// One block. Up to kScanThreads experts at a time ("columns"); each column's chunks are split
// into `groups` contiguous ranges, one thread each, so a chunk's prefix is its thread's running
// sum plus the totals of the ranges before. Then a block scan over the columns' totals gives the
// contiguous offsets.
__global__ void __launch_bounds__(kScanThreads) plan_scan_kernel(PlanParams p) {
  wait_for_previous_kernel();
  __shared__ int range_sums[kScanThreads];  // [group][column]
  __shared__ int column_totals[kScanThreads];
  __shared__ int warp_sums[kScanWarps];
  const int tid = static_cast<int>(threadIdx.x);
  if (p.num_local == 0) {  // expert_offsets = {0}
    finish_expert_ranges(p, 0, 0);
    return;
  }
  const int width = p.num_local < kScanThreads ? p.num_local : kScanThreads;
  const int groups = kScanThreads / width < kWarpSize ? kScanThreads / width : kWarpSize;
  const int column = tid % width;
  const int group = tid / width;
  const int64_t chunk_begin = p.chunks * group / groups;
  const int64_t chunk_end = p.chunks * (group + 1) / groups;
  const int64_t stride = p.num_local;
  int carry = 0;     // contiguous: rows of the experts of earlier passes
  int overflow = 0;  // batched: slots beyond capacity, per thread

  for (int first = 0; first < p.num_local; first += width) {  // uniform over the block
    const int e = first + column;
    const bool walker = group < groups && e < p.num_local;
    int sum = 0;
    if (walker) {
      for (int64_t c = chunk_begin; c < chunk_end; ++c) sum += p.chunk_counts[c * stride + e];
      range_sums[tid] = sum;
    }
    __syncthreads();
    if (walker) {
      int running = 0;
      for (int g = 0; g < group; ++g) running += range_sums[g * width + column];
      for (int64_t c = chunk_begin; c < chunk_end; ++c) {
        const int count = p.chunk_counts[c * stride + e];
        p.chunk_counts[c * stride + e] = running;
        running += count;
      }
      if (group == groups - 1) column_totals[column] = running;
    }
    __syncthreads();

    const int expert = first + tid;
    const bool owner = tid < width && expert < p.num_local;
    const int total = owner ? column_totals[tid] : 0;
    write_expert_ranges<kScanWarps>(p, expert, owner, total, warp_sums, carry, overflow);
    __syncthreads();  // range_sums, column_totals and warp_sums are reused by the next pass
  }
  finish_expert_ranges(p, carry, overflow);
}

// Gives every slot of the chunk its row, in slot order; `expert` holds the thread's slots
// (load_chunk_experts). next_rank (shared, num_local) holds, per expert, the scatter position of
// its first slot in the chunk: contiguous, its row; batched, its rank within the expert.
// warp_count (shared, kPlanWarps * num_local) is zero. Every thread of the block calls it, after
// a __syncthreads.
__device__ void scatter_chunk(const PlanParams& p, int64_t chunk,
                              const int (&expert)[kSlotsPerThread], int* next_rank,
                              int* warp_count) {
  const int tid = static_cast<int>(threadIdx.x);
  const int lane = tid % kWarpSize;
  const int warp = tid / kWarpSize;
  const int width = p.num_local;
  const int64_t begin = chunk * kChunkSlots;
  const int64_t end = begin + kChunkSlots < p.slots ? begin + kChunkSlots : p.slots;
  const unsigned lanes_below = (1u << lane) - 1u;
#pragma unroll
  for (int i = 0; i < kSlotsPerThread; ++i) {
    const int64_t tile = begin + static_cast<int64_t>(i) * kPlanThreads;
    if (tile >= end) break;  // uniform over the block
    const int64_t s = tile + tid;
    const int e = expert[i];  // -1 past the end
    const unsigned peers = __match_any_sync(kFullMask, e);
    const int rank_in_warp = __popc(peers & lanes_below);
    const int count_in_warp = __popc(peers);
    const bool leader = rank_in_warp == 0;
    if (e >= 0 && leader) warp_count[warp * width + e] = count_in_warp;
    __syncthreads();

    int before = 0;         // e's position before this warp's first slot
    bool last_warp = true;  // no later warp of the tile holds e
    int32_t row = core::kNoRow;
    if (e >= 0) {
      before = next_rank[e];
      for (int w = 0; w < warp; ++w) before += warp_count[w * width + e];
      for (int w = warp + 1; w < kPlanWarps; ++w)
        last_warp = last_warp && warp_count[w * width + e] == 0;
      const int position = before + rank_in_warp;
      if (!p.batched) {
        row = position;
      } else if (position < p.capacity) {
        row = static_cast<int32_t>(core::batched_first_row(e, p.capacity)) + position;
      }
    }
    if (s < end) p.slot_to_row[s] = row;
    if (row != core::kNoRow) p.row_to_slot[row] = static_cast<int32_t>(s);
    __syncthreads();  // every read of next_rank and warp_count for this tile is done

    if (e >= 0 && leader) {
      if (last_warp) next_rank[e] = before + count_in_warp;
      warp_count[warp * width + e] = 0;
    }
    __syncwarp();  // the reset above precedes this warp's writes for the next tile
  }
}

__global__ void __launch_bounds__(kPlanThreads) plan_scatter_kernel(PlanParams p) {
  wait_for_previous_kernel();
  extern __shared__ int scatter_shared[];
  int* next_rank = scatter_shared;                 // [num_local]: rank of e's next slot
  int* warp_count = scatter_shared + p.num_local;  // [kPlanWarps][num_local], 0 between tiles
  const int tid = static_cast<int>(threadIdx.x);
  int expert[kSlotsPerThread];
  int out_of_range = 0;  // counted by plan_count
  int remote = 0;
  load_chunk_experts(p, blockIdx.x, expert, out_of_range, remote);
  const int32_t* chunk_base = p.chunk_counts + blockIdx.x * static_cast<int64_t>(p.num_local);
  for (int e = tid; e < p.num_local; e += kPlanThreads)
    next_rank[e] = rank_base(p, p.expert_offsets[e]) + chunk_base[e];
  for (int i = tid; i < kPlanWarps * p.num_local; i += kPlanThreads) warp_count[i] = 0;
  __syncthreads();
  scatter_chunk(p, blockIdx.x, expert, next_rank, warp_count);
}

// The whole plan in one block when p.chunks <= 1 and p.rows <= kSingleChunkMaxRows: the steps of
// plan_count, plan_scan and plan_scatter in turn, separated by __syncthreads instead of launches
// (a block's global writes are visible to the block after a __syncthreads).
__global__ void __launch_bounds__(kPlanThreads) plan_single_chunk_kernel(PlanParams p) {
  wait_for_previous_kernel();
  extern __shared__ int single_shared[];
  int* counts = single_shared;  // [num_local], then the next_rank of scatter_chunk
  int* warp_count = single_shared + p.num_local;  // [kPlanWarps][num_local]
  __shared__ int warp_sums[kPlanWarps];
  const int tid = static_cast<int>(threadIdx.x);
  int expert[kSlotsPerThread];
  int out_of_range = 0;
  int remote = 0;
  load_chunk_experts(p, 0, expert, out_of_range, remote);  // every slot (p.chunks <= 1)
  for (int64_t r = tid; r < p.rows; r += kPlanThreads) p.row_to_slot[r] = core::kNoSlot;
  for (int e = tid; e < p.num_local; e += kPlanThreads) counts[e] = 0;
  for (int i = tid; i < kPlanWarps * p.num_local; i += kPlanThreads) warp_count[i] = 0;
  __syncthreads();
  count_chunk(p, expert, out_of_range, remote, counts);
  __syncthreads();

  int carry = 0;     // contiguous: rows of the experts of earlier passes
  int overflow = 0;  // batched: slots beyond capacity, per thread
  for (int first = 0; first < p.num_local; first += kPlanThreads) {  // uniform over the block
    const int expert = first + tid;
    const bool owner = expert < p.num_local;
    const int total = owner ? counts[expert] : 0;
    const int offset =
        write_expert_ranges<kPlanWarps>(p, expert, owner, total, warp_sums, carry, overflow);
    if (owner) counts[expert] = rank_base(p, offset);  // only its owner reads or writes it
    __syncthreads();  // warp_sums is reused by the next pass
  }
  finish_expert_ranges(p, carry, overflow);
  scatter_chunk(p, 0, expert, counts, warp_count);  // after the loop's last __syncthreads
}

}  // namespace

size_t plan_scratch_bytes(int64_t max_tokens, int64_t top_k, int64_t num_local_experts,
                          int /*device_index*/) {
  return static_cast<size_t>(num_chunks(max_tokens * top_k) * num_local_experts) * sizeof(int32_t);
}

void plan(const PlanArgs& args, void* stream) {
  const char* where = "plan";
  // Shapes, the expert range, capacity and scratch size were checked by the public entry point.
  PlanParams p{};
  p.topk_ids = args.topk_ids.ptr<const int32_t>();
  p.tokens = args.topk_ids.size(0);
  p.top_k = args.topk_ids.size(1);
  p.slots = p.tokens * p.top_k;
  p.chunks = num_chunks(p.slots);
  p.num_experts = args.num_experts;
  p.expert_begin = args.expert_begin;
  p.expert_end = args.expert_end < 0 ? args.num_experts : args.expert_end;
  p.num_local = static_cast<int>(p.expert_end - p.expert_begin);
  p.batched = args.layout == Layout::batched;
  p.capacity = p.batched ? static_cast<int>(args.capacity) : 0;
  p.rows = args.row_to_slot.size(0);
  p.num_valid_tokens = args.num_valid_tokens;
  p.diagnostics = args.diagnostics;
  p.chunk_counts = static_cast<int32_t*>(args.scratch);
  p.expert_counts = args.expert_counts.ptr<int32_t>();
  p.expert_offsets = args.expert_offsets.ptr<int32_t>();
  p.slot_to_row = args.slot_to_row.ptr<int32_t>();
  p.row_to_slot = args.row_to_slot.ptr<int32_t>();
  if (p.chunks > 0 && p.num_local > 0)
    check_pointer_alignment(where, "scratch", args.scratch, alignof(int32_t));

  const char* what = "expert_counts: a plan (a count table per warp)";
  const size_t count_shared = static_cast<size_t>(p.num_local) * sizeof(int);
  const size_t scatter_shared = (kPlanWarps + 1) * count_shared;
  const cudaStream_t cuda_stream = as_cuda_stream(stream);
  if (p.chunks <= 1 && p.rows <= kSingleChunkMaxRows) {
    reserve_dynamic_shared_memory(reinterpret_cast<const void*>(plan_single_chunk_kernel),
                                  scatter_shared, where, what, p.num_local);
    launch_overlapped(plan_single_chunk_kernel, dim3(1), dim3(kPlanThreads), scatter_shared,
                      cuda_stream, p);
    IRONMOE_CUDA_CHECK_LAUNCH(cuda_stream);
    return;
  }
  reserve_dynamic_shared_memory(reinterpret_cast<const void*>(plan_count_kernel), count_shared,
                                where, what, p.num_local);
  reserve_dynamic_shared_memory(reinterpret_cast<const void*>(plan_scatter_kernel), scatter_shared,
                                where, what, p.num_local);
  const int64_t fill_blocks = num_chunks(p.rows) < 1024 ? num_chunks(p.rows) : 1024;
  const int64_t count_blocks = p.chunks > fill_blocks ? p.chunks : fill_blocks;
  if (count_blocks > 0) {
    launch_overlapped(plan_count_kernel, dim3(static_cast<unsigned>(count_blocks)),
                      dim3(kPlanThreads), count_shared, cuda_stream, p);
    IRONMOE_CUDA_CHECK_LAUNCH(cuda_stream);
  }
  launch_overlapped(plan_scan_kernel, dim3(1), dim3(kScanThreads), 0, cuda_stream, p);
  IRONMOE_CUDA_CHECK_LAUNCH(cuda_stream);
  if (p.chunks > 0) {
    launch_overlapped(plan_scatter_kernel, dim3(static_cast<unsigned>(p.chunks)),
                      dim3(kPlanThreads), scatter_shared, cuda_stream, p);
    IRONMOE_CUDA_CHECK_LAUNCH(cuda_stream);
  }
}

}  // namespace ironmoe::cuda
