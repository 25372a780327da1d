#!/usr/bin/env bash
# Per-kernel duration and DRAM traffic of one ironmoe-bench row, read by Nsight Compute (ncu) on a
# GPU machine: what each launch of the layer costs, to find where the time between the floor and
# the measured median goes. Kernels are serialised under ncu, so durations add up to more than a
# graph replay, but each kernel's own time and bandwidth are its real ones.
#
#   scripts/profile-kernels.sh BENCH [ironmoe-bench options...]
#   e.g. scripts/profile-kernels.sh build-device/tools/ironmoe-bench --preset qwen3-30b-a3b --tokens 1
#
# Prints one line per kernel name: launches, mean microseconds, mean DRAM bytes read and written,
# and the bandwidth that gives. The raw CSV goes to $OUT/ncu-<tokens>.csv when OUT is set.
set -euo pipefail
bench=$1
shift
ours='regex:route_|plan_|gather_|combine_|stream_|decode_|write_problem|device_kernel|gated_|simt|quantize_|amax_|scale_expert'
metrics=gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__grid_size
csv=$(mktemp)
# Two timed calls are enough: each kernel runs the same work every call.
ncu --csv --page raw --print-units base --clock-control none --kernel-name "$ours" --launch-count 60 \
  --metrics "$metrics" "$bench" --device cuda --iters 2 --check-tokens 0 "$@" 2>/dev/null |
  sed -n '/^"ID"/,$p' >"$csv"
if [ -n "${OUT:-}" ]; then cp "$csv" "$OUT/ncu-$(date +%H%M%S).csv"; fi
python3 - "$csv" <<'EOF'
import csv, sys, collections
rows = list(csv.DictReader(open(sys.argv[1])))
rows = [r for r in rows if r.get("Kernel Name") and r["gpu__time_duration.sum"][0].isdigit()]
by_name = collections.OrderedDict()
for r in rows:
    name = r["Kernel Name"].replace("(anonymous namespace)::", "").split("<")[0].split("(")[0]
    name = name.split()[-1].split("::")[-1]
    by_name.setdefault(name, []).append(r)
def num(r, key):
    return float(r[key].replace(",", ""))
total = 0.0
for name, group in by_name.items():
    us = sum(num(r, "gpu__time_duration.sum") for r in group) / len(group) / 1e3
    read = sum(num(r, "dram__bytes_read.sum") for r in group) / len(group)
    write = sum(num(r, "dram__bytes_write.sum") for r in group) / len(group)
    grid = group[0]["launch__grid_size"]
    total += us
    print(f"{name:40s} x{len(group):3d} {us:9.2f} us  read {read / 1e6:9.2f} MB  "
          f"write {write / 1e6:8.2f} MB  {(read + write) / us / 1e6:7.3f} TB/s  grid {grid}")
print(f"{'sum of kernel means':40s}      {total:9.2f} us")
EOF
