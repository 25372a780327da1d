#pragma once
// The Hopper bf16 grouped GEMM (grouped_gemm_sm90.h) in its two shapes: CUTLASS 4's ptr-array
// grouped kernel (TMA + wgmma, warp specialized, cooperative: two consumer warp groups share one
// output tile, a producer warp group feeds them through a shared-memory pipeline, and a
// persistent scheduler walks the tiles of all groups), plus the small kernel that writes its
// device-side problem list.
//
// wide (kFewRows false): d = a @ B_e^T with tiles of 128 expert rows x 256 columns x 64, 1x1
// cluster, chosen on an H100 over qwen3-30b-a3b shapes (16 to 16384 tokens, k = 8): it matches
// 128x128x64 (cooperative) and 64x128x64 (ping-pong) within ~5% up to 1024 tokens, where the GEMMs
// stream weights at ~2.7 TB/s, and beats them by 20-40% from 4096 tokens on; a 2x1 cluster lost
// 30-50% everywhere (each group's M tiles are rounded up to the cluster, which costs whole empty
// tiles when experts have few rows). A ping-pong 128x128x64 configuration (one consumer warp group
// per tile, epilogues overlapping the other group's main loop) lost too, on 2026-11-24 for GEMM2
// alone (short K = I) by 0-35% and for both GEMMs by up to 3x from 1024 tokens on, every preset.
//
// few_rows (kFewRows true): the operands swapped, d^T = B_e @ a^T, so the weights are the
// 128-row side of a tile and the expert's rows its 32-wide side: where an expert has a few rows
// (decode to a few hundred tokens over many experts) a 128-row tile of the wide kernel is mostly
// empty and its tensor-core work, not the weight stream, sets the time. d is the same row-major
// [R, N] buffer, written as the column-major N x rows result.
//
// Included by exactly one translation unit per shape (each a heavy instantiation, ~60-90 s and
// 3-5 GB to compile).
#include <cuda_bf16.h>

#include <climits>
#include <type_traits>

#include "core/check.h"
#include "cuda/cuda_check.h"
#include "cuda/gemm/expert_rows.cuh"
#include "cuda/gemm/grouped_gemm_sm90.h"
#include "cuda/gemm/sm90_shape.h"
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/operations.hpp"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/dispatch_policy.hpp"
#include "cutlass/gemm/group_array_problem_shape.hpp"
#include "cutlass/gemm/kernel/gemm_universal.hpp"

namespace ironmoe::cuda::gemm::sm90_bf16 {

using Element = cutlass::bfloat16_t;
using Accumulator = float;
inline constexpr int kAlignment =
    8;  // elements per 16 bytes: what TMA needs of pointers and strides
inline constexpr int kMaxGemmsPerWrite = 2;

// The GEMM kernel's workspace, cleared by the problem-list launch (see write_problem_lists_kernel).
struct WorkspaceClear {
  uint4* words = nullptr;  // 16-byte words
  int64_t count = 0;
};

template <bool kFewRows>
struct Sm90Bf16Gemm {
  using TileShape = std::conditional_t<kFewRows, cute::Shape<cute::_128, cute::_32, cute::_64>,
                                       cute::Shape<cute::_128, cute::_256, cute::_64>>;
  using ClusterShape = cute::Shape<cute::_1, cute::_1, cute::_1>;
  using KernelSchedule = cutlass::gemm::KernelPtrArrayTmaWarpSpecializedCooperative;
  using EpilogueSchedule = cutlass::epilogue::PtrArrayTmaWarpSpecializedCooperative;

  using ProblemShape = cutlass::gemm::GroupProblemShape<cute::Shape<int, int, int>>;  // (M, N, K)
  // Both operands are K-major: A [M, K] row-major (the rows, or few_rows' weights [N, K]) and
  // B [N, K] (the weights, or few_rows' rows). d is row-major [R, N] either way, which is
  // few_rows' column-major (N x rows) result.
  using LayoutA = cutlass::layout::RowMajor;
  using LayoutB = cutlass::layout::ColumnMajor;
  using LayoutD =
      std::conditional_t<kFewRows, cutlass::layout::ColumnMajor, cutlass::layout::RowMajor>;

  // D = acc, rounded once to bf16; no C operand (void), so nothing is read besides A and B.
  using CollectiveEpilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      cutlass::epilogue::collective::EpilogueTileAuto, Accumulator, Accumulator, void, LayoutD*,
      kAlignment, Element, LayoutD*, kAlignment, EpilogueSchedule,
      cutlass::epilogue::fusion::LinearCombination<Element, Accumulator, void,
                                                   Accumulator>>::CollectiveOp;

  using CollectiveMainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Element, LayoutA*, kAlignment, Element,
      LayoutB*, kAlignment, Accumulator, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(
          sizeof(typename CollectiveEpilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;

  using GemmKernel =
      cutlass::gemm::kernel::GemmUniversal<ProblemShape, CollectiveMainloop, CollectiveEpilogue>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<GemmKernel>;

  using Shape = typename ProblemShape::UnderlyingProblemShape;
  using StrideA = typename GemmKernel::InternalStrideA;
  using StrideB = typename GemmKernel::InternalStrideB;
  using StrideD = typename GemmKernel::InternalStrideD;

  // Where each array of one problem list lies, 16-byte aligned, for `num_experts` groups.
  struct ListLayout {
    size_t shapes = 0, a_pointers = 0, b_pointers = 0, d_pointers = 0;
    size_t a_strides = 0, b_strides = 0, d_strides = 0, total = 0;
  };

  static ListLayout list_layout(int64_t num_experts) {
    const auto count = static_cast<size_t>(num_experts);
    size_t end = 0;
    auto take = [&](size_t bytes) {
      const size_t offset = end;
      end = (offset + bytes + 15) / 16 * 16;
      return offset;
    };
    ListLayout layout;
    layout.shapes = take(count * sizeof(Shape));
    layout.a_pointers = take(count * sizeof(const Element*));
    layout.b_pointers = take(count * sizeof(const Element*));
    layout.d_pointers = take(count * sizeof(Element*));
    layout.a_strides = take(count * sizeof(StrideA));
    layout.b_strides = take(count * sizeof(StrideB));
    layout.d_strides = take(count * sizeof(StrideD));
    layout.total = end;
    return layout;
  }

  // Typed views of one problem list.
  struct ListArrays {
    Shape* shapes = nullptr;
    const Element** a_pointers = nullptr;
    const Element** b_pointers = nullptr;
    Element** d_pointers = nullptr;
    StrideA* a_strides = nullptr;
    StrideB* b_strides = nullptr;
    StrideD* d_strides = nullptr;
  };

  static ListArrays list_arrays(void* list, int64_t num_experts) {
    const ListLayout layout = list_layout(num_experts);
    auto* base = static_cast<char*>(list);
    return {reinterpret_cast<Shape*>(base + layout.shapes),
            reinterpret_cast<const Element**>(base + layout.a_pointers),
            reinterpret_cast<const Element**>(base + layout.b_pointers),
            reinterpret_cast<Element**>(base + layout.d_pointers),
            reinterpret_cast<StrideA*>(base + layout.a_strides),
            reinterpret_cast<StrideB*>(base + layout.b_strides),
            reinterpret_cast<StrideD*>(base + layout.d_strides)};
  }

  struct ListWrite {
    Sm90GemmOperands operands;
    ListArrays arrays;
  };

  struct ListWrites {
    ListWrite gemms[kMaxGemmsPerWrite];
  };

  // One expert's problem: an empty or invalid range becomes a problem with no rows, which the
  // scheduler gives no tiles, so its pointers are never dereferenced.
  __device__ static void write_problem(const ListWrite& write, const RowRange& range,
                                       int64_t expert) {
    const Sm90GemmOperands& op = write.operands;
    const auto* rows = static_cast<const Element*>(op.a) + range.begin * op.a_stride;
    const auto* weights = static_cast<const Element*>(op.b) + expert * op.b_expert_stride;
    const ListArrays& arrays = write.arrays;
    const auto count = static_cast<int>(range.count);
    const auto n = static_cast<int>(op.n);
    const auto k = static_cast<int>(op.k);
    arrays.d_pointers[expert] = static_cast<Element*>(op.d) + range.begin * op.d_stride;
    if constexpr (kFewRows) {
      arrays.shapes[expert] = Shape{n, count, k};
      arrays.a_pointers[expert] = weights;
      arrays.b_pointers[expert] = rows;
      arrays.a_strides[expert] = cute::make_stride(op.k, cute::_1{}, cute::_0{});
      arrays.b_strides[expert] = cute::make_stride(op.a_stride, cute::_1{}, cute::_0{});
      arrays.d_strides[expert] = cute::make_stride(cute::_1{}, op.d_stride, cute::_0{});
    } else {
      arrays.shapes[expert] = Shape{count, n, k};
      arrays.a_pointers[expert] = rows;
      arrays.b_pointers[expert] = weights;
      arrays.a_strides[expert] = cute::make_stride(op.a_stride, cute::_1{}, cute::_0{});
      arrays.b_strides[expert] = cute::make_stride(op.k, cute::_1{}, cute::_0{});
      arrays.d_strides[expert] = cute::make_stride(op.d_stride, cute::_1{}, cute::_0{});
    }
  }

  static typename Gemm::Arguments gemm_arguments(int64_t num_experts, const ListArrays& arrays,
                                                 int device_index, int sm_count) {
    cutlass::KernelHardwareInfo hardware;
    hardware.device_id = device_index;
    hardware.sm_count = sm_count;
    typename Gemm::Arguments arguments{
        cutlass::gemm::GemmUniversalMode::kGrouped,
        // No host copy of the shapes: the scheduler reads them on the device.
        {static_cast<int>(num_experts), arrays.shapes, nullptr},
        {arrays.a_pointers, arrays.a_strides, arrays.b_pointers, arrays.b_strides},
        {{}, nullptr, nullptr, arrays.d_pointers, arrays.d_strides},
        hardware};
    arguments.epilogue.thread.alpha = 1.0f;
    arguments.epilogue.thread.beta = 0.0f;
    if (kFewRows && sm90_few_rows_along_n()) {  // sm90_shape.h
      arguments.scheduler.raster_order = cutlass::gemm::kernel::detail::RasterOrderOptions::AlongN;
    }
    return arguments;
  }

  static void check_status(cutlass::Status status, const char* step) {
    IRONMOE_CHECK(status == cutlass::Status::kSuccess, "experts", "Hopper grouped GEMM: ", step,
                  " failed: ", cutlass::cutlassGetStatusString(status));
  }

  static size_t problem_list_bytes(int64_t num_experts) { return list_layout(num_experts).total; }

  static size_t workspace_bytes(int sm_count) {
    // The workspace depends on the SM count only (a descriptor set per SM), not on the problems.
    return Gemm::get_workspace_size(gemm_arguments(1, ListArrays{}, 0, sm_count));
  }

  static void write_problem_lists(const ExpertRows& rows, const Sm90GemmOperands* gemms,
                                  void* const* lists, int count, void* workspace,
                                  size_t workspace_bytes, cudaStream_t stream);

  static void run(int64_t num_experts, const void* list, void* workspace, int device_index,
                  int sm_count, cudaStream_t stream) {
    if (num_experts == 0) return;
    const ListArrays arrays = list_arrays(const_cast<void*>(list), num_experts);
    const typename Gemm::Arguments arguments =
        gemm_arguments(num_experts, arrays, device_index, sm_count);
    Gemm gemm;
    check_status(gemm.can_implement(arguments), "can_implement");
    // initialize() encodes the TMA descriptors on the host (placeholders the kernel rewrites per
    // group) and sets the kernel's shared-memory limit; neither touches the stream.
    check_status(gemm.initialize(arguments, workspace, stream), "initialize");
    check_status(gemm.run(stream), "launch");
  }
};

// Grid row y < number of GEMMs: one thread per (expert, GEMM).
// The last grid row zeroes the GEMM kernel's workspace. The kernel builds its per-SM TMA
// descriptors there with tensormap.cp_fenceproxy, which compute-sanitizer's initcheck counts as a
// read of the global destination; the descriptors are rebuilt by every launch, so clearing the
// bytes first changes nothing but lets initcheck tell real uninitialised reads from this one.
template <bool kFewRows>
__global__ void write_problem_lists_kernel(ExpertRows rows,
                                           typename Sm90Bf16Gemm<kFewRows>::ListWrites writes,
                                           WorkspaceClear clear) {
  if (blockIdx.y == gridDim.y - 1) {
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < clear.count;
         i += stride) {
      clear.words[i] = make_uint4(0, 0, 0, 0);
    }
    return;
  }
  const int64_t expert = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (expert >= rows.num_experts) return;
  Sm90Bf16Gemm<kFewRows>::write_problem(writes.gemms[blockIdx.y], expert_row_range(rows, expert),
                                        expert);
}

template <bool kFewRows>
void Sm90Bf16Gemm<kFewRows>::write_problem_lists(const ExpertRows& rows,
                                                 const Sm90GemmOperands* gemms, void* const* lists,
                                                 int count, void* workspace, size_t workspace_bytes,
                                                 cudaStream_t stream) {
  IRONMOE_CHECK(count >= 1 && count <= kMaxGemmsPerWrite, "experts",
                "internal: expected 1 or 2 problem lists, got ", count);
  IRONMOE_CHECK(reinterpret_cast<uintptr_t>(workspace) % 16 == 0 && workspace_bytes % 16 == 0,
                "experts", "internal: GEMM workspace must be 16-byte aligned and sized, got ",
                workspace, " and ", workspace_bytes, " bytes");
  if (rows.num_experts == 0) return;
  ListWrites writes{};
  for (int i = 0; i < count; ++i) {
    writes.gemms[i] = {gemms[i], list_arrays(lists[i], rows.num_experts)};
  }
  const WorkspaceClear clear{static_cast<uint4*>(workspace),
                             static_cast<int64_t>(workspace_bytes / sizeof(uint4))};
  constexpr int kThreads = 128;
  constexpr int64_t kClearBlocks = 32;  // ~80 KB of descriptors: a few stores per thread
  const int64_t expert_blocks = (rows.num_experts + kThreads - 1) / kThreads;
  const dim3 grid(
      static_cast<unsigned>(expert_blocks > kClearBlocks ? expert_blocks : kClearBlocks),
      static_cast<unsigned>(count + 1));
  write_problem_lists_kernel<kFewRows><<<grid, kThreads, 0, stream>>>(rows, writes, clear);
  IRONMOE_CUDA_CHECK_LAUNCH(stream);
}

}  // namespace ironmoe::cuda::gemm::sm90_bf16
