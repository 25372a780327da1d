// Contract L4 on the CPU: Layer::forward allocates nothing. This binary replaces the global
// operator new and delete with counting ones (hence a binary of its own) and counts every
// allocation, from any thread, while one forward() runs, after a first call has run on the same
// pool and workspace. Until session 14 the CPU backend made 9-10 per call: the std::function that
// parallel_for took copied each large lambda to the heap, and the FP8 argument checks built their
// names in std::strings.
#include <gtest/gtest.h>

#include <array>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

#include "test_util.h"

namespace {

std::atomic<bool> counting{false};
std::atomic<int64_t> allocations{0};

void* counted_allocation(std::size_t bytes, std::size_t alignment) {
  if (counting.load(std::memory_order_relaxed)) {
    allocations.fetch_add(1, std::memory_order_relaxed);
  }
  const std::size_t size = bytes == 0 ? 1 : bytes;
  void* p = alignment <= alignof(std::max_align_t)
                ? std::malloc(size)
                : std::aligned_alloc(alignment, (size + alignment - 1) / alignment * alignment);
  if (p == nullptr) throw std::bad_alloc();
  return p;
}

}  // namespace

void* operator new(std::size_t bytes) { return counted_allocation(bytes, 0); }
void* operator new[](std::size_t bytes) { return counted_allocation(bytes, 0); }
void* operator new(std::size_t bytes, std::align_val_t alignment) {
  return counted_allocation(bytes, static_cast<std::size_t>(alignment));
}
void* operator new[](std::size_t bytes, std::align_val_t alignment) {
  return counted_allocation(bytes, static_cast<std::size_t>(alignment));
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

namespace ironmoe::test {
namespace {

struct AllocationCase {
  const char* name;
  MoeConfig config;
  bool from_logits;
  bool with_num_valid;
};

std::vector<AllocationCase> cases() {
  std::vector<AllocationCase> all;
  const auto add = [&](const char* name, MoeConfig config, bool from_logits, bool num_valid) {
    all.push_back({name, config, from_logits, num_valid});
  };
  add("f32_softmax_logits", small_config(8, 2, 24, DType::f32), true, false);
  add("bf16_ids_num_valid", small_config(8, 2, 24, DType::bf16), false, true);
  MoeConfig batched = small_config(8, 3, 24, DType::bf16);
  batched.layout = Layout::batched;
  batched.batched_capacity = 24;
  add("bf16_batched", batched, true, true);
  MoeConfig grouped = small_config(16, 4, 24, DType::f32);
  grouped.routing.kind = RoutingKind::grouped_topk;
  grouped.routing.num_groups = 4;
  grouped.routing.topk_groups = 2;
  add("f32_grouped_topk_bias", grouped, true, false);
  MoeConfig shard = small_config(8, 2, 24, DType::bf16);
  shard.expert_begin = 2;
  shard.expert_end = 6;
  add("bf16_expert_parallel_shard", shard, true, false);
  for (const QuantScheme quant :
       {QuantScheme::fp8_tensor, QuantScheme::fp8_channel, QuantScheme::fp8_block}) {
    MoeConfig fp8 = small_config(8, 2, 24, DType::bf16);
    fp8.quant = quant;
    add(quant_scheme_name(quant), fp8, true, true);
  }
  return all;
}

TEST(Allocation, ForwardAllocatesNothingOnTheCpu) {
  Rng rng = Rng::for_current_test();
  SCOPED_TRACE("seed " + std::to_string(rng.seed()));
  for (const AllocationCase& c : cases()) {
    for (const int threads : {1, 3}) {
      SCOPED_TRACE(std::string(c.name) + ", " + std::to_string(threads) + " threads");
      const MoeConfig& config = c.config;
      LayerProblem problem = make_problem(config, config.max_tokens, c.from_logits, rng);
      if (c.with_num_valid) problem.num_valid = static_cast<int32_t>(config.max_tokens - 3);
      reference::Fp8Weights fp8;
      Weights fp8_views;
      const bool quantized = config.quant != QuantScheme::none;
      if (quantized) {
        fp8 = reference::quantize_weights(
            reference_scheme(config.quant), config.num_local_experts(), config.hidden,
            config.intermediate, problem.w13.to_float().data(), problem.w2.to_float().data());
        fp8_views = fp8_weight_views(config, fp8, {});
      }
      const Layer layer(config, Device::cpu());
      AlignedBuffer workspace(layer.workspace_bytes());
      Buffer out = Buffer::poisoned(config.dtype, config.max_tokens * config.hidden);
      std::array<int32_t, kDiagnosticCount> diagnostics{};
      const int32_t num_valid = problem.num_valid.value_or(0);
      const LayerCall call = layer_call(problem, out.data(), diagnostics.data(), &num_valid,
                                        quantized ? &fp8_views : nullptr);
      ThreadPool pool(threads);
      const Stream stream = Stream::cpu(&pool);
      const Workspace space{workspace.data(), workspace.bytes()};
      layer.forward(call.in, call.w, call.out, space, stream);  // first call: warm everything up

      allocations.store(0);
      counting.store(true);
      layer.forward(call.in, call.w, call.out, space, stream);
      counting.store(false);
      EXPECT_EQ(allocations.load(), 0) << "heap allocations during one forward()";
      // The call did its work: no poison is left in the output.
      for (const float v : out.to_float()) ASSERT_FALSE(std::isnan(v)) << "output left unwritten";
    }
  }
}

// The counter itself counts, on the pool's threads too: one allocation per body call and none
// by the pool, so a forward() that allocated would fail above.
TEST(Allocation, TheCounterSeesEveryAllocation) {
  ThreadPool pool(3);
  std::atomic<int64_t> calls{0};
  allocations.store(0);
  counting.store(true);
  pool.parallel_for(12, [&](int64_t, int64_t) {
    calls.fetch_add(1);
    delete new int(1);
  });
  counting.store(false);
  EXPECT_GE(calls.load(), 2);
  EXPECT_EQ(allocations.load(), calls.load());
}

}  // namespace
}  // namespace ironmoe::test
