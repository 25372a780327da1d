#!/usr/bin/env bash
# One device call's worth of checks for a change under way (scripts/device-check.sh is the whole
# check): build, the named CUDA test programs, scripts/sanitize.sh over the named programs, then
# any ironmoe-bench runs given after --bench (one quoted argument list each). Every step has a
# time limit, so a slow step cannot take the rest of the call with it; logs go to $OUT.
#
#   scripts/session-check.sh BUILD "TEST_REGEX" "SANITIZE_PROGRAMS" [--bench "ARGS" ...]
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$1 tests=$2 sanitize=$3
shift 3
out=${OUT:-$root/out}
mkdir -p "$out"
"$root/scripts/device-check.sh" "$build" none >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
tail -3 "$out/build.log"
if [ -n "$tests" ]; then
  timeout 300 ctest --test-dir "$build" -R "$tests" --output-on-failure >"$out/ctest.log" 2>&1
  echo "ctest rc=$?"; grep -E "tests passed|Failed|FAILED|\*\*\*" "$out/ctest.log" | head -20
fi
if [ -n "$sanitize" ]; then
  # shellcheck disable=SC2086  # a list of program names
  OUT="$out" timeout 240 "$root/scripts/sanitize.sh" "$build" $sanitize >"$out/sanitize-summary.log" 2>&1
  echo "sanitize rc=$?"; tail -6 "$out/sanitize-summary.log"
fi
if [ "${1:-}" = --bench ]; then
  shift
  for args in "$@"; do
    # shellcheck disable=SC2086  # one ironmoe-bench argument list
    timeout 120 "$build/tools/ironmoe-bench" --device cuda $args 2>&1 | tee -a "$out/bench.log" | grep -v "^$"
  done
fi
