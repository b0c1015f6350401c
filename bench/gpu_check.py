"""One-call GPU check: the GPU tests, then the renderer, pre-training, reconstruction and 2D measurements.

On a GPU machine that lacks the pure-Python dependencies (monai, nibabel, gsplat, pytorch-ignite, pydicom), fetch
their wheels here first (``bash bench/gpu_wheels.sh``: into ``.whl/``, listed in ``bench/gpu_requirements.txt``,
about 14 MB), carry ``.whl`` with the repository, and run from the repository root, in one call (under 8 minutes on
one H100/H200)::

    { command -v nvcc && nvcc --version | tail -1; } || echo "no nvcc on PATH: gsplat's CUDA build will fail"; \\
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 && python3 bench/gpu_check.py --out $OUT

``--dry-run`` runs the same code paths on the CPU at tiny sizes (Triton through ``TRITON_INTERPRET=1``; 30-40 s of
CPU time); ``tests/test_gpu_check.py`` runs it so that the script cannot rot between GPU runs.

Parts, each with its own time budget and, on the GPU, in its own process (a failure, a crash of the CUDA context or
a timeout of one part is reported in its rows and the others still run; rows are written as they are measured, so a
part cut off by its budget keeps what it finished; the dry run runs the parts in one process to stay fast):

1. ``tests``: ``pytest -m gpu`` on the test files holding GPU tests (gsplat's tests run in part 6, once its
   CUDA extension has been built in the background from the start).
2. ``bundle``: the README's main job as a user runs it on a GPU, at a tiny size: the pre-training bundle with
   ``--device cuda``, bf16 autocast, the ``auto`` (Triton) renderer and 2 loader workers for one epoch, then resumed
   to a second; its ``summary.json`` must name the GPU.
3. ``render``: the cases of ``bench/render.py`` with both backends (CUDA events, warm-up, median), the
   triton/torch ratios, the ratio to the exp-throughput floor (``bench/RESULTS.md``), and the agreement of the
   triton backend's forward and gradients with the torch backend's; then, with the time left, other launch shapes
   of the Triton kernels on the dense B=8, K=2048 case (``bench/render_launch.py``).
4. ``pretrain``: base model, batch 8, K in {512, 2048}, 96^3, bf16 autocast, Triton renderer, against the
   voxel-MAE (``bench/pretrain.py``): step time, renderer share, volumes/s.
5. ``recon``: seconds per iteration of the Gaussian reconstruction of 256 x 256 x 80 from 120 cone-beam views
   with 50k Gaussians (``bench/recon.py``), PyTorch projector and, where importable, ASTRA's CUDA projector;
   the projected time of 15k iterations.
6. ``twod``: gsplat's GPU tests, then gsplat rasterisation against the PyTorch compositor (same Gaussians: max
   abs difference, times).

The parts live in ``bench/gpu_check_parts.py``. Output: one markdown table on stdout, and ``gpu_check.md`` (table) and ``gpu_check.json`` (raw rows) in ``--out``
(default ``$OUT`` if set, else ``gpu_check_out``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's packages and bench/ (also where medgmae is not installed)

from bench.gpu_check_parts import PART_FUNCS, Recorder, _guard, _write_atomic, gpu_test_files  # noqa: E402,F401

PARTS = ("tests", "bundle", "render", "pretrain", "recon", "twod")
#: seconds per part on the GPU (caps: a part that needs less leaves its time to the later ones)
BUDGET_GPU = {"tests": 110, "bundle": 45, "render": 115, "pretrain": 50, "recon": 75, "twod": 40}
#: the whole GPU run, waits and process start-ups included, stays within this (under 8 minutes)
TOTAL_GPU_S = 450.0
#: the least a part is given when earlier parts ran long; a part is killed 20 s after its budget
MIN_PART_S = 20.0
GSPLAT_WAIT_S = 30.0
#: the dry run checks that the code runs, not its speed: budgets that a loaded CI machine does not reach
BUDGET_DRY = dict.fromkeys(PARTS, 600)


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
        res = subprocess.run(cmd, cwd=ROOT, env=_child_env(dry, **env), capture_output=True, encoding="utf-8", errors="replace",
                             timeout=budget + 20)  # fmt: skip
        tail = (res.stdout + res.stderr)[-3000:]
        if res.returncode != 0:
            last = tail.strip().splitlines()[-1] if tail.strip() else ""
            status = f"process exited with code {res.returncode}: {last}"
    except subprocess.TimeoutExpired:
        status, tail = f"killed at its time budget ({budget:.0f} s + 20 s)", ""
    rows = json.loads(rows_file.read_text(encoding="utf-8")) if rows_file.exists() else []
    if status:
        rows.append({"part": part, "item": "(part)", "status": "failed", "result": status[:300], "log": tail})
    for r in rows:
        r.setdefault("part", part)
    print(f"== {part}: {time.monotonic() - t0:.0f} s", flush=True)
    return rows


def start_gsplat_build(out: Path):
    """Build gsplat's CUDA extension in the background (6 compile jobs) while the other parts run."""
    code = "from medgmae.twod.gsplat_backend import _load_gsplat; _load_gsplat()"
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
    log = (out / "gsplat_build.log").read_text(encoding="utf-8", errors="replace")[-2000:]
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
    if not args.dry_run:  # (a dry run sets TRITON_INTERPRET below, before anything imports triton)
        import torch

        if not torch.cuda.is_available():  # every part would fail at its first CUDA call
            print("gpu_check: no CUDA device here; run it on a GPU machine, or with --dry-run for the CPU run of the "
                  "same code paths", file=sys.stderr)  # fmt: skip
            return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is first imported
        sys.path.insert(0, str(ROOT))
    info = header(args.dry_run, argv)
    budgets = BUDGET_DRY if args.dry_run else BUDGET_GPU
    build = None if args.dry_run or "twod" not in args.part_list else start_gsplat_build(out)
    if build is not None:
        info["note"] = "gsplat's CUDA extension compiled in the background (6 jobs) while the other parts ran"
    rows = []
    env, end = {}, time.monotonic() + TOTAL_GPU_S
    try:
        with tempfile.TemporaryDirectory() as work:
            for i, part in enumerate(args.part_list):
                later = len(args.part_list) - i - 1
                if part == "twod" and build is not None:
                    wait = min(GSPLAT_WAIT_S, max(0.0, end - time.monotonic() - 2 * MIN_PART_S))
                    rows.append(finish_gsplat_build(build, wait, out))
                    env["GPU_CHECK_GSPLAT"] = rows[-1]["status"]
                if args.dry_run:
                    rows += run_part_here(part, budgets[part], True, Path(work))
                else:  # within the overall deadline, keeping MIN_PART_S (+ 20 s of kill grace) for each later part
                    budget = min(budgets[part], end - time.monotonic() - 20 - later * (MIN_PART_S + 20))
                    rows += run_part(part, max(MIN_PART_S, budget), False, Path(work), **env)
                _write_results(out, info, rows)  # after each part: a run cut short still returns the parts done
    finally:
        if build is not None and build[0].poll() is None:
            os.killpg(build[0].pid, signal.SIGKILL)  # a build still running (its own session: nvcc included)
    print("\n" + _write_results(out, info, rows))
    return 0 if all(r["status"] in ("ok", "skipped") for r in rows) else 1


def _write_results(out: Path, info: dict, rows: list[dict]) -> str:
    """Write ``gpu_check.md`` and ``gpu_check.json`` of the rows so far (atomically); returns the table."""
    table = markdown(info, rows)
    _write_atomic(out / "gpu_check.md", table)
    _write_atomic(out / "gpu_check.json", json.dumps({"info": info, "rows": rows}, indent=1, default=str) + "\n")
    return table


if __name__ == "__main__":
    sys.exit(main())
