"""The renderer's Triton kernels compiled for the GPU on a machine without one (``bench/triton_aot.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "triton_aot.py"


def test_kernels_compile_for_hopper(tmp_path):
    """The kernel source compiles for sm_90 (no GPU needed; ``bench/triton_aot.py``): TF32 tensor-core products,
    ex2, the grid rounding of the coefficient slices, atomic adds without a return value in the backward, and no
    register spills at any launch shape ``_launch_config`` picks or ``bench/render_launch.py`` times (the
    machine-code checks where Triton's bundled ``cuobjdump`` is there to read the cubin)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path / "cache")
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--arch", "90", "--candidates"], capture_output=True, encoding="utf-8", errors="replace",
        env=env, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout.strip().splitlines()[-1])["rows"]
    kernels = {r["kernel"]: r for r in rows}
    regimes = ("dense", "medium", "sparse")
    assert {"emit"} | {f"{k}_{r}" for k in ("fwd", "bwd") for r in regimes} <= set(kernels)
    assert any(name.startswith("bwd_dense_") for name in kernels)  # the other shapes of bench/render_launch.py
    for name, k in kernels.items():
        sass = "registers" in k  # cuobjdump was there
        if name != "emit":
            # the coefficient slicing's exact rounding to a grid was not folded away by the compiler
            assert k["ptx_mma_tf32"] and k["ptx_ex2"] and k["ptx_grid_round"], name
            assert not sass or (k["sass_tensor_core"] > 0 and k["sass_ex2"] > 0), name
        if name.startswith("bwd"):
            assert k["ptx_relaxed_add"], name
            assert not sass or (k["sass_red"] > 0 and k["sass_atom"] == 0), name  # no returned value waited for
        assert k.get("spill_bytes") in (0, None), f"{name} spills {k['spill_bytes']} bytes"
        # at least 8 warps per multiprocessor (the dense backward: two blocks of 4 warps at ~180 registers)
        assert not sass or k["resident_warps"] >= 8, f"{name}: {k['resident_warps']} warps per SM"
