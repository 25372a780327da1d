// Plan: the counting-sort placement at every boundary size, for ids nobody should trust (out of
// range, duplicated, remote), with padding rows, expert-parallel shards and the batched layout.
// Each result is compared entry by entry with the plan rebuilt from the contract.
#include <algorithm>
#include <limits>

#include "check/expect.h"
#include "check/harness.h"

namespace ironmoe::tools::check {
namespace {

constexpr int64_t kBoundarySizes[] = {0, 1, 255, 256, 257, 8191, 8192, 8193};

std::vector<int32_t> random_ids(int64_t slots, int64_t num_experts, Random& random) {
  std::vector<int32_t> ids(static_cast<size_t>(slots));
  for (int32_t& id : ids) id = static_cast<int32_t>(random.below(num_experts));
  return ids;
}

// Ids no caller should send, mixed with good ones: -1, E, far beyond E, and the int32 extremes.
std::vector<int32_t> hostile_ids(int64_t slots, int64_t num_experts, Random& random) {
  const int32_t e = static_cast<int32_t>(num_experts);
  const int32_t bad[] = {
      -1, e, e + 7, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max(), -e};
  std::vector<int32_t> ids = random_ids(slots, num_experts, random);
  for (int32_t& id : ids) {
    if (random.below(3) == 0) id = bad[random.below(std::size(bad))];
  }
  return ids;
}

PlanInput make_plan(std::vector<int32_t> ids, int64_t tokens, int64_t top_k, int64_t experts) {
  PlanInput input;
  input.ids = std::move(ids);
  input.tokens = tokens;
  input.top_k = top_k;
  input.num_experts = experts;
  return input;
}

Outcome check_plan(Context& context, const PlanInput& input) {
  Expect expect;
  expect_plan_exact(expect, run_plan(context, input), input);
  return expect.outcome();
}

}  // namespace

std::vector<Case> plan_cases(Device) {
  std::vector<Case> cases;
  for (int64_t tokens : kBoundarySizes) {
    const std::string size = "T=" + std::to_string(tokens);
    cases.push_back({"plan/contiguous/" + size, [=](Context& context, Random& random) {
                       return check_plan(
                           context, make_plan(random_ids(tokens * 8, 64, random), tokens, 8, 64));
                     }});
    cases.push_back({"plan/batched/" + size, [=](Context& context, Random& random) {
                       // Capacity about the mean load: some experts overflow, some do not.
                       PlanInput input =
                           make_plan(random_ids(tokens * 8, 64, random), tokens, 8, 64);
                       input.layout = Layout::batched;
                       input.capacity = std::max<int64_t>(1, tokens * 8 / 64);
                       return check_plan(context, input);
                     }});
    cases.push_back({"plan/hostile-ids/" + size, [=](Context& context, Random& random) {
                       return check_plan(
                           context, make_plan(hostile_ids(tokens * 4, 16, random), tokens, 4, 16));
                     }});
  }
  cases.push_back({"plan/duplicate-ids", [](Context& context, Random& random) {
                     // Ids drawn from 3 experts with k = 8: every token repeats ids.
                     std::vector<int32_t> ids = random_ids(257 * 8, 3, random);
                     std::fill(ids.begin(), ids.begin() + 8, 2);  // one token: 8 times expert 2
                     return check_plan(context, make_plan(ids, 257, 8, 16));
                   }});
  cases.push_back({"plan/one-hot-expert/T=8193", [](Context& context, Random&) {
                     // Every slot on expert 5: the largest count and offsets a plan can see.
                     return check_plan(context,
                                       make_plan(std::vector<int32_t>(8193 * 8, 5), 8193, 8, 64));
                   }});
  for (int32_t num_valid : {0, 1, 100, 256, -3, 300}) {
    cases.push_back({"plan/padding/num-valid=" + std::to_string(num_valid),
                     [=](Context& context, Random& random) {
                       // Padding rows hold hostile ids: skipped and never counted.
                       PlanInput input = make_plan(hostile_ids(257 * 4, 16, random), 257, 4, 16);
                       input.num_valid = num_valid;
                       return check_plan(context, input);
                     }});
  }
  for (int64_t capacity : {1, 3, 257 * 8}) {
    cases.push_back({"plan/batched/capacity=" + std::to_string(capacity),
                     [=](Context& context, Random& random) {
                       PlanInput input = make_plan(hostile_ids(257 * 8, 16, random), 257, 8, 16);
                       input.layout = Layout::batched;
                       input.capacity = capacity;
                       input.num_valid = 200;
                       return check_plan(context, input);
                     }});
  }
  cases.push_back(
      {"plan/ep-shards", [](Context& context, Random& random) {
         // Four ranks over 16 experts, one of them empty: each valid slot with an id in
         // [0, 16) is placed by exactly one shard; every other shard counts it remote.
         const std::vector<int32_t> ids = hostile_ids(257 * 4, 16, random);
         const std::pair<int64_t, int64_t> shards[] = {{0, 5}, {5, 5}, {5, 11}, {11, 16}};
         Expect expect;
         std::vector<int> placed(ids.size(), 0);
         for (const auto& [begin, end] : shards) {
           PlanInput input = make_plan(ids, 257, 4, 16);
           input.expert_begin = begin;
           input.expert_end = end;
           const PlanRun run = run_plan(context, input);
           expect_plan_exact(expect, run, input);
           for (size_t s = 0; s < ids.size(); ++s) placed[s] += run.slot_to_row[s] >= 0;
         }
         for (size_t s = 0; s < ids.size(); ++s) {
           const int expected = ids[s] >= 0 && ids[s] < 16 ? 1 : 0;
           if (placed[s] != expected) {
             expect.fail("slot " + std::to_string(s) + " (id " + std::to_string(ids[s]) +
                         ") placed by " + std::to_string(placed[s]) + " shards");
           }
         }
         return expect.outcome();
       }});
  return cases;
}

}  // namespace ironmoe::tools::check
