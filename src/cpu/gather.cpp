// CPU gather: permuted[r] = x[row_to_slot[r] / k] for the rows in use; other rows are untouched.
#include <cstdint>
#include <cstring>

#include "core/plan_math.h"
#include "cpu/cpu_backend.h"
#include "cpu/parallel.h"

namespace ironmoe::cpu {

void gather(const GatherArgs& args, ThreadPool* threads) {
  const int64_t tokens = args.x.size(0);
  const int64_t hidden = args.x.size(1);
  const int64_t slots = tokens * args.top_k;
  const int64_t rows = args.row_to_slot.size(0);
  const size_t element = dtype_size(args.x.dtype);
  const size_t row_bytes = static_cast<size_t>(hidden) * element;
  const size_t x_stride = static_cast<size_t>(args.x.strides[0]) * element;
  const auto* x = static_cast<const char*>(args.x.data);
  auto* permuted = static_cast<char*>(args.permuted.data);
  const int32_t* row_to_slot = args.row_to_slot.ptr<int32_t>();

  parallel_for(threads, rows, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t token = core::row_token(row_to_slot[r], slots, args.top_k);
      if (token < 0) continue;
      std::memcpy(permuted + static_cast<size_t>(r) * row_bytes,
                  x + static_cast<size_t>(token) * x_stride, row_bytes);
    }
  });
}

}  // namespace ironmoe::cpu
