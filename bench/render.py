"""Benchmark of medgmae.render.render_volume: forward and forward+backward time per backend.

Cases (from the renderer's specification):

* dense: B=8, K in {512, 2048, 8192}, 96^3, MedGMAE's initial scale (0.2 of the volume, sigma ~19 voxels);
* sparse: B=1, K in {50k, 200k}, 256^3, small Gaussians (sigma 1-2 voxels, the 3DGR-CT / R2-Gaussian regime).

``--quick`` shrinks both (dense: B=2, K in {32, 128}, 32^3; sparse: K in {2k, 8k}, 64^3) for a CPU run of a few
minutes. For every case the table gives the number of Gaussian-voxel pairs inside the cutoff boxes
(:func:`medgmae.render.count_pairs`), an estimate of the pairs inside the cutoff ellipsoids (Monte Carlo: 64
voxels drawn per Gaussian from its clipped box), the times, the time per in-cutoff pair and the triton/torch ratio;
for the triton backend also the voxel evaluations its kernels do (kept Gaussian-tile pairs x TILE^3).

On a GPU the table also gives the ratio to a throughput floor. Assumption: every in-cutoff pair needs at least one
``exp`` on the special-function units, which issue 16 results per clock per SM on NVIDIA GPUs since Volta (a
quarter of the FP32 FMA rate of 64/clk/SM per warp-scheduler pair, 1/8 of the 128 FP32 lanes on sm_80/sm_90),
and the remaining per-pair work (mask, multiply-add into the sum; in the backward a few more FMAs) fits under it.
So ``floor_fwd = pairs / (SMs * 16 * sm_clock)`` and, since the backward recomputes the exponentials,
``floor_fwd+bwd = 2 * floor_fwd``. The SM count comes from torch, the clock from ``nvidia-smi`` (max SM clock) or
``--sm-clock-mhz``.

Usage::

    python bench/render.py                 # full cases on the current device
    python bench/render.py --quick --out bench/results_render_quick.md   # its own file: --out replaces the whole file
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from dataclasses import dataclass

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages, not an installed copy

from medgmae.files import atomic_write  # noqa: E402
from medgmae.render import count_pairs, preprocess_gaussians, render_volume  # noqa: E402
from medgmae.render._torch_impl import PATHS, torch_path  # noqa: E402

EXP_PER_CLK_PER_SM = 16


@dataclass
class Case:
    name: str
    batch: int
    k: int
    size: int
    scale_lo: float
    scale_hi: float


def make_cases(quick: bool, which: str) -> list[Case]:
    if quick:
        dense = [Case("dense", 2, k, 32, 0.2 * 32 * 0.8, 0.2 * 32 * 1.2) for k in (32, 128)]
        sparse = [Case("sparse", 1, k, 64, 1.0, 2.0) for k in (2_000, 8_000)]
    else:
        dense = [Case("dense", 8, k, 96, 0.2 * 96 * 0.8, 0.2 * 96 * 1.2) for k in (512, 2048, 8192)]
        sparse = [Case("sparse", 1, k, 256, 1.0, 2.0) for k in (50_000, 200_000)]
    return {"dense": dense, "sparse": sparse, "all": dense + sparse}[which]


def make_gaussians(case: Case, device: torch.device, seed: int = 0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    b, k, n = case.batch, case.k, case.size
    means = torch.rand(b, k, 3, generator=g) * n - 0.5
    scales = case.scale_lo + (case.scale_hi - case.scale_lo) * torch.rand(b, k, 3, generator=g)
    quats = torch.randn(b, k, 4, generator=g)
    inten = torch.rand(b, k, generator=g)
    return [t.to(device) for t in (means, scales, quats, inten)]


@torch.no_grad()
def in_cutoff_pairs(gs, shape, cutoff: float, samples: int = 64, seed: int = 0) -> float:
    """Monte Carlo estimate of the Gaussian-voxel pairs with Mahalanobis distance <= cutoff (clipped to the volume)."""
    m, conics, _, ext = preprocess_gaussians(*gs, cutoff)
    m, conics, ext = m.reshape(-1, 3), conics.reshape(-1, 6), ext.reshape(-1, 3)
    n = torch.tensor(shape, device=m.device, dtype=m.dtype)
    lo = torch.ceil(m - ext).clamp_min(0)
    hi = torch.minimum(torch.floor(m + ext), n - 1)
    span = (hi - lo + 1).clamp_min(0)
    boxes = span.prod(-1)
    gen = torch.Generator(device=m.device).manual_seed(seed)
    total = 0.0
    step = max(1, (1 << 22) // samples)
    for s in range(0, m.shape[0], step):
        sl = slice(s, s + step)
        u = torch.rand(m[sl].shape[0], samples, 3, generator=gen, device=m.device, dtype=m.dtype)
        x = lo[sl, None] + torch.floor(u * span[sl, None])
        d = x - m[sl, None]
        c = conics[sl, None]
        q = (c[..., 0] * d[..., 0] ** 2 + c[..., 1] * d[..., 1] ** 2 + c[..., 2] * d[..., 2] ** 2
             + 2 * (c[..., 3] * d[..., 0] * d[..., 1] + c[..., 4] * d[..., 0] * d[..., 2]
                    + c[..., 5] * d[..., 1] * d[..., 2]))  # fmt: skip
        frac = (q <= cutoff * cutoff).to(m.dtype).mean(1)
        total += float((frac * boxes[sl]).sum())
    return total


def sm_clock_hz(override_mhz: float | None) -> tuple[float, str]:
    if override_mhz:
        return override_mhz * 1e6, "--sm-clock-mhz"
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    rate = getattr(props, "clock_rate", None)  # kHz, where torch exposes it
    if rate:
        return rate * 1e3, "torch device properties"
    if shutil.which("nvidia-smi"):
        try:
            idx = torch.cuda.current_device()
            out = subprocess.run(
                ["nvidia-smi", f"--id={idx}", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=20, check=True,
            ).stdout.strip()  # fmt: skip
            return float(out.splitlines()[0]) * 1e6, "nvidia-smi clocks.max.sm"
        except (subprocess.SubprocessError, ValueError, IndexError):
            pass
    return 1.98e9, "assumed 1980 MHz (H100/H200 SXM boost)"


class Timer:
    """CUDA events on GPU, wall clock on CPU; median over repeats."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn, repeats: int, budget_s: float) -> float:
        fn()  # warm-up (compilation, caches)
        self._sync()  # the warm-up's queued work is not counted as the first call's
        t0 = time.perf_counter()
        fn()
        self._sync()
        first = time.perf_counter() - t0
        n = max(1, min(repeats, int(budget_s / max(first, 1e-6))))
        times = []
        for _ in range(n):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        times.sort()
        return times[len(times) // 2]

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()


def bench_case(case: Case, backends, device, args, timer: Timer, exp_rate: float | None):
    shape = (case.size,) * 3
    gs = make_gaussians(case, device)
    m, _, _, ext = preprocess_gaussians(*gs, args.cutoff)
    box = count_pairs(m, ext, shape)
    inside = in_cutoff_pairs(gs, shape, args.cutoff)
    tile_evals = None
    if "triton" in backends:  # voxel evaluations the kernels do: kept (Gaussian, tile) pairs x TILE^3
        from medgmae.render._triton_binning import TILE, bin_pairs

        _, conics, _, _ = preprocess_gaussians(*gs, args.cutoff)
        _, tile_start, _ = bin_pairs(m.float(), conics.float(), ext, shape, args.cutoff, TILE)
        tile_evals = int(tile_start[-1]) * TILE**3
    rows = []
    results = {}
    runs = [(b, p) for b in backends for p in (args.torch_paths if b == "torch" else [None])]
    for backend, path in runs:
        label = backend if path is None or len(args.torch_paths) == 1 else f"{backend} ({path})"
        leaves = [t.clone().requires_grad_() for t in gs]
        grad = torch.randn((case.batch, *shape), device=device)

        def fwd():
            return render_volume(*leaves, shape, cutoff=args.cutoff, backend=backend)

        def fwd_bwd():
            out = render_volume(*leaves, shape, cutoff=args.cutoff, backend=backend)
            torch.autograd.backward(out, grad)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        with torch_path(path or "auto"):
            t_f = timer(fwd, args.repeats, args.budget)
            t_fb = timer(fwd_bwd, args.repeats, args.budget)
        peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
        results[label] = (t_f, t_fb)
        row = {
            "case": case.name, "B": case.batch, "K": case.k, "shape": f"{case.size}^3",
            "sigma": f"{case.scale_lo:.3g}-{case.scale_hi:.3g}", "box pairs": box, "in-cutoff pairs": inside,
            "backend": label, "fwd ms": t_f * 1e3, "fwd+bwd ms": t_fb * 1e3,
            "fwd ns/pair": t_f * 1e9 / max(inside, 1), "fwd+bwd ns/pair": t_fb * 1e9 / max(inside, 1),
        }  # fmt: skip
        if device.type == "cuda":
            row["peak MiB"] = peak
        if backend == "triton" and tile_evals is not None:
            row["triton voxel evals"] = tile_evals
        if exp_rate:
            floor = inside / exp_rate
            row["fwd / floor"] = t_f / floor
            row["fwd+bwd / floor"] = t_fb / (2 * floor)
        rows.append(row)
        print(f"  {label}: fwd {t_f * 1e3:.2f} ms, fwd+bwd {t_fb * 1e3:.2f} ms", file=sys.stderr, flush=True)
    if "torch" in results and "triton" in results:
        for row in rows:
            if row["backend"] == "triton":
                row["triton/torch fwd"] = results["triton"][0] / results["torch"][0]
                row["triton/torch fwd+bwd"] = results["triton"][1] / results["torch"][1]
    return rows


def render_with_grads(gs, shape, cutoff: float, weight: torch.Tensor, backend: str):
    """The volume of Gaussians ``gs`` (means, scales, quats, intensities) and the gradients of ``sum(volume *
    weight)`` with respect to each of the four."""
    xs = [t.clone().requires_grad_() for t in gs]
    out = render_volume(*xs, shape, cutoff=cutoff, backend=backend)
    return out.detach(), torch.autograd.grad((out * weight).sum(), xs)


def max_rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b|`` over ``max |b|``."""
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        if abs(v) >= 1e6:
            return f"{v:.3g}"
        if abs(v) >= 100:
            return f"{v:.0f}"
        return f"{v:.3g}"
    if isinstance(v, int) and abs(v) >= 1e6:
        return f"{v:.3g}"
    return str(v)


def markdown_table(rows) -> str:
    cols = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: cuda if available)")
    p.add_argument("--backends", default=None, help="comma list of torch,triton (default: both on GPU, torch on CPU)")
    p.add_argument("--torch-paths", default="auto",
                   help=f"comma list of the torch backend's paths to time, of {PATHS} (tile: the previous "
                   "implementation; auto: runs of in-cutoff voxels)")
    p.add_argument("--cases", choices=("all", "dense", "sparse"), default="all")
    p.add_argument("--quick", action="store_true", help="small sizes (CPU: a few minutes)")
    p.add_argument("--cutoff", type=float, default=3.0)
    p.add_argument("--repeats", type=int, default=10, help="timed repetitions (median), fewer if over --budget")
    p.add_argument("--budget", type=float, default=10.0, help="seconds of timing per measurement (caps repeats)")
    p.add_argument("--sm-clock-mhz", type=float, default=None, help="SM clock for the floor (default: queried)")
    p.add_argument("--out", default=None, help="also write the markdown table to this file")
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        p.error(f"--device: {e}")
    if device.type not in ("cpu", "cuda"):
        p.error(f"--device must be cpu or cuda[:N], got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda asked for but CUDA is not available")
    if args.backends is None:
        args.backends = "torch,triton" if device.type == "cuda" else "torch"
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in backends if b not in ("torch", "triton")]
    if bad or not backends:
        p.error(f"--backends must list torch and/or triton, got {args.backends!r}")
    if "triton" in backends and device.type != "cuda":
        p.error("--backends triton needs a CUDA device (on the CPU it would only time the Triton interpreter)")
    if not (args.cutoff > 0 and math.isfinite(args.cutoff)):
        p.error(f"--cutoff must be a positive finite number, got {args.cutoff}")
    if args.repeats < 1 or args.budget <= 0:
        p.error("--repeats must be >= 1 and --budget > 0")
    args.torch_paths = [t.strip() for t in args.torch_paths.split(",") if t.strip()]
    if not args.torch_paths or any(t not in PATHS for t in args.torch_paths):
        p.error(f"--torch-paths must list auto and/or tile, got {args.torch_paths!r}")
    args.device, args.backend_list = device, backends
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = args.device
    if device.type == "cuda":
        torch.cuda.set_device(device)
        props = torch.cuda.get_device_properties(device)
        clock, clock_src = sm_clock_hz(args.sm_clock_mhz)
        exp_rate = props.multi_processor_count * EXP_PER_CLK_PER_SM * clock
        dev_desc = f"{props.name}, {props.multi_processor_count} SMs, SM clock {clock / 1e6:.0f} MHz ({clock_src})"
    else:
        exp_rate = None
        dev_desc = f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"
    timer = Timer(device)
    rows = []
    for case in make_cases(args.quick, args.cases):
        print(f"{case.name} B={case.batch} K={case.k} {case.size}^3", file=sys.stderr, flush=True)
        rows += bench_case(case, args.backend_list, device, args, timer, exp_rate)
    header = [f"device: {dev_desc}", f"torch {torch.__version__}, cutoff {args.cutoff}, command: `{command_line(argv)}`"]
    if exp_rate:
        header.append(
            f"floor: in-cutoff pairs / ({EXP_PER_CLK_PER_SM} exp/clk/SM x SMs x clock = {exp_rate / 1e12:.2f} Texp/s);"
            " x2 for fwd+bwd"
        )
    report(header, rows, args.out)
    return 0


def command_line(argv) -> str:
    """How the benchmark was called, for its report."""
    return "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]) if argv is None else f"main({argv!r})"


def report(header: list[str], rows: list[dict], out: str | os.PathLike | None) -> str:
    """Print the date, ``header`` lines and the table of ``rows``; also write them to ``out`` (atomically)."""
    header = [f"date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}", *header]
    text = "\n".join(f"- {h}" for h in header) + "\n\n" + markdown_table(rows) + "\n"
    print(text)
    if out:
        with atomic_write(out) as tmp:
            tmp.write_text(text)
    return text


if __name__ == "__main__":
    sys.exit(main())
