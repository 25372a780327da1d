#!/usr/bin/env bash
# Why one kernel of an ironmoe-bench row takes its time: Nsight Compute's detailed sections
# (speed of light, compute and memory workload, scheduler and warp-state statistics with stall
# reasons, occupancy, launch statistics, instruction counts) for the first matching launch after
# the bench's warm-up, printed as text. scripts/profile-kernels.sh says which kernel to look at;
# this says whether it is bound by memory, instruction issue, or waiting (and on what).
#
#   scripts/profile-detail.sh BENCH KERNEL_REGEX [ironmoe-bench options...]
#   e.g. scripts/profile-detail.sh build-device/tools/ironmoe-bench 'quantize_rows' \
#          --preset qwen3-30b-a3b --quant fp8-block --tokens 4096
#
# The report also goes to $OUT/ncu-detail-<time>.txt when OUT is set.
set -euo pipefail
if [ $# -lt 2 ]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
bench=$1
kernel=$2
shift 2
sections=(SpeedOfLight ComputeWorkloadAnalysis MemoryWorkloadAnalysis SchedulerStats
  WarpStateStats Occupancy LaunchStats InstructionStats)
section_args=()
for section in "${sections[@]}"; do section_args+=(--section "$section"); done
report=$(mktemp)
# Skip the warm-up call's launches: the bench's first call builds its graph, the second is timed.
ncu --clock-control none --kernel-name "regex:$kernel" --launch-skip 2 --launch-count 1 \
  "${section_args[@]}" "$bench" --device cuda --iters 2 --check-tokens 0 "$@" >"$report" 2>&1 ||
  { tail -20 "$report"; exit 1; }
grep -v '^==PROF==' "$report"
if [ -n "${OUT:-}" ]; then cp "$report" "$OUT/ncu-detail-$(date +%H%M%S).txt"; fi
