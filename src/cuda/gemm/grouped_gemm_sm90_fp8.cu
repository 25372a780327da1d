// The Hopper FP8 grouped GEMM's light half: operand checks, the kernel that writes the
// device-side problem lists, and the dispatch to the instantiation of the output type
// (grouped_gemm_sm90_fp8_out_*.cu).
#include <algorithm>
#include <climits>

#include "core/check.h"
#include "cuda/cuda_check.h"
#include "cuda/gemm/expert_rows.cuh"
#include "cuda/gemm/grouped_gemm_sm90_fp8.h"
#include "cuda/gemm/grouped_gemm_sm90_fp8_list.cuh"
#include "cuda/gemm/grouped_gemm_sm90_fp8_out.h"

namespace ironmoe::cuda::gemm {
namespace {

using sm90_fp8::ElementAB;
using sm90_fp8::ListArrays;

struct ListWrite {
  Sm90Fp8GemmOperands operands;
  ListArrays arrays;
};

struct ListWrites {
  ListWrite gemms[2];
  bool few_rows;  // sm90_shape.h: the weights as A, the rows as B
};

// Words to zero (the GEMM workspace, see the bf16 GEMM's writer for why) and floats to set to 1.
struct Fills {
  uint4* words = nullptr;
  int64_t word_count = 0;
  float* ones = nullptr;
  int64_t ones_count = 0;
};

// Grid rows 0 and 1: one thread per (expert, GEMM); an empty or invalid range becomes a problem
// without rows, which gets no tiles. The last grid row does the fills.
__global__ void write_problem_lists_kernel(ExpertRows rows, ListWrites writes, Fills fills) {
  const int64_t thread = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (blockIdx.y == gridDim.y - 1) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = thread; i < fills.word_count; i += stride) {
      fills.words[i] = make_uint4(0, 0, 0, 0);
    }
    for (int64_t i = thread; i < fills.ones_count; i += stride) fills.ones[i] = 1.0f;
    return;
  }
  const int64_t expert = thread;
  if (expert >= rows.num_experts) return;
  const ListWrite& write = writes.gemms[blockIdx.y];
  const Sm90Fp8GemmOperands& op = write.operands;
  const RowRange range = expert_row_range(rows, expert);
  const int64_t k_blocks = (op.k + kSm90Fp8ScaleBlock - 1) / kSm90Fp8ScaleBlock;
  const int64_t d_bytes = op.d_dtype == DType::f32 ? 4 : 2;
  const auto* rows_codes = reinterpret_cast<const ElementAB*>(op.a + range.begin * op.a_stride);
  const auto* weights = reinterpret_cast<const ElementAB*>(op.b + expert * op.b_expert_stride);
  // The rows' scales, K-block major inside the expert: the M-major scales of a wide tile's rows,
  // and just as well the N-major scales of a few_rows tile's rows.
  const float* rows_scales = op.a_scales + sm90_fp8_activation_scale_index(
                                               range.begin, range.count, range.begin, 0, k_blocks);
  const float* weight_scales = op.b_scales + expert * op.b_scales_expert_stride;
  const auto count = static_cast<int>(range.count);
  const auto n = static_cast<int>(op.n);
  const auto k = static_cast<int>(op.k);
  const sm90_fp8::ListArrays& arrays = write.arrays;
  arrays.d_pointers[expert] = static_cast<char*>(op.d) + range.begin * op.d_stride * d_bytes;
  if (writes.few_rows) {
    arrays.shapes[expert] = sm90_fp8::Shape{n, count, k};
    arrays.a_pointers[expert] = weights;
    arrays.b_pointers[expert] = rows_codes;
    arrays.a_scale_pointers[expert] = weight_scales;
    arrays.b_scale_pointers[expert] = rows_scales;
    arrays.a_strides[expert] = cute::make_stride(op.k, cute::_1{}, cute::_0{});
    arrays.b_strides[expert] = cute::make_stride(op.a_stride, cute::_1{}, cute::_0{});
    arrays.d_column_strides[expert] = cute::make_stride(cute::_1{}, op.d_stride, cute::_0{});
  } else {
    arrays.shapes[expert] = sm90_fp8::Shape{count, n, k};
    arrays.a_pointers[expert] = rows_codes;
    arrays.b_pointers[expert] = weights;
    arrays.a_scale_pointers[expert] = rows_scales;
    arrays.b_scale_pointers[expert] = weight_scales;
    arrays.a_strides[expert] = cute::make_stride(op.a_stride, cute::_1{}, cute::_0{});
    arrays.b_strides[expert] = cute::make_stride(op.k, cute::_1{}, cute::_0{});
    arrays.d_strides[expert] = cute::make_stride(op.d_stride, cute::_1{}, cute::_0{});
  }
}

bool aligned16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

}  // namespace

bool sm90_fp8_supports(const Sm90Fp8GemmOperands& op) {
  if (op.d_dtype != DType::bf16 && op.d_dtype != DType::f32) return false;
  const int64_t d_alignment = op.d_dtype == DType::f32 ? 4 : 8;  // elements per 16 bytes
  const bool fits_int = op.n <= INT_MAX && op.k <= INT_MAX;
  const bool strides = op.k % 16 == 0 && op.a_stride % 16 == 0 && op.b_expert_stride % 16 == 0 &&
                       op.n % d_alignment == 0 && op.d_stride % d_alignment == 0;
  return fits_int && strides && aligned16(op.a) && aligned16(op.b) && aligned16(op.d) &&
         op.a_scales != nullptr && op.b_scales != nullptr;
}

size_t sm90_fp8_problem_list_bytes(int64_t num_experts) {
  return sm90_fp8::carve_list(nullptr, num_experts, nullptr);
}

size_t sm90_fp8_workspace_bytes(int sm_count) {
  return std::max({sm90_fp8::workspace_bytes_out_bf16(sm_count),
                   sm90_fp8::workspace_bytes_out_f32(sm_count),
                   sm90_fp8::workspace_bytes_out_bf16_few_rows(sm_count),
                   sm90_fp8::workspace_bytes_out_f32_few_rows(sm_count),
                   sm90_fp8::workspace_bytes_out_bf16_pingpong(sm_count),
                   sm90_fp8::workspace_bytes_out_f32_pingpong(sm_count)});
}

void sm90_fp8_write_problem_lists(Sm90Shape shape, const ExpertRows& rows,
                                  const Sm90Fp8GemmOperands* gemms, void* const* lists,
                                  void* workspace, size_t workspace_bytes, float* ones,
                                  int64_t ones_count, cudaStream_t stream) {
  IRONMOE_CHECK(reinterpret_cast<uintptr_t>(workspace) % 16 == 0 && workspace_bytes % 16 == 0,
                "experts", "internal: GEMM workspace must be 16-byte aligned and sized, got ",
                workspace, " and ", workspace_bytes, " bytes");
  if (rows.num_experts == 0) return;
  ListWrites writes{};
  writes.few_rows = shape == Sm90Shape::few_rows;
  for (int i = 0; i < 2; ++i) {
    writes.gemms[i] = {gemms[i], sm90_fp8::list_arrays(lists[i], rows.num_experts)};
  }
  const Fills fills{static_cast<uint4*>(workspace),
                    static_cast<int64_t>(workspace_bytes / sizeof(uint4)), ones, ones_count};
  constexpr int kThreads = 128;
  constexpr int64_t kFillBlocks = 32;
  const int64_t expert_blocks = (rows.num_experts + kThreads - 1) / kThreads;
  const dim3 grid(static_cast<unsigned>(std::max(expert_blocks, kFillBlocks)), 3);
  write_problem_lists_kernel<<<grid, kThreads, 0, stream>>>(rows, writes, fills);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
}

void sm90_fp8_grouped_gemm(Sm90Shape shape, int64_t num_experts, const void* list, DType out_dtype,
                           void* workspace, int device_index, int sm_count, cudaStream_t stream) {
  if (num_experts == 0) return;
  const bool f32 = out_dtype == DType::f32;
  auto* run = f32 ? sm90_fp8::grouped_gemm_out_f32 : sm90_fp8::grouped_gemm_out_bf16;
  if (shape == Sm90Shape::few_rows) {
    run = f32 ? sm90_fp8::grouped_gemm_out_f32_few_rows : sm90_fp8::grouped_gemm_out_bf16_few_rows;
  } else if (shape == Sm90Shape::wide_pingpong) {
    run = f32 ? sm90_fp8::grouped_gemm_out_f32_pingpong : sm90_fp8::grouped_gemm_out_bf16_pingpong;
  }
  run(num_experts, list, workspace, device_index, sm_count, stream);
}

}  // namespace ironmoe::cuda::gemm
