// The Hopper FP8 grouped GEMM: CUTLASS 4's ptr-array grouped kernel with blockwise scaling
// (KernelPtrArrayTmaWarpSpecializedCooperativeFP8BlockScaledAccum: TMA loads of the E4M3 tiles,
// cp.async loads of the scales by an auxiliary producer warp, wgmma into a per-K-block fp32
// accumulator that is scaled and added to the main one every 128 columns of K), plus the small
// kernel that writes its device-side problem list.
//
// Scale granularity 1 x 128 for the activations (a scale per row and K block, M-major in each
// group as CUTLASS's Sm90 blockwise kernels expect) and 128 x 128 for the weights (K-major: the
// [NB, KB] block-scale layout of DeepSeek-V3 checkpoints, read in place). Tile 128 x 128 x 128:
// one K block per stage, so one weight scale per stage and tile. One 1x1 cluster, as for the
// bf16 GEMM (a larger cluster rounds each expert's M tiles up).
//
// Its own translation unit: a heavy CUTLASS instantiation (src/cuda/gemm/CMakeLists.txt).
#include <cuda_bf16.h>

#include <climits>

#include "core/check.h"
#include "cuda/cuda_check.h"
#include "cuda/gemm/expert_rows.cuh"
#include "cuda/gemm/grouped_gemm_sm90_fp8.h"
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/detail/blockwise_scale_layout.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

namespace ironmoe::cuda::gemm {
namespace {

using ElementAB = cutlass::float_e4m3_t;
using ElementD = cutlass::bfloat16_t;
using Accumulator = float;
constexpr int kAlignmentAB = 16;  // E4M3 elements per 16 bytes (TMA)
constexpr int kAlignmentD = 8;    // bf16 elements per 16 bytes

using TileShape = cute::Shape<cute::_128, cute::_128, cute::_128>;
using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
using KernelSchedule =
    cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8BlockScaledAccum;
using EpilogueSchedule = cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative;

using ScaleConfig =
    cutlass::detail::Sm90BlockwiseScaleConfig<1, kSm90Fp8ScaleBlock, kSm90Fp8ScaleBlock,
                                              cute::GMMA::Major::MN, cute::GMMA::Major::K>;
using LayoutSFA = decltype(ScaleConfig::deduce_layoutSFA());
using LayoutSFB = decltype(ScaleConfig::deduce_layoutSFB());

using ProblemShape = cutlass::gemm::GroupProblemShape<cute::Shape<int, int, int>>;  // (M, N, K)
using LayoutA = cutlass::layout::RowMajor;     // permuted rows [M, K]
using LayoutB = cutlass::layout::ColumnMajor;  // a weight matrix stored [N, K]: K-major B
using LayoutD = cutlass::layout::RowMajor;     // [M, N]

// D = acc (the scales are applied in the main loop), rounded once to bf16; no C operand.
using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
    cutlass::epilogue::collective::EpilogueTileAuto, Accumulator, Accumulator, void, LayoutD*,
    kAlignmentD, ElementD, LayoutD*, kAlignmentD, EpilogueSchedule,
    cutlass::epilogue::fusion::LinearCombination<ElementD, Accumulator, void,
                                                 Accumulator>>::CollectiveOp;

using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
    cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementAB,
    cute::tuple<LayoutA*, LayoutSFA*>, kAlignmentAB, ElementAB, cute::tuple<LayoutB*, LayoutSFB*>,
    kAlignmentAB, Accumulator, TileShape, ClusterShape,
    cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
        sizeof(typename CollectiveEpilogue::SharedStorage))>,
    KernelSchedule>::CollectiveOp;

using GemmKernel =
    cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;

using Shape = ProblemShape::UnderlyingProblemShape;
using StrideA = GemmKernel::InternalStrideA;
using StrideB = GemmKernel::InternalStrideB;
using StrideD = GemmKernel::InternalStrideD;

// One problem list: per-group shapes, pointers and strides, each array 16-byte aligned. The
// scale layouts are not stored: the kernel derives each group's from its shape.
struct ListArrays {
  Shape* shapes = nullptr;
  const ElementAB** a_pointers = nullptr;
  const ElementAB** b_pointers = nullptr;
  ElementD** d_pointers = nullptr;
  const float** a_scale_pointers = nullptr;
  const float** b_scale_pointers = nullptr;
  StrideA* a_strides = nullptr;
  StrideB* b_strides = nullptr;
  StrideD* d_strides = nullptr;
};

// Lays the arrays out from `base` (null: only measures); returns the bytes used.
size_t carve_list(char* base, int64_t num_experts, ListArrays* arrays) {
  const auto count = static_cast<size_t>(num_experts);
  size_t end = 0;
  auto take = [&](auto*& pointer, size_t element_bytes) {
    using Pointer = std::remove_reference_t<decltype(pointer)>;
    pointer = base == nullptr ? nullptr : reinterpret_cast<Pointer>(base + end);
    end = (end + count * element_bytes + 15) / 16 * 16;
  };
  ListArrays a;
  take(a.shapes, sizeof(Shape));
  take(a.a_pointers, sizeof(void*));
  take(a.b_pointers, sizeof(void*));
  take(a.d_pointers, sizeof(void*));
  take(a.a_scale_pointers, sizeof(void*));
  take(a.b_scale_pointers, sizeof(void*));
  take(a.a_strides, sizeof(StrideA));
  take(a.b_strides, sizeof(StrideB));
  take(a.d_strides, sizeof(StrideD));
  if (arrays != nullptr) *arrays = a;
  return end;
}

ListArrays list_arrays(void* list, int64_t num_experts) {
  ListArrays arrays;
  carve_list(static_cast<char*>(list), num_experts, &arrays);
  return arrays;
}

struct ListWrite {
  Sm90Fp8GemmOperands operands;
  ListArrays arrays;
};

struct ListWrites {
  ListWrite gemms[2];
};

// Words to zero (the GEMM workspace, see the bf16 GEMM's writer for why) and floats to set to 1.
struct Fills {
  uint4* words = nullptr;
  int64_t word_count = 0;
  float* ones = nullptr;
  int64_t ones_count = 0;
};

// Grid rows 0 and 1: one thread per (expert, GEMM); an empty or invalid range becomes an M = 0
// problem, which gets no tiles. The last grid row does the fills.
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
  write.arrays.shapes[expert] =
      Shape{static_cast<int>(range.count), static_cast<int>(op.n), static_cast<int>(op.k)};
  write.arrays.a_pointers[expert] =
      reinterpret_cast<const ElementAB*>(op.a + range.begin * op.a_stride);
  write.arrays.b_pointers[expert] =
      reinterpret_cast<const ElementAB*>(op.b + expert * op.b_expert_stride);
  write.arrays.d_pointers[expert] = static_cast<ElementD*>(op.d) + range.begin * op.d_stride;
  write.arrays.a_scale_pointers[expert] =
      op.a_scales +
      sm90_fp8_activation_scale_index(range.begin, range.count, range.begin, 0, k_blocks);
  write.arrays.b_scale_pointers[expert] = op.b_scales + expert * op.b_scales_expert_stride;
  write.arrays.a_strides[expert] = cute::make_stride(op.a_stride, cute::_1{}, cute::_0{});
  write.arrays.b_strides[expert] = cute::make_stride(op.k, cute::_1{}, cute::_0{});
  write.arrays.d_strides[expert] = cute::make_stride(op.d_stride, cute::_1{}, cute::_0{});
}

Gemm::Arguments gemm_arguments(int64_t num_experts, const ListArrays& arrays, int device_index,
                               int sm_count) {
  cutlass::KernelHardwareInfo hardware;
  hardware.device_id = device_index;
  hardware.sm_count = sm_count;
  Gemm::Arguments arguments{
      cutlass::gemm::GemmUniversalMode::kGrouped,
      // No host copy of the shapes: the scheduler reads them on the device.
      {static_cast<int>(num_experts), arrays.shapes, nullptr},
      {arrays.a_pointers, arrays.a_strides, arrays.b_pointers, arrays.b_strides,
       arrays.a_scale_pointers, nullptr, arrays.b_scale_pointers, nullptr},
      {{}, nullptr, nullptr, arrays.d_pointers, arrays.d_strides},
      hardware};
  arguments.epilogue.thread.alpha = 1.0f;
  arguments.epilogue.thread.beta = 0.0f;
  return arguments;
}

void check_status(cutlass::Status status, const char* step) {
  IRONMOE_CHECK(status == cutlass::Status::kSuccess, "experts", "Hopper FP8 grouped GEMM: ", step,
                " failed: ", cutlass::cutlassGetStatusString(status));
}

bool aligned16(const void* pointer) { return reinterpret_cast<uintptr_t>(pointer) % 16 == 0; }

}  // namespace

bool sm90_fp8_supports(const Sm90Fp8GemmOperands& op) {
  const bool fits_int = op.n <= INT_MAX && op.k <= INT_MAX;
  const bool strides = op.k % kAlignmentAB == 0 && op.a_stride % kAlignmentAB == 0 &&
                       op.b_expert_stride % kAlignmentAB == 0 && op.n % kAlignmentD == 0 &&
                       op.d_stride % kAlignmentD == 0;
  return fits_int && strides && aligned16(op.a) && aligned16(op.b) && aligned16(op.d) &&
         op.a_scales != nullptr && op.b_scales != nullptr;
}

size_t sm90_fp8_problem_list_bytes(int64_t num_experts) {
  return carve_list(nullptr, num_experts, nullptr);
}

size_t sm90_fp8_workspace_bytes(int sm_count) {
  return Gemm::get_workspace_size(gemm_arguments(1, ListArrays{}, 0, sm_count));
}

void sm90_fp8_write_problem_lists(const ExpertRows& rows, const Sm90Fp8GemmOperands* gemms,
                                  void* const* lists, void* workspace, size_t workspace_bytes,
                                  float* ones, int64_t ones_count, cudaStream_t stream) {
  IRONMOE_CHECK(reinterpret_cast<uintptr_t>(workspace) % 16 == 0 && workspace_bytes % 16 == 0,
                "experts", "internal: GEMM workspace must be 16-byte aligned and sized, got ",
                workspace, " and ", workspace_bytes, " bytes");
  if (rows.num_experts == 0) return;
  ListWrites writes{};
  for (int i = 0; i < 2; ++i) writes.gemms[i] = {gemms[i], list_arrays(lists[i], rows.num_experts)};
  const Fills fills{static_cast<uint4*>(workspace),
                    static_cast<int64_t>(workspace_bytes / sizeof(uint4)), ones, ones_count};
  constexpr int kThreads = 128;
  constexpr int64_t kFillBlocks = 32;
  const int64_t expert_blocks = (rows.num_experts + kThreads - 1) / kThreads;
  const dim3 grid(static_cast<unsigned>(expert_blocks > kFillBlocks ? expert_blocks : kFillBlocks),
                  3);
  write_problem_lists_kernel<<<grid, kThreads, 0, stream>>>(rows, writes, fills);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
}

void sm90_fp8_grouped_gemm(int64_t num_experts, const void* list, void* workspace, int device_index,
                           int sm_count, cudaStream_t stream) {
  if (num_experts == 0) return;
  const ListArrays arrays = list_arrays(const_cast<void*>(list), num_experts);
  const Gemm::Arguments arguments = gemm_arguments(num_experts, arrays, device_index, sm_count);
  Gemm gemm;
  check_status(gemm.can_implement(arguments), "can_implement");
  check_status(gemm.initialize(arguments, workspace, stream), "initialize");
  check_status(gemm.run(stream), "launch");
}

}  // namespace ironmoe::cuda::gemm
