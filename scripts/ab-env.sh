#!/usr/bin/env bash
# A/B of an environment switch (IRONMOE_FUSED_DECODE, IRONMOE_OVERLAP_LAUNCHES, ...) in one run on
# one machine: ironmoe-bench runs once per value and round, the values alternating within each
# round so that drift of clocks or temperature falls on every value alike; then one line per
# (preset, tokens) gives each value's median over the rounds and the change against the first.
# Stopped by a time limit (TERM) or ^C, it prints that summary over the runs that finished.
#
#   scripts/ab-env.sh VAR "VALUE..." ROUNDS BENCH [ironmoe-bench options...]
#   e.g. scripts/ab-env.sh IRONMOE_FUSED_DECODE "0 1" 2 build-device/tools/ironmoe-bench \
#          --device cuda --preset qwen3-30b-a3b,mixtral-8x7b --tokens 1,2,4
set -euo pipefail
if [ $# -lt 4 ]; then
  sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
var=$1
read -r -a values <<<"$2"
rounds=$3
bench=$4
shift 4
# shellcheck source=scripts/ab_rounds.sh
source "$(dirname "$0")/ab_rounds.sh"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ab_init "$var" "$work" "${values[@]}"
for ((round = 1; round <= rounds; ++round)); do
  for value in "${values[@]}"; do
    echo "== $var=$value, round $round" >&2
    ab_run "$value" "$round" env "$var=$value" "$bench" "$@"
  done
done
ab_summary
