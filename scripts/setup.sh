#!/usr/bin/env bash
# Install the toolkit into the current Python environment (Python >= 3.10).
#   bash scripts/setup.sh          # the toolkit
#   bash scripts/setup.sh --test   # the toolkit and its test extras (pytest, pytest-xdist)
#   PYTHON=/path/to/python bash scripts/setup.sh   # another interpreter than python (or python3)
# On a machine without an NVIDIA GPU the CPU build of PyTorch is installed first, so that pip does not pull
# several GB of CUDA wheels: a wheel from pip's configured local wheel folders (find-links) when there is one
# (installed on its own; its dependencies come with the toolkit's from the configured indexes), otherwise PyTorch's
# CPU wheel index.
set -euo pipefail
cd "$(dirname "$0")/.."
# the Python to install into: $PYTHON if set, else `python`, else `python3` (systems with only python3 on PATH)
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif command -v python >/dev/null 2>&1; then
  PY=python
elif command -v python3 >/dev/null 2>&1; then
  PY=python3
else
  echo "[setup] neither python nor python3 is on PATH: set PYTHON to the interpreter to install into" >&2
  exit 1
fi
extra=""
case "${1:-}" in
  "") ;;
  --test) extra="[test]" ;;
  *) echo "usage: bash scripts/setup.sh [--test]" >&2; exit 2 ;;
esac

TORCH_SPEC="torch>=2.8"  # as pyproject.toml: MONAI 1.6's own minimum
if "$PY" -c "import torch" 2>/dev/null; then
  echo "[setup] PyTorch $("$PY" -c 'import torch; print(torch.__version__)') already installed"
elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "[setup] NVIDIA GPU found: installing PyTorch with CUDA"
  "$PY" -m pip install "$TORCH_SPEC"
else
  echo "[setup] no GPU found: installing the CPU build of PyTorch"
  "$PY" -m pip install --no-index --no-deps "$TORCH_SPEC" 2>/dev/null \
    || "$PY" -m pip install --index-url https://download.pytorch.org/whl/cpu "$TORCH_SPEC"
fi
"$PY" -m pip install -e ".${extra}"
echo "[setup] done"
