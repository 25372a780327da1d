#pragma once
// The Hopper FP8 grouped GEMM (grouped_gemm_sm90_fp8.h), one instantiation per output type and
// tile shape: CUTLASS 4's ptr-array grouped kernel with blockwise scaling
// (KernelPtrArray...FP8BlockScaledAccum, cooperative or ping-pong: TMA loads of the E4M3 tiles,
// cp.async loads of the scales by an auxiliary producer warp, wgmma into a per-K-block fp32
// accumulator that is scaled and added to the main one every 128 columns of K).
//
// Scale granularity 1 x 128 for the activations (a scale per row and K block, M-major in each
// group, as CUTLASS's Sm90 blockwise kernels expect) and 128 x 128 for the weights (K-major: the
// [NB, KB] block-scale layout of DeepSeek-V3 checkpoints, read in place). Tile 128 x 128 x 128:
// one K block per stage, so one weight scale per stage and tile. CUTLASS 4.2 lays the shared
// memory of the weight scales out by the activation scales' major-ness, which is only right
// while a tile holds one weight scale. A 128 x 256 tile (two weight scales per tile) does not
// compile in CUTLASS 4.2 with either major-ness of the weight scales (tried, 2026-11-24:
// fp8_accumulation.hpp's "Accumulator and scaleB must have same shape" for the 64x256 atom).
// A 1x1 cluster, as for the bf16 GEMM (a larger cluster rounds each expert's M tiles up; 1 x 2
// along N measured no faster, session 23). kPingpong (wide_pingpong, sm90_shape.h): 64 x 128 x 128
// tiles, one consumer warp group each, ping-pong.
//
// Included by exactly one translation unit per output type and shape (each a heavy instantiation).
#include <type_traits>

#include "core/check.h"
#include "cuda/gemm/grouped_gemm_sm90_fp8_list.cuh"
#include "cuda/gemm/sm90_shape.h"
#include "cutlass/cutlass.h"
#include "cutlass/detail/blockwise_scale_layout.hpp"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

namespace ironmoe::cuda::gemm::sm90_fp8 {

inline constexpr int kScaleBlock = 128;

// kFewRows (sm90_shape.h): the weights are A (128 x 128 block scales, K-major: DeepSeek's
// [NB, KB] layout) and the rows B (a scale per row and K block, rows contiguous in each K block:
// the same memory as the wide tile's M-major row scales), in 128 x 32 x 128 tiles; one weight
// scale per tile and K block, as above.
template <class ElementD, bool kFewRows = false, bool kPingpong = false>
struct Sm90Fp8Gemm {
  static_assert(!(kFewRows && kPingpong), "ping-pong tiles are wide ones");
  using Accumulator = float;
  static constexpr int kAlignmentAB = 16;  // E4M3 per 16 bytes (TMA)
  static constexpr int kAlignmentD = 16 / static_cast<int>(sizeof(ElementD));

  using TileShape = std::conditional_t<
      kFewRows, cute::Shape<cute::_128, cute::_32, cute::_128>,
      std::conditional_t<kPingpong, cute::Shape<cute::_64, cute::_128, cute::_128>,
                         cute::Shape<cute::_128, cute::_128, cute::_128>>>;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
  using KernelSchedule = std::conditional_t<
      kPingpong, cutlass::gemm::KernelPtrArrayTmaWarpSpecializedPingpongFP8BlockScaledAccum,
      cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperativeFP8BlockScaledAccum>;
  using EpilogueSchedule =
      std::conditional_t<kPingpong, cutlass::epilogue::PtrArrayTmaWarpSpecializedPingpong,
                         cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative>;

  using ScaleConfig = std::conditional_t<
      kFewRows,
      cutlass::detail::Sm90BlockwiseScaleConfig<kScaleBlock, 1, kScaleBlock, cute::GMMA::Major::K,
                                                cute::GMMA::Major::MN>,
      cutlass::detail::Sm90BlockwiseScaleConfig<1, kScaleBlock, kScaleBlock, cute::GMMA::Major::MN,
                                                cute::GMMA::Major::K>>;
  using LayoutSFA = decltype(ScaleConfig::deduce_layoutSFA());
  using LayoutSFB = decltype(ScaleConfig::deduce_layoutSFB());

  using ProblemShape = cutlass::gemm::GroupProblemShape<Shape>;
  // Both operands K-major: A [M, K] (the rows, or few_rows' weights), B [N, K] (the weights, or
  // few_rows' rows); d row-major [R, N] either way, few_rows' column-major N x rows result.
  using LayoutA = cutlass::layout::RowMajor;
  using LayoutB = cutlass::layout::ColumnMajor;
  using LayoutD =
      std::conditional_t<kFewRows, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;
  using StrideD = std::conditional_t<kFewRows, ColumnStride, Stride>;

  // D = acc (the scales are applied in the main loop), rounded once to ElementD; no C operand.
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

  static_assert(std::is_same_v<typename ProblemShape::UnderlyingProblemShape, Shape>);
  static_assert(std::is_same_v<typename GemmKernel::InternalStrideA, Stride>);
  static_assert(std::is_same_v<typename GemmKernel::InternalStrideB, Stride>);
  static_assert(std::is_same_v<typename GemmKernel::InternalStrideD, StrideD>);

  static typename Gemm::Arguments arguments(int64_t num_experts, const ListArrays& arrays,
                                            int device_index, int sm_count) {
    cutlass::KernelHardwareInfo hardware;
    hardware.device_id = device_index;
    hardware.sm_count = sm_count;
    typename Gemm::Arguments arguments{
        cutlass::gemm::GemmUniversalMode::kGrouped,
        // No host copy of the shapes: the scheduler reads them on the device.
        {static_cast<int>(num_experts), arrays.shapes, nullptr},
        {arrays.a_pointers, arrays.a_strides, arrays.b_pointers, arrays.b_strides,
         arrays.a_scale_pointers, nullptr, arrays.b_scale_pointers, nullptr},
        {{}, nullptr, nullptr, reinterpret_cast<ElementD**>(arrays.d_pointers), d_strides(arrays)},
        hardware};
    arguments.epilogue.thread.alpha = 1.0f;
    arguments.epilogue.thread.beta = 0.0f;
    if (kFewRows && sm90_few_rows_along_n()) {  // sm90_shape.h
      arguments.scheduler.raster_order = cutlass::gemm::kernel::detail::RasterOrderOptions::AlongN;
    }
    return arguments;
  }

  static StrideD* d_strides(const ListArrays& arrays) {
    if constexpr (kFewRows) {
      return arrays.d_column_strides;
    } else {
      return arrays.d_strides;
    }
  }

  static size_t workspace_bytes(int sm_count) {
    return Gemm::get_workspace_size(arguments(1, ListArrays{}, 0, sm_count));
  }

  static void run(int64_t num_experts, const void* list, void* workspace, int device_index,
                  int sm_count, cudaStream_t stream) {
    const ListArrays arrays = list_arrays(const_cast<void*>(list), num_experts);
    const typename Gemm::Arguments args = arguments(num_experts, arrays, device_index, sm_count);
    Gemm gemm;
    check(gemm.can_implement(args), "can_implement");
    // initialize() encodes placeholder TMA descriptors on the host (the kernel rewrites them per
    // group) and sets the kernel's shared-memory limit; neither touches the stream.
    check(gemm.initialize(args, workspace, stream), "initialize");
    check(gemm.run(stream), "launch");
  }

  static void check(cutlass::Status status, const char* step) {
    IRONMOE_CHECK(status == cutlass::Status::kSuccess, "experts", "Hopper FP8 grouped GEMM: ", step,
                  " failed: ", cutlass::cutlassGetStatusString(status));
  }
};

}  // namespace ironmoe::cuda::gemm::sm90_fp8
