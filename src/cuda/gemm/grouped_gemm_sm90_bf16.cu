// The Hopper bf16 grouped GEMM's entry points (grouped_gemm_sm90.h): the operand checks, and each
// call sent to the instantiation of its shape (grouped_gemm_sm90_bf16_shapes.h).
#include <algorithm>
#include <climits>

#include "cuda/gemm/grouped_gemm_sm90.h"
#include "cuda/gemm/grouped_gemm_sm90_bf16_shapes.h"

namespace ironmoe::cuda::gemm {
namespace {

constexpr int64_t kAlignment = 8;  // bf16 elements per 16 bytes: what TMA needs

bool aligned16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

}  // namespace

bool sm90_bf16_supports(const Sm90GemmOperands& op) {
  const bool fits_int = op.n <= INT_MAX && op.k <= INT_MAX;
  const bool strides = op.n % kAlignment == 0 && op.k % kAlignment == 0 &&
                       op.a_stride % kAlignment == 0 && op.d_stride % kAlignment == 0 &&
                       op.b_expert_stride % kAlignment == 0;
  return fits_int && strides && aligned16(op.a) && aligned16(op.b) && aligned16(op.d);
}

size_t sm90_bf16_problem_list_bytes(int64_t num_experts) {
  return std::max(sm90_bf16::problem_list_bytes_wide(num_experts),
                  sm90_bf16::problem_list_bytes_few_rows(num_experts));
}

size_t sm90_bf16_workspace_bytes(int sm_count) {
  return std::max(sm90_bf16::workspace_bytes_wide(sm_count),
                  sm90_bf16::workspace_bytes_few_rows(sm_count));
}

void sm90_bf16_write_problem_lists(Sm90Shape shape, const ExpertRows& rows,
                                   const Sm90GemmOperands* gemms, void* const* lists, int count,
                                   void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (shape == Sm90Shape::few_rows) {
    sm90_bf16::write_problem_lists_few_rows(rows, gemms, lists, count, workspace, workspace_bytes,
                                            stream);
  } else {
    sm90_bf16::write_problem_lists_wide(rows, gemms, lists, count, workspace, workspace_bytes,
                                        stream);
  }
}

void sm90_bf16_grouped_gemm(Sm90Shape shape, int64_t num_experts, const void* list, void* workspace,
                            int device_index, int sm_count, cudaStream_t stream) {
  if (shape == Sm90Shape::few_rows) {
    sm90_bf16::grouped_gemm_few_rows(num_experts, list, workspace, device_index, sm_count, stream);
  } else {
    sm90_bf16::grouped_gemm_wide(num_experts, list, workspace, device_index, sm_count, stream);
  }
}

}  // namespace ironmoe::cuda::gemm
