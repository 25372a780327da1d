// Stage 4 on CUDA: the expert MLPs over the permuted rows (include/ironmoe/experts.h).
//
// Three kernel families, chosen by one table (choose_path) unless the caller forces one
// (ExpertArgs::kernel):
//  weight_stream  few rows per expert (decode): CUDA-core kernels that stream each expert's
//                 weights once per 8 rows at full bandwidth, activation fused, fp32 gate and up
//                 (gemm/weight_stream.h). Chosen by weight_stream_preferred (measured table).
//  grouped_gemm   bf16 on a Hopper GPU with TMA-compatible operands (H and I multiples of 8,
//                 16-byte aligned buffers), in the tile shape of the rows per expert
//                 (gemm::sm90_bf16_shape_for): write both GEMMs' device-side problem lists (one
//                 launch), GEMM1 x @ w13^T -> gate_up [R, 2I] (bf16, in scratch), h = act(gate) *
//                 up -> intermediate, GEMM2 h @ w2^T -> permuted_out. gate and up are rounded to
//                 bf16 before the activation (one extra rounding the CPU backend does not do).
//  cuda_cores     everything else (f32, bf16/f16 with unaligned shapes or pointers, non-Hopper
//                 GPUs): GEMM1 with the activation fused, then GEMM2, on CUDA cores. Correct for
//                 any shape; not tuned for speed.
// None allocates, synchronises with the host or needs the row counts on the host, so the stage
// can be captured in a CUDA graph. Rows outside every expert's range are neither read nor
// written; ranges that do not fit inside [0, R) are treated as empty (expert_rows.cuh).
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>

#include "core/check.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/device_info.h"
#include "cuda/gemm/expert_rows.h"
#include "cuda/gemm/gated_activation.h"
#include "cuda/gemm/grouped_gemm_simt.h"
#include "cuda/gemm/grouped_gemm_sm90.h"
#include "cuda/gemm/weight_stream.h"

namespace ironmoe::cuda {
namespace {

constexpr size_t kScratchAlignment = 256;

size_t align_up(size_t bytes) {
  return (bytes + kScratchAlignment - 1) / kScratchAlignment * kScratchAlignment;
}

// The sm90 path's scratch: two problem lists, the GEMM workspace and gate_up [max_rows, 2I] bf16,
// each 256-byte aligned, plus slack so that any scratch pointer can be aligned up first.
struct Sm90Scratch {
  size_t gemm1_list = 0;
  size_t gemm2_list = 0;
  size_t workspace = 0;
  size_t workspace_bytes = 0;
  size_t gate_up = 0;
  size_t total = 0;
};

Sm90Scratch sm90_scratch(int64_t max_rows, int64_t intermediate, int64_t local_experts,
                         int sm_count) {
  Sm90Scratch scratch;
  size_t end = 0;
  auto take = [&](size_t bytes) {
    const size_t offset = end;
    end = align_up(offset + bytes);
    return offset;
  };
  scratch.gemm1_list = take(gemm::sm90_bf16_problem_list_bytes(local_experts));
  scratch.gemm2_list = take(gemm::sm90_bf16_problem_list_bytes(local_experts));
  scratch.workspace_bytes = gemm::sm90_bf16_workspace_bytes(sm_count);
  scratch.workspace = take(scratch.workspace_bytes);
  scratch.gate_up = take(static_cast<size_t>(max_rows) * 2 * intermediate * sizeof(uint16_t));
  scratch.total = end + kScratchAlignment;
  return scratch;
}

// Shapes the Hopper path can take at all (pointers and strides are checked per call).
bool sm90_shapes(DType dtype, int64_t hidden, int64_t intermediate) {
  return dtype == DType::bf16 && hidden % 8 == 0 && intermediate % 8 == 0;
}

// The Hopper GEMMs' tile shape (gemm::sm90_bf16_shape_for), unless IRONMOE_SM90_BF16_SHAPE names
// one (gemm/sm90_shape.h; for A/B measurements of the choice; read at every call, so a test can
// force each shape in one process).
gemm::Sm90Shape sm90_shape(int64_t rows_total, int64_t local_experts) {
  return gemm::sm90_shape_named(std::getenv("IRONMOE_SM90_BF16_SHAPE"),
                                gemm::sm90_bf16_shape_for(rows_total, local_experts));
}

constexpr const char* kKernelArgument = "kernel (config.expert_kernel)";

ExpertKernel choose_path(ExpertKernel requested, bool sm90_ok, bool stream_ok, int64_t rows_total,
                         int64_t local_experts, int64_t hidden, bool fast_memory) {
  switch (requested) {
    case ExpertKernel::automatic:
      if (stream_ok &&
          gemm::weight_stream_preferred(rows_total, local_experts, hidden, fast_memory)) {
        return ExpertKernel::weight_stream;
      }
      return sm90_ok ? ExpertKernel::grouped_gemm : ExpertKernel::cuda_cores;
    case ExpertKernel::grouped_gemm:
      IRONMOE_CHECK(sm90_ok, "experts", kKernelArgument, ": grouped_gemm needs bf16 on an sm_90 ",
                    "GPU with H and I multiples of 8 and 16-byte aligned buffers and strides");
      return requested;
    case ExpertKernel::weight_stream:
      IRONMOE_CHECK(stream_ok, "experts", kKernelArgument, ": weight_stream needs bf16 or f16 ",
                    "with H and I multiples of 8, 16-byte aligned buffers and strides and at most ",
                    gemm::kWeightStreamMaxExperts, " local experts");
      return requested;
    case ExpertKernel::cuda_cores: return requested;
  }
  core::fail("experts", kKernelArgument, ": expected automatic, grouped_gemm, weight_stream or ",
             "cuda_cores, got ", static_cast<int>(requested));
}

void run_simt(const gemm::ExpertRows& rows, const ExpertArgs& args, int64_t hidden,
              int64_t intermediate, cudaStream_t stream) {
  gemm::SimtGemmArgs gemm1;
  gemm1.a = args.permuted_in.data;
  gemm1.a_stride = args.permuted_in.strides[0];
  gemm1.b = args.w13.data;
  gemm1.b_expert_stride = args.w13.strides[0];
  gemm1.d = args.intermediate.data;
  gemm1.d_stride = args.intermediate.strides[0];
  gemm1.n = intermediate;
  gemm1.k = hidden;
  gemm1.dtype = args.permuted_in.dtype;
  gemm1.gated = true;
  gemm1.activation = args.activation;
  if (args.phase != ExpertPhase::down) gemm::grouped_gemm_simt(rows, gemm1, stream);
  if (args.phase == ExpertPhase::gate_up) return;

  gemm::SimtGemmArgs gemm2;
  gemm2.a = args.intermediate.data;
  gemm2.a_stride = args.intermediate.strides[0];
  gemm2.b = args.w2.data;
  gemm2.b_expert_stride = args.w2.strides[0];
  gemm2.d = args.permuted_out.data;
  gemm2.d_stride = args.permuted_out.strides[0];
  gemm2.n = hidden;
  gemm2.k = intermediate;
  gemm2.dtype = args.permuted_in.dtype;
  gemm::grouped_gemm_simt(rows, gemm2, stream);
}

}  // namespace

size_t expert_scratch_bytes(int64_t max_rows, int64_t hidden, int64_t intermediate,
                            int64_t num_local_experts, DType dtype, int device_index) {
  if (max_rows == 0 || num_local_experts == 0 || !sm90_shapes(dtype, hidden, intermediate)) {
    return 0;  // nothing to run, or the simt path, which needs no scratch
  }
  return sm90_scratch(max_rows, intermediate, num_local_experts, sm_count(device_index)).total;
}

void experts(const ExpertArgs& args, void* stream_handle) {
  const cudaStream_t stream = as_cuda_stream(stream_handle);
  const int64_t rows_total = args.permuted_in.size(0);
  const int64_t hidden = args.permuted_in.size(1);
  const int64_t local_experts = args.w13.size(0);
  const int64_t intermediate = args.w13.size(1) / 2;
  if (args.quant != QuantScheme::none) {
    experts_fp8(args, stream_handle);
    return;
  }
  if (rows_total == 0 || local_experts == 0) return;  // no row can belong to an expert
  const DType dtype = args.permuted_in.dtype;
  const int device_index = args.permuted_in.device.index;
  const gemm::ExpertRows rows{args.expert_offsets.ptr<const int32_t>(),
                              args.expert_counts.ptr<const int32_t>(), local_experts, rows_total};

  // The scratch pointer may have any alignment: the layout carries slack to align it up.
  const bool hopper_shapes = sm90_shapes(dtype, hidden, intermediate);
  const int sms = hopper_shapes ? sm_count(device_index) : 0;
  const Sm90Scratch layout =
      hopper_shapes ? sm90_scratch(rows_total, intermediate, local_experts, sms) : Sm90Scratch{};
  const auto scratch_address = reinterpret_cast<uintptr_t>(args.scratch);
  auto* scratch = reinterpret_cast<char*>(align_up(scratch_address));
  const bool scratch_fits = args.scratch != nullptr && args.scratch_bytes >= layout.total;

  gemm::Sm90GemmOperands gemm1;
  gemm1.a = args.permuted_in.data;
  gemm1.a_stride = args.permuted_in.strides[0];
  gemm1.b = args.w13.data;
  gemm1.b_expert_stride = args.w13.strides[0];
  // Without enough scratch gate_up stays null; the sm90 path then stops at the scratch check below
  // rather than falling back silently.
  gemm1.d = scratch_fits ? scratch + layout.gate_up : nullptr;
  gemm1.d_stride = 2 * intermediate;
  gemm1.n = 2 * intermediate;
  gemm1.k = hidden;
  gemm::Sm90GemmOperands gemm2;
  gemm2.a = args.intermediate.data;
  gemm2.a_stride = args.intermediate.strides[0];
  gemm2.b = args.w2.data;
  gemm2.b_expert_stride = args.w2.strides[0];
  gemm2.d = args.permuted_out.data;
  gemm2.d_stride = args.permuted_out.strides[0];
  gemm2.n = hidden;
  gemm2.k = intermediate;

  gemm::WeightStreamArgs streamed;
  streamed.a = args.permuted_in.data;
  streamed.a_stride = args.permuted_in.strides[0];
  streamed.w13 = args.w13.data;
  streamed.w13_expert_stride = args.w13.strides[0];
  streamed.h = args.intermediate.data;
  streamed.h_stride = args.intermediate.strides[0];
  streamed.w2 = args.w2.data;
  streamed.w2_expert_stride = args.w2.strides[0];
  streamed.out = args.permuted_out.data;
  streamed.out_stride = args.permuted_out.strides[0];
  streamed.hidden = hidden;
  streamed.intermediate = intermediate;
  streamed.dtype = dtype;
  streamed.activation = args.activation;

  const bool sm90_ok = hopper_shapes && is_sm90(device_index) && gemm::sm90_bf16_supports(gemm1) &&
                       gemm::sm90_bf16_supports(gemm2);
  const bool stream_ok = gemm::weight_stream_supports(streamed, local_experts);
  switch (choose_path(args.kernel, sm90_ok, stream_ok, rows_total, local_experts, hidden,
                      gemm::has_fast_memory(device_index))) {
    case ExpertKernel::weight_stream:
      gemm::weight_stream_experts(rows, streamed, args.phase, stream);
      return;
    case ExpertKernel::cuda_cores: run_simt(rows, args, hidden, intermediate, stream); return;
    default: break;  // grouped_gemm, below
  }
  IRONMOE_CHECK(scratch_fits, "experts", "scratch: expected at least ", layout.total,
                " bytes (expert_scratch_bytes), got ", args.scratch_bytes, " at ", args.scratch);

  void* lists[2] = {scratch + layout.gemm1_list, scratch + layout.gemm2_list};
  const gemm::Sm90GemmOperands operands[2] = {gemm1, gemm2};
  const gemm::Sm90Shape shape = sm90_shape(rows_total, local_experts);
  gemm::sm90_bf16_write_problem_lists(shape, rows, operands, lists, 2, scratch + layout.workspace,
                                      layout.workspace_bytes, stream);
  if (args.phase != ExpertPhase::down) {
    gemm::sm90_bf16_grouped_gemm(shape, local_experts, lists[0], scratch + layout.workspace,
                                 device_index, sms, stream);
    gemm::GatedActivationArgs activation;
    activation.gate_up = gemm1.d;
    activation.gate_up_stride = gemm1.d_stride;
    activation.out = args.intermediate.data;
    activation.out_stride = args.intermediate.strides[0];
    activation.intermediate = intermediate;
    activation.dtype = dtype;
    activation.activation = args.activation;
    gemm::gated_activation(rows, activation, stream);
  }
  if (args.phase == ExpertPhase::gate_up) return;
  gemm::sm90_bf16_grouped_gemm(shape, local_experts, lists[1], scratch + layout.workspace,
                               device_index, sms, stream);
}

}  // namespace ironmoe::cuda
