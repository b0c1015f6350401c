"""Per-iteration time split of the Gaussian CT reconstruction on the CPU.

The case (issue 11, "Fast on the CPU"): a phantom of 27 x 64 x 64 voxels of 6 x 3.8 x 3.8 mm (z, y, x; generated
at that geometry by :func:`medgmae.data.phantom.generate_phantom`, no noise, HU -> attenuation), 60 parallel-beam
views over 180 degrees, the projector ``make_projector(..., "auto")`` picks on the CPU, and the ``fbp``
initialisation (``recon.initialisation.fbp_init`` of the Hann-filtered FBP) with about 21k Gaussians.

Each timed iteration runs the parts of :meth:`recon.gaussian_recon.GaussianReconstructor.step` one after the
other with a timer around each:

* ``render``: :meth:`GaussianReconstructor.render` (the renderer's forward pass);
* ``forward project``: the projector's forward pass on the rendered volume;
* ``loss``: the relative projection MSE;
* ``back project``: backward of the loss down to the volume (the projector's adjoint);
* ``render backward``: backward of the rendered volume down to the Gaussian parameters;
* ``optimiser``: Adam, the scheduler, the quaternion normalisation and scale clamp;

and ``step`` times the unmodified :meth:`GaussianReconstructor.step` (what a reconstruction iteration costs).
``density control`` is one :meth:`densify_and_prune` call (it runs once per ``densify_every`` = 100 iterations),
also given amortised per iteration. Medians over ``--iterations`` timed iterations after ``--warmup``.

Usage::

    python bench/recon_profile.py --threads 2
    python bench/recon_profile.py --threads 2 --render-path tile   # the renderer's previous (tile) path
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medgmae.data.phantom import generate_phantom  # noqa: E402
from medgmae.render._torch_impl import PATHS, torch_path  # noqa: E402
from recon.fbp import fbp  # noqa: E402
from recon.gaussian_recon import GaussianReconConfig, GaussianReconstructor  # noqa: E402
from recon.geometry import CTGeometry  # noqa: E402
from recon.initialisation import fbp_init, hu_to_mu  # noqa: E402
from recon.projectors import PROJECTOR_BACKENDS, make_projector  # noqa: E402

SHAPE_ZYX = (27, 64, 64)
VOXEL_ZYX = (6.0, 3.8, 3.8)
PARTS = ("render", "forward project", "loss", "back project", "render backward", "optimiser")


def build_case(views: int, num_gaussians: int, seed: int, backend: str):
    """Phantom, geometry, projector, measured projections and ``fbp`` init of the profiled case."""
    ph = generate_phantom(seed, shape=SHAPE_ZYX[::-1], spacing=VOXEL_ZYX[::-1], noise=False)
    vol = torch.from_numpy(hu_to_mu(ph.image)).float().permute(2, 1, 0).contiguous()
    geom = CTGeometry.parallel(SHAPE_ZYX, VOXEL_ZYX, num_angles=views)
    proj_op = make_projector(geom, backend, "cpu")
    with torch.no_grad():
        proj = proj_op(vol)
    init = fbp_init(fbp(proj, geom, "hann"), num_gaussians, seed=seed)
    return vol, geom, proj_op, proj, init


def timed_parts(rec: GaussianReconstructor) -> dict:
    """One iteration split into its parts, through the reconstructor's own methods (it advances like a step).

    The volume is cut from the graph between the projection loss and the renderer, so the two backward passes are
    timed apart; the projector's forward is timed inside :meth:`GaussianReconstructor.loss` by a wrapper.
    """
    clock = time.perf_counter
    rec.start_step()
    t0 = clock()
    vol = rec.render()
    t1 = clock()
    leaf = vol.detach().requires_grad_()
    forward, spent = rec.projector.forward, []

    def timed_forward(*a, **k):
        t = clock()
        out = forward(*a, **k)
        spent.append(clock() - t)
        return out

    own = "forward" in vars(rec.projector)  # an instance attribute, or the class's method
    rec.projector.forward = timed_forward
    try:
        loss = rec.loss(leaf)
    finally:
        if own:
            rec.projector.forward = forward
        else:
            del rec.projector.forward
    t3 = clock()
    loss.backward()
    t4 = clock()
    vol.backward(leaf.grad)
    t5 = clock()
    rec.finish_step()
    t6 = clock()
    project = sum(spent)
    spans = [t1 - t0, project, t3 - t1 - project, t4 - t3, t5 - t4, t6 - t5]
    return dict(zip(PARTS, spans))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--views", type=int, default=60)
    p.add_argument("--num-gaussians", type=int, default=21_000)
    p.add_argument("--iterations", type=int, default=7, help="timed iterations (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--projector", default="auto", choices=PROJECTOR_BACKENDS)
    p.add_argument("--render-path", default="auto", choices=PATHS,
                   help="the torch renderer's path: auto (runs of in-cutoff voxels, the default) or tile (the "
                   "previous implementation)")
    p.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    args = p.parse_args(argv)
    if args.threads < 1 or args.iterations < 1 or args.warmup < 0 or args.views < 1 or args.num_gaussians < 1:
        p.error("--threads, --iterations, --views, --num-gaussians must be >= 1 and --warmup >= 0")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with torch_path(args.render_path):
        return _run(args, argv)


def _run(args, argv) -> int:
    vol, geom, proj_op, proj, init = build_case(args.views, args.num_gaussians, args.seed, args.projector)
    cfg = GaussianReconConfig(iterations=1000, densify_from=100, densify_every=100, seed=args.seed)
    rec = GaussianReconstructor(proj_op, proj, init, cfg, reference=vol)
    for _ in range(args.warmup):
        rec.step()
    parts = {k: [] for k in PARTS}
    steps = []
    for _ in range(args.iterations):
        for k, v in timed_parts(rec).items():
            parts[k].append(v)
        t = time.perf_counter()
        rec.step()
        steps.append(time.perf_counter() - t)
    t = time.perf_counter()
    counts = rec.densify_and_prune()
    densify = time.perf_counter() - t
    med = {k: statistics.median(v) for k, v in parts.items()}
    rows = [(k, med[k]) for k in PARTS] + [
        ("sum of parts", sum(med.values())),
        ("step (unmodified GaussianReconstructor.step)", statistics.median(steps)),
        ("density control, one call", densify),
        ("density control, per iteration (every 100)", densify / cfg.densify_every),
    ]
    cmd = "python " + " ".join([os.path.relpath(sys.argv[0])] + sys.argv[1:]) if argv is None else f"main({argv!r})"
    header = [
        f"date: {_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"device: CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores), "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, load average "
        f"{os.getloadavg()[0]:.1f} at the end, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}",
        f"case: {SHAPE_ZYX} voxels of {VOXEL_ZYX} mm, {geom.num_views} parallel views, projector "
        f"{proj_op.name}, fbp init K = {init.num_gaussians}, renderer path "
        f"{args.render_path}; median of {args.iterations} iterations",
        f"command: `{cmd}`",
    ]
    lines = [f"- {h}" for h in header] + ["", "| part | ms / iteration |", "|---|---|"]
    lines += [f"| {k} | {v * 1e3:.1f} |" for k, v in rows]
    print("\n".join(lines))
    print(f"density control: {counts}", file=sys.stderr)
    if args.json:
        from medgmae.files import save_json_atomic

        save_json_atomic({"header": header, "ms": {k: v * 1e3 for k, v in rows}}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
