#pragma once
// Slot numbering and row placement shared by the plan of every backend.
//   slot s = t * k + j      (token t, choice j)
//   a slot is placed iff t < num_valid_tokens and its id is in [expert_begin, expert_end)
//   contiguous: row = offsets[e] + rank of the slot among e's slots (slot order)
//   batched:    row = e * capacity + rank, dropped (-1) when rank >= capacity
#include <cstdint>

#include "core/host_device.h"

namespace ironmoe::core {

inline constexpr int32_t kNoRow = -1;
inline constexpr int32_t kNoSlot = -1;

IRONMOE_HD int64_t slot_index(int64_t token, int64_t choice, int64_t top_k) {
  return token * top_k + choice;
}
IRONMOE_HD int64_t slot_token(int64_t slot, int64_t top_k) { return slot / top_k; }

// The token whose row a permuted row holds, from its row_to_slot entry: -1 when the entry is not
// one of the batch's `slots` = T * top_k (the plan writes -1 in unused rows; nothing else that an
// engine hands over is trusted either).
IRONMOE_HD int64_t row_token(int64_t slot, int64_t slots, int64_t top_k) {
  return slot >= 0 && slot < slots ? slot_token(slot, top_k) : -1;
}

// Local expert index of id, or -1 when the slot is not computed on this rank.
IRONMOE_HD int32_t local_expert_of(int32_t id, int64_t expert_begin, int64_t expert_end) {
  return (id >= expert_begin && id < expert_end) ? static_cast<int32_t>(id - expert_begin) : -1;
}

// Rows of valid tokens: min(T, *num_valid_tokens) with a negative count treated as 0.
IRONMOE_HD int64_t valid_tokens(int64_t tokens, const int32_t* num_valid_tokens) {
  if (num_valid_tokens == nullptr) return tokens;
  const int64_t v = *num_valid_tokens;
  return v < 0 ? 0 : (v < tokens ? v : tokens);
}

// What the plan does with a slot of a valid row: place it on its local expert, or skip it and count
// why (an id outside [0, E) is bad input; one in range but outside the local range is another
// rank's). Every backend's plan and the CUDA fused decode path classify slots with this.
struct SlotPlace {
  int32_t local_expert;  // -1 when skipped
  bool out_of_range;
  bool remote;
};
IRONMOE_HD SlotPlace place_slot(int32_t id, int64_t num_experts, int64_t expert_begin,
                                int64_t expert_end) {
  const int32_t local = local_expert_of(id, expert_begin, expert_end);
  const bool out_of_range = id < 0 || id >= num_experts;
  return {local, local < 0 && out_of_range, local < 0 && !out_of_range};
}

IRONMOE_HD int64_t batched_first_row(int64_t local_expert, int64_t capacity) {
  return local_expert * capacity;
}

}  // namespace ironmoe::core
