#include "bench/options.h"

#include <iostream>
#include <sstream>
#include <stdexcept>

#include "common/args.h"
#include "common/device_memory.h"
#include "ironmoe/config.h"

namespace ironmoe::tools {
namespace {

ArgParser make_parser() {
  ArgParser parser("ironmoe-bench",
                   "Times ironmoe's MoE layer (Layer::forward from router logits) on model presets "
                   "or a custom\nshape, against a floor measured in the same run, and checks its "
                   "output against the float64\nreference on a few tokens per row.");
  parser.add_option("preset", "NAMES",
                    "qwen3-30b-a3b, qwen3-next-80b-a3b, mixtral-8x7b, deepseek-v3, or all;\n"
                    "a comma list works too",
                    true);
  parser.add_option("hidden", "H",
                    "custom shape: hidden size (with --intermediate, --experts, "
                    "--topk)");
  parser.add_option("intermediate", "I", "custom shape: intermediate size per expert");
  parser.add_option("experts", "E", "custom shape: number of experts");
  parser.add_option("topk", "K", "custom shape: experts per token");
  parser.add_option("routing", "KIND", "custom shape: softmax (default), sigmoid or grouped");
  parser.add_option("groups", "G", "custom grouped routing: expert groups (default 8)");
  parser.add_option("topk-groups", "G", "custom grouped routing: groups kept (default 4)");
  parser.add_option("tokens", "LIST",
                    "token counts, e.g. 1,16,64 (default: CPU 1,4,16,64;\n"
                    "CUDA 1,16,64,256,1024,4096)");
  parser.add_option("device", "DEV", "auto (default: cuda when a GPU is visible), cpu or cuda");
  parser.add_option("dtype", "TYPE", "storage of x, weights and out: bf16 (default) or f32");
  parser.add_option("seed", "N", "seed of the random weights and inputs (default 1)");
  parser.add_option("iters", "N",
                    "timed calls per row (default: CPU until ~1 s, 3 to 50;\nCUDA 100 graph "
                    "replays)");
  parser.add_option("threads", "N", "CPU threads (default: all cores)");
  parser.add_option("check-tokens", "N",
                    "tokens per row compared with the float64 reference\n(default 3; 0 skips "
                    "the check)");
  parser.add_flag("warm", "CPU: do not evict the last-level cache before each timed call");
  parser.add_option("expert-kernel", "KIND",
                    "CUDA expert kernels: automatic (default), grouped_gemm, weight_stream or "
                    "cuda_cores");
  parser.add_option("quant", "SCHEME",
                    "expert weights: none (default, the storage dtype), fp8-tensor (static\n"
                    "activation scales), fp8-channel or fp8-block (E4M3 codes, f32 scales)");
  parser.add_flag("breakdown",
                  "also time each stage alone (route, plan, gather, gemm1, gemm2, combine) and "
                  "print a second table");
  parser.add_option("json", "FILE", "also write every row as JSON to FILE");
  parser.add_flag("help", "show this text");
  return parser;
}

RoutingKind routing_kind_from(const std::string& text) {
  if (text == "softmax") return RoutingKind::softmax_topk;
  if (text == "sigmoid") return RoutingKind::sigmoid_topk;
  if (text == "grouped") return RoutingKind::grouped_topk;
  throw std::invalid_argument("--routing: expected softmax, sigmoid or grouped, got '" + text +
                              "'");
}

BenchShape custom_shape(const ArgParser& args) {
  for (const char* name : {"hidden", "intermediate", "experts", "topk"}) {
    if (!args.has(name)) {
      throw std::invalid_argument(std::string("a custom shape needs --hidden, --intermediate, "
                                              "--experts and --topk; --") +
                                  name + " is missing");
    }
  }
  BenchShape shape;
  MoeConfig& c = shape.config;
  c.hidden = parse_int(args.value("hidden"), "--hidden");
  c.intermediate = parse_int(args.value("intermediate"), "--intermediate");
  c.num_experts = parse_int(args.value("experts"), "--experts");
  c.top_k = parse_int(args.value("topk"), "--topk");
  c.routing.kind = routing_kind_from(args.value("routing", "softmax"));
  if (c.routing.kind == RoutingKind::grouped_topk) {
    c.routing.num_groups = parse_int(args.value("groups", "8"), "--groups");
    c.routing.topk_groups = parse_int(args.value("topk-groups", "4"), "--topk-groups");
  }
  c.max_tokens = 1;
  c.validate();
  std::ostringstream name;
  name << "custom-h" << c.hidden << "-i" << c.intermediate << "-e" << c.num_experts << "-k"
       << c.top_k;
  if (c.routing.kind != RoutingKind::softmax_topk) name << '-' << args.value("routing");
  shape.name = name.str();
  return shape;
}

std::vector<BenchShape> preset_shapes(const ArgParser& args) {
  std::vector<std::string> names;
  for (const std::string& value : args.values("preset")) {
    for (const std::string& name : split_list(value)) {
      if (name == "all") {
        const std::vector<std::string> all = preset_names();
        names.insert(names.end(), all.begin(), all.end());
      } else {
        names.push_back(name);
      }
    }
  }
  std::vector<BenchShape> shapes;
  for (const std::string& name : names) shapes.push_back({name, preset(name, 1)});
  return shapes;
}

void parse_into(const ArgParser& args, BenchOptions* options) {
  options->device = resolve_device(args.value("device", "auto"));
  const std::string dtype = args.value("dtype", "bf16");
  if (dtype == "bf16") {
    options->dtype = DType::bf16;
  } else if (dtype == "f32") {
    options->dtype = DType::f32;
  } else {
    throw std::invalid_argument("--dtype: expected bf16 or f32, got '" + dtype + "'");
  }
  options->seed = static_cast<uint64_t>(parse_int(args.value("seed", "1"), "--seed"));
  options->threads = static_cast<int>(parse_int(args.value("threads", "0"), "--threads"));
  options->settings.iters = static_cast<int>(parse_int(args.value("iters", "0"), "--iters"));
  options->settings.check_tokens =
      static_cast<int>(parse_int(args.value("check-tokens", "3"), "--check-tokens"));
  options->settings.flush_cache = !args.has("warm");
  options->settings.breakdown = args.has("breakdown");
  options->json_path = args.value("json");

  options->shapes = preset_shapes(args);
  const std::string quant = args.value("quant", "none");
  QuantScheme scheme = QuantScheme::none;
  if (quant == "fp8-tensor") {
    scheme = QuantScheme::fp8_tensor;
  } else if (quant == "fp8-channel") {
    scheme = QuantScheme::fp8_channel;
  } else if (quant == "fp8-block") {
    scheme = QuantScheme::fp8_block;
  } else if (quant != "none") {
    throw std::invalid_argument(
        "--quant: expected none, fp8-tensor, fp8-channel or fp8-block, got '" + quant + "'");
  }
  options->quant = scheme;
  if (args.has("hidden") || args.has("intermediate") || args.has("experts") || args.has("topk")) {
    options->shapes.push_back(custom_shape(args));
  }
  const bool cuda = options->device.is_cuda();
  if (options->shapes.empty()) {
    if (cuda) {
      for (const std::string& name : preset_names())
        options->shapes.push_back({name, preset(name, 1)});
    } else {
      options->shapes.push_back({kCpuDefaultPreset, preset(kCpuDefaultPreset, 1)});
    }
  }
  const std::string kernel = args.value("expert-kernel", "automatic");
  bool known_kernel = false;
  for (ExpertKernel k : {ExpertKernel::automatic, ExpertKernel::grouped_gemm,
                         ExpertKernel::weight_stream, ExpertKernel::cuda_cores}) {
    if (kernel != expert_kernel_name(k)) continue;
    known_kernel = true;
    for (BenchShape& shape : options->shapes) shape.config.expert_kernel = k;
  }
  for (BenchShape& shape : options->shapes) shape.config.quant = options->quant;
  {}
  if (!known_kernel) {
    throw std::invalid_argument(
        "--expert-kernel: expected automatic, grouped_gemm, "
        "weight_stream or cuda_cores, got '" +
        kernel + "'");
  }
  options->tokens = args.has("tokens") ? parse_int_list(args.value("tokens"), "--tokens")
                                       : (cuda ? kCudaDefaultTokens : kCpuDefaultTokens);
  for (int64_t t : options->tokens) {
    if (t < 1)
      throw std::invalid_argument("--tokens: expected counts >= 1, got " + std::to_string(t));
  }
}

}  // namespace

bool parse_bench_options(int argc, const char* const* argv, BenchOptions* options, int* exit_code) {
  ArgParser parser = make_parser();
  std::string error;
  if (!parser.parse(argc, argv, &error)) {
    std::cerr << "ironmoe-bench: " << error << "\n\n" << parser.usage();
    *exit_code = 2;
    return false;
  }
  if (parser.has("help")) {
    std::cout << parser.usage();
    *exit_code = 0;
    return false;
  }
  try {
    parse_into(parser, options);
  } catch (const std::exception& e) {
    std::cerr << "ironmoe-bench: " << e.what() << "\n";
    *exit_code = 2;
    return false;
  }
  for (int i = 0; i < argc; ++i) {
    if (i > 0) options->command_line += ' ';
    options->command_line += argv[i];
  }
  return true;
}

}  // namespace ironmoe::tools
