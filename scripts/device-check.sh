#!/usr/bin/env bash
# The whole check on a GPU machine: configure (Ninja, Release, warnings as errors, CUDA on), build
# with every core, the CUDA and the CPU tests, scripts/sanitize.sh and a short ironmoe-bench over
# every preset. Each step's output is tee'd into $OUT ($OUT unset: ./out), one log per step (at
# most 8 files, what a device run brings back), and $OUT/summary.txt gets one line per step. Exits non-zero when any step fails; later steps still
# run, so one failure does not hide the others.
#
#   scripts/device-check.sh [BUILD_DIR [STEP...]]     (default: build-device, every step)
#
# STEP is one of ctest-cuda, ctest-cpu, sanitizers, bench, python, compare-torch (the build
# always runs), to spend a device call on part of the check. python builds the Python package
# with CUDA (pip install against the machine's PyTorch), runs tests/python and
# examples/hf_moe.py --device cuda; compare-torch runs bench/compare_torch.py over every preset.
# The machine needs no network: third_party/ (googletest, cutlass) must travel with the tree
# (scripts/fetch-deps.sh fills it where a registry is reachable).
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1
build=${1:-build-device}
shift $(($# > 0 ? 1 : 0))
wanted=" ${*:-ctest-cuda ctest-cpu sanitizers bench python compare-torch} "
want() { [[ "$wanted" == *" $1 "* ]]; }
out=${OUT:-$root/out}
mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"
status=0

# step NAME COMMAND...: runs COMMAND, output to the terminal and $out/NAME.log.
step() {
  local name=$1
  shift
  local start=$SECONDS
  echo "== $name: $*" | tee "$out/$name.log"
  "$@" 2>&1 | tee -a "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  local verdict="ok"
  if [ "$rc" -ne 0 ]; then
    verdict="FAILED (exit $rc)"
    status=1
  fi
  echo "$name: $verdict, $((SECONDS - start)) s" | tee -a "$summary"
  return "$rc"
}

if [ ! -f third_party/googletest/CMakeLists.txt ] || [ ! -f third_party/cutlass/include/cutlass/cutlass.h ]; then
  echo "third_party/ is incomplete; run scripts/fetch-deps.sh where a registry is reachable" \
    | tee -a "$summary"
  exit 1
fi

{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
  echo "nvcc: $(nvcc --version 2>&1 | tail -n 1)"
  echo "cmake: $(cmake --version | head -n 1)"
} | tee -a "$summary"

cores=$(nproc)
# shellcheck disable=SC2317  # called through step
configure_and_build() {
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DIRONMOE_WERROR=ON \
    -DIRONMOE_CUDA=ON && cmake --build "$build" -j "$cores"
}
step build configure_and_build || { cat "$summary"; exit 1; }
want ctest-cuda && step ctest-cuda ctest --test-dir "$build" -L cuda --output-on-failure
want ctest-cpu && step ctest-cpu ctest --test-dir "$build" -L cpu --output-on-failure -j "$cores"
# sanitize.sh writes its full log to $out/sanitize.log; this step's log keeps its summary lines.
# IRONMOE_SANITIZE="plan route ..." limits the sanitizers to those programs of sanitize.sh: all
# of them take more than 280 s on an H200, more than a device call has after the build and the
# CUDA tests (docs/device-checks.md).
# shellcheck disable=SC2086  # a list of program names
want sanitizers && step sanitizers env OUT="$out" "$root/scripts/sanitize.sh" "$build" \
  ${IRONMOE_SANITIZE:-}
bench="$build/tools/ironmoe-bench"
if want bench; then
  step bench "$bench" --device cuda --preset all --tokens 1,16,64,256,1024,4096,16384 \
    --json "$out/bench.json"
fi
# shellcheck disable=SC2317  # called through step
python_package() {
  export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 CMAKE_BUILD_PARALLEL_LEVEL=$cores
  python3 -m pip install -q --no-build-isolation --no-deps "$root" || return 1
  local rc=0
  (cd "$(mktemp -d)" && python3 -m pytest -q -rs -W ignore::UserWarning "$root/tests/python") || rc=1
  python3 "$root/examples/hf_moe.py" --device cuda || rc=1
  return $rc
}
want python && step python python_package
if want compare-torch; then
  step compare-torch python3 "$root/bench/compare_torch.py" --bench "$bench" --preset all \
    --tokens 1,16,64,256,1024,4096,16384 --json "$out/compare_torch.json"
fi

echo "---" && cat "$summary"
exit $status
