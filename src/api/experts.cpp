// ironmoe::experts and expert_scratch_bytes: validate on the host, then run the stream's backend.
#include "ironmoe/experts.h"

#include "api/validate.h"
#include "core/fp8_scratch.h"
#include "cpu/cpu_backend.h"
#include "cuda/cuda_backend.h"

namespace ironmoe {

size_t expert_scratch_bytes(int64_t max_rows, int64_t hidden, int64_t intermediate,
                            int64_t num_local_experts, DType dtype, Device device,
                            QuantScheme quant) {
  const char* where = "expert_scratch_bytes";
  IRONMOE_CHECK(max_rows >= 0 && max_rows <= api::kMaxIndex, where,
                "max_rows: expected a value in [0, ", api::kMaxIndex, "], got ", max_rows);
  IRONMOE_CHECK(hidden >= 1 && hidden <= api::kMaxDimension, where,
                "hidden: expected a value in [1, ", api::kMaxDimension, "], got ", hidden);
  IRONMOE_CHECK(intermediate >= 1 && intermediate <= api::kMaxDimension, where,
                "intermediate: expected a value in [1, ", api::kMaxDimension, "], got ",
                intermediate);
  IRONMOE_CHECK(num_local_experts >= 0 && num_local_experts <= api::kMaxIndex, where,
                "num_local_experts: expected a value in [0, ", api::kMaxIndex, "], got ",
                num_local_experts);
  api::check_float_dtype(where, "dtype", dtype, device);
  api::check_quant_scheme(where, quant);
  if (quant != QuantScheme::none) {
    if (device.is_cpu()) return core::fp8_scratch(quant, max_rows, hidden, intermediate).total_bytes;
    return cuda::expert_scratch_bytes_fp8(max_rows, hidden, intermediate, num_local_experts, dtype,
                                          quant, device.index);
  }
  if (device.is_cpu()) return 0;  // the CPU stage keeps its fp32 tiles on the stack
  return cuda::expert_scratch_bytes(max_rows, hidden, intermediate, num_local_experts, dtype,
                                    device.index);
}

namespace {

// The gathered input (ExpertArgs::gathered) against the stage's R, H and dtype.
void check_gathered_input(const char* where, const GatheredInput& gathered, QuantScheme quant,
                          DType dtype, int64_t rows, int64_t hidden, Device device) {
  IRONMOE_CHECK(quant != QuantScheme::none, where, "gathered: only FP8 experts (quant != none) ",
                "read their input rows from x; bf16 experts read permuted_in (run gather first)");
  IRONMOE_CHECK(api::present(gathered.x) && api::present(gathered.row_to_slot), where,
                "gathered: expected both x and row_to_slot, got only ",
                api::present(gathered.x) ? "x" : "row_to_slot");
  check_tensor(where, "gathered.x", gathered.x, {dtype, {-1, hidden}, true}, device);
  api::check_top_k(where, "gathered.top_k", gathered.top_k);
  const int64_t tokens = gathered.x.size(0);
  IRONMOE_CHECK(tokens <= api::kMaxIndex / gathered.top_k, where,
                "gathered.x: T * top_k must fit int32, got T = ", tokens,
                ", top_k = ", gathered.top_k);
  check_tensor(where, "gathered.row_to_slot", gathered.row_to_slot, {DType::i32, {rows}}, device);
}

}  // namespace

void experts(const ExpertArgs& args, const Stream& stream) {
  const char* where = "experts";
  api::check_stream(where, stream);
  const Device device = stream.device;

  IRONMOE_CHECK(api::present(args.permuted_in), where, "permuted_in: expected an [R, H] tensor, ",
                "got none");
  const DType dtype = args.permuted_in.dtype;
  api::check_float_dtype(where, "permuted_in", dtype, device);
  check_tensor(where, "permuted_in", args.permuted_in, {dtype, {-1, -1}}, device);
  const bool gathered = args.gathered.given();
  const int64_t rows = args.permuted_in.size(0);
  const int64_t hidden = args.permuted_in.size(1);
  IRONMOE_CHECK(rows <= api::kMaxIndex, where, "permuted_in: expected at most ", api::kMaxIndex,
                " rows, got ", rows);
  IRONMOE_CHECK(hidden >= 1 && hidden <= api::kMaxDimension, where,
                "permuted_in: expected H in [1, ", api::kMaxDimension, "] columns, got ", hidden);

  api::check_quant_scheme(where, args.quant);
  if (gathered) check_gathered_input(where, args.gathered, args.quant, dtype, rows, hidden, device);
  const DType weight_dtype = args.quant == QuantScheme::none ? dtype : DType::f8e4m3;
  IRONMOE_CHECK(api::present(args.w13), where, "w13: expected an [E_local, 2I, H] tensor, ",
                "got none");
  check_tensor(where, "w13", args.w13, {weight_dtype, {-1, -1, hidden}}, device);
  const int64_t local_experts = args.w13.size(0);
  const int64_t gate_up = args.w13.size(1);
  IRONMOE_CHECK(gate_up >= 2 && gate_up % 2 == 0, where, "w13: expected an even number 2I >= 2 ",
                "of rows per expert (gate then up), got ", gate_up);
  const int64_t intermediate = gate_up / 2;
  IRONMOE_CHECK(intermediate <= api::kMaxDimension, where, "w13: expected 2I rows with I <= ",
                api::kMaxDimension, ", got 2I = ", gate_up);
  api::check_quantized_weights(where,
                               {"", args.w13, args.w2, args.w13_scale, args.w2_scale,
                                args.w13_input_scale, args.w2_input_scale},
                               args.quant, dtype, local_experts, hidden, intermediate, device);

  const bool offsets_ok = args.expert_offsets.ndim == 1 &&
                          (args.expert_offsets.size(0) == local_experts ||
                           args.expert_offsets.size(0) == local_experts + 1);
  IRONMOE_CHECK(offsets_ok, where, "expert_offsets: expected shape [", local_experts, "] or [",
                local_experts + 1, "] (E_local of w13), got ", args.expert_offsets.shape_string());
  check_tensor(where, "expert_offsets", args.expert_offsets,
               {DType::i32, {args.expert_offsets.size(0)}}, device);
  check_tensor(where, "expert_counts", args.expert_counts, {DType::i32, {local_experts}}, device);

  IRONMOE_CHECK(args.activation == Activation::silu_and_mul ||
                    args.activation == Activation::gelu_and_mul,
                where, "activation: expected silu_and_mul or gelu_and_mul, got ",
                static_cast<int>(args.activation));
  IRONMOE_CHECK(args.phase == ExpertPhase::all || args.phase == ExpertPhase::gate_up ||
                    args.phase == ExpertPhase::down,
                where, "phase: expected all, gate_up or down, got ", static_cast<int>(args.phase));
  // FP8 experts keep h in their scratch (fp32, then E4M3) and never touch `intermediate`.
  if (args.quant == QuantScheme::none || api::present(args.intermediate)) {
    check_tensor(where, "intermediate", args.intermediate, {dtype, {rows, intermediate}}, device);
  }
  check_tensor(where, "permuted_out", args.permuted_out, {dtype, {rows, hidden}}, device);
  api::check_scratch(where, args.scratch, args.scratch_bytes,
                     expert_scratch_bytes(rows, hidden, intermediate, local_experts, dtype,
                                          device, args.quant));

  // The FP8 scratch holds f32 scales at 256-byte offsets (core/fp8_scratch.h).
  if (args.quant != QuantScheme::none) check_pointer_alignment(where, "scratch", args.scratch, 256);
  const api::ByteRange intermediate_range = api::byte_range("intermediate", args.intermediate);
  const api::ByteRange scratch_range = api::byte_range("scratch", args.scratch, args.scratch_bytes);
  const api::ByteRange permuted_out = api::byte_range("permuted_out", args.permuted_out);
  api::check_outputs_apart(
      where, {intermediate_range, scratch_range, permuted_out},
      {api::byte_range("expert_offsets", args.expert_offsets),
       api::byte_range("expert_counts", args.expert_counts), api::byte_range("w13", args.w13),
       api::byte_range("w2", args.w2), api::byte_range("w13_scale", args.w13_scale),
       api::byte_range("w2_scale", args.w2_scale),
       api::byte_range("w13_input_scale", args.w13_input_scale),
       api::byte_range("w2_input_scale", args.w2_input_scale)});
  // permuted_out may be permuted_in itself: GEMM1 reads every input row before GEMM2 writes.
  if (gathered) {
    // x may be permuted_out's memory too (an in-place layer): every x row is read by GEMM1.
    for (const api::ByteRange& written : {intermediate_range, scratch_range}) {
      api::check_disjoint(where, written,
                          {api::byte_range("gathered.x", args.gathered.x),
                           api::byte_range("gathered.row_to_slot", args.gathered.row_to_slot)});
    }
    api::check_disjoint(where, permuted_out,
                        {api::byte_range("gathered.row_to_slot", args.gathered.row_to_slot)});
  } else {
    const api::ByteRange permuted_in = api::byte_range("permuted_in", args.permuted_in);
    for (const api::ByteRange& written : {intermediate_range, scratch_range}) {
      api::check_disjoint(where, written, {permuted_in});
    }
  }
  if (device.is_cpu()) {
    cpu::experts(args, stream.threads);
  } else {
    cuda::experts(args, stream.cuda_stream);
  }
}

}  // namespace ironmoe
