"""Benchmark of the 3DGR-CT Gaussian reconstruction.

1. Speed: seconds per iteration and total time for a configurable volume / scan (``--size``, ``--views``,
   ``--iterations``); ``--gpu-case`` selects the issue's case: a 256 x 256 x 80 volume, 120 cone-beam views,
   15k iterations (meant for one H100/H200; with ``--device cuda`` the projector is ASTRA's CUDA one).
2. Convergence: iterations to reach PSNR targets (default 30 and 35 dB) with the ``fbp`` and the zero-shot
   ``medgmae`` initialisation on phantom data, with a given pre-trained ``--checkpoint`` or a tiny MedGMAE
   pre-trained here for ``--pretrain-steps`` steps on phantom windows.

Examples::

    python bench/recon.py --size 32 32 32 --views 60 --iterations 400 --device cpu --json out.json
    python bench/recon.py --gpu-case --device cuda --checkpoint model.pt
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medgmae.data.phantom import generate_phantom  # noqa: E402
from recon.fbp import fbp  # noqa: E402
from recon.gaussian_recon import GaussianReconConfig, GaussianReconstructor  # noqa: E402
from recon.geometry import CTGeometry  # noqa: E402
from recon.init import fbp_init, hu_to_mu, medgmae_init, window_fbp  # noqa: E402
from recon.metrics import psnr, ssim  # noqa: E402
from recon.projectors import make_projector  # noqa: E402


def phantom_mu(seed: int, shape_zyx, voxel_zyx) -> torch.Tensor:
    ph = generate_phantom(seed, shape=tuple(shape_zyx[::-1]), spacing=tuple(voxel_zyx[::-1]), noise=False)
    return torch.from_numpy(hu_to_mu(ph.image).astype(np.float32)).permute(2, 1, 0).contiguous()


def pretrain_tiny(steps: int, window: int, spacing: float, device, seed: int = 0):
    """A tiny MedGMAE pre-trained briefly on windowed phantom crops at ``spacing`` (fixture-grade prior)."""
    from medgmae.networks.medgmae import MedGMAE

    torch.manual_seed(seed)
    model = MedGMAE(img_size=window, patch_size=window // 4, model_size="tiny", num_gaussians=256, render_backend="auto").to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    crops = []
    for s in range(4):
        mu = phantom_mu(100 + s, (48, 64, 64), (spacing,) * 3)
        x = window_fbp(mu)
        for _ in range(16):
            o = [np.random.RandomState(s * 31 + _).randint(0, n - window + 1) for n in x.shape]
            crops.append(x[o[0] : o[0] + window, o[1] : o[1] + window, o[2] : o[2] + window])
    data = torch.stack(crops)[:, None].to(device)
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, len(data), (4,), generator=gen)
        loss = model(data[idx]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model, {"steps": steps, "final_loss": float(loss.detach()), "seconds": time.perf_counter() - t0}


def run_case(args, device) -> dict:
    shape, voxel = tuple(args.size), tuple(args.voxel)
    vol = phantom_mu(args.seed, shape, voxel).to(device)
    if args.geometry == "cone":
        geom = CTGeometry.cone(shape, voxel, num_angles=args.views)
    else:
        geom = CTGeometry.parallel(shape, voxel, num_angles=args.views)
    proj_op = make_projector(geom, args.backend, device)
    with torch.no_grad():
        proj = proj_op(vol)
    t = time.perf_counter()
    rec_fbp = fbp(proj, geom, "hann")
    fbp_seconds = time.perf_counter() - t
    out = {
        "shape_zyx": list(shape), "voxel_mm": list(voxel), "geometry": geom.kind, "views": geom.num_views,
        "projector": proj_op.name, "fbp_seconds": fbp_seconds,
        "fbp_volume": {"psnr": psnr(rec_fbp, vol), "ssim": ssim(rec_fbp, vol)}, "runs": {},
    }  # fmt: skip
    inits = {"fbp": lambda: fbp_init(rec_fbp, args.num_gaussians, seed=args.seed)}
    if args.compare_medgmae:
        if args.checkpoint:
            from medgmae.networks.medgmae import MedGMAE

            model, info = MedGMAE.from_checkpoint(args.checkpoint).to(device).eval(), {"checkpoint": args.checkpoint}
        else:
            model, info = pretrain_tiny(args.pretrain_steps, args.window, args.model_spacing, device, args.seed)
        out["medgmae_model"] = info
        inits["medgmae"] = lambda: medgmae_init(rec_fbp, voxel, model, spacing=args.model_spacing)
    for name, make in inits.items():
        t = time.perf_counter()
        init = make()
        init_seconds = time.perf_counter() - t
        cfg = GaussianReconConfig(
            iterations=args.iterations, eval_every=args.eval_every, views_per_iteration=args.views_per_iteration,
            densify_from=min(100, args.iterations // 5), densify_every=100, coarse_iterations=0, seed=args.seed,
        )  # fmt: skip
        rec = GaussianReconstructor(proj_op, proj, init, cfg, reference=vol.cpu(), device=device)
        start = rec.evaluate()
        iter_times = []
        t0 = time.perf_counter()
        orig_step = rec.step

        def timed_step():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            loss = orig_step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            iter_times.append(time.perf_counter() - t)
            return loss

        rec.step = timed_step
        res = rec.run(progress=args.progress, ssim_every_eval=False)
        total = time.perf_counter() - t0
        reached = {}
        for thr in args.targets:
            hits = [h["iteration"] for h in res.history if h.get("psnr", -math.inf) >= thr]
            reached[str(thr)] = hits[0] if hits else None
        out["runs"][name] = {
            "init_seconds": init_seconds, "initial_gaussians": init.num_gaussians, "initial_psnr": start.get("psnr"),
            "seconds_per_iteration_median": statistics.median(iter_times) if iter_times else None,
            "total_seconds": total, "final_psnr": res.history[-1].get("psnr") if res.history else None,
            "final_ssim": ssim(res.volume, vol), "final_gaussians": res.gaussians.num_gaussians,
            "iterations_to_psnr": reached,
            "curve": [(h["iteration"], round(h.get("psnr", float("nan")), 3)) for h in res.history],
        }  # fmt: skip
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, nargs=3, default=[32, 32, 32], metavar=("D", "H", "W"))
    p.add_argument("--voxel", type=float, nargs=3, default=[6.0, 6.0, 6.0], metavar=("SZ", "SY", "SX"))
    p.add_argument("--geometry", choices=("parallel", "cone"), default="cone")
    p.add_argument("--views", type=int, default=60)
    p.add_argument("--iterations", type=int, default=400)
    p.add_argument("--num-gaussians", type=int, default=1000)
    p.add_argument("--views-per-iteration", type=int, default=None)
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--targets", type=float, nargs="+", default=[30.0, 35.0])
    p.add_argument("--gpu-case", action="store_true", help="256 x 256 x 80, 120 cone views, 15k iterations")
    p.add_argument("--compare-medgmae", action="store_true", help="also run the zero-shot MedGMAE initialisation")
    p.add_argument("--checkpoint", default=None, help="pre-trained MedGMAE model.pt (else a tiny one is pre-trained here)")
    p.add_argument("--pretrain-steps", type=int, default=200)
    p.add_argument("--window", type=int, default=16, help="input size of the tiny model pre-trained here")
    p.add_argument("--model-spacing", type=float, default=1.5, help="spacing (mm) of the model's pre-training data")
    p.add_argument("--backend", default="auto", choices=("auto", "torch", "astra"))
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", action="store_true")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    if args.gpu_case:
        args.size, args.voxel, args.geometry, args.views, args.iterations = [80, 256, 256], [2.5, 1.5, 1.5], "cone", 120, 15000
        args.num_gaussians, args.eval_every = max(args.num_gaussians, 50000), 250
    if args.threads:
        torch.set_num_threads(args.threads)
    from medgmae.engine import resolve_device

    device = resolve_device(args.device)
    result = {
        "date": time.strftime("%Y-%m-%d"), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(), "command": " ".join(["python", "bench/recon.py", *(argv if argv is not None else sys.argv[1:])]),
    }  # fmt: skip
    result.update(run_case(args, device))
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        from medgmae.engine import save_json_atomic

        save_json_atomic(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
