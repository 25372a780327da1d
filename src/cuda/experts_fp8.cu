// Stage 4 on CUDA with FP8 experts (ExpertArgs::quant != none), in the CPU backend's steps
// (cpu/experts_fp8.cpp): quantise GEMM1's input rows (read from permuted_in, or from the tokens
// through row_to_slot with ExpertArgs::gathered; per-tensor: an amax pass first unless a static
// scale is given), GEMM1 and the activation, quantise h, GEMM2 into permuted_out. Three
// GEMM families on E4M3 codes and scales:
//   hopper         (gemm/grouped_gemm_sm90_fp8.h) E4M3 tensor cores, bf16 activations with H and I
//                  multiples of 16, every scheme: GEMM1 into an fp32 gate_up buffer, whose
//                  act(gate) * up is quantised straight into GEMM2's codes (one kernel; bf16 gate
//                  and up moved h across E4M3 rounding boundaries often enough to put 10-15% of
//                  the rows 2-9% away from the CPU backend, measured on an H100). The scales go
//                  in the GEMM's layout (1 x 128 activations, 128 x 128 weights): fp8_block's as
//                  they are; fp8_tensor's weight scale folded into each expert's activation
//                  scales; fp8_channel's weight scales, which have no such form, applied after
//                  each GEMM (to gate and up when h is formed, to GEMM2's bf16 output in place);
//   weight_stream  (gemm/weight_stream_fp8.h) up to kFp8StreamMaxRows rows: each weight byte
//                  read once per 2 rows of its expert, at memory speed; h in fp32;
//   cuda_cores     (gemm/grouped_gemm_simt.h) every shape: correct, not fast.
// Every buffer is carved from the scratch (core::fp8_scratch, or the Hopper path's own layout);
// nothing syncs with the host.
#include <algorithm>
#include <cstdlib>

#include "core/check.h"
#include "core/fp8_scales.h"
#include "core/fp8_scratch.h"
#include "cuda/cuda_backend.h"
#include "cuda/cuda_check.h"
#include "cuda/device_info.h"
#include "cuda/fp8_quantize.h"
#include "cuda/gemm/grouped_gemm_simt.h"
#include "cuda/gemm/grouped_gemm_sm90_fp8.h"
#include "cuda/gemm/scale_columns.h"
#include "cuda/gemm/weight_stream.h"
#include "cuda/gemm/weight_stream_fp8.h"

namespace ironmoe::cuda {
namespace {

// Up to this many permuted rows the streaming kernels run when the Hopper GEMM cannot.
// Measured on an H100 against the CUDA-core GEMM (docs/performance.md, qwen3-30b-a3b): streaming
// is 4.5-18x faster from 8 to 512 rows and 2.4-3.4x at 2048 (256 tokens).
constexpr int64_t kFp8StreamMaxRows = 2048;
// From this many permuted rows on the Hopper GEMM runs where it can (docs/performance.md,
// "FP8 tensor cores").
constexpr int64_t kFp8HopperMinRows = 128;

enum class Fp8Path { hopper, weight_stream, cuda_cores };

// hopper_refusal: why the Hopper path cannot take the call, null when it can.
Fp8Path choose_fp8_path(ExpertKernel kernel, const char* hopper_refusal, bool stream_ok,
                        int64_t rows) {
  const bool hopper_ok = hopper_refusal == nullptr;
  switch (kernel) {
    case ExpertKernel::automatic:
      if (hopper_ok && rows >= kFp8HopperMinRows) return Fp8Path::hopper;
      if (stream_ok && rows <= kFp8StreamMaxRows) return Fp8Path::weight_stream;
      return hopper_ok ? Fp8Path::hopper : Fp8Path::cuda_cores;
    case ExpertKernel::grouped_gemm:
      IRONMOE_CHECK(hopper_ok, "experts", "kernel (config.expert_kernel): the FP8 grouped_gemm ",
                    "needs ", hopper_refusal);
      return Fp8Path::hopper;
    case ExpertKernel::weight_stream:
      IRONMOE_CHECK(stream_ok, "experts", "kernel (config.expert_kernel): FP8 weight_stream ",
                    "needs H and I multiples of 16, 16-byte aligned weights and at most ",
                    gemm::kWeightStreamMaxExperts, " local experts");
      return Fp8Path::weight_stream;
    case ExpertKernel::cuda_cores: return Fp8Path::cuda_cores;
  }
  core::fail("experts", "kernel (config.expert_kernel): expected automatic, grouped_gemm, ",
             "weight_stream or cuda_cores, got ", static_cast<int>(kernel));
}

// Shapes and schemes the Hopper path can take at all (pointers and strides are checked per call).
bool hopper_shapes(DType dtype, QuantScheme quant, int64_t hidden, int64_t intermediate) {
  return dtype == DType::bf16 && quant != QuantScheme::none && hidden % 16 == 0 &&
         intermediate % 16 == 0;
}

// The Hopper path's own layout of the scratch (in place of core::fp8_scratch's, which the other
// paths use): both GEMM inputs' codes, the per-tensor scales, gate_up [R, 2I] f32, both inputs'
// scales in the GEMM's layout, the unit weight scales of the schemes without block scales, two
// problem lists and the GEMM workspace, each 256-byte aligned.
struct HopperScratch {
  size_t a_codes = 0, h_codes = 0, tensor_scales = 0, gate_up = 0, a_scales = 0, h_scales = 0,
         ones = 0, gemm1_list = 0, gemm2_list = 0, workspace = 0;
  size_t workspace_bytes = 0;
  int64_t ones_count = 0;
  size_t total = 0;
};

HopperScratch hopper_scratch(int64_t rows, int64_t hidden, int64_t intermediate,
                             int64_t local_experts, int sms) {
  constexpr size_t kAlign = 256;
  size_t end = 0;
  auto take = [&](size_t bytes) {
    const size_t offset = end;
    end = (offset + bytes + kAlign - 1) / kAlign * kAlign;
    return offset;
  };
  const int64_t h_blocks = core::fp8_blocks(hidden);
  const int64_t i_blocks = core::fp8_blocks(intermediate);
  HopperScratch s;
  s.a_codes = take(static_cast<size_t>(rows * hidden));
  s.h_codes = take(static_cast<size_t>(rows * intermediate));
  s.tensor_scales = take(2 * sizeof(float));
  s.gate_up = take(static_cast<size_t>(rows * 2 * intermediate) * sizeof(float));
  s.a_scales = take(static_cast<size_t>(rows * h_blocks) * sizeof(float));
  s.h_scales = take(static_cast<size_t>(rows * i_blocks) * sizeof(float));
  s.ones_count = std::max(core::fp8_blocks(2 * intermediate) * h_blocks, h_blocks * i_blocks);
  s.ones = take(static_cast<size_t>(s.ones_count) * sizeof(float));
  s.gemm1_list = take(gemm::sm90_fp8_problem_list_bytes(local_experts));
  s.gemm2_list = take(gemm::sm90_fp8_problem_list_bytes(local_experts));
  s.workspace_bytes = gemm::sm90_fp8_workspace_bytes(sms);
  s.workspace = take(s.workspace_bytes);
  s.total = end;
  return s;
}

// Quantises the experts' rows of `source` into codes and scales; fp8_tensor uses `given` or,
// when null, a dynamic scale computed into `dynamic`. Returns the tensor scale (null for the
// other schemes).
const float* quantize_input(const gemm::ExpertRows& rows, const Fp8RowSource& source,
                            QuantScheme quant, const float* given, float* dynamic, uint8_t* codes,
                            const Fp8ScaleTarget& scales, cudaStream_t stream) {
  const float* tensor_scale = nullptr;
  if (quant == QuantScheme::fp8_tensor) {
    tensor_scale = given;
    if (tensor_scale == nullptr) {
      fp8_tensor_scale_of_rows(rows, source, dynamic, stream);
      tensor_scale = dynamic;
    }
  }
  fp8_quantize_rows(rows, source, quant, tensor_scale, codes, scales, stream);
  return tensor_scale;
}

// GEMM1's input rows: permuted_in, or the tokens through row_to_slot (ExpertArgs::gathered).
Fp8RowSource gemm1_input(const ExpertArgs& args) {
  const int64_t hidden = args.permuted_in.size(1);
  const GatheredInput& gathered = args.gathered;
  if (!gathered.given()) {
    return {args.permuted_in.data, args.permuted_in.dtype, args.permuted_in.strides[0], hidden};
  }
  Fp8RowSource source{gathered.x.data, gathered.x.dtype, gathered.x.strides[0], hidden};
  source.row_to_slot = gathered.row_to_slot.ptr<const int32_t>();
  source.top_k = gathered.top_k;
  source.slots = gathered.x.size(0) * gathered.top_k;
  return source;
}

// The stage's buffers, carved from the scratch.
struct Fp8Buffers {
  uint8_t* a_codes;
  float* a_scales;
  float* h_values;
  uint8_t* h_codes;
  float* h_scales;
  float* tensor_scales;
};

Fp8Buffers carve(char* scratch, const core::Fp8Scratch& layout) {
  return {reinterpret_cast<uint8_t*>(scratch + layout.a_codes),
          reinterpret_cast<float*>(scratch + layout.a_scales),
          reinterpret_cast<float*>(scratch + layout.h_values),
          reinterpret_cast<uint8_t*>(scratch + layout.h_codes),
          reinterpret_cast<float*>(scratch + layout.h_scales),
          reinterpret_cast<float*>(scratch + layout.tensor_scales)};
}

// GEMM1 with the activation on the non-Hopper paths: fp32 h from the quantised input rows.
gemm::Fp8GemmArgs gate_up_args(const ExpertArgs& args, const Fp8Buffers& buffers,
                               const float* a_tensor_scale) {
  const int64_t hidden = args.permuted_in.size(1);
  const int64_t inter = args.w13.size(1) / 2;
  gemm::Fp8GemmArgs gemm1;
  gemm1.a = buffers.a_codes;
  gemm1.a_scales =
      core::fp8_activation_scale_map(args.quant, buffers.a_scales, a_tensor_scale, hidden);
  gemm1.w = static_cast<const uint8_t*>(args.w13.data);
  gemm1.w_scales = args.w13_scale.ptr<const float>();
  gemm1.quant = args.quant;
  gemm1.out = buffers.h_values;
  gemm1.out_stride = inter;
  gemm1.out_dtype = DType::f32;
  gemm1.n = inter;
  gemm1.k = hidden;
  gemm1.gated = true;
  gemm1.activation = args.activation;
  return gemm1;
}

// The Hopper FP8 GEMMs' tile shape (gemm::sm90_fp8_shape_for), unless IRONMOE_SM90_FP8_SHAPE
// names one (gemm/sm90_shape.h; read at every call, so a test can force each shape in one
// process).
gemm::Sm90Shape fp8_sm90_shape(int64_t rows_total, int64_t local_experts) {
  return gemm::sm90_shape_named(std::getenv("IRONMOE_SM90_FP8_SHAPE"),
                                gemm::sm90_fp8_shape_for(rows_total, local_experts));
}

void run_hopper(const ExpertArgs& args, const gemm::ExpertRows& rows, char* scratch,
                const HopperScratch& layout, const gemm::Sm90Fp8GemmOperands* gemms,
                int device_index, int sms, cudaStream_t stream) {
  const QuantScheme quant = args.quant;
  const bool tensor = quant == QuantScheme::fp8_tensor;
  const bool channel = quant == QuantScheme::fp8_channel;
  auto* tensor_scales = reinterpret_cast<float*>(scratch + layout.tensor_scales);
  auto* a_scales = reinterpret_cast<float*>(scratch + layout.a_scales);
  auto* h_scales = reinterpret_cast<float*>(scratch + layout.h_scales);
  const int64_t hidden = args.permuted_in.size(1);
  const int64_t inter = args.w13.size(1) / 2;

  // Both problem lists (and the unit weight scales of the schemes without block scales), in
  // either phase: a down call alone finds them written.
  void* lists[2] = {scratch + layout.gemm1_list, scratch + layout.gemm2_list};
  const gemm::Sm90Shape shape = fp8_sm90_shape(rows.num_rows, rows.num_experts);
  gemm::sm90_fp8_write_problem_lists(
      shape, rows, gemms, lists, scratch + layout.workspace, layout.workspace_bytes,
      reinterpret_cast<float*>(scratch + layout.ones),
      quant == QuantScheme::fp8_block ? 0 : layout.ones_count, stream);

  if (args.phase != ExpertPhase::down) {
    // 1. GEMM1's input, its scales in the GEMM's layout (fp8_tensor: times w13's expert scale).
    quantize_input(rows, gemm1_input(args), quant, args.w13_input_scale.ptr<const float>(),
                   &tensor_scales[0], reinterpret_cast<uint8_t*>(scratch + layout.a_codes),
                   {nullptr, a_scales, tensor ? args.w13_scale.ptr<const float>() : nullptr},
                   stream);

    // 2. GEMM1 into gate_up.
    gemm::sm90_fp8_grouped_gemm(shape, rows.num_experts, lists[0], DType::f32,
                                scratch + layout.workspace, device_index, sms, stream);

    // 3. act(gate) * up (fp8_channel: gate and up times their weight scales first), quantised
    //    straight from gate_up into GEMM2's codes.
    Fp8RowSource h{scratch + layout.gate_up, DType::f32, 2 * inter, inter};
    h.gated = true;
    h.activation = args.activation;
    h.channel_scales = channel ? args.w13_scale.ptr<const float>() : nullptr;
    quantize_input(rows, h, quant, args.w2_input_scale.ptr<const float>(), &tensor_scales[1],
                   reinterpret_cast<uint8_t*>(scratch + layout.h_codes),
                   {nullptr, h_scales, tensor ? args.w2_scale.ptr<const float>() : nullptr},
                   stream);
  }
  if (args.phase == ExpertPhase::gate_up) return;

  // 4. GEMM2 into permuted_out (fp8_channel: then times w2's channel scales).
  gemm::sm90_fp8_grouped_gemm(shape, rows.num_experts, lists[1], DType::bf16,
                              scratch + layout.workspace, device_index, sms, stream);
  if (channel) {
    gemm::scale_expert_columns(rows, args.permuted_out.data, args.permuted_out.strides[0], hidden,
                               args.w2_scale.ptr<const float>(), stream);
  }
}

// The Hopper path's two GEMMs over the stage's buffers.
void hopper_operands(const ExpertArgs& args, char* scratch, const HopperScratch& layout,
                     gemm::Sm90Fp8GemmOperands* gemms) {
  const bool block = args.quant == QuantScheme::fp8_block;
  const int64_t hidden = args.permuted_in.size(1);
  const int64_t inter = args.w13.size(1) / 2;
  const auto* ones = reinterpret_cast<const float*>(scratch + layout.ones);
  gemm::Sm90Fp8GemmOperands& g1 = gemms[0];
  g1.a = reinterpret_cast<const uint8_t*>(scratch + layout.a_codes);
  g1.a_stride = hidden;
  g1.a_scales = reinterpret_cast<const float*>(scratch + layout.a_scales);
  g1.b = static_cast<const uint8_t*>(args.w13.data);
  g1.b_expert_stride = args.w13.strides[0];
  g1.b_scales = block ? args.w13_scale.ptr<const float>() : ones;
  g1.b_scales_expert_stride = block ? args.w13_scale.strides[0] : 0;
  g1.d = scratch + layout.gate_up;
  g1.d_dtype = DType::f32;
  g1.d_stride = 2 * inter;
  g1.n = 2 * inter;
  g1.k = hidden;
  gemm::Sm90Fp8GemmOperands& g2 = gemms[1];
  g2.a = reinterpret_cast<const uint8_t*>(scratch + layout.h_codes);
  g2.a_stride = inter;
  g2.a_scales = reinterpret_cast<const float*>(scratch + layout.h_scales);
  g2.b = static_cast<const uint8_t*>(args.w2.data);
  g2.b_expert_stride = args.w2.strides[0];
  g2.b_scales = block ? args.w2_scale.ptr<const float>() : ones;
  g2.b_scales_expert_stride = block ? args.w2_scale.strides[0] : 0;
  g2.d = args.permuted_out.data;
  g2.d_dtype = DType::bf16;
  g2.d_stride = args.permuted_out.strides[0];
  g2.n = hidden;
  g2.k = inter;
}

}  // namespace

size_t expert_scratch_bytes_fp8(int64_t max_rows, int64_t hidden, int64_t intermediate,
                                int64_t num_local_experts, DType dtype, QuantScheme quant,
                                int device_index) {
  const size_t base = core::fp8_scratch(quant, max_rows, hidden, intermediate).total_bytes;
  if (max_rows == 0 || num_local_experts == 0 ||
      !hopper_shapes(dtype, quant, hidden, intermediate) || !is_sm90(device_index)) {
    return base;
  }
  const HopperScratch hopper =
      hopper_scratch(max_rows, hidden, intermediate, num_local_experts, sm_count(device_index));
  return std::max(base, hopper.total);
}

void experts_fp8(const ExpertArgs& args, void* stream_handle) {
  const cudaStream_t stream = as_cuda_stream(stream_handle);
  const QuantScheme quant = args.quant;
  const int64_t num_rows = args.permuted_in.size(0);
  const int64_t hidden = args.permuted_in.size(1);
  const int64_t local_experts = args.w13.size(0);
  const int64_t inter = args.w13.size(1) / 2;
  if (num_rows == 0 || local_experts == 0) return;  // no row can belong to an expert
  const DType dtype = args.permuted_in.dtype;
  const int device_index = args.permuted_in.device.index;
  char* scratch = static_cast<char*>(args.scratch);

  // The Hopper path, where it can run, lays the scratch out its own way (HopperScratch).
  const char* hopper_refusal = nullptr;
  int sms = 0;
  HopperScratch hopper;
  gemm::Sm90Fp8GemmOperands gemms[2];
  if (!hopper_shapes(dtype, quant, hidden, inter)) {
    hopper_refusal = "bf16 activations and H and I multiples of 16";
  } else if (!is_sm90(device_index)) {
    hopper_refusal = "an sm_90 GPU";
  } else {
    sms = sm_count(device_index);
    hopper = hopper_scratch(num_rows, hidden, inter, local_experts, sms);
    hopper_operands(args, scratch, hopper, gemms);
    if (args.scratch_bytes < hopper.total) {
      hopper_refusal = "the scratch of expert_scratch_bytes";
    } else if (!gemm::sm90_fp8_supports(gemms[0]) || !gemm::sm90_fp8_supports(gemms[1])) {
      hopper_refusal = "16-byte aligned buffers and row strides";
    }
  }
  const bool stream_ok =
      gemm::stream_fp8_supports(hidden, inter, args.w13.data, args.w2.data, local_experts);
  const Fp8Path path = choose_fp8_path(args.kernel, hopper_refusal, stream_ok, num_rows);
  const gemm::ExpertRows rows{args.expert_offsets.ptr<const int32_t>(),
                              args.expert_counts.ptr<const int32_t>(), local_experts, num_rows};
  if (path == Fp8Path::hopper) {
    run_hopper(args, rows, scratch, hopper, gemms, device_index, sms, stream);
    return;
  }
  const Fp8Buffers buffers = carve(scratch, core::fp8_scratch(quant, num_rows, hidden, inter));
  const auto run = [&](const gemm::Fp8GemmArgs& gemm_args) {
    if (path == Fp8Path::weight_stream) {
      gemm::stream_fp8_gemm(rows, gemm_args, stream);
    } else {
      gemm::grouped_gemm_simt_fp8(rows, gemm_args, stream);
    }
  };

  if (args.phase != ExpertPhase::down) {
    // 1. GEMM1's input, then 2. GEMM1 + activation into fp32 h.
    const float* a_tensor_scale =
        quantize_input(rows, gemm1_input(args), quant, args.w13_input_scale.ptr<const float>(),
                       &buffers.tensor_scales[0], buffers.a_codes, {buffers.a_scales}, stream);
    run(gate_up_args(args, buffers, a_tensor_scale));
  }
  if (args.phase == ExpertPhase::gate_up) return;

  // 3. GEMM2's input, from fp32.
  const float* h_tensor_scale =
      quantize_input(rows, {buffers.h_values, DType::f32, inter, inter}, quant,
                     args.w2_input_scale.ptr<const float>(), &buffers.tensor_scales[1],
                     buffers.h_codes, {buffers.h_scales}, stream);

  // 4. GEMM2 into permuted_out.
  gemm::Fp8GemmArgs gemm2;
  gemm2.a = buffers.h_codes;
  gemm2.a_scales = core::fp8_activation_scale_map(quant, buffers.h_scales, h_tensor_scale, inter);
  gemm2.w = static_cast<const uint8_t*>(args.w2.data);
  gemm2.w_scales = args.w2_scale.ptr<const float>();
  gemm2.quant = quant;
  gemm2.out = args.permuted_out.data;
  gemm2.out_stride = args.permuted_out.strides[0];
  gemm2.out_dtype = dtype;
  gemm2.n = hidden;
  gemm2.k = inter;
  run(gemm2);
}

void fp8_input_scale(const Fp8InputScaleArgs& args, void* stream_handle) {
  fp8_tensor_scale_of_tokens(args.x.data, args.x.dtype, args.x.strides[0], args.x.size(0),
                             args.x.size(1), args.num_valid_tokens, args.scale.ptr<float>(),
                             as_cuda_stream(stream_handle));
}

}  // namespace ironmoe::cuda
