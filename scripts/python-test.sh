#!/usr/bin/env bash
# Builds the Python package (pip install .: the PyTorch ops, with CUDA when nvcc and a CUDA PyTorch
# are there) and runs its pytest suite (tests/python). Installs torch, pytest, scikit-build-core
# and transformers from PyPI when missing.
# The package is built against the torch already installed (--no-build-isolation), so the ops
# and the torch they load into always match.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

missing=()
"$python" -c "import torch" 2>/dev/null || missing+=("torch>=2.4")
"$python" -c "import pytest" 2>/dev/null || missing+=(pytest)
"$python" -c "import scikit_build_core" 2>/dev/null || missing+=("scikit-build-core>=0.10")
# The transformers integration's tests need it (an optional dependency of the package).
"$python" -c "import transformers" 2>/dev/null || missing+=("transformers>=5")
if [ ${#missing[@]} -gt 0 ]; then
  # PyPI's Linux torch wheels bring the CUDA libraries along: about 7 GB installed.
  site=$("$python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  free_gb=$(df -Pk "$site" | awk 'NR == 2 {print int($4 / 1048576)}')
  if [ "$free_gb" -lt 10 ]; then
    echo "python-test: NOT RUN: ${missing[*]} must be installed and only ${free_gb} GB are free" \
         "at $site (torch needs about 7 GB); the C++ tests above are unaffected" >&2
    exit 0
  fi
  echo "python-test: installing ${missing[*]}"
  "$python" -m pip install -q --no-cache-dir "${missing[@]}"
fi
"$python" -m pip install -q --no-build-isolation "$root"
# Run from outside the tree so that the installed package, not python/, is imported.
cd "$(mktemp -d)"
"$python" -m pytest -q -W ignore::UserWarning "$root/tests/python"
