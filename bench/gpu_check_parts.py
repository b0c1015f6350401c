"""The parts of the GPU check (``bench/gpu_check.py``): each appends rows to a :class:`Recorder`.

Every part takes ``(rec, dry)``; ``dry`` selects tiny sizes on the CPU. The measurements reuse ``bench/render.py``,
``bench/pretrain.py`` and ``bench/recon.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ASTRA_NOTE = (
    "astra-toolbox's CUDA build needs libcudart 12 and libcufft 11 (nvidia-cufft-cu12: a 201 MB wheel), over the "
    "64 MiB that can travel to the GPU machine"
)


def _write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file and a rename (no medgmae import: the check reports even without its deps)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class Recorder:
    """Rows of one part, rewritten to ``path`` after each, so a part killed at its budget keeps its rows."""

    def __init__(self, part: str, path: Path, deadline: float):
        self.part, self.path, self.deadline, self.rows = part, path, deadline, []

    def add(self, item: str, status: str, result: str, **raw) -> None:
        self.rows.append({"part": self.part, "item": item, "status": status, "result": result, **raw})
        _write_atomic(self.path, json.dumps(self.rows, default=str))
        print(f"[{self.part}] {item}: {status}: {result}", flush=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()


def _guard(rec: Recorder, item: str, fn) -> None:
    """Run one measurement; an exception becomes a failed row and the part goes on."""
    if rec.left() <= 0:
        rec.add(item, "skipped", "part's time budget spent")
        return
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported in the table
        rec.add(item, "failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])


# ---------------------------------------------------------------------------------------------------- parts
def gpu_test_files(keyword: str | None = None) -> list[str]:
    """Test files with ``@pytest.mark.gpu`` tests (whose text holds ``keyword``, if given)."""
    files = []
    for p in sorted((ROOT / "tests").glob("test_*.py")):
        text = p.read_text(encoding="utf-8", errors="replace")
        if "mark.gpu" in text and (keyword is None or keyword in text):
            files.append(str(p.relative_to(ROOT)))
    return files


def run_bounded(rec: Recorder, item: str, cmd: list[str]) -> subprocess.CompletedProcess | None:
    """``cmd`` in a subprocess bounded by the part's budget (5 s kept for the rows); a timeout is a failed row of
    ``item`` with the output so far, and ``None``."""
    t0 = time.monotonic()
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(5.0, rec.left() - 5))
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        rec.add(item, "failed", f"timed out after {time.monotonic() - t0:.0f} s", log=out[-4000:])
        return None


def run_pytest(rec: Recorder, item: str, files: list[str], select: str) -> None:
    """``pytest -m gpu -k select`` in a subprocess bounded by the part's budget; one row with the counts."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-k", select, "-q", "-rA", "-p", "no:xdist",
           "-p", "no:cacheprovider", "--continue-on-collection-errors", *files]  # fmt: skip
    if (res := run_bounded(rec, item, cmd)) is None:
        return
    lines = res.stdout.strip().splitlines()
    summary = lines[-1].strip("= ") if lines else "(no output)"
    outcomes = [ln for ln in lines if re.match(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", ln)]
    ok = res.returncode in (0, 5)  # 5: nothing selected
    failed = [ln[:160] for ln in outcomes if ln.startswith(("FAILED", "ERROR"))]
    result = f"{summary}" + (f"; {'; '.join(failed[:4])}" if failed else f" ({' '.join(files)})")
    rec.add(item, "ok" if ok else "failed", result, returncode=res.returncode, outcomes=outcomes,
            log=(res.stdout + res.stderr)[-6000:])  # fmt: skip


def part_tests(rec: Recorder, dry: bool) -> None:
    run_pytest(rec, "pytest -m gpu (gsplat's in twod)", gpu_test_files(), "not gsplat")


def _render_agreement(gs, shape) -> tuple[float, float]:
    """Max |triton - torch| over max |torch| of the forward, and the worst such ratio over the four gradients."""
    import torch

    from bench.render import max_rel_diff, render_with_grads

    w = torch.randn((gs[0].shape[0], *shape), generator=torch.Generator().manual_seed(0)).to(gs[0].device)
    res = {backend: render_with_grads(gs, shape, 3.0, w, backend) for backend in ("torch", "triton")}
    fwd = max_rel_diff(res["triton"][0], res["torch"][0])
    grad = max(max_rel_diff(a, b) for a, b in zip(res["triton"][1], res["torch"][1]))
    return fwd, grad


def part_render(rec: Recorder, dry: bool) -> None:
    import torch

    from bench import render as br

    device = torch.device("cpu" if dry else "cuda")
    if dry:  # one tile, through the Triton interpreter
        cases, exp_rate = [br.Case("dense", 1, 4, 8, 1.6, 2.4), br.Case("sparse", 1, 12, 8, 0.5, 1.0)], None
    else:  # the targets' cases first: a case is not cut short, so the slowest (torch at K=8192) comes last
        dense, sparse = br.make_cases(False, "dense"), br.make_cases(False, "sparse")
        cases = [sparse[0], dense[1], sparse[1], dense[0], dense[2]]
        clock, _ = br.sm_clock_hz(None)
        exp_rate = torch.cuda.get_device_properties(device).multi_processor_count * br.EXP_PER_CLK_PER_SM * clock
    opts = argparse.Namespace(cutoff=3.0, repeats=2 if dry else 10, budget=0.01 if dry else 1.5, torch_paths=["auto"])
    timer = br.Timer(device)
    for case in cases:

        def measure(case=case) -> None:
            rows = {r["backend"]: r for r in br.bench_case(case, ("torch", "triton"), device, opts, timer, exp_rate)}
            fwd_diff, grad_diff = _render_agreement(br.make_gaussians(case, device), (case.size,) * 3)
            t, tr = rows["torch"], rows["triton"]
            floor = (f"; triton / floor fwd {tr['fwd / floor']:.2f}, fwd+bwd {tr['fwd+bwd / floor']:.2f}"
                     if "fwd / floor" in tr else "")  # fmt: skip
            agree = fwd_diff <= 1e-4 and grad_diff <= 2e-3
            rec.add(
                f"{case.name} B={case.batch} K={case.k} {case.size}^3",
                "ok" if agree else "mismatch",
                f"fwd ms torch {t['fwd ms']:.3g} / triton {tr['fwd ms']:.3g} (x{tr['triton/torch fwd']:.2f}); "
                f"fwd+bwd ms torch {t['fwd+bwd ms']:.3g} / triton {tr['fwd+bwd ms']:.3g} "
                f"(x{tr['triton/torch fwd+bwd']:.2f}){floor}; triton vs torch max rel diff fwd {fwd_diff:.1e}, "
                f"grads {grad_diff:.1e}",
                torch_row=t, triton_row=tr, fwd_rel_diff=fwd_diff, grad_rel_diff=grad_diff,
            )

        _guard(rec, f"{case.name} B={case.batch} K={case.k} {case.size}^3", measure)
    _guard(rec, "launch shapes (dense)", lambda: _launch_sweep(rec, dry, device, timer))


def _launch_sweep(rec: Recorder, dry: bool, device, timer) -> None:
    """Other launch shapes of the Triton kernels on the dense target case (``bench/render_launch.py``), with the
    time the part has left (on the dry run: the chosen shapes and one other, through the interpreter)."""
    from bench import render as br
    from bench import render_launch as bl

    case = br.Case("dense", 1, 4, 8, 1.6, 2.4) if dry else next(c for c in br.make_cases(False, "dense") if c.k == 2048)

    def add(row: dict) -> None:
        agree = row["max rel diff fwd"] <= 1e-4 and row["max rel diff grads"] <= 2e-3
        rec.add(f"launch fwd {row['fwd shape']} bwd {row['bwd shape']}, {row['case']}", "ok" if agree else "mismatch",
                f"fwd {row['fwd ms']:.3g} ms (x{row['fwd / chosen']:.2f} the chosen shapes), fwd+bwd "
                f"{row['fwd+bwd ms']:.3g} ms (x{row['fwd+bwd / chosen']:.2f}); max rel diff from the chosen fwd "
                f"{row['max rel diff fwd']:.1e}, grads {row['max rel diff grads']:.1e}", launch_row=row)  # fmt: skip

    rows = bl.sweep(case, "dense", device, timer, repeats=2 if dry else 10, budget=0.01 if dry else 0.5,
                    on_row=add, time_left=lambda: rec.left() - 8, limit=2 if dry else None)  # fmt: skip
    if not rows:
        rec.add("launch shapes (dense)", "skipped", "too little of the part's time budget left")


def part_pretrain(rec: Recorder, dry: bool) -> None:
    import torch

    from bench import pretrain as bp

    device = torch.device("cpu" if dry else "cuda")
    common = dict(sizes=["tiny"], img=16, patch=8, batch=1, warmup=0, iters=1) if dry else dict(
        sizes=["base"], img=96, patch=12, batch=8, warmup=2, iters=5)  # fmt: skip
    ks = [8] if dry else [512, 2048]

    def measure() -> None:  # one call: voxel-MAE, the comparison, is timed once
        rows = bp.bench_steps(argparse.Namespace(num_gaussians=ks, **common), device)
        v = next(r for r in rows if r["model"] == "voxel-mae")
        for g in (r for r in rows if r["model"] == "medgmae"):
            rec.add(
                f"{g['size']} MedGMAE K={g['K']} batch {g['batch']} {common['img']}^3",
                "ok",
                f"step {g['step_s'] * 1e3:.1f} ms, renderer fwd+bwd {g['render_s'] * 1e3:.1f} ms "
                f"({100 * g['render_share']:.1f} % of the step), {g['volumes_per_s']:.1f} volumes/s; voxel-MAE "
                f"{v['step_s'] * 1e3:.1f} ms, {v['volumes_per_s']:.1f} volumes/s; MedGMAE / voxel-MAE "
                f"throughput {g['vs_voxel_mae']:.2f}",
                medgmae=g, voxel_mae=v, bf16=device.type == "cuda",
            )

    _guard(rec, f"MedGMAE K={', '.join(map(str, ks))}", measure)


#: the README's main job at a tiny size (2 phantoms, 32^3 crops), as the pre-training bundle takes its settings
BUNDLE_RUN = dict(roi_size=32, patch_size=8, num_gaussians=64, num_phantoms=2, phantom_shape=[48, 48, 40],
                  phantom_spacing=3.0, pixdim=3.0, num_samples=2, batch_size=2, lr_schedule_epochs=2, warmup_steps=1,
                  num_workers=2, progress_bar=False)  # fmt: skip
_RUN_BUNDLE = ("import json, sys\nfrom monai.bundle import run\n"
               "run('training', config_file=sys.argv[1], logging_file=sys.argv[2], **json.loads(sys.argv[3]))")


def _bundle_problems(log: str, summary: dict, epochs: int, dry: bool) -> list[str]:
    """What a finished bundle run got wrong: fewer epochs than asked, a warning of the toolkit's (the resume's notes
    included), and on CUDA no GPU in ``summary.json`` or a start line without the Triton renderer and bf16."""
    problems = [f"summary.json says {summary.get('epochs')} epochs"] if summary.get("epochs") != epochs else []
    problems += [ln.split(" - WARNING - ", 1)[1][:200] for ln in log.splitlines() if " - WARNING - " in ln
                 and " - medgmae" in ln]  # fmt: skip
    start = next((ln for ln in log.splitlines() if "pre-training runs on" in ln), "")
    if not dry:
        if not summary.get("software", {}).get("gpu"):
            problems.append("summary.json names no GPU")
        problems += [f"the start line lacks '{w}': {start[-200:]}" for w in ("renderer triton", "bf16") if w not in start]
    return problems


def part_bundle(rec: Recorder, dry: bool) -> None:
    """The pre-training bundle as a user runs it on a GPU: ``--device cuda``, bf16 autocast, the ``auto`` (Triton)
    renderer, 2 loader workers, the bundle's logging; one epoch, then resumed to a second (the checkpoint's CUDA
    random states and the bundle's records). Run through ``monai.bundle.run`` in a child process (the GPU machine
    has no ``fire``); a warning of the toolkit's fails the row."""
    configs = ROOT / "bundles" / "medgmae_pretrain" / "configs"
    device, amp = ("cpu", False) if dry else ("cuda", True)
    with tempfile.TemporaryDirectory() as tmp:
        settings = dict(BUNDLE_RUN, device=device, amp=amp, output_dir=str(Path(tmp) / "run"))
        for epochs, resume in ((1, False), (2, True)):
            item = f"pre-training bundle on {device}{', bf16' if amp else ''}, 2 workers: " + (
                "epoch 2, resumed" if resume else "epoch 1")
            if resume and (not rec.rows or rec.rows[-1]["status"] != "ok" or rec.left() < 15):
                rec.add(item, "skipped", "epoch 1 did not pass" if rec.left() >= 15 else "part's time budget spent")
                continue

            def measure(epochs=epochs, resume=resume, item=item) -> None:
                t0 = time.monotonic()
                cmd = [sys.executable, "-c", _RUN_BUNDLE, str(configs / "train.json"), str(configs / "logging.conf"),
                       json.dumps(dict(settings, max_epochs=epochs, resume=resume))]  # fmt: skip
                if (res := run_bounded(rec, item, cmd)) is None:
                    return
                log = res.stdout + res.stderr
                if res.returncode != 0:
                    last = log.strip().splitlines()[-1] if log.strip() else ""
                    rec.add(item, "failed", f"exit {res.returncode}: {last[:250]}", log=log[-4000:])
                    return
                summary = json.loads((Path(settings["output_dir"]) / "summary.json").read_text(encoding="utf-8"))
                problems = _bundle_problems(log, summary, epochs, dry)
                gpu = summary.get("software", {}).get("gpu")
                rec.add(item, "failed" if problems else "ok", f"{time.monotonic() - t0:.0f} s; GPU {gpu}"
                        + (f"; {'; '.join(problems)}" if problems else ""), log=log[-1500:],
                        summary_software=summary.get("software"))  # fmt: skip

            _guard(rec, item, measure)


def part_recon(rec: Recorder, dry: bool) -> None:
    import torch

    from bench import recon as brc
    from recon.projectors import astra_cuda_available

    device = torch.device("cpu" if dry else "cuda")
    its = 3 if dry else 20  # seconds per iteration: the median of 20 (a single unguarded item within the budget)
    case = dict(size=[8, 16, 16], voxel=[6, 6, 6], views=6, num_gaussians=64) if dry else dict(
        size=[80, 256, 256], voxel=[2.5, 1.5, 1.5], views=120, num_gaussians=50_000)  # fmt: skip
    for backend in ("torch", "astra"):
        item = f"{backend} projector, {'x'.join(map(str, case['size'][::-1]))}, {case['views']} cone views"
        if backend == "astra" and (dry or not astra_cuda_available()):
            try:
                import astra  # noqa: F401

                why = "astra-toolbox is importable but its CUDA projectors are not usable here"
            except ImportError:
                why = f"astra-toolbox is not importable: {ASTRA_NOTE}"
            why = "no CUDA device (dry run)" if dry else why
            rec.add(item, "skipped", why)
            continue

        def measure(backend=backend, item=item) -> None:
            opts = brc.build_parser().parse_args([
                "--geometry", "cone", "--iterations", str(its), "--eval-every", str(its), "--backend", backend,
                "--only", "toolkit", "--size", *map(str, case["size"]), "--voxel", *map(str, case["voxel"]),
                "--views", str(case["views"]), "--num-gaussians", str(case["num_gaussians"]),
                "--simulate-grid", "same",  # the time per iteration does not depend on it; the finer grid costs ~20 s
            ])  # fmt: skip
            out = brc.run_case(opts, device)
            run = out["runs"]["toolkit"]
            spi = run["seconds_per_iteration_median"]
            rec.add(item, "ok", f"{spi:.3g} s/iteration (median of {its}; {run['initial_gaussians']} Gaussians at "
                    f"the start) -> 15k iterations {spi * 15000 / 60:.1f} min (target < 10 min)",
                    projector=out["projector"], seconds_per_iteration=spi, run=run)  # fmt: skip

        _guard(rec, item, measure)


def part_twod(rec: Recorder, dry: bool) -> None:
    import torch

    from bench.render import Timer
    from medgmae.twod.gsplat_backend import resolve_backend_2d
    from medgmae.twod.render import render_gaussians_2d

    built = os.environ.get("GPU_CHECK_GSPLAT", "ok") == "ok"  # set by the driver from the background build
    if not dry and built:
        run_pytest(rec, "pytest -m gpu -k gsplat", gpu_test_files("gsplat"), "gsplat")
    elif not dry:
        rec.add("pytest -m gpu -k gsplat", "skipped", "gsplat's CUDA extension is not built (see its row)")
    device = torch.device("cpu" if dry else "cuda")
    b, k, size = (1, 8, (16, 16)) if dry else (8, 1024, (256, 256))

    def measure() -> None:
        g = torch.Generator().manual_seed(0)
        gs = [torch.rand(b, k, 3, generator=g) * 2.2 - 1.1, torch.rand(b, k, 3, generator=g) * 0.1 + 0.01,
              torch.randn(b, k, 4, generator=g), torch.rand(b, k, 3, generator=g),
              torch.rand(b, k, generator=g)]  # fmt: skip
        gs = [t.to(device) for t in gs]
        fast = "gsplat" if device.type == "cuda" and built else resolve_backend_2d("auto", "cpu")  # else torch
        timer, times, images = Timer(device), {}, {}
        for backend in dict.fromkeys((fast, "torch")):
            xs = [t.clone().requires_grad_() for t in gs]
            fwd = lambda: render_gaussians_2d(*xs, size, backend)  # noqa: E731
            fwd_bwd = lambda: fwd().square().sum().backward()  # noqa: E731
            times[backend] = (timer(fwd, 10, 1.0), timer(fwd_bwd, 10, 1.0))
            images[backend] = fwd().detach()
        diff = float((images[fast] - images["torch"]).abs().max())
        (gf, gfb), (tf, tfb) = times[fast], times["torch"]
        rec.add(f"{fast} vs torch compositor, B={b} K={k} {size[0]}x{size[1]}", "ok",
                f"max abs diff {diff:.1e}; fwd ms {fast} {gf * 1e3:.3g} / torch {tf * 1e3:.3g}; fwd+bwd ms {fast} "
                f"{gfb * 1e3:.3g} / torch {tfb * 1e3:.3g}", max_abs_diff=diff, times_s=times)  # fmt: skip

    _guard(rec, "gsplat vs torch compositor", measure)


PART_FUNCS = {"tests": part_tests, "bundle": part_bundle, "render": part_render, "pretrain": part_pretrain,
              "recon": part_recon, "twod": part_twod}  # fmt: skip
