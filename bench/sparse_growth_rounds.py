"""What a growth round of the zero-shot start does to the projection loss, and whether the run recovers from it.

The zero-shot start (``recon.initialisation.medgmae_init`` of ``--checkpoint``) on one held-out phantom scan of the
reconstruction study (``bench/recon_simulation.py``: 32 x 64 x 64 voxels of 6 x 4 x 4 mm, measured on the 2x finer
phantom with Poisson noise at 1e5 photons), grown as ``reconstruct --init medgmae`` grows it
(``recon.presets.sparse_start_growth``: a round every 10 iterations densifying half of the Gaussians, to 20,000),
under three split rules:

* ``sample``: the default drawn rule (``recon.density``): split children at 1/1.6 of the parent's scales with its
  peak value (the pair carries 2 / 1.6^3 = 0.49 of its mass), clones at half the intensity;
* ``moments``: ``split_rule="moments"`` (the pair keeps the parent's mass, mean and covariance);
* ``sample-mass``: the drawn rule with the split's mass kept, defined here only (not a toolkit option): children
  at 1/1.6 of the scales, centres drawn from ``N(mu, (1 - 1/1.6^2) Sigma)`` and intensities times ``1.6^3 / 2``,
  so the pair's expected rendering is the parent (as ``recon.initialisation.subdivide_gaussians``).

Per round: the Gaussian count, the projection loss (the fitted loss, ``GaussianReconstructor.loss``) just before and
just after the round with no optimiser step between (so a rise is the round's, not Adam's), and how many steps the
per-step loss takes to fall below the loss before the round. Per rule: the PSNR against the phantom every 10
iterations, its peak and its end.

    python bench/sparse_growth_rounds.py --checkpoint bench/results_recon_models/models/k1024.pt --iterations 300
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))  # after the repository: this folder must not hide `recon`

import recon.density as density  # noqa: E402
from medgmae.networks.medgmae import MedGMAE  # noqa: E402
from recon.gaussian_recon import GaussianReconConfig, GaussianReconstructor  # noqa: E402
from recon.initialisation import medgmae_init  # noqa: E402
from recon.metrics import psnr  # noqa: E402
from recon.presets import sparse_start_growth  # noqa: E402
from recon.projectors import make_projector  # noqa: E402
from recon_simulation import add_zero_shot_scan_args, zero_shot_scan  # noqa: E402

_DRAWN = density._sample_children


def _mass_kept_children(rec, clone, split, scales, rot):
    """The drawn rule with the split's mass kept (see the module docstring); clones as the toolkit's."""
    p, f = rec.params, 1 / 1.6
    out = _DRAWN(rec, clone, torch.zeros_like(split), scales, rot)  # the clones (their parents halved in place)
    kids = []
    for _ in range(2):
        z = torch.randn(int(split.sum()), 3, generator=rec.generator).to(rec.device) * scales[split]
        kids.append({
            "means": p["means"][split] + (rot[split] @ z.unsqueeze(-1)).squeeze(-1) * math.sqrt(1 - f * f),
            "log_scales": p["log_scales"][split] + math.log(f),
            "quats": p["quats"][split],
            "intensities": p["intensities"][split] / (2 * f**3),
        })  # fmt: skip
    return {n: torch.cat([out[n]] + [k[n] for k in kids], 0) for n in out}


def run(rule: str, projector, proj, vol, init, iterations: int) -> None:
    density._sample_children = _mass_kept_children if rule == "sample-mass" else _DRAWN
    cfg = GaussianReconConfig.preset("toolkit", iterations, eval_every=10, **sparse_start_growth(20000),
                                     split_rule="moments" if rule == "moments" else "sample")  # fmt: skip
    rec = GaussianReconstructor(projector, proj, init, cfg, reference=vol)
    rounds, densify, losses = [], rec.densify_and_prune, []

    def measured():
        with torch.no_grad():
            before = float(rec.loss(rec.render()))
        k = rec.params["means"].shape[0]
        stats = densify()
        with torch.no_grad():
            after = float(rec.loss(rec.render()))
        rounds.append({"iteration": rec.iteration, "from": k, "to": rec.params["means"].shape[0], "before": before, "after": after})
        return stats

    rec.densify_and_prune = measured
    step = rec.step

    def logged():
        losses.append(step())
        return losses[-1]

    rec.step = logged
    t = time.perf_counter()
    res = rec.run(progress=False)
    seconds = time.perf_counter() - t
    density._sample_children = _DRAWN
    print(f"\n{rule}: {seconds:.0f} s")
    for r in rounds:
        later = losses[r["iteration"]:]  # losses[i]: the step taken at iteration i, after the round at i
        back = next((i for i, v in enumerate(later) if v < r["before"]), None)
        print(f"  round after iteration {r['iteration']}: {r['from']} -> {r['to']} Gaussians, loss {r['before']:.4g} -> "
              f"{r['after']:.4g} (x{r['after'] / r['before']:.2f}), below the loss before after "
              f"{'-' if back is None else back + 1} steps")  # fmt: skip
    curve = [(0, psnr(init_render(init, vol.shape), vol))] + [(h["iteration"], h["psnr"]) for h in res.history]
    peak = max(curve, key=lambda c: c[1])
    print(f"  PSNR: peak {peak[1]:.2f} dB at {peak[0]}, end {curve[-1][1]:.2f} dB; every 10 iterations: "
          + " ".join(f"{i}:{v:.2f}" for i, v in curve))


def init_render(init, shape):
    from medgmae.render import render_volume

    return render_volume(*init.tensors(), shape=tuple(shape), cutoff=3.0)[0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_zero_shot_scan_args(p)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--rules", nargs="+", default=["sample", "moments", "sample-mass"], choices=("sample", "moments", "sample-mass"))
    args = p.parse_args(argv)
    geom, proj, vol, f = zero_shot_scan(args)
    projector = make_projector(geom, "auto", torch.device("cpu"))
    model = MedGMAE.from_checkpoint(args.checkpoint, needed_for="bench/sparse_growth_rounds.py").eval()
    init = medgmae_init(f, geom.default_affine(), model, overlap=16)
    print(f"scan: {args.geometry}, {args.views} views, phantom seed {args.seed}; FBP/FDK (Hann) {psnr(f, vol):.2f} dB; "
          f"zero-shot start: {init.num_gaussians} Gaussians; {args.iterations} iterations")  # fmt: skip
    for rule in args.rules:
        run(rule, projector, proj, vol, init, args.iterations)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
