#!/usr/bin/env bash
# The GPU machine's software, checked on a machine without a GPU, before a GPU is lent.
#
# The GPU machine has other versions than the CI machine (PyTorch 2.11 built for CUDA 13, Triton 3.6; see
# bench/RESULTS.md, "GPU check: how to run"). This script builds that stack in a fresh virtual environment from the
# package index and checks, in order, each step's log under $OUT:
#   1. versions.txt    what was installed
#   2. tests.log       the whole test suite on the CPU (Triton kernels through its interpreter)
#   3. dry_run.log     bench/gpu_check.py --dry-run
#   4. triton_aot.md   bench/triton_aot.py --arch 80 90 --candidates: every kernel compiled for sm_80 / sm_90
#   5. gsplat.log      gsplat's CUDA extension built just in time for sm_90 with nvcc from the package index
#                      (what the 2D part of the GPU check does first on the GPU)
# and prints one line per step: ok or failed. NumPy is held below 2.4 by default, because Triton 3.6's interpreter
# fails on NumPy 2.4 and later (the interpreter tests would then skip, not run); NUMPY="numpy" takes the newest.
#
#   bash bench/gpu_stack_check.sh                       # TORCH=2.11.0 CUDA=13.0 OUT=gpu_stack_check
#   TORCH=2.12.0 OUT=/tmp/stack212 bash bench/gpu_stack_check.sh
#
# Needs the package index (PyPI) and about 6 GB of disk for the CUDA build of PyTorch and its libraries.
set -uo pipefail
cd "$(dirname "$0")/.."
TORCH=${TORCH:-2.11.0}
CUDA=${CUDA:-13.0}
NUMPY=${NUMPY:-"numpy<2.4"}
VENV=${VENV:-/tmp/medgmae-gpu-stack}
OUT=$(mkdir -p "${OUT:-gpu_stack_check}" && cd "${OUT:-gpu_stack_check}" && pwd)
JOBS=${JOBS:-2}

step() {  # step NAME COMMAND...: run, log to $OUT/NAME.log, print ok / failed
    local name=$1
    shift
    if "$@" >"$OUT/$name.log" 2>&1; then
        echo "$name: ok"
    else
        echo "$name: FAILED (see $OUT/$name.log)"
        return 1
    fi
}

install_stack() {
    rm -rf "$VENV" && python3 -m venv "$VENV" && source "$VENV/bin/activate" \
        && pip install "torch==$TORCH" "$NUMPY" \
        && pip install -e ".[test]" "torch==$TORCH" \
        && pip install --no-deps ninja "nvidia-cuda-nvcc==$CUDA.*" "nvidia-cuda-cccl==$CUDA.*" \
            "nvidia-nvvm==$CUDA.*" "nvidia-cuda-crt==$CUDA.*"
}

cuda_home() {  # the pip CUDA toolkit as a CUDA_HOME (torch's extension builder wants lib64/ and libcudart.so)
    local home
    home="$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia/cu${CUDA%%.*}"
    ln -sfn lib "$home/lib64"
    ln -sf "$(cd "$home/lib" && ls libcudart.so.* | head -1)" "$home/lib/libcudart.so"
    echo "$home"
}

build_gsplat() {
    local home
    home=$(cuda_home) || return 1
    rm -rf "$OUT/torch_extensions"
    CUDA_HOME=$home PATH=$home/bin:$PATH TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=$JOBS \
        TORCH_EXTENSIONS_DIR="$OUT/torch_extensions" python -c "
from gsplat.cuda._backend import _C
assert _C is not None, 'gsplat built no CUDA extension'
print('gsplat CUDA extension:', _C.__file__)"
}

step install install_stack || exit 1
source "$VENV/bin/activate"
python -c "import torch, triton, numpy, gsplat, monai; print('torch', torch.__version__, '| triton', triton.__version__,
'| numpy', numpy.__version__, '| gsplat', gsplat.__version__, '| monai', monai.__version__)" | tee "$OUT/versions.txt"
step tests python -m pytest -n "$JOBS" -q -p no:cacheprovider tests
step dry_run python bench/gpu_check.py --dry-run --out "$OUT/dry_run"
step triton_aot python bench/triton_aot.py --arch 80 90 --candidates --out "$OUT/triton_aot.md"
step gsplat build_gsplat
