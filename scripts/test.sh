#!/usr/bin/env bash
# Installs the dependencies, builds everything with warnings as errors and runs every test: the
# C++ tests through CTest, then the Python package's (scripts/python-test.sh: pip install . and
# pytest). CUDA sources are compiled when nvcc is present; the CUDA tests skip on a machine
# without a GPU.
#   scripts/test.sh [BUILD_DIR]        (default: build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}

"$root/scripts/install-deps.sh"
if [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DIRONMOE_WERROR=ON
jobs=$("$root/scripts/build-jobs.sh")
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs"
"$root/scripts/python-test.sh"
