// CPU combine: out[t] = sum over j (in order, fp32) of w[t, j] * Y[slot_to_row[t*k + j]], skipping
// slots without a row; rows t >= *num_valid_tokens are zeros. Rounded once to the storage dtype.
#include <algorithm>
#include <cstdint>

#include "core/bf16.h"
#include "core/plan_math.h"
#include "cpu/cpu_backend.h"
#include "cpu/parallel.h"

namespace ironmoe::cpu {
namespace {

// Columns accumulated at once: an fp32 block that stays in L1, so no heap buffer is needed.
constexpr int64_t kColumnBlock = 512;

template <class Storage>
float load(const Storage* p, int64_t i) {
  if constexpr (sizeof(Storage) == 2) {
    return core::bf16_to_float(p[i]);
  } else {
    return p[i];
  }
}

template <class Storage>
void store(Storage* p, int64_t i, float v) {
  if constexpr (sizeof(Storage) == 2) {
    p[i] = core::float_to_bf16(v);
  } else {
    p[i] = v;
  }
}

// Storage is float (f32) or uint16_t (bf16 bits).
template <class Storage>
void combine_rows(const CombineArgs& args, int64_t valid, int64_t begin, int64_t end) {
  const int64_t top_k = args.slot_to_row.size(1);
  const int64_t hidden = args.permuted_out.size(1);
  const int64_t rows = args.permuted_out.size(0);
  const int64_t out_stride = args.out.strides[0];
  const auto* y = static_cast<const Storage*>(args.permuted_out.data);
  auto* out = static_cast<Storage*>(args.out.data);
  const int32_t* slot_to_row = args.slot_to_row.ptr<int32_t>();
  const float* weights = args.topk_weights.ptr<float>();

  float acc[kColumnBlock];
  for (int64_t t = begin; t < end; ++t) {
    Storage* out_row = out + t * out_stride;
    for (int64_t c0 = 0; c0 < hidden; c0 += kColumnBlock) {
      const int64_t width = std::min(kColumnBlock, hidden - c0);
      std::fill(acc, acc + width, 0.0f);
      for (int64_t j = 0; t < valid && j < top_k; ++j) {
        const int64_t row = slot_to_row[core::slot_index(t, j, top_k)];
        if (row < 0 || row >= rows) continue;  // skipped slot: contributes zero
        const float w = weights[core::slot_index(t, j, top_k)];
        const Storage* y_row = y + row * hidden + c0;
        for (int64_t c = 0; c < width; ++c) acc[c] += w * load(y_row, c);
      }
      for (int64_t c = 0; c < width; ++c) store(out_row, c0 + c, acc[c]);
    }
  }
}

}  // namespace

void combine(const CombineArgs& args, ThreadPool* threads) {
  const int64_t tokens = args.slot_to_row.size(0);
  const int64_t valid = core::valid_tokens(tokens, args.num_valid_tokens);
  const bool bf16 = args.out.dtype == DType::bf16;
  parallel_for(threads, tokens, [&](int64_t begin, int64_t end) {
    if (bf16) {
      combine_rows<uint16_t>(args, valid, begin, end);
    } else {
      combine_rows<float>(args, valid, begin, end);
    }
  });
}

}  // namespace ironmoe::cpu
