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
python3 "$(dirname "$0")/ab_summary.py" "$var" "$work" "${values[@]}"
