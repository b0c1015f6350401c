"""How well the zero-shot start reproduces the FBP/FDK volume it is decoded from, and where the gap comes from.

One held-out phantom scan of the reconstruction study (``bench/recon_simulation.py``: 32 x 64 x 64 voxels of
6 x 4 x 4 mm, measured on the 2x finer phantom with Poisson noise at 1e5 photons), its Hann FBP/FDK, and the
decoder of ``--checkpoint``. Printed, each as PSNR (``recon.metrics.psnr``: on the range of the second volume):

1. the FBP/FDK against the phantom (the ceiling of any start made from it);
2. the decoder on its own grid: the decoded Gaussians rendered on the model's prepared grid against the windowed
   input they were decoded from (window units, range 1), and their correlation, on the whole scan and on one
   96^3 window of the clean phantom (no reconstruction code involved: the model's own fidelity);
3. the same Gaussians mapped to the reconstruction grid with the window's slope only, against the windowed FBP
   in attenuation units (equal to 2. when the frame and axis mapping is right);
4. what the HU window keeps: the windowed FBP in attenuation units, without and with the window's floor
   (``mu_water (1 + a_min / 1000)`` inside the body) added back, against the FBP;
5. the zero-shot start as ``recon.initialisation.medgmae_init`` makes it (one least-squares gain; the gain
   printed), and with 20 steps of ``fit_intensities``, against the FBP and the phantom;
6. the window inverted per Gaussian (each intensity times ``floor / v + slope``, ``v``: the rendered window value at
   its centre) and pointwise on the rendered volume, against the FBP and the phantom;
7. the toolkit's non-learned start (``fbp_init``) at the zero-shot start's count and at 20,000.

    python bench/zero_shot_fidelity.py --checkpoint bench/results_recon_models/models/k1024.pt
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.append(str(Path(__file__).resolve().parent))  # after the repository: this folder must not hide `recon`

from medgmae.gaussians import Gaussians3D  # noqa: E402
from medgmae.networks.medgmae import MedGMAE  # noqa: E402
from medgmae.render import render_volume  # noqa: E402
from medgmae.zeroshot import prepare_scan, zero_shot_gaussians  # noqa: E402
from recon.initialisation import MU_WATER, fbp_init, fit_intensities, medgmae_init, mu_to_hu, zyx_affine  # noqa: E402
from recon.metrics import psnr  # noqa: E402
from recon_simulation import add_zero_shot_scan_args, zero_shot_scan  # noqa: E402


def _unit_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10.0 * math.log10(1.0 / float((a - b).square().mean()))


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def _render(g: Gaussians3D, shape) -> torch.Tensor:
    return render_volume(*g.tensors(), shape=tuple(shape), cutoff=3.0)[0]


def _at(volume: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinear values of ``volume`` (D, H, W) at voxel-frame ``points`` (N, 3)."""
    d, h, w = volume.shape
    n = torch.stack([points[:, 2] / (w - 1), points[:, 1] / (h - 1), points[:, 0] / (d - 1)], -1) * 2 - 1
    return F.grid_sample(volume[None, None], n[None, None, None], align_corners=True, padding_mode="border").flatten()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_zero_shot_scan_args(p)
    p.add_argument("--overlap", type=int, default=16)
    args = p.parse_args(argv)
    geom, proj, vol, f = zero_shot_scan(args)
    print(f"scan: {args.geometry}, {args.views} views, phantom seed {args.seed}, {tuple(f.shape)} voxels")
    print(f"1. FBP/FDK vs phantom: {psnr(f, vol):.2f} dB")

    model = MedGMAE.from_checkpoint(args.checkpoint, needed_for="bench/zero_shot_fidelity.py").eval()
    spec, aff = model.preprocessing, geom.default_affine()
    hu = mu_to_hu(f, MU_WATER)
    res = zero_shot_gaussians(hu, zyx_affine(aff), model, spec=spec, overlap=args.overlap, min_intensity=1e-3)
    x, prep_affine = prepare_scan(hu, zyx_affine(aff), spec)
    inv = torch.from_numpy(np.linalg.inv(prep_affine))
    r_model = _render(res.world.transformed(inv[:3, :3], inv[:3, 3]), x.shape)
    print(f"2. decoder on its grid {tuple(x.shape)}, {res.voxel.num_gaussians} Gaussians: PSNR vs its windowed input "
          f"{_unit_psnr(r_model, x):.2f} dB (window units), correlation {_corr(r_model, x):.3f}")
    clean, _ = prepare_scan(mu_to_hu(vol, MU_WATER), zyx_affine(aff), spec)
    n = tuple(int(v) for v in spec.input_size)  # the model's window (96^3 for the study's models), air-padded
    win = clean[: n[0], : n[1], : n[2]]
    win = F.pad(win, (0, n[2] - win.shape[2], 0, n[1] - win.shape[1], 0, n[0] - win.shape[0]))
    with torch.no_grad():
        r_win = _render(model.predict_gaussians(win[None, None], mask_ratio=0.0).to_voxel(n), win.shape)
    edge = f"{n[0]}^3" if len(set(n)) == 1 else " x ".join(map(str, n))
    print(f"   one {edge} window of the clean phantom: PSNR {_unit_psnr(r_win, win):.2f} dB, correlation {_corr(r_win, win):.3f}")

    slope = spec.hu_per_unit / 1000.0 * MU_WATER
    floor = MU_WATER * (1.0 + spec.hu_window[0] / 1000.0)
    g = res.voxel
    g = Gaussians3D(g.means, g.scales.clamp_min(0.3), g.quats, g.intensities)
    units = spec.window(hu)
    windowed = units * slope
    r_slope = _render(Gaussians3D(g.means, g.scales, g.quats, g.intensities * slope), f.shape)
    print(f"3. on the reconstruction grid, slope only: vs the windowed FBP {psnr(r_slope, windowed):.2f} dB, vs the FBP "
          f"{psnr(r_slope, f):.2f} dB")
    print(f"4. the windowed FBP vs the FBP: {psnr(windowed, f):.2f} dB; with the floor {floor:.4f} /mm added inside: "
          f"{psnr(windowed + floor * (units > 0), f):.2f} dB")

    start = medgmae_init(f, aff, model, spec=spec, overlap=args.overlap)
    r_start = _render(start, f.shape)
    gain = float(start.intensities.sum() / (g.intensities.sum() * slope))
    r_fit = _render(fit_intensities(start, f, 20), f.shape)
    print(f"5. zero-shot start (gain {gain:.2f} over the slope): vs FBP {psnr(r_start, f):.2f} dB, vs phantom "
          f"{psnr(r_start, vol):.2f} dB; with 20 fit steps: vs FBP {psnr(r_fit, f):.2f} dB, vs phantom {psnr(r_fit, vol):.2f} dB")

    r_units = _render(g, f.shape)
    v = _at(r_units, g.means[0]).clamp_min(0.05)
    r_inv = _render(Gaussians3D(g.means, g.scales, g.quats, g.intensities * (floor / v + slope)[None]), f.shape)
    pointwise = torch.where(r_units > 0.02, floor + slope * r_units, torch.zeros_like(r_units))
    print(f"6. window inverted per Gaussian: vs FBP {psnr(r_inv, f):.2f} dB, vs phantom {psnr(r_inv, vol):.2f} dB; "
          f"pointwise on the render: vs FBP {psnr(pointwise, f):.2f} dB, vs phantom {psnr(pointwise, vol):.2f} dB")
    for k in (res.voxel.num_gaussians, 20000):
        r = _render(fbp_init(f, k), f.shape)
        print(f"7. fbp_init, {k} Gaussians: vs FBP {psnr(r, f):.2f} dB, vs phantom {psnr(r, vol):.2f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
