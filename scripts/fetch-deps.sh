#!/usr/bin/env bash
# Puts the build's third-party sources under third_party/ (git-ignored), so that the same folder
# can travel to a GPU machine that reaches no registry:
#   third_party/googletest  GoogleTest sources (Debian's googletest package)
#   third_party/cutlass     CUTLASS/CuTe headers (PyPI nvidia-cutlass, headers only)
# Safe to run again; does nothing when both are present.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$root/third_party"
cd "$root/third_party"

if [ ! -f googletest/CMakeLists.txt ]; then
  if [ ! -f /usr/src/googletest/CMakeLists.txt ]; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq googletest
  fi
  rm -rf googletest
  cp -r /usr/src/googletest googletest
fi

cutlass_version=4.2.0.0
if [ ! -f cutlass/include/cutlass/cutlass.h ] && { command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; }; then
  tmp=$(mktemp -d)
  python3 -m pip download -q --no-deps "nvidia-cutlass==${cutlass_version}" -d "$tmp"
  python3 -m zipfile -e "$tmp"/nvidia_cutlass-*.whl "$tmp/x"
  rm -rf cutlass
  mkdir -p cutlass/tools/util
  mv "$tmp/x/cutlass_library/source/include" cutlass/include
  mv "$tmp/x/cutlass_library/source/tools/util/include" cutlass/tools/util/include
  rm -rf "$tmp"
fi
echo "third_party: $(ls "$root/third_party" | tr '\n' ' ')"
