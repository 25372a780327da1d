// Host-side validation: each bad argument must throw ironmoe::Error (no crash, no other exception
// type) with a message that names the argument.
#include <string>

#include "check/expect.h"
#include "check/harness.h"
#include "ironmoe/error.h"
#include "ironmoe/layer.h"
#include "ironmoe/plan.h"
#include "ironmoe/route.h"

namespace ironmoe::tools::check {
namespace {

Outcome expect_error(const std::function<void()>& call, const std::string& must_mention) {
  try {
    call();
  } catch (const Error& e) {
    const std::string message = e.what();
    if (message.find(must_mention) == std::string::npos) {
      return {false, "ironmoe::Error without '" + must_mention + "': " + message};
    }
    return {true, message};
  } catch (const std::exception& e) {
    return {false, std::string("threw a non-ironmoe exception: ") + e.what()};
  }
  return {false, "no ironmoe::Error was thrown"};
}

// A valid forward() call on small buffers; each error case breaks one thing.
struct ForwardSetup {
  ForwardSetup(Context& context, MoeConfig c, int64_t tokens)
      : config(c),
        device(context.device()),
        stream(context.stream()),
        x(device, static_cast<size_t>(tokens * c.hidden) * 4 + 64),
        logits(device, static_cast<size_t>(tokens * c.num_experts) * 4),
        w13(device, static_cast<size_t>(c.num_experts * 2 * c.intermediate * c.hidden) * 4),
        w2(device, static_cast<size_t>(c.num_experts * c.hidden * c.intermediate) * 4),
        out(device, static_cast<size_t>(tokens * c.hidden) * 4),
        workspace(device, workspace_bytes(c, device)) {
    x.fill_bytes(0);
    logits.fill_bytes(0);
    w13.fill_bytes(0);
    w2.fill_bytes(0);
    poison_workspace();
    inputs.x = x.view(c.dtype, {tokens, c.hidden});
    inputs.router_logits = logits.view(DType::f32, {tokens, c.num_experts});
    weights.w13 = w13.view(c.dtype, {c.num_experts, 2 * c.intermediate, c.hidden});
    weights.w2 = w2.view(c.dtype, {c.num_experts, c.hidden, c.intermediate});
    outputs.out = out.view(c.dtype, {tokens, c.hidden});
    space = Workspace{workspace.data(), workspace.bytes()};
  }

  // The workspace starts dirty, as a caller's would (and initcheck, which does not count TMA
  // stores as writes, then sees the GEMM scratch as initialised).
  void poison_workspace() { workspace.fill_bytes(0xff); }

  void forward() const {
    Layer(config, device).forward(inputs, weights, outputs, space, stream);
    synchronize(device);
  }

  MoeConfig config;
  Device device;
  Stream stream;
  DeviceBuffer x, logits, w13, w2, out, workspace;
  Inputs inputs;
  Weights weights;
  Outputs outputs;
  Workspace space;
};

MoeConfig base_config() { return small_config(16, 4, 32, DType::bf16, RoutingConfig{}); }

using Breaker = std::function<void(ForwardSetup&)>;

Case forward_error(const std::string& name, const Breaker& breaker, const std::string& mention) {
  return {"errors/forward/" + name, [=](Context& context, Random&) {
            ForwardSetup setup(context, base_config(), 32);
            // The unbroken call must work, or the error below would prove nothing.
            try {
              setup.forward();
            } catch (const std::exception& e) {
              return Outcome{false, std::string("the valid call failed: ") + e.what()};
            }
            breaker(setup);
            return expect_error([&] { setup.forward(); }, mention);
          }};
}

Case config_error(const std::string& name, const std::function<void(MoeConfig&)>& breaker,
                  const std::string& mention) {
  return {"errors/config/" + name, [=](Context& context, Random&) {
            MoeConfig config = base_config();
            breaker(config);
            return expect_error([&] { Layer layer(config, context.device()); }, mention);
          }};
}

}  // namespace

std::vector<Case> error_cases(Device) {
  std::vector<Case> cases;
  cases.push_back(config_error(
      "top_k>E", [](MoeConfig& c) { c.top_k = 17; }, "top_k"));
  cases.push_back(config_error(
      "top_k=0", [](MoeConfig& c) { c.top_k = 0; }, "top_k"));
  cases.push_back(config_error(
      "hidden=0", [](MoeConfig& c) { c.hidden = 0; }, "hidden"));
  cases.push_back(config_error(
      "max_tokens<0", [](MoeConfig& c) { c.max_tokens = -1; }, "max_tokens"));
  cases.push_back(config_error(
      "expert-range",
      [](MoeConfig& c) {
        c.expert_begin = 10;
        c.expert_end = 5;
      },
      "expert"));
  cases.push_back(config_error(
      "groups-not-dividing-E",
      [](MoeConfig& c) {
        c.routing.kind = RoutingKind::grouped_topk;
        c.routing.num_groups = 5;
        c.routing.topk_groups = 2;
      },
      "num_groups"));
  cases.push_back(config_error(
      "grouped-too-few-candidates",
      [](MoeConfig& c) {
        c.routing.kind = RoutingKind::grouped_topk;
        c.routing.num_groups = 8;
        c.routing.topk_groups = 1;  // 2 experts kept, k = 4
      },
      "topk_groups"));

  cases.push_back(forward_error(
      "tokens>max_tokens",
      [](ForwardSetup& s) {
        s.config.max_tokens = 16;
        s.workspace = DeviceBuffer(s.device, workspace_bytes(s.config, s.device));
        s.poison_workspace();
        s.space = Workspace{s.workspace.data(), s.workspace.bytes()};
      },
      "max_tokens"));
  cases.push_back(forward_error(
      "workspace-too-small", [](ForwardSetup& s) { s.space.bytes -= 1; }, "workspace"));
  cases.push_back(forward_error(
      "workspace-null", [](ForwardSetup& s) { s.space.data = nullptr; }, "workspace"));
  cases.push_back(forward_error(
      "logits-shape",
      [](ForwardSetup& s) {
        s.inputs.router_logits = s.logits.view(DType::f32, {32, 15});
      },
      "router_logits"));
  cases.push_back(forward_error(
      "w13-dtype", [](ForwardSetup& s) { s.weights.w13.dtype = DType::f32; }, "w13"));
  cases.push_back(forward_error(
      "w2-shape",
      [](ForwardSetup& s) {
        s.weights.w2 = s.w2.view(DType::bf16, {16, 64, 128});
      },
      "w2"));
  cases.push_back(forward_error(
      "x-misaligned", [](ForwardSetup& s) { s.inputs.x.data = static_cast<char*>(s.x.data()) + 1; },
      "inputs.x"));
  cases.push_back(forward_error(
      "out-rows",
      [](ForwardSetup& s) {
        s.outputs.out = s.out.view(DType::bf16, {31, 128});
      },
      "outputs.out"));
  cases.push_back(forward_error(
      "logits-and-ids",
      [](ForwardSetup& s) {
        s.inputs.topk_ids = s.logits.view(DType::i32, {32, 4});
        s.inputs.topk_weights = s.logits.view(DType::f32, {32, 4});
      },
      "inputs"));
  cases.push_back(forward_error(
      "wrong-device",
      [](ForwardSetup& s) {
        s.inputs.x.device = s.device.is_cpu() ? Device::cuda(0) : Device::cpu();
      },
      "inputs.x"));

  cases.push_back({"errors/route/top_k>32", [](Context& context, Random&) {
                     DeviceBuffer logits(context.device(), 4 * 64 * 4);
                     DeviceBuffer ids(context.device(), 4 * 33 * 4);
                     DeviceBuffer weights(context.device(), 4 * 33 * 4);
                     RouteArgs args;
                     args.logits = logits.view(DType::f32, {4, 64});
                     args.topk_ids = ids.view(DType::i32, {4, 33});
                     args.topk_weights = weights.view(DType::f32, {4, 33});
                     return expect_error([&] { route(RoutingConfig{}, args, context.stream()); },
                                         "top");
                   }});
  cases.push_back({"errors/plan/slot_to_row-shape", [](Context& context, Random&) {
                     const Device device = context.device();
                     DeviceBuffer ids(device, 8 * 4 * 4), counts(device, 16 * 4),
                         offsets(device, 17 * 4), slot_to_row(device, 8 * 4 * 4),
                         row_to_slot(device, 8 * 4 * 4);
                     ids.fill_bytes(0);
                     DeviceBuffer scratch(device, plan_scratch_bytes(8, 4, 16, device));
                     PlanArgs args;
                     args.topk_ids = ids.view(DType::i32, {8, 4});
                     args.num_experts = 16;
                     args.expert_counts = counts.view(DType::i32, {16});
                     args.expert_offsets = offsets.view(DType::i32, {17});
                     args.slot_to_row = slot_to_row.view(DType::i32, {8, 3});
                     args.row_to_slot = row_to_slot.view(DType::i32, {32});
                     args.scratch = scratch.data();
                     args.scratch_bytes = scratch.bytes();
                     return expect_error([&] { plan(args, context.stream()); }, "slot_to_row");
                   }});
  return cases;
}

}  // namespace ironmoe::tools::check
