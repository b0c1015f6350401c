"""The renderer's Triton kernels compiled ahead of time for NVIDIA GPUs, on a machine without one.

Triton compiles a kernel for a named target (``GPUTarget("cuda", arch, 32)``) down to PTX and a cubin with the
``ptxas`` it bundles, no GPU needed. This script compiles the three kernels of :mod:`medgmae.render` (the pair
emission of ``_triton_binning``, the forward and backward of ``_triton_kernels``) at the launch shapes that
``_triton_impl._launch_config`` picks in each regime (dense, medium, sparse tiles; 8^3 tiles) and reads the machine
code back:

* resources (``cuobjdump -res-usage``): registers per thread, spilled bytes (``LOCAL``), stack, shared memory;
* instructions (``cuobjdump -sass``): tensor-core products (``HMMA`` / ``HGMMA``), ``MUFU.EX2``, float64
  arithmetic (``DADD``/``DMUL``/``DFMA``), atomic adds without a return value (``RED``) and with one (``ATOM``);
* resident warps per multiprocessor, from the registers and shared memory by the occupancy formula of NVIDIA's
  occupancy calculator (:func:`resident_warps`; a calculation, not a measurement);
* in the PTX: TF32 tensor-core products and the two exact grid-rounding additions of the coefficient slicing
  (``+-12288 * 2^k``; :mod:`medgmae.render._triton_kernels`, *Precision*) not folded away by the compiler.

Run it with the Triton to check (the version is in the output), e.g. the GPU machine's older one installed into a
separate folder and put first on ``PYTHONPATH``::

    python bench/triton_aot.py --arch 80 90 --out triton_aot.md
    PYTHONPATH=/tmp/triton36 python bench/triton_aot.py --arch 90
    python bench/triton_aot.py --arch 90 --candidates   # the shapes bench/render_launch.py times on a GPU

Prints a markdown table, and the rows as JSON on the last line (``tests/test_triton_aot.py`` reads them). These
are static facts of the compiled code, not timings: what runs fast is measured on a GPU (``bench/gpu_check.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.pop("TRITON_INTERPRET", None)  # compile, do not interpret (before triton is imported)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import medgmae.render._triton_binning as TB  # noqa: E402
import medgmae.render._triton_kernels as TK  # noqa: E402
from bench.render_launch import CANDIDATES, REGIME_PER_TILE, chosen  # noqa: E402

_COMMON = {"N_TILES": "i32", "NT_H": "i32", "NT_W": "i32", "D": "i32", "H": "i32", "W": "i32", "thr": "fp32"}
_CONSTS = {"TILE": "constexpr", "BLOCK_V": "constexpr", "BLOCK_G": "constexpr"}
_GAUSSIANS = {"means_ptr": "*fp32", "conics_ptr": "*fp32", "inten_ptr": "*fp32", "gids_ptr": "*i32",
              "tile_start_ptr": "*i64"}  # fmt: skip
SIGNATURES = {
    "emit": {"tlo_ptr": "*i32", "span_ptr": "*i32", "start_ptr": "*i64", "means_ptr": "*fp32",
             "conics_ptr": "*fp32", "keys_ptr": "*i32", "gids_ptr": "*i32", "K": "i32", "NT_H": "i32",
             "NT_W": "i32", "N_TILES": "i32", "SENTINEL": "i32", "cull_dist": "fp32", "TILE": "constexpr",
             "BLOCK": "constexpr"},
    "fwd": {**_GAUSSIANS, "out_ptr": "*fp32", **_COMMON, **_CONSTS},
    "bwd": {**_GAUSSIANS, "grad_out_ptr": "*fp32", "g_means_ptr": "*fp32", "g_conics_ptr": "*fp32",
            "g_inten_ptr": "*fp32", **_COMMON, **_CONSTS},
}  # fmt: skip
TILE = TB.TILE
#: per multiprocessor: shared memory a kernel can use (bytes), from NVIDIA's CUDA C++ programming guide
#: (compute capability table); both have 65,536 registers, at most 64 resident warps and 32 blocks
_SHARED_PER_SM = {80: 167_936, 90: 233_472}


def resident_warps(arch: int, registers: int, shared_bytes: int, num_warps: int) -> int | None:
    """Warps of one kernel resident on a multiprocessor at once (occupancy is this over 64).

    Registers are allocated per warp in units of 256 (``ceil(32 * registers / 256) * 256``), from four quarters of
    16,384 each, and a block takes 1 KiB of shared memory beyond its own; the blocks that fit both, at most 32 and
    64 warps, times the block's warps. ``None`` for an architecture not in the table.
    """
    if arch not in _SHARED_PER_SM:
        return None
    per_warp = -(-32 * registers // 256) * 256
    warps_by_regs = 4 * (16_384 // per_warp)
    blocks = min(warps_by_regs // num_warps, _SHARED_PER_SM[arch] // (shared_bytes + 1024), 32, 64 // num_warps)
    return blocks * num_warps


def _tool(name: str) -> str | None:
    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    return path if os.path.exists(path) else None


def _sass_facts(cubin: bytes, workdir: str) -> dict:
    """Resources and instruction counts of a cubin, read with Triton's bundled ``cuobjdump`` (empty without it)."""
    tool = _tool("cuobjdump")
    if tool is None:
        return {}
    path = os.path.join(workdir, "k.cubin")
    with open(path, "wb") as f:
        f.write(cubin)
    usage = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True).stdout
    sass = subprocess.run([tool, "-sass", path], capture_output=True, text=True, check=True).stdout
    res = {key.lower(): int(v) for key, v in re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage)}

    def count(pattern: str) -> int:
        return len(re.findall(pattern, sass))

    return {
        "registers": res.get("reg"), "spill_bytes": res.get("local"), "stack_bytes": res.get("stack"),
        "static_shared_bytes": res.get("shared"), "sass_tensor_core": count(r"\bH(?:G)?MMA\."),
        "sass_ex2": count(r"\bMUFU\.EX2\b"), "sass_fp64": count(r"\bD(?:ADD|MUL|FMA)\b"),
        "sass_red": count(r"\bREDG?\.[A-Z0-9.]*ADD"), "sass_atom": count(r"\bATOMG?\.[A-Z0-9.]*ADD"),
    }  # fmt: skip


def compile_kernel(name: str, fn, constexprs: dict, num_warps: int, arch: int, workdir: str) -> dict:
    """Compile one kernel for ``sm_<arch>`` and return its static facts (module docstring)."""
    kernel = triton.compile(
        ASTSource(fn=fn, signature=SIGNATURES[name.split("_")[0]], constexprs=constexprs),
        target=GPUTarget("cuda", arch, 32),
        options={"num_warps": num_warps, "enable_fp_fusion": TB.FP_FUSION},  # as the renderer launches them
    )
    ptx = kernel.asm["ptx"]
    row = {
        "arch": arch, "kernel": name, "constexprs": constexprs, "num_warps": num_warps,
        "shared_bytes": kernel.metadata.shared,
        "ptx_mma_tf32": bool(re.search(r"(wgmma\S*tf32|mma\.sync\S*tf32)", ptx)),
        "ptx_ex2": "ex2.approx" in ptx,
        "ptx_relaxed_add": bool(re.search(r"(red|atom)\.global\.gpu\.relaxed\.add\.f32", ptx)),
        "ptx_grid_round": "0f46400000" in ptx and "0fC6400000" in ptx,
    }  # fmt: skip
    row.update(_sass_facts(kernel.asm["cubin"], workdir))
    if row.get("registers"):
        row["resident_warps"] = resident_warps(arch, row["registers"], row["shared_bytes"], num_warps)
    return row


def launch_shapes(candidates: bool) -> list[tuple[str, tuple[int, int, int]]]:
    """``(kernel name, (BLOCK_V, BLOCK_G, num_warps))``: the shapes ``_launch_config`` picks in each regime and, with
    ``candidates``, every other shape ``bench/render_launch.py`` times (each once, named by regime and shape)."""
    shapes = []
    for regime in REGIME_PER_TILE:
        fwd, bwd = chosen(regime, TILE)
        shapes += [(f"fwd_{regime}", fwd), (f"bwd_{regime}", bwd)]
    if candidates:
        seen = {(name[:3], shape) for name, shape in shapes}
        for regime, pairs in CANDIDATES.items():
            for kind, shape in (kv for pair in pairs for kv in zip(("fwd", "bwd"), pair)):
                if (kind, shape) not in seen:
                    seen.add((kind, shape))
                    shapes.append((f"{kind}_{regime}_" + "x".join(map(str, shape)), shape))
    return shapes


def compile_all(archs: list[int], candidates: bool = False) -> list[dict]:
    """The pair emission and the forward and backward at each launch shape (:func:`launch_shapes`), per architecture."""
    rows = []
    kernels = {"fwd": TK._forward_kernel, "bwd": TK._backward_kernel}
    with tempfile.TemporaryDirectory() as workdir:
        for arch in archs:
            rows.append(compile_kernel("emit", TB._emit_pairs_kernel, {"TILE": TILE, "BLOCK": 256}, 4, arch, workdir))
            for name, (bv, bg, warps) in launch_shapes(candidates):
                cx = {"TILE": TILE, "BLOCK_V": bv, "BLOCK_G": bg}
                rows.append(compile_kernel(name, kernels[name[:3]], cx, warps, arch, workdir))
    return rows


def table(rows: list[dict]) -> str:
    cols = ["arch", "kernel", "BLOCK_V x BLOCK_G", "warps", "registers", "spill B", "shared B", "warps/SM",
            "tensor-core", "EX2", "fp64", "RED", "ATOM", "grid rounding kept"]  # fmt: skip
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cx = r["constexprs"]
        shape = f"{cx['BLOCK_V']} x {cx['BLOCK_G']}" if "BLOCK_V" in cx else f"{cx['BLOCK']}"
        vals = [f"sm_{r['arch']}", r["kernel"], shape, r["num_warps"], r.get("registers", "?"),
                r.get("spill_bytes", "?"), r["shared_bytes"], r.get("resident_warps", "?"),
                r.get("sass_tensor_core", "?"), r.get("sass_ex2", "?"), r.get("sass_fp64", "?"), r.get("sass_red", "?"),
                r.get("sass_atom", "?"),
                "yes" if r["ptx_grid_round"] else ("-" if r["kernel"] == "emit" else "NO")]  # fmt: skip
        lines.append("| " + " | ".join(str(v) for v in vals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, nargs="+", default=[80, 90], help="compute capabilities, e.g. 80 90")
    p.add_argument("--candidates", action="store_true",
                   help="also the other launch shapes bench/render_launch.py times")
    p.add_argument("--out", type=Path, default=None, help="also write the table (markdown) here")
    args = p.parse_args(argv)
    if any(a < 75 for a in args.arch):
        p.error(f"--arch: Triton targets compute capability 75 and above, got {args.arch}")
    rows = compile_all(args.arch, args.candidates)
    head = f"Triton {triton.__version__}, cuobjdump {'found' if _tool('cuobjdump') else 'missing'}; 8^3 tiles"
    text = head + "\n\n" + table(rows)
    print(text)
    if args.out is not None:
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(text + "\n")
        tmp.replace(args.out)
    print(json.dumps({"triton": triton.__version__, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
