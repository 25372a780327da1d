"""ironmoe next to PyTorch's torch._grouped_mm MoE pipeline, measured in one run.

Runs ``ironmoe-bench --json`` for the requested presets and token counts, reads the shapes and
routing of every row from that JSON, then times the PyTorch pipeline on the same shapes:

    route (softmax top-k, or DeepSeek-V3 grouped top-k)  ->  stable argsort of the slots by expert
    ->  gather rows  ->  torch._grouped_mm (gate_up)  ->  SiLU(gate) * up  ->  torch._grouped_mm
    (down)  ->  weight by the routing weights  ->  sum the k slots of each token

bf16 weights and activations, fp32 routing weights; on CUDA the median of CUDA graph replays
(as ironmoe-bench), on the CPU the median wall time. The pipeline is timed with its routing
(comparable to ironmoe-bench, which times routing too) and without it (comparable to the
anchors in ../shared/anchors). Exits non-zero if ironmoe is slower than the pipeline with routing
in any cell, so it can gate a performance change.

    python bench/compare_torch.py [--bench build/tools/ironmoe-bench] [--device cuda]
        [--preset all] [--tokens 1,16,64,256,1024,4096,16384] [--json FILE]
"""

import argparse
import json
import math
import pathlib
import subprocess
import sys
import tempfile
import time

import torch


def route(logits, row, bias):
    """The preset's routing in PyTorch: (weights [T, k] fp32, ids [T, k] int64)."""
    k = row["top_k"]
    if row["routing"] == "grouped_topk":
        tokens, experts = logits.shape
        groups, keep = row["num_groups"], row["topk_groups"]
        scores = torch.sigmoid(logits)
        keys = scores + bias
        group_scores = keys.view(tokens, groups, -1).topk(2, dim=2).values.sum(dim=2)
        kept = group_scores.topk(keep, dim=1).indices
        mask = torch.zeros(tokens, groups, dtype=torch.bool, device=logits.device)
        mask.scatter_(1, kept, True)
        masked = keys.masked_fill(~mask.repeat_interleave(experts // groups, dim=1), -math.inf)
        ids = masked.topk(k, dim=1).indices
        weights = scores.gather(1, ids)
    else:
        probs = torch.sigmoid(logits) if row["routing"] == "sigmoid_topk" else \
            torch.softmax(logits, dim=1)
        weights, ids = probs.topk(k, dim=1)
    if row["renormalize"]:
        weights = weights / weights.sum(dim=1, keepdim=True)
    return weights * row["routed_scaling_factor"], ids


def experts_pipeline(x, w13, w2, weights, ids):
    """The grouped-GEMM pipeline after routing: [T, H] out."""
    tokens, k = ids.shape
    num_experts, inter = w2.shape[0], w2.shape[2]
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    # bincount sizes its output from the data (a host sync, not capturable); index_add_ does not.
    counts = torch.zeros(num_experts, dtype=torch.int64, device=ids.device)
    counts.index_add_(0, flat, torch.ones_like(flat))
    offsets = torch.cumsum(counts, 0).to(torch.int32)
    rows = x[order // k]
    gate_up = torch._grouped_mm(rows, w13.transpose(-2, -1), offs=offsets)
    h = torch.nn.functional.silu(gate_up[:, :inter]) * gate_up[:, inter:]
    y = torch._grouped_mm(h, w2.transpose(-2, -1), offs=offsets)
    unsorted = torch.empty_like(y)
    unsorted[order] = y
    return (unsorted.view(tokens, k, -1).float() * weights.unsqueeze(-1)).sum(dim=1).to(x.dtype)


def median_us(fn, device, iters):
    """Median of `iters` runs of fn: CUDA graph replays timed with events, or CPU wall time."""
    if device == "cuda":
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        for _ in range(5):
            graph.replay()
        times = []
        for _ in range(iters):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) * 1e3)
    else:
        fn()
        times = []
        for _ in range(iters):
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e6)
    return sorted(times)[len(times) // 2]


def uniform(shape, bound, gen, device):
    """Uniform in [-bound, bound], generated on the device (deepseek-v3's weights are 22 GB)."""
    values = torch.empty(shape, dtype=torch.bfloat16, device=device)
    return values.uniform_(-bound, bound, generator=gen)


_weights = {}


def preset_weights(row, device, gen):
    """The experts of one preset's shape, made once and kept for all its token counts."""
    key = (row["num_experts"], row["hidden"], row["intermediate"])
    if key not in _weights:
        _weights.clear()  # one preset's weights at a time
        experts, hidden, inter = key
        _weights[key] = (uniform((experts, 2 * inter, hidden), math.sqrt(3 / hidden), gen, device),
                         uniform((experts, hidden, inter), math.sqrt(3 / inter), gen, device))
    return _weights[key]


def time_pipeline(row, device, iters, seed):
    gen = torch.Generator(device=device).manual_seed(seed)
    tokens, hidden = row["tokens"], row["hidden"]
    experts = row["num_experts"]
    w13, w2 = preset_weights(row, device, gen)
    x = uniform((tokens, hidden), math.sqrt(3), gen, device)
    logits = uniform((tokens, experts), 3.0, gen, device).float()
    bias = uniform((experts,), 0.1, gen, device).float()
    weights, ids = route(logits, row, bias)
    with torch.no_grad():
        after_routing = median_us(lambda: experts_pipeline(x, w13, w2, weights, ids), device,
                                  iters)
        whole = median_us(lambda: experts_pipeline(x, w13, w2, *route(logits, row, bias)),
                          device, iters)
    used = int(torch.unique(ids).numel())
    return whole, after_routing, used


def main():
    here = pathlib.Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bench", default=str(here / "build" / "tools" / "ironmoe-bench"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default=None, help="ironmoe-bench --preset (default: its own)")
    parser.add_argument("--tokens", default=None, help="ironmoe-bench --tokens (default: its own)")
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    parser.add_argument("bench_args", nargs="*", help="more ironmoe-bench arguments, after --")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        bench_json = pathlib.Path(tmp) / "bench.json"
        command = [args.bench, "--device", args.device, "--json", str(bench_json)]
        if args.preset:
            command += ["--preset", args.preset]
        if args.tokens:
            command += ["--tokens", args.tokens]
        command += args.bench_args
        print("running:", " ".join(command), file=sys.stderr, flush=True)
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        bench = json.loads(bench_json.read_text())

    header = (f"{'preset':20s} {'tokens':>6s} {'ironmoe us':>11s} {'torch us':>10s} "
              f"{'torch us after routing':>22s} {'ironmoe / torch':>15s}")
    print(f"device: {bench['machine']['name']}; torch {torch.__version__}; ironmoe-bench: "
          f"{bench['command']}")
    print(header)
    print("-" * len(header))
    rows, slower = [], []
    for seed, row in enumerate(bench["rows"]):
        if "skipped" in row:
            continue
        whole, after, used = time_pipeline(row, args.device, args.iters, seed)
        ratio = row["median_us"] / whole
        rows.append({**row, "torch_us": whole, "torch_after_routing_us": after,
                     "torch_experts_used": used})
        if ratio > 1.0:
            slower.append(f"{row['preset']} T={row['tokens']}")
        print(f"{row['preset']:20s} {row['tokens']:6d} {row['median_us']:11.1f} {whole:10.1f} "
              f"{after:22.1f} {ratio:15.2f}", flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps({"bench": bench, "rows": rows}, indent=1))
    if slower:
        print("ironmoe is slower than the torch._grouped_mm pipeline at: " + ", ".join(slower))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
