"""Does fitting the zero-shot start's intensities (``reconstruct --init-fit-iterations N``) help the reconstruction,
not only the start?

The scan of ``bench/zero_shot_fidelity.py`` (``recon_simulation.zero_shot_scan``: 32 x 64 x 64 voxels of 6 x 4 x 4
mm, measured on the 2x finer phantom with Poisson noise at 1e5 photons, no inverse crime) and the decoder of
``--checkpoint``. For each ``--fit-steps`` value the zero-shot start is made as ``reconstruct --init medgmae
--init-fit-iterations N`` makes it (``recon.initialisation.medgmae_init``, window overlap 16), then reconstructed
for each ``--iterations`` budget under the toolkit preset growing to 20,000 Gaussians (``--preset toolkit
--num-gaussians 20000``, as the sparse studies). Printed: one markdown table, PSNR against the phantom (the start,
at iteration 20 when reached, at the end, the peak and its iteration) and the start against the FBP/FDK.

    python bench/init_fit.py --checkpoint bench/results_recon_models/models/k1024.pt
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))  # after the repository: this folder must not hide `recon`

from medgmae.networks.medgmae import MedGMAE  # noqa: E402
from medgmae.render import render_volume  # noqa: E402
from recon.gaussian_recon import GaussianReconConfig, GaussianReconstructor  # noqa: E402
from recon.initialisation import medgmae_init  # noqa: E402
from recon.metrics import psnr  # noqa: E402
from recon.presets import sparse_start_growth  # noqa: E402
from recon.projectors import make_projector  # noqa: E402
from recon_simulation import add_zero_shot_scan_args, zero_shot_scan  # noqa: E402


def _row(fit: int, iterations: int, start_fbp: float, start: float, curve: list[tuple[int, float]], seconds: float) -> str:
    """One table row: the start, PSNR at iteration 20 (when the run reaches it), at the end and at the peak."""
    at20 = next((v for i, v in curve if i == 20), None)
    peak = max(curve, key=lambda c: c[1])
    return (f"| {fit} | {iterations} | {start_fbp:.2f} | {start:.2f} | {'-' if at20 is None else f'{at20:.2f}'} | "
            f"{curve[-1][1]:.2f} | {peak[1]:.2f} ({peak[0]}) | {seconds:.0f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_zero_shot_scan_args(p)
    p.add_argument("--fit-steps", type=int, nargs="+", default=[0, 20], help="--init-fit-iterations values")
    p.add_argument("--iterations", type=int, nargs="+", default=[20, 100], help="reconstruction budgets")
    p.add_argument("--num-gaussians", type=int, default=20000, help="the budget the start grows to")
    args = p.parse_args(argv)
    if min(args.fit_steps) < 0 or min(args.iterations) < 1:
        p.error("--fit-steps must be >= 0 and --iterations >= 1")
    geom, proj, vol, f = zero_shot_scan(args)
    projector = make_projector(geom, "auto", torch.device("cpu"))
    model = MedGMAE.from_checkpoint(args.checkpoint, needed_for="bench/init_fit.py").eval()
    print(f"scan: {args.geometry}, {args.views} views, phantom seed {args.seed}; FBP/FDK (Hann) vs phantom "
          f"{psnr(f, vol):.2f} dB; PSNR in dB against the phantom unless said\n")  # fmt: skip
    print("| fit steps | iterations | start vs FBP/FDK | start | at 20 | end | peak (iteration) | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for fit in args.fit_steps:
        init = medgmae_init(f, geom.default_affine(), model, overlap=16, fit_iterations=fit)
        shown = render_volume(*init.tensors(), shape=tuple(vol.shape), cutoff=3.0)[0]
        start_fbp, start = psnr(shown, f), psnr(shown, vol)
        for iterations in args.iterations:
            cfg = GaussianReconConfig.preset("toolkit", iterations, eval_every=10, **sparse_start_growth(args.num_gaussians))
            t = time.perf_counter()
            res = GaussianReconstructor(projector, proj, init, cfg, reference=vol).run(progress=False)
            curve = [(0, start)] + [(h["iteration"], h["psnr"]) for h in res.history]
            print(_row(fit, iterations, start_fbp, start, curve, time.perf_counter() - t), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
