#!/usr/bin/env bash
# Download the wheels of bench/gpu_requirements.txt for the GPU machine (CPython 3.12, x86-64 Linux) into a folder
# (default .whl/ at the repository root, git-ignored) and print their total size, which must stay under 64 MiB.
#
#   bash bench/gpu_wheels.sh [DEST] [PYTHON_VERSION]
#
# Then, on the GPU machine, from the repository root with DEST carried along (the one-call command of
# bench/gpu_check.py):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#       .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && python3 bench/gpu_check.py --out $OUT
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${1:-$root/.whl}"
py="${2:-3.12}"
req="$root/bench/gpu_requirements.txt"
[[ -f "$req" ]] || { echo "gpu_wheels.sh: $req not found" >&2; exit 2; }
[[ "$py" =~ ^3\.[0-9]+$ ]] || { echo "gpu_wheels.sh: PYTHON_VERSION must look like 3.12, got '$py'" >&2; exit 2; }
mkdir -p "$dest"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
python3 -m pip download --no-deps --only-binary=:all: --python-version "$py" --implementation cp "${platforms[@]}" \
    -d "$dest" -r "$req"
# one version per package: pip install of two would fail on the GPU machine
dups="$(ls "$dest"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)"
[[ -z "$dups" ]] || { echo "gpu_wheels.sh: several versions of: $dups in $dest; remove the old ones" >&2; exit 1; }
bytes="$(du -cb "$dest"/*.whl | tail -1 | cut -f1)"
echo "$(ls "$dest"/*.whl | wc -l) wheels, $((bytes / 1024 / 1024)) MiB in $dest (limit 64 MiB with the repository)"
(( bytes < 60 * 1024 * 1024 )) || { echo "gpu_wheels.sh: over the carry limit" >&2; exit 1; }
