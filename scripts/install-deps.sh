#!/usr/bin/env bash
# Installs what building ironmoe needs on Debian/Ubuntu when it is missing (cmake, ninja, g++,
# GoogleTest; sudo when not root), then fills third_party/ (scripts/fetch-deps.sh: GoogleTest
# sources, and CUTLASS headers when a CUDA compiler is present). Safe to run again.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

# CMake looks for nvcc in /usr/local/cuda/bin as well; so must fetch-deps.sh, which only fetches
# CUTLASS when it finds nvcc on the PATH.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="/usr/local/cuda/bin:$PATH"
fi

packages=()
command -v cmake >/dev/null 2>&1 || packages+=(cmake)
command -v ninja >/dev/null 2>&1 || packages+=(ninja-build)
command -v g++ >/dev/null 2>&1 || packages+=(g++)
if [ ! -f "$root/third_party/googletest/CMakeLists.txt" ] &&
   [ ! -f /usr/src/googletest/CMakeLists.txt ]; then
  packages+=(googletest)
fi
# CUTLASS comes from PyPI through pip, needed only when there is a CUDA compiler.
if command -v nvcc >/dev/null 2>&1 &&
   [ ! -f "$root/third_party/cutlass/include/cutlass/cutlass.h" ] &&
   ! python3 -m pip --version >/dev/null 2>&1; then
  packages+=(python3-pip)
fi

if [ ${#packages[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  echo "install-deps: installing ${packages[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${packages[@]}"
fi

"$root/scripts/fetch-deps.sh"
