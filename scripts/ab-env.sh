#!/usr/bin/env bash
# A/B of an environment switch (IRONMOE_FUSED_DECODE, IRONMOE_OVERLAP_LAUNCHES, ...) in one run on
# one machine: ironmoe-bench runs once per value and round, the values alternating within each
# round so that drift of clocks or temperature falls on every value alike; then one line per
# (preset, tokens) gives each value's median over the rounds and the change against the first.
#
#   scripts/ab-env.sh VAR "VALUE..." ROUNDS BENCH [ironmoe-bench options...]
#   e.g. scripts/ab-env.sh IRONMOE_FUSED_DECODE "0 1" 2 build-device/tools/ironmoe-bench \
#          --device cuda --preset qwen3-30b-a3b,mixtral-8x7b --tokens 1,2,4
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
var=$1
read -r -a values <<<"$2"
rounds=$3
bench=$4
shift 4
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for ((round = 1; round <= rounds; ++round)); do
  for value in "${values[@]}"; do
    echo "== $var=$value, round $round" >&2
    log="$work/$value-$round.log"
    if ! env "$var=$value" "$bench" "$@" --json "$work/$value-$round.json" >"$log" 2>&1; then
      cat "$log" >&2
      exit 1
    fi
  done
done
python3 - "$var" "$work" "${values[@]}" <<'EOF'
import glob, json, os, statistics, sys
var, work, values = sys.argv[1], sys.argv[2], sys.argv[3:]
medians = {}  # (preset, tokens) -> value -> [median_us per round]
order = []
for value in values:
    for path in sorted(glob.glob(os.path.join(work, f"{value}-*.json"))):
        for row in json.load(open(path))["rows"]:
            if "median_us" not in row:
                continue
            key = (row["preset"], row["tokens"])
            if key not in medians:
                medians[key] = {}
                order.append(key)
            medians[key].setdefault(value, []).append(row["median_us"])
header = f"{'preset':20s} {'tokens':>7s}" + "".join(f" {var + '=' + v:>24s}" for v in values)
print(header + "  change")
for key in order:
    cells = [statistics.median(medians[key][v]) if v in medians[key] else float("nan")
             for v in values]
    text = "".join(f" {c:24.1f}" for c in cells)
    change = ", ".join(f"{(c / cells[0] - 1) * 100:+.1f}%" for c in cells[1:])
    print(f"{key[0]:20s} {key[1]:7d}{text}  {change}")
EOF
