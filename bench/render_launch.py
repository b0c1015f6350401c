"""Launch shapes of the Triton renderer, side by side on a GPU: which ``(BLOCK_V, BLOCK_G, num_warps)`` is fastest.

``medgmae.render._triton_impl._launch_config`` picks one forward and one backward launch shape per regime (many
Gaussians per tile: dense; few: sparse). This benchmark times the renderer with other shapes in its place, the
chosen one first, on one benchmark case of ``bench/render.py``, and checks that each gives the chosen shape's
volume and gradients (the block shapes change the order of the sums only). ``CANDIDATES`` lists the shapes; every
one of them compiles without register spills for sm_80 and sm_90 (``python bench/triton_aot.py --candidates``
tells, without a GPU). The GPU check (``bench/gpu_check.py``) runs the dense case with the time its render part
has left; on its own, on a GPU::

    python bench/render_launch.py --case dense --k 2048 --out launch_dense.md

Each row: the forward and backward shapes, forward and forward+backward milliseconds (CUDA events, median), their
ratio to the chosen shapes' times, and the largest relative difference from the chosen shapes' volume and gradients.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import medgmae.render._triton_impl as _triton_impl  # noqa: E402
from bench import render as br  # noqa: E402
from medgmae.render import render_volume  # noqa: E402

Shape = tuple[int, int, int]  # (BLOCK_V, BLOCK_G, num_warps)
#: per regime, ``(forward, backward)`` shapes besides the chosen ones: each varies one of the two (8^3 tiles;
#: forward BLOCK_V divides 512, backward BLOCK_V divides 64, every block at least 16)
CANDIDATES: dict[str, list[tuple[Shape, Shape]]] = {
    "dense": [  # the backward first: the fewest resident warps (bench/triton_aot.py)
        ((128, 32, 8), (64, 32, 4)), ((128, 32, 8), (32, 32, 4)), ((128, 32, 8), (32, 64, 8)),
        ((128, 32, 8), (16, 64, 4)), ((128, 64, 8), (32, 64, 4)), ((256, 32, 8), (32, 64, 4)),
        ((64, 32, 4), (32, 64, 4)), ((128, 32, 4), (32, 64, 4)),
    ],
    "sparse": [
        ((64, 16, 2), (64, 16, 4)), ((128, 16, 2), (64, 16, 4)), ((256, 16, 8), (64, 16, 4)),
        ((128, 16, 4), (32, 16, 2)), ((128, 16, 4), (64, 16, 2)), ((128, 16, 4), (64, 32, 4)),
    ],
}  # fmt: skip
#: Gaussians per tile that put ``_launch_config`` in each of its regimes (also read by ``bench/triton_aot.py``)
REGIME_PER_TILE = {"dense": 100, "medium": 30, "sparse": 1}


def chosen(regime: str, tile: int = _triton_impl.TILE) -> tuple[Shape, Shape]:
    """The shapes ``_launch_config`` picks in ``regime``."""
    return _triton_impl._launch_config(REGIME_PER_TILE[regime] * 1000, 1000, tile)


def all_shapes(regime: str) -> list[tuple[Shape, Shape]]:
    """The chosen shapes first, then the candidates."""
    return [chosen(regime), *CANDIDATES[regime]]


@contextlib.contextmanager
def launch_shapes(fwd: Shape, bwd: Shape):
    """Make the renderer launch with ``fwd`` / ``bwd`` whatever the regime (restored on exit)."""
    original = _triton_impl._launch_config
    _triton_impl._launch_config = lambda n_pairs, n_keys, tile: (fwd, bwd)
    try:
        yield
    finally:
        _triton_impl._launch_config = original


def sweep(case: br.Case, regime: str, device, timer: br.Timer, repeats: int, budget: float, cutoff: float = 3.0,
          on_row=None, time_left=lambda: float("inf"), limit: int | None = None) -> list[dict]:  # fmt: skip
    """Time the shapes of ``regime`` on ``case`` (the chosen ones first; the first ``limit``); ``on_row(row)`` after
    each; stops when ``time_left()`` (seconds) runs out."""
    shape = (case.size,) * 3
    gs = br.make_gaussians(case, device)
    weight = torch.randn((case.batch, *shape), generator=torch.Generator().manual_seed(1)).to(device)
    rows, ref = [], None
    for fwd, bwd in all_shapes(regime)[:limit]:
        if time_left() <= 0:
            break
        with launch_shapes(fwd, bwd):
            out, grads = br.render_with_grads(gs, shape, cutoff, weight, "triton")
            leaves = [t.clone().requires_grad_() for t in gs]
            t_f = timer(lambda: render_volume(*leaves, shape, cutoff=cutoff, backend="triton"), repeats, budget)
            t_fb = timer(lambda: torch.autograd.backward(
                render_volume(*leaves, shape, cutoff=cutoff, backend="triton"), weight), repeats, budget)  # fmt: skip
        ref = ref or (out, grads, t_f, t_fb)
        row = {
            "case": f"{case.name} B={case.batch} K={case.k} {case.size}^3", "fwd shape": "x".join(map(str, fwd)),
            "bwd shape": "x".join(map(str, bwd)), "fwd ms": t_f * 1e3, "fwd+bwd ms": t_fb * 1e3,
            "fwd / chosen": t_f / ref[2], "fwd+bwd / chosen": t_fb / ref[3],
            "max rel diff fwd": br.max_rel_diff(out, ref[0]),
            "max rel diff grads": max(br.max_rel_diff(a, b) for a, b in zip(grads, ref[1])),
        }  # fmt: skip
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", choices=("dense", "sparse"), default="dense")
    p.add_argument("--k", type=int, default=None, help="Gaussians (default: 2048 dense, 50000 sparse)")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--budget", type=float, default=2.0, help="seconds of timing per measurement (caps repeats)")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA GPU (the shapes only matter to the compiled kernels)")
    k = args.k or (2048 if args.case == "dense" else 50_000)
    case = next((c for c in br.make_cases(False, args.case) if c.k == k), None)
    if case is None:
        p.error(f"--k: no {args.case} case of bench/render.py has K = {k}")
    device = torch.device("cuda")
    rows = sweep(case, args.case, device, br.Timer(device), args.repeats, args.budget)
    device_line = f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    br.report([device_line, f"command: `{br.command_line(argv)}`"], rows, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
