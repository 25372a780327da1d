#pragma once
// Stage 2: topk ids -> where every (token, slot) row goes in the permuted buffers.
//
// One algorithm for every T (counting sort: histogram, scan, stable scatter by slot index
// s = t * k + j). Every entry of every output is written on every call:
//   expert_counts[e]  rows of local expert e (batched: at most capacity)
//   expert_offsets[e] first row of local expert e; expert_offsets[E_local] = rows in use
//                     (batched: e * capacity, and E_local * capacity)
//   slot_to_row[s]    permuted row of slot s, or -1 when the slot is skipped (id not local,
//                     padding row, or batched overflow)
//   row_to_slot[r]    slot whose activations row r holds, or -1 for an unused row
// Within an expert, rows follow slot order, so the plan is deterministic and batch-invariant.
#include "ironmoe/stream.h"
#include "ironmoe/tensor.h"

namespace ironmoe {

struct PlanArgs {
  TensorView topk_ids;  // [T, k] i32, global expert ids, contiguous; anything is accepted
  int64_t num_experts = 0;
  int64_t expert_begin = 0;
  int64_t expert_end = -1;  // -1: num_experts
  Layout layout = Layout::contiguous;
  int64_t capacity = 0;  // batched: rows per local expert

  TensorView expert_counts;   // out [E_local] i32
  TensorView expert_offsets;  // out [E_local + 1] i32
  TensorView slot_to_row;     // out [T, k] i32
  TensorView row_to_slot;     // out [R] i32; R = T*k (contiguous) or E_local*capacity (batched)
  const int32_t* num_valid_tokens = nullptr;
  int32_t* diagnostics = nullptr;
  // Scratch for the device backends (plan_scratch_bytes); may be null on the CPU.
  void* scratch = nullptr;
  size_t scratch_bytes = 0;
};

size_t plan_scratch_bytes(int64_t max_tokens, int64_t top_k, int64_t num_local_experts,
                          Device device);
void plan(const PlanArgs& args, const Stream& stream);

}  // namespace ironmoe
