// Stage 3 on CUDA: permuted[r] = x[row_to_slot[r] / k] for every row that holds a slot.
//
// A row copy moves bytes, so one kernel serves every dtype; it is templated on the access width:
// 16 bytes when the row size, both base pointers and x's row stride are multiples of 16, else
// one element per access (always legal: the API checks element alignment). Rows whose
// row_to_slot entry is -1, or is not a slot of x, are not written.
// Grid: x = permuted row, y = 128-access column tiles of the row.
#include <cstdint>

#include "core/check.h"
#include "core/plan_math.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/launch.cuh"
#include "cuda/storage.cuh"

namespace ironmoe::cuda {
namespace {

constexpr int kGatherThreads = 128;

struct GatherParams {
  const char* x;
  int64_t x_row_bytes;  // x's row stride in bytes
  int64_t slots;        // T * k
  int64_t top_k;
  const int32_t* row_to_slot;
  char* permuted;
  int64_t row_bytes;  // H * element size, also permuted's row stride
  int64_t row_accesses;
};

template <class Access>
__global__ void __launch_bounds__(kGatherThreads) gather_rows_kernel(GatherParams p) {
  wait_for_previous_kernel();
  const int64_t row = blockIdx.x;
  const int64_t i = static_cast<int64_t>(blockIdx.y) * kGatherThreads + threadIdx.x;
  if (i >= p.row_accesses) return;
  const int64_t token = core::row_token(p.row_to_slot[row], p.slots, p.top_k);
  if (token < 0) return;
  const auto* src = reinterpret_cast<const Access*>(p.x + token * p.x_row_bytes);
  auto* dst = reinterpret_cast<Access*>(p.permuted + row * p.row_bytes);
  dst[i] = src[i];
}

template <class Access>
void launch_gather(GatherParams p, int64_t rows, cudaStream_t stream) {
  p.row_accesses = p.row_bytes / static_cast<int64_t>(sizeof(Access));
  const dim3 grid(static_cast<unsigned>(rows),
                  static_cast<unsigned>((p.row_accesses + kGatherThreads - 1) / kGatherThreads));
  launch_overlapped(gather_rows_kernel<Access>, grid, dim3(kGatherThreads), 0, stream, p);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
}

}  // namespace

void gather(const GatherArgs& args, void* stream) {
  const char* where = "gather";
  const int64_t tokens = args.x.size(0);
  const int64_t rows = args.row_to_slot.size(0);
  const auto element_bytes = static_cast<int64_t>(dtype_size(args.x.dtype));
  if (rows == 0) return;

  GatherParams p{};
  p.x = static_cast<const char*>(args.x.data);
  p.x_row_bytes = args.x.strides[0] * element_bytes;
  p.slots = tokens * args.top_k;
  p.top_k = args.top_k;
  p.row_to_slot = args.row_to_slot.ptr<const int32_t>();
  p.permuted = static_cast<char*>(args.permuted.data);
  p.row_bytes = args.x.size(1) * element_bytes;
  IRONMOE_CHECK((p.row_bytes / element_bytes + kGatherThreads - 1) / kGatherThreads <= 65535, where,
                "x: expected at most ", 65535 * kGatherThreads, " columns, got ", args.x.size(1));

  const bool vectorised = rows_allow_wide_access(p.x, p.row_bytes, p.x_row_bytes, tokens) &&
                          rows_allow_wide_access(p.permuted, p.row_bytes, p.row_bytes, rows);
  const cudaStream_t cuda_stream = as_cuda_stream(stream);
  if (vectorised) {
    launch_gather<uint4>(p, rows, cuda_stream);
  } else if (element_bytes == 4) {
    launch_gather<uint32_t>(p, rows, cuda_stream);
  } else {
    IRONMOE_CHECK(element_bytes == 2, where, "x: unexpected element size ", element_bytes);
    launch_gather<uint16_t>(p, rows, cuda_stream);
  }
}

}  // namespace ironmoe::cuda
