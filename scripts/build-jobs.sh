#!/usr/bin/env bash
# Prints how many compile jobs this machine can run at once: one per core, but at most one per
# 5 GiB of memory, since one nvcc compile of a CUTLASS GEMM takes about 4.7 GB.
set -euo pipefail
cores=$(nproc)
mem_kib=$(awk '/MemTotal/ {print $2}' /proc/meminfo)
by_memory=$(( mem_kib / (5 * 1024 * 1024) ))
jobs=$(( cores < by_memory ? cores : by_memory ))
echo $(( jobs < 1 ? 1 : jobs ))
