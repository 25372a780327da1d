#!/usr/bin/env bash
# AddressSanitizer and UndefinedBehaviorSanitizer over the CPU backend, the reference, the tools
# and the CPU tests: a CPU-only build (no CUDA) with both sanitizers, every undefined-behaviour
# report fatal, then every CTest test but the install test (its consumer project is built
# without the sanitizer runtime). ironmoe-check's robustness matrix (NaN, hostile ids, boundary
# batch sizes, argument errors) is one of those tests, so "never a fault" is checked on every
# input it tries, not only "the right answer". The GPU counterpart is scripts/sanitize.sh.
#   scripts/sanitize-cpu.sh [BUILD_DIR]        (default: build-sanitize-cpu)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build-sanitize-cpu}

"$root/scripts/install-deps.sh"
flags="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DIRONMOE_WERROR=ON \
  -DIRONMOE_CUDA=OFF -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" \
  -DCMAKE_SHARED_LINKER_FLAGS="$flags"
jobs=$("$root/scripts/build-jobs.sh")
cmake --build "$build" -j "$jobs"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir "$build" --output-on-failure -j "$jobs" -E '^install_consumer$'
