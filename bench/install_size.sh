#!/usr/bin/env bash
# The disk one install takes: the whole virtual environment VENV (default: the active one) and its largest packages
# (torch, triton, the CUDA runtime libraries under nvidia*, SimpleITK, SciPy), as `du -sh` prints them. Recorded in bench/RESULTS.md
# ("Install size").
set -euo pipefail
VENV=${1:-${VIRTUAL_ENV:?give the virtual environment folder as the argument, or activate it}}
site=$(ls -d "$VENV"/lib/python3*/site-packages)
cd "$site" && du -sh torch triton nvidia* SimpleITK scipy scipy.libs && du -sh "$VENV"
