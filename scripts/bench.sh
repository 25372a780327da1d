#!/usr/bin/env bash
# Installs the dependencies, builds ironmoe-bench and runs it. With no arguments it runs the
# default sweep (on the GPU when one is visible, else a CPU sweep of about a minute); any
# arguments are passed on to ironmoe-bench (see ironmoe-bench --help).
#   scripts/bench.sh [ironmoe-bench options]     (build directory: build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=$root/build

"$root/scripts/install-deps.sh"
if [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "$("$root/scripts/build-jobs.sh")" --target ironmoe-bench
"$build/tools/ironmoe-bench" "$@"
