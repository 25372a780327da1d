// ironmoe-bench: for every shape and token count, the median latency of the whole layer, what it
// achieves (GB/s, TFLOP/s), how close it gets to the floor measured in the same run, and its error
// against the float64 reference. Table on stdout, progress on stderr, rows as JSON with --json.
#include <algorithm>
#include <fstream>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "bench/measure.h"
#include "bench/options.h"
#include "bench/peak.h"
#include "bench/problem.h"
#include "common/device_memory.h"
#include "common/report.h"
#include "ironmoe/error.h"

namespace ironmoe::tools {
namespace {

// Largest acceptable error against the float64 reference, relative to the row's largest value:
// bf16 output rounding alone is 2^-9; f32 differs from float64 by accumulation order only.
// FP8: the float64 FP8 reference rounds h from float64, the layer from fp32, so an h code can
// differ by one E4M3 step (tests/cpu/layer_fp8_test.cpp measures it).
double error_tolerance(DType dtype, QuantScheme quant) {
  if (quant != QuantScheme::none) return 2e-2;
  return dtype == DType::bf16 ? 2e-2 : 1e-3;
}

void progress(const std::string& message) { std::cerr << "[ironmoe-bench] " << message << "\n"; }

std::string check_cell(const BenchRow& row, DType dtype) {
  if (row.max_rel_error < 0.0) return "-";
  return format_scientific(row.max_rel_error, 1) +
         (row.max_rel_error <= error_tolerance(dtype, row.config.quant) ? "" : " FAIL");
}

void print_table(const std::vector<BenchRow>& rows, DType dtype, std::ostream& out) {
  Table table({{"preset", false},
               {"tokens"},
               {"experts used"},
               {"median us"},
               {"GB/s"},
               {"TFLOP/s"},
               {"floor us"},
               {"% of floor"},
               {"max rel err"},
               {"workspace"}});
  for (const BenchRow& row : rows) {
    if (!row.skipped.empty()) {
      table.add_note_row({row.shape, std::to_string(row.tokens)}, "skipped: " + row.skipped);
      continue;
    }
    const double seconds = row.timing.median_s;
    table.add_row({row.shape, std::to_string(row.tokens), std::to_string(row.experts_used),
                   format_fixed(seconds * 1e6, 1), format_fixed(row.bytes / seconds / 1e9, 1),
                   format_fixed(row.flops / seconds / 1e12, 3), format_fixed(row.floor_s * 1e6, 1),
                   format_fixed(100.0 * row.floor_s / seconds, 0) + "%", check_cell(row, dtype),
                   format_bytes(static_cast<double>(row.workspace_bytes))});
  }
  table.print(out);
}

// Per-stage medians (--breakdown): each stage timed alone, their sum, and the whole call's median
// beside it (on the GPU each stage alone pays a graph launch the whole call overlaps).
void print_breakdown(const std::vector<BenchRow>& rows, std::ostream& out) {
  std::vector<Table::Column> columns = {{"preset", false}, {"tokens"}};
  for (const char* name : kStageNames) columns.push_back({std::string(name) + " us"});
  columns.push_back({"sum us"});
  columns.push_back({"layer us"});
  columns.push_back({"route+plan+combine us"});
  Table table(columns);
  for (const BenchRow& row : rows) {
    if (!row.skipped.empty()) continue;
    std::vector<std::string> cells = {row.shape, std::to_string(row.tokens)};
    double sum = 0.0;
    for (const Timing& stage : row.stages) {
      cells.push_back(stage.iters > 0 ? format_fixed(stage.median_s * 1e6, 1) : "-");
      sum += stage.median_s;
    }
    cells.push_back(format_fixed(sum * 1e6, 1));
    cells.push_back(format_fixed(row.timing.median_s * 1e6, 1));
    const Timing& joint = row.route_plan_combine;
    cells.push_back(joint.iters > 0 ? format_fixed(joint.median_s * 1e6, 1) : "-");
    table.add_row(cells);
  }
  out << "\nper stage, each timed alone (median us); route+plan+combine: the three timed as one "
         "call:\n";
  table.print(out);
}

std::string row_json(const BenchRow& row, const BenchOptions& options) {
  JsonObject json;
  json.add("preset", row.shape).add("tokens", row.tokens);
  json.add("device", device_label(options.device)).add("dtype", dtype_name(options.dtype));
  if (!row.skipped.empty()) return json.add("skipped", row.skipped).str();
  const double seconds = row.timing.median_s;
  const MoeConfig& c = row.config;
  json.add("hidden", c.hidden).add("intermediate", c.intermediate);
  json.add("num_experts", c.num_experts).add("top_k", c.top_k);
  json.add("routing", routing_kind_name(c.routing.kind));
  json.add("num_groups", c.routing.num_groups).add("topk_groups", c.routing.topk_groups);
  json.add("renormalize", c.routing.renormalize);
  json.add("routed_scaling_factor", static_cast<double>(c.routing.routed_scaling_factor));
  json.add("quant", quant_scheme_name(c.quant));
  json.add("experts_used", row.experts_used).add("valid_slots", row.valid_slots);
  json.add("median_us", seconds * 1e6).add("min_us", row.timing.min_s * 1e6);
  json.add("iters", static_cast<int64_t>(row.timing.iters));
  json.add("bytes", row.bytes).add("flops", row.flops);
  json.add("gb_per_s", row.bytes / seconds / 1e9).add("tflop_per_s", row.flops / seconds / 1e12);
  json.add("floor_us", row.floor_s * 1e6).add("percent_of_floor", 100.0 * row.floor_s / seconds);
  if (row.max_rel_error >= 0.0) json.add("max_rel_error", row.max_rel_error);
  json.add("workspace_bytes", static_cast<int64_t>(row.workspace_bytes));
  for (int i = 0; i < kStageCount; ++i) {
    if (row.stages[i].iters > 0) {
      json.add(std::string(kStageNames[i]) + "_us", row.stages[i].median_s * 1e6);
    }
  }
  if (row.route_plan_combine.iters > 0) {
    json.add("route_plan_combine_us", row.route_plan_combine.median_s * 1e6);
  }
  return json.str();
}

void write_json(const std::string& path, const std::vector<BenchRow>& rows,
                const BenchOptions& options, const MachinePeak& peak) {
  std::vector<std::string> items;
  for (const BenchRow& row : rows) items.push_back(row_json(row, options));
  JsonObject machine;
  machine.add("device", device_label(options.device)).add("name", peak.device_name);
  machine.add("bandwidth_gb_per_s", peak.bandwidth_bytes_per_s / 1e9);
  machine.add("bandwidth_method", peak.bandwidth_method);
  machine.add("gemm_tflop_per_s", peak.gemm_flops_per_s / 1e12);
  machine.add("gemm_method", peak.gemm_method);
  machine.add("fp8_gemm_tflop_per_s", peak.fp8_gemm_flops_per_s / 1e12);
  machine.add("fp8_gemm_method", peak.fp8_gemm_method);
  JsonObject top;
  top.add("command", options.command_line).add("seed", static_cast<int64_t>(options.seed));
  top.add_raw("machine", machine.str()).add_raw("rows", json_array(items));
  std::ofstream file(path);
  file << top.str() << "\n";
  if (!file) throw std::runtime_error("cannot write " + path);
}

std::string describe_row(const BenchRow& row) {
  if (!row.skipped.empty())
    return row.shape + " T=" + std::to_string(row.tokens) + ": skipped (" + row.skipped + ")";
  return row.shape + " T=" + std::to_string(row.tokens) + ": " +
         format_fixed(row.timing.median_s * 1e6, 1) + " us, " +
         format_fixed(100.0 * row.floor_s / row.timing.median_s, 0) + "% of floor";
}

int run(const BenchOptions& options) {
  Executor executor(options.device, options.threads);
  progress("measuring " + device_label(options.device) + " bandwidth and matmul rate");
  const MachinePeak peak = options.device.is_cuda()
                               ? measure_cuda_peak(options.device.index, executor.cuda_stream())
                               : measure_cpu_peak(executor.pool());
  std::unique_ptr<CacheFlusher> flusher;
  if (options.device.is_cpu() && options.settings.flush_cache) {
    flusher = std::make_unique<CacheFlusher>();
  }

  std::vector<BenchRow> rows;
  bool failed = false;
  const int64_t max_tokens = *std::max_element(options.tokens.begin(), options.tokens.end());
  for (const BenchShape& shape : options.shapes) {
    const size_t needed = problem_bytes(shape, options.dtype, max_tokens);
    const size_t available = available_bytes(options.device);
    // Leave room for the workspace and the reference check's host copies.
    if (static_cast<double>(needed) > 0.85 * static_cast<double>(available)) {
      const std::string why = "weights and inputs need " +
                              format_bytes(static_cast<double>(needed)) + ", " +
                              format_bytes(static_cast<double>(available)) + " available";
      for (int64_t tokens : options.tokens) {
        BenchRow row;
        row.shape = shape.name;
        row.tokens = tokens;
        row.skipped = why;
        progress(describe_row(row));
        rows.push_back(row);
      }
      continue;
    }
    progress(shape.name + ": generating " + format_bytes(static_cast<double>(needed)) +
             " of random weights and inputs");
    const Problem problem = make_problem(shape, options.dtype, max_tokens, options.seed,
                                         options.device, executor.pool());
    for (int64_t tokens : options.tokens) {
      BenchRow row;
      try {
        row = measure_row(problem, tokens, options.settings, peak, executor, flusher.get());
        failed = failed || row.max_rel_error > error_tolerance(options.dtype, options.quant);
      } catch (const std::exception& e) {
        row = BenchRow{};
        row.shape = shape.name;
        row.tokens = tokens;
        row.skipped = std::string("error: ") + e.what();
        failed = true;
      }
      progress(describe_row(row));
      rows.push_back(row);
    }
  }

  const bool fp8 = options.quant != QuantScheme::none;
  std::cout << "ironmoe-bench: " << device_label(options.device) << " (" << peak.device_name
            << "), " << dtype_name(options.dtype) << ", quant " << quant_scheme_name(options.quant)
            << ", seed " << options.seed << "\n";
  std::cout << "floor = max(bytes / " << format_fixed(peak.bandwidth_bytes_per_s / 1e9, 1)
            << " GB/s [" << peak.bandwidth_method << "], flops / "
            << format_fixed((fp8 ? peak.fp8_gemm_flops_per_s : peak.gemm_flops_per_s) / 1e12, 3)
            << " TFLOP/s [" << (fp8 ? peak.fp8_gemm_method : peak.gemm_method) << "])\n";
  if (fp8) std::cout << "FP8 weights count 1 byte each plus their f32 scales\n";
  std::cout << "bytes = weights of the experts used + x, logits, out; flops = 2 * slots * 3*H*I; "
            << "max rel err on " << options.settings.check_tokens
            << " tokens vs float64 reference (tolerance "
            << format_scientific(error_tolerance(options.dtype, options.quant), 0) << ")\n\n";
  print_table(rows, options.dtype, std::cout);
  if (options.settings.breakdown) print_breakdown(rows, std::cout);
  if (!options.json_path.empty()) {
    write_json(options.json_path, rows, options, peak);
    progress("wrote " + options.json_path);
  }
  return failed ? 1 : 0;
}

}  // namespace
}  // namespace ironmoe::tools

int main(int argc, char** argv) {
  ironmoe::tools::BenchOptions options;
  int exit_code = 0;
  if (!ironmoe::tools::parse_bench_options(argc, argv, &options, &exit_code)) return exit_code;
  try {
    return ironmoe::tools::run(options);
  } catch (const std::exception& e) {
    std::cerr << "ironmoe-bench: " << e.what() << "\n";
    return 1;
  }
}
