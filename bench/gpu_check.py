"""One-call GPU check: the GPU tests, then the renderer, pre-training, reconstruction and 2D measurements.

On a GPU machine that lacks the pure-Python dependencies (monai, nibabel, gsplat, pytorch-ignite, pydicom), fetch
their wheels here first (``bash bench/gpu_wheels.sh``: into ``.whl/``, listed in ``bench/gpu_requirements.txt``,
about 14 MB), carry ``.whl`` with the repository, and run from the repository root, in one call (under 8 minutes on
one H100/H200)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && python3 bench/gpu_check.py --out $OUT

``--dry-run`` runs the same code paths on the CPU at tiny sizes (Triton through ``TRITON_INTERPRET=1``) in well
under a minute; ``tests/test_gpu_check.py`` runs it so that the script cannot rot between GPU runs.

Parts, each with its own time budget and, on the GPU, in its own process (a failure, a crash of the CUDA context or
a timeout of one part is reported in its rows and the others still run; rows are written as they are measured, so a
part cut off by its budget keeps what it finished; the dry run runs the parts in one process to stay fast):

1. ``tests``: ``pytest -m gpu`` on the test files holding GPU tests (gsplat's tests run in part 5, once its
   CUDA extension has been built in the background from the start).
2. ``render``: the cases of ``bench/render.py`` with both backends (CUDA events, warm-up, median), the
   triton/torch ratios, the ratio to the exp-throughput floor (``bench/RESULTS.md``), and the agreement of the
   triton backend's forward and gradients with the torch backend's.
3. ``pretrain``: base model, batch 8, K in {512, 2048}, 96^3, bf16 autocast, Triton renderer, against the
   voxel-MAE (``bench/pretrain.py``): step time, renderer share, volumes/s.
4. ``recon``: seconds per iteration of the Gaussian reconstruction of 256 x 256 x 80 from 120 cone-beam views
   with 50k Gaussians (``bench/recon.py``), PyTorch projector and, where importable, ASTRA's CUDA projector;
   the projected time of 15k iterations.
5. ``twod``: gsplat's GPU tests, then gsplat rasterisation against the PyTorch compositor (same Gaussians: max
   abs difference, times).

Output: one markdown table on stdout, and ``gpu_check.md`` (table) and ``gpu_check.json`` (raw rows) in ``--out``
(default ``$OUT`` if set, else ``gpu_check_out``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("tests", "render", "pretrain", "recon", "twod")
#: seconds per part on the GPU; with at most 30 s of waiting for gsplat's build and ~5 s of start-up per part, the
#: whole check stays under 8 minutes (460 s at most)
BUDGET_GPU = {"tests": 95, "render": 105, "pretrain": 70, "recon": 75, "twod": 50}
GSPLAT_WAIT_S = 30.0
#: the dry run checks that the code runs, not its speed: budgets that a loaded CI machine does not reach
BUDGET_DRY = dict.fromkeys(PARTS, 600)
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
        text = p.read_text()
        if "mark.gpu" in text and (keyword is None or keyword in text):
            files.append(str(p.relative_to(ROOT)))
    return files


def run_pytest(rec: Recorder, item: str, files: list[str], select: str) -> None:
    """``pytest -m gpu -k select`` in a subprocess bounded by the part's budget; one row with the counts."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-k", select, "-q", "-rA", "-p", "no:xdist",
           "-p", "no:cacheprovider", "--continue-on-collection-errors", *files]  # fmt: skip
    t0 = time.monotonic()
    try:
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(5.0, rec.left() - 5))
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        rec.add(item, "failed", f"timed out after {time.monotonic() - t0:.0f} s", log=out[-4000:])
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

    from medgmae.render import render_volume

    res = {}
    for backend in ("torch", "triton"):
        xs = [t.clone().requires_grad_() for t in gs]
        out = render_volume(*xs, shape, cutoff=3.0, backend=backend)
        w = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out.device)
        res[backend] = (out.detach(), torch.autograd.grad((out * w).sum(), xs))
    rel = lambda a, b: float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))  # noqa: E731
    fwd = rel(res["triton"][0], res["torch"][0])
    grad = max(rel(a, b) for a, b in zip(res["triton"][1], res["torch"][1]))
    return fwd, grad


def part_render(rec: Recorder, dry: bool) -> None:
    import torch

    from bench import render as br

    device = torch.device("cpu" if dry else "cuda")
    if dry:  # one tile, through the Triton interpreter
        cases, exp_rate = [br.Case("dense", 1, 4, 8, 1.6, 2.4), br.Case("sparse", 1, 12, 8, 0.5, 1.0)], None
    else:
        cases = br.make_cases(False, "all")
        clock, _ = br.sm_clock_hz(None)
        exp_rate = torch.cuda.get_device_properties(device).multi_processor_count * br.EXP_PER_CLK_PER_SM * clock
    opts = argparse.Namespace(cutoff=3.0, repeats=2 if dry else 10, budget=0.01 if dry else 1.5)
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


def part_pretrain(rec: Recorder, dry: bool) -> None:
    import torch

    from bench import pretrain as bp

    device = torch.device("cpu" if dry else "cuda")
    common = dict(sizes=["tiny"], img=16, patch=8, batch=1, warmup=0, iters=1) if dry else dict(
        sizes=["base"], img=96, patch=12, batch=8, warmup=2, iters=5)  # fmt: skip
    for k in [8] if dry else [512, 2048]:

        def measure(k=k) -> None:
            rows = bp.bench_steps(argparse.Namespace(num_gaussians=[k], **common), device)
            g = next(r for r in rows if r["model"] == "medgmae")
            v = next(r for r in rows if r["model"] == "voxel-mae")
            rec.add(
                f"{g['size']} MedGMAE K={k} batch {g['batch']} {common['img']}^3",
                "ok",
                f"step {g['step_s'] * 1e3:.1f} ms, renderer fwd+bwd {g['render_s'] * 1e3:.1f} ms "
                f"({100 * g['render_share']:.1f} % of the step), {g['volumes_per_s']:.1f} volumes/s; voxel-MAE "
                f"{v['step_s'] * 1e3:.1f} ms, {v['volumes_per_s']:.1f} volumes/s; MedGMAE / voxel-MAE "
                f"throughput {g['vs_voxel_mae']:.2f}",
                medgmae=g, voxel_mae=v, bf16=device.type == "cuda",
            )

        _guard(rec, f"MedGMAE K={k}", measure)


def part_recon(rec: Recorder, dry: bool) -> None:
    import torch

    from bench import recon as brc
    from recon.projectors import astra_cuda_available

    device = torch.device("cpu" if dry else "cuda")
    its = 3 if dry else 30
    case = dict(size=[8, 16, 16], voxel=[6.0, 6.0, 6.0], views=6, num_gaussians=64) if dry else dict(
        size=[80, 256, 256], voxel=[2.5, 1.5, 1.5], views=120, num_gaussians=50_000)  # fmt: skip
    for backend in ("torch", "astra"):
        item = f"{backend} projector, {'x'.join(map(str, case['size'][::-1]))}, {case['views']} cone views"
        if backend == "astra" and (dry or not astra_cuda_available()):
            why = "no CUDA device (dry run)" if dry else f"ASTRA's CUDA projector is not importable: {ASTRA_NOTE}"
            rec.add(item, "skipped", why)
            continue

        def measure(backend=backend, item=item) -> None:
            opts = argparse.Namespace(geometry="cone", iterations=its, eval_every=its, views_per_iteration=None,
                                      targets=[], compare_medgmae=False, checkpoint=None, seed=0, progress=False,
                                      backend=backend, **case)  # fmt: skip
            out = brc.run_case(opts, device)
            run = out["runs"]["fbp"]
            spi = run["seconds_per_iteration_median"]
            rec.add(item, "ok", f"{spi:.3g} s/iteration (median of {its}; {run['initial_gaussians']} Gaussians at "
                    f"the start) -> 15k iterations {spi * 15000 / 60:.1f} min (target < 10 min)",
                    projector=out["projector"], seconds_per_iteration=spi, run=run)  # fmt: skip

        _guard(rec, item, measure)


def part_twod(rec: Recorder, dry: bool) -> None:
    import torch

    from bench.render import Timer
    from medgmae.twod.render import render_gaussians_2d, resolve_backend_2d

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


PART_FUNCS = {"tests": part_tests, "render": part_render, "pretrain": part_pretrain, "recon": part_recon,
              "twod": part_twod}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- driver
def _child_env(dry: bool, **extra: str) -> dict:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONUNBUFFERED"] = "1"
    if dry:
        env["TRITON_INTERPRET"] = "1"
    return env


def run_part_here(part: str, budget: float, dry: bool, work: Path) -> list[dict]:
    """Run one part in this process (the dry run: one set of imports keeps it fast)."""
    rec = Recorder(part, work / f"{part}.json", time.monotonic() + budget)
    _guard(rec, "(part)", lambda: PART_FUNCS[part](rec, dry))
    return rec.rows


def run_part(part: str, budget: float, dry: bool, work: Path, **env: str) -> list[dict]:
    """Run one part in its own process (``--part``), bounded by ``budget`` seconds plus start-up grace."""
    rows_file = work / f"{part}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--rows", str(rows_file),
           "--budget", str(budget)] + (["--dry-run"] if dry else [])  # fmt: skip
    t0 = time.monotonic()
    status = None
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=_child_env(dry, **env), capture_output=True, text=True,
                             timeout=budget + 30)  # fmt: skip
        tail = (res.stdout + res.stderr)[-3000:]
        if res.returncode != 0:
            last = tail.strip().splitlines()[-1] if tail.strip() else ""
            status = f"process exited with code {res.returncode}: {last}"
    except subprocess.TimeoutExpired:
        status, tail = f"killed at its time budget ({budget:.0f} s + 30 s)", ""
    rows = json.loads(rows_file.read_text()) if rows_file.exists() else []
    if status:
        rows.append({"part": part, "item": "(part)", "status": "failed", "result": status[:300], "log": tail})
    for r in rows:
        r.setdefault("part", part)
    print(f"== {part}: {time.monotonic() - t0:.0f} s", flush=True)
    return rows


def start_gsplat_build(out: Path):
    """Build gsplat's CUDA extension in the background (6 compile jobs) while the other parts run."""
    code = "from medgmae.twod.render import _load_gsplat; _load_gsplat()"
    env = _child_env(False)
    env.setdefault("MAX_JOBS", "6")
    with open(out / "gsplat_build.log", "w") as log:  # its own session: the driver ends the whole build at exit
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    return proc, time.monotonic()


def finish_gsplat_build(build, wait_s: float, out: Path) -> dict:
    """Wait up to ``wait_s`` for the build; one row with its outcome (a build still running is left to run, not
    killed: a killed build would leave torch's build lock behind for the next loader to wait on)."""
    proc, t0 = build
    try:
        rc = proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        rc = None
    log = (out / "gsplat_build.log").read_text()[-2000:]
    last = log.strip().splitlines()[-1] if log.strip() else ""
    status = "ok" if rc == 0 else "failed"
    result = (f"built or loaded in {time.monotonic() - t0:.0f} s (in the background, 6 jobs)" if rc == 0
              else "still compiling at its time limit" if rc is None else f"exit {rc}: {last[:250]}")  # fmt: skip
    return {"part": "twod", "item": "gsplat CUDA extension build", "status": status, "result": result, "log": log}


def header(dry: bool, argv: list[str]) -> dict:
    import torch

    from importlib.metadata import PackageNotFoundError, version

    info = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "torch": torch.__version__,
            "python": platform.python_version(), "dry_run": dry,
            "command": "python3 bench/gpu_check.py " + " ".join(argv)}  # fmt: skip
    for pkg in ("triton", "monai", "gsplat", "astra-toolbox"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = "not installed"
    if not dry and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["device"] = f"{p.name}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB"
    else:
        info["device"] = f"CPU ({platform.machine()}, {os.cpu_count()} cores)" + (" - dry run" if dry else "")
    return info


def markdown(info: dict, rows: list[dict]) -> str:
    lines = [f"- {k}: {v}" for k, v in info.items()] + ["", "| part | item | status | result |", "|---|---|---|---|"]
    for r in rows:
        cells = [str(r.get(c, "")).replace("|", "/").replace("\n", " ") for c in ("part", "item", "status", "result")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="output folder (default $OUT)")
    p.add_argument("--dry-run", action="store_true", help="same code paths on the CPU at tiny sizes")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma list of {', '.join(PARTS)}")
    p.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # internal: run one part in this process
    p.add_argument("--rows", help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    if not parts or any(s not in PARTS for s in parts):
        p.error(f"--parts must list some of {', '.join(PARTS)}, got {args.parts!r}")
    args.part_list = parts
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    if args.part:  # child process: one part
        sys.path.insert(0, str(ROOT))
        rec = Recorder(args.part, Path(args.rows), time.monotonic() + args.budget)
        _guard(rec, "(part)", lambda: PART_FUNCS[args.part](rec, args.dry_run))
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
        sys.path.insert(0, str(ROOT))
    info = header(args.dry_run, argv)
    budgets = BUDGET_DRY if args.dry_run else BUDGET_GPU
    build = None if args.dry_run or "twod" not in args.part_list else start_gsplat_build(out)
    rows = []
    env = {}
    try:
        with tempfile.TemporaryDirectory() as work:
            for part in args.part_list:
                if part == "twod" and build is not None:
                    rows.append(finish_gsplat_build(build, GSPLAT_WAIT_S, out))
                    env["GPU_CHECK_GSPLAT"] = rows[-1]["status"]
                if args.dry_run:
                    rows += run_part_here(part, budgets[part], True, Path(work))
                else:
                    rows += run_part(part, budgets[part], False, Path(work), **env)
    finally:
        if build is not None and build[0].poll() is None:
            os.killpg(build[0].pid, signal.SIGKILL)  # a build still running (its own session: nvcc included)
    table = markdown(info, rows)
    print("\n" + table)
    _write_atomic(out / "gpu_check.md", table)
    _write_atomic(out / "gpu_check.json", json.dumps({"info": info, "rows": rows}, indent=1, default=str) + "\n")
    return 0 if all(r["status"] in ("ok", "skipped") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
