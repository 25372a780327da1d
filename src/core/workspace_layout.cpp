// Carves Layer::forward's buffers out of one workspace, each on a 256-byte boundary.
#include "core/workspace_layout.h"

#include "ironmoe/experts.h"
#include "ironmoe/plan.h"

namespace ironmoe::core {
namespace {

// Hands out aligned byte ranges one after another.
class Carver {
 public:
  size_t take(size_t bytes) {
    const size_t offset = end_;
    end_ = align_up(offset + bytes);
    return offset;
  }
  size_t end() const { return end_; }

 private:
  static size_t align_up(size_t bytes) {
    return (bytes + kWorkspaceAlignment - 1) / kWorkspaceAlignment * kWorkspaceAlignment;
  }
  size_t end_ = 0;
};

size_t bytes_of(int64_t count, DType dtype) {
  return static_cast<size_t>(count) * dtype_size(dtype);
}

}  // namespace

WorkspaceLayout workspace_layout(const MoeConfig& config, Device device) {
  config.validate();
  const int64_t slots = config.max_tokens * config.top_k;
  const int64_t local_experts = config.num_local_experts();
  const int64_t rows = config.permuted_rows(config.max_tokens);

  WorkspaceLayout layout;
  layout.max_rows = rows;
  Carver carver;
  layout.topk_ids = carver.take(bytes_of(slots, DType::i32));
  layout.topk_weights = carver.take(bytes_of(slots, DType::f32));
  layout.expert_counts = carver.take(bytes_of(local_experts, DType::i32));
  layout.expert_offsets = carver.take(bytes_of(local_experts + 1, DType::i32));
  layout.slot_to_row = carver.take(bytes_of(slots, DType::i32));
  layout.row_to_slot = carver.take(bytes_of(rows, DType::i32));
  // The experts stage runs in place (GEMM1 reads every input row before GEMM2 writes), so
  // permuted_in and permuted_out share their bytes. FP8 experts quantise GEMM1's input rows
  // straight from x (ExpertArgs::gathered) and keep h in their scratch, so an FP8 layer's
  // permuted_in is never written or read, and it has no h buffer.
  const bool fp8 = config.quant != QuantScheme::none;
  layout.intermediate =
      carver.take(fp8 ? size_t{0} : bytes_of(rows * config.intermediate, config.dtype));
  layout.permuted_out = carver.take(bytes_of(rows * config.hidden, config.dtype));
  layout.permuted_in = layout.permuted_out;
  layout.input_scale =
      carver.take(config.quant == QuantScheme::fp8_tensor ? sizeof(float) : size_t{0});
  layout.plan_scratch_bytes =
      plan_scratch_bytes(config.max_tokens, config.top_k, local_experts, device);
  layout.plan_scratch = carver.take(layout.plan_scratch_bytes);
  layout.expert_scratch_bytes = expert_scratch_bytes(
      rows, config.hidden, config.intermediate, local_experts, config.dtype, device, config.quant);
  layout.expert_scratch = carver.take(layout.expert_scratch_bytes);
  layout.total_bytes = carver.end();
  return layout;
}

}  // namespace ironmoe::core
