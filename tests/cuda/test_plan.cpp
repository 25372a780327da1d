// plan on CUDA vs the CPU backend: every output bit-identical (counts, offsets, both maps and the
// diagnostics), for both layouts, T at 0, 1 and every power of two +-1 from 256 to 16384 plus
// random T, realistic / hostile (invalid, duplicate) / skewed ids, expert-parallel shards
// (including an empty one), batched overflow, and num_valid_tokens read on the device.
// Every output and the scratch are poisoned before each run.
#include <algorithm>
#include <climits>
#include <optional>
#include <string>
#include <vector>

#include "cuda_test_util.h"

namespace ironmoe::cuda_test {
namespace {

enum class Ids { realistic, hostile, skewed };

struct PlanProblem {
  int64_t tokens = 0;
  int64_t top_k = 1;
  int64_t experts = 1;
  int64_t begin = 0;
  int64_t end = 1;
  Layout layout = Layout::contiguous;
  int64_t capacity = 0;
  std::vector<int32_t> ids;  // [T, k]
  std::optional<int32_t> num_valid;

  int64_t local() const { return end - begin; }
  int64_t rows() const { return layout == Layout::batched ? local() * capacity : tokens * top_k; }
  std::string describe() const {
    return std::string(layout == Layout::batched ? "batched" : "contiguous") + " T " +
           std::to_string(tokens) + " k " + std::to_string(top_k) + " E " +
           std::to_string(experts) + " local [" + std::to_string(begin) + ", " +
           std::to_string(end) + ") capacity " + std::to_string(capacity) + " num_valid " +
           (num_valid ? std::to_string(*num_valid) : "none");
  }
};

struct PlanResult {
  std::vector<int32_t> counts, offsets, slot_to_row, row_to_slot, diagnostics;
};

std::vector<int32_t> make_ids(Ids kind, int64_t tokens, int64_t top_k, int64_t experts,
                              std::mt19937_64& rng) {
  std::vector<int32_t> ids(static_cast<size_t>(tokens * top_k));
  std::uniform_int_distribution<int32_t> expert(0, static_cast<int32_t>(experts - 1));
  std::uniform_int_distribution<int32_t> wild(-3, static_cast<int32_t>(experts + 3));
  std::uniform_int_distribution<int> percent(0, 99);
  for (int64_t t = 0; t < tokens; ++t) {
    int32_t* row = ids.data() + t * top_k;
    for (int64_t j = 0; j < top_k; ++j) {
      switch (kind) {
        case Ids::realistic: {  // k distinct experts
          int32_t id;
          do id = expert(rng);
          while (std::find(row, row + j, id) != row + j);
          row[j] = id;
          break;
        }
        case Ids::hostile: {
          const int p = percent(rng);
          row[j] = p < 3 ? INT_MIN : p < 6 ? INT_MAX : p < 20 && j > 0 ? row[j - 1] : wild(rng);
          break;
        }
        case Ids::skewed:
          row[j] = percent(rng) < 70 ? static_cast<int32_t>(experts / 2) : expert(rng);
          break;
      }
    }
  }
  return ids;
}

// The plan's arguments over the given buffers (host or device).
PlanArgs plan_args(const PlanProblem& p, const int32_t* ids, int32_t* counts, int32_t* offsets,
                   int32_t* slot_to_row, int32_t* row_to_slot, const int32_t* num_valid,
                   int32_t* diagnostics, Device device) {
  PlanArgs args;
  args.topk_ids = TensorView::contiguous(ids, DType::i32, {p.tokens, p.top_k}, device);
  args.num_experts = p.experts;
  args.expert_begin = p.begin;
  args.expert_end = p.end;
  args.layout = p.layout;
  args.capacity = p.capacity;
  args.expert_counts = TensorView::contiguous(counts, DType::i32, {p.local()}, device);
  args.expert_offsets = TensorView::contiguous(offsets, DType::i32, {p.local() + 1}, device);
  args.slot_to_row = TensorView::contiguous(slot_to_row, DType::i32, {p.tokens, p.top_k}, device);
  args.row_to_slot = TensorView::contiguous(row_to_slot, DType::i32, {p.rows()}, device);
  args.num_valid_tokens = p.num_valid ? num_valid : nullptr;
  args.diagnostics = diagnostics;
  return args;
}

PlanResult plan_on_cpu(const PlanProblem& p) {
  constexpr int32_t kPoison = 0x5a5a5a5a;
  PlanResult r;
  r.counts.assign(static_cast<size_t>(p.local()), kPoison);
  r.offsets.assign(static_cast<size_t>(p.local() + 1), kPoison);
  r.slot_to_row.assign(static_cast<size_t>(p.tokens * p.top_k), kPoison);
  r.row_to_slot.assign(static_cast<size_t>(p.rows()), kPoison);
  r.diagnostics.assign(kDiagnosticCount, 0);
  const int32_t num_valid = p.num_valid.value_or(0);
  const PlanArgs args =
      plan_args(p, p.ids.data(), r.counts.data(), r.offsets.data(), r.slot_to_row.data(),
                r.row_to_slot.data(), &num_valid, r.diagnostics.data(), Device::cpu());
  plan(args, cpu_stream());
  return r;
}

PlanResult plan_on_gpu(const PlanProblem& p, cudaStream_t stream) {
  const Device gpu = Device::cuda(0);
  const DeviceBuffer<int32_t> ids(p.ids);
  DeviceBuffer<int32_t> counts(p.local()), offsets(p.local() + 1), slot_to_row(p.tokens * p.top_k),
      row_to_slot(p.rows());
  for (DeviceBuffer<int32_t>* b : {&counts, &offsets, &slot_to_row, &row_to_slot})
    b->fill_bytes(kPoisonIndexByte);
  DeviceBuffer<int32_t> diagnostics(std::vector<int32_t>(kDiagnosticCount, 0));
  const DeviceBuffer<int32_t> num_valid(std::vector<int32_t>{p.num_valid.value_or(0)});
  const size_t scratch_bytes = plan_scratch_bytes(p.tokens, p.top_k, p.local(), gpu);
  DeviceBuffer<uint8_t> scratch(static_cast<int64_t>(scratch_bytes));
  scratch.fill_bytes(0xff);
  PlanArgs args = plan_args(p, ids.data(), counts.data(), offsets.data(), slot_to_row.data(),
                            row_to_slot.data(), num_valid.data(), diagnostics.data(), gpu);
  args.scratch = scratch.data();
  args.scratch_bytes = scratch_bytes;
  plan(args, Stream::cuda(stream));
  CUDA_TEST_OK(cudaStreamSynchronize(stream));
  return {counts.download(), offsets.download(), slot_to_row.download(), row_to_slot.download(),
          diagnostics.download()};
}

void expect_same_map(const char* name, const std::vector<int32_t>& gpu,
                     const std::vector<int32_t>& cpu) {
  ASSERT_EQ(gpu.size(), cpu.size()) << name;
  const auto first = std::mismatch(gpu.begin(), gpu.end(), cpu.begin());
  if (first.first == gpu.end()) return;
  const auto index = first.first - gpu.begin();
  int64_t differing = 0;
  for (size_t i = 0; i < gpu.size(); ++i) differing += gpu[i] != cpu[i] ? 1 : 0;
  ADD_FAILURE() << name << ": " << differing << " of " << gpu.size() << " entries differ; first at "
                << index << ": gpu " << *first.first << ", cpu " << *first.second;
}

void expect_same_plan(const PlanProblem& p, cudaStream_t stream) {
  SCOPED_TRACE(p.describe());
  const PlanResult gpu = plan_on_gpu(p, stream);
  const PlanResult cpu = plan_on_cpu(p);
  expect_same_map("expert_counts", gpu.counts, cpu.counts);
  expect_same_map("expert_offsets", gpu.offsets, cpu.offsets);
  expect_same_map("slot_to_row", gpu.slot_to_row, cpu.slot_to_row);
  expect_same_map("row_to_slot", gpu.row_to_slot, cpu.row_to_slot);
  expect_same_map("diagnostics", gpu.diagnostics, cpu.diagnostics);
}

// Four configurations per T, covering both layouts, shards, id kinds and num_valid_tokens.
PlanProblem configuration(int index, int64_t tokens, std::mt19937_64& rng) {
  PlanProblem p;
  p.tokens = tokens;
  switch (index) {
    case 0:  // Qwen3-like, every expert local, ids from a router
      p.experts = 128, p.top_k = 8, p.begin = 0, p.end = 128;
      p.ids = make_ids(Ids::realistic, tokens, 8, 128, rng);
      break;
    case 1:  // an expert-parallel shard fed hostile ids, a padded batch
      p.experts = 64, p.top_k = 4, p.begin = 16, p.end = 48;
      p.ids = make_ids(Ids::hostile, tokens, 4, 64, rng);
      p.num_valid = static_cast<int32_t>(tokens - tokens / 5);
      break;
    case 2:  // batched with a capacity that overflows on the hot expert
      p.experts = 32, p.top_k = 2, p.begin = 0, p.end = 32;
      p.layout = Layout::batched;
      p.capacity = std::max<int64_t>(1, tokens * 2 / 32 / 2);
      p.ids = make_ids(Ids::skewed, tokens, 2, 32, rng);
      p.num_valid = static_cast<int32_t>(tokens);
      break;
    default:  // batched shard, hostile ids, capacity that never overflows
      p.experts = 256, p.top_k = 8, p.begin = 128, p.end = 256;
      p.layout = Layout::batched;
      p.capacity = std::max<int64_t>(1, tokens * 2);
      p.ids = make_ids(Ids::hostile, tokens, 8, 256, rng);
      break;
  }
  return p;
}

std::vector<int64_t> boundary_tokens() {
  std::vector<int64_t> tokens = {0, 1};
  for (int64_t power = 256; power <= 16384; power *= 2)
    for (int64_t delta : {-1, 0, 1}) tokens.push_back(power + delta);
  return tokens;
}

class PlanBoundary : public CudaTestWithParam<int64_t> {};

TEST_P(PlanBoundary, BitIdenticalToCpu) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (int index = 0; index < 4; ++index)
    expect_same_plan(configuration(index, GetParam(), rng), stream());
}

std::string tokens_name(const ::testing::TestParamInfo<int64_t>& param_info) {
  std::string name = std::to_string(param_info.param);
  return name.insert(0, 1, 'T');  // (not "T" + ...: GCC 12 -Wrestrict false positive at -O3)
}

INSTANTIATE_TEST_SUITE_P(Tokens, PlanBoundary, ::testing::ValuesIn(boundary_tokens()), tokens_name);

class PlanEdges : public CudaTest {};

TEST_F(PlanEdges, RandomSizesAndConfigurations) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int64_t> tokens(1, 20000);
  for (int i = 0; i < 12; ++i) expect_same_plan(configuration(i % 4, tokens(rng), rng), stream());
}

// num_valid_tokens values the device must clamp: 0, negative, larger than T.
TEST_F(PlanEdges, NumValidTokensClamped) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (int32_t num_valid : {0, -7, 1, 5000, 1 << 30}) {
    for (int index = 0; index < 4; ++index) {
      PlanProblem p = configuration(index, 3001, rng);
      p.num_valid = num_valid;
      expect_same_plan(p, stream());
    }
  }
}

// A shard without experts still writes its maps (all -1) and counts every slot as remote or
// out of range; a shard of many experts needs the scatter's count table beyond 48 KiB.
TEST_F(PlanEdges, EmptyShardAndManyLocalExperts) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  for (Layout layout : {Layout::contiguous, Layout::batched}) {
    for (int64_t tokens : {0, 1, 2047, 2048, 2049, 9000}) {
      PlanProblem empty;
      empty.tokens = tokens, empty.top_k = 8, empty.experts = 64, empty.begin = 32, empty.end = 32;
      empty.layout = layout, empty.capacity = 16;
      empty.ids = make_ids(Ids::hostile, tokens, 8, 64, rng);
      expect_same_plan(empty, stream());

      PlanProblem many;
      many.tokens = tokens, many.top_k = 10, many.experts = 4096, many.begin = 1024,
      many.end = 3072;
      many.layout = layout, many.capacity = 7;
      many.ids = make_ids(Ids::realistic, tokens, 10, 4096, rng);
      many.num_valid = static_cast<int32_t>(tokens / 2);
      expect_same_plan(many, stream());
    }
  }
}

// Two runs over the same ids give the same bits whatever the poison underneath.
TEST_F(PlanEdges, Deterministic) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(seed_trace(seed));
  std::mt19937_64 rng(seed);
  const PlanProblem p = configuration(1, 12345, rng);
  const PlanResult a = plan_on_gpu(p, stream());
  const PlanResult b = plan_on_gpu(p, stream());
  expect_same_map("slot_to_row", a.slot_to_row, b.slot_to_row);
  expect_same_map("row_to_slot", a.row_to_slot, b.row_to_slot);
  expect_same_map("expert_offsets", a.offsets, b.offsets);
}

}  // namespace
}  // namespace ironmoe::cuda_test
