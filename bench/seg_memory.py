"""Peak memory of the segmentation post-processing: softmax, inversion to the input's grid, argmax.

``all`` runs MONAI's recipe as written (``Invertd`` of every class channel, then ``AsDiscreted(argmax=True)``, as
``inference.json`` did before); ``steps`` runs :class:`medgmae.finetune.invert.InvertedArgmaxd` (``Invertd`` of
``--channels-per-step`` classes at a time, a running maximum), as ``inference.json`` does now. Each round of each
runs in a fresh process on the same oblique, anisotropic random scan (pre-processed by the bundle's
``inference_transforms``) and the same random logits on the pre-processed grid (no network): the process's peak
resident memory (``ru_maxrss``) and its resident memory just before the post-processing (``VmRSS``) are printed,
their difference being the post-processing's own peak, with its seconds and whether the labels are equal.

Usage::

    python bench/seg_memory.py --size 256 256 120 --classes 18 --repeats 1 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.rss import add_round_arguments, peak_rss_mib, rss_mib  # noqa: E402
from medgmae.cli_types import positive_int  # noqa: E402
from medgmae.preprocessing import PreprocessingSpec  # noqa: E402

SPEC = PreprocessingSpec(spacing=(1.5, 1.5, 2.0))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=positive_int, nargs=3, default=[256, 256, 120], metavar=("I", "J", "K"),
                   help="input scan in voxels (default: 256 256 120)")
    p.add_argument("--voxel", type=float, nargs=3, default=[0.8, 0.8, 2.5], metavar=("SI", "SJ", "SK"),
                   help="input voxel size in mm (default: 0.8 0.8 2.5); the model's grid is 1.5 x 1.5 x 2.0 mm")
    p.add_argument("--classes", type=positive_int, default=18, help="class channels (default: 18)")
    p.add_argument("--channels-per-step", type=positive_int, default=4, help="classes inverted together (default: 4)")
    add_round_arguments(p, repeats=1)
    return p


def write_scan(args, folder: Path) -> Path:
    """An oblique scan, body of random HU in air (the foreground crop is inverted too)."""
    import nibabel as nib

    rng = np.random.default_rng(0)
    i, j, k = args.size
    hu = np.full((i, j, k), -1000.0, dtype=np.float32)
    hu[i // 8 : -i // 8, j // 8 : -j // 8, 1:-1] = rng.normal(40.0, 150.0, size=(i - 2 * (i // 8), j - 2 * (j // 8), k - 2))
    c, s = np.cos(np.radians(15)), np.sin(np.radians(15))
    affine = np.eye(4)
    affine[:3, :3] = np.array([[-c, s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag(args.voxel)
    path = folder / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, affine), str(path))
    return path


def one_run(args) -> int:
    """One post-processing in this process; prints seconds, memory and the labels' checksum as JSON."""
    from monai.transforms import Activationsd, AsDiscreted, Compose, Invertd

    from medgmae.finetune.transforms import inference_transforms
    from medgmae.finetune.invert import InvertedArgmaxd

    way, folder = args.one_run
    pre = inference_transforms(SPEC)
    d = pre({"image": str(Path(folder) / "ct.nii.gz")})
    gen = torch.Generator().manual_seed(0)
    d["pred"] = torch.randn((args.classes, *d["image"].shape[1:]), generator=gen)
    if way == "all":
        invert = [Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
                  AsDiscreted(keys="pred", argmax=True)]  # fmt: skip
    else:
        invert = [InvertedArgmaxd(keys="pred", transform=pre, orig_keys="image", channels_per_step=args.channels_per_step)]
    post = Compose([Activationsd(keys="pred", softmax=True), *invert])
    before = rss_mib()
    t = time.perf_counter()
    labels = post(d)["pred"]
    seconds = time.perf_counter() - t
    peak = peak_rss_mib()
    np.save(Path(folder) / f"{way}.npy", labels.numpy().astype(np.uint8))
    print(json.dumps({"seconds": seconds, "peak_rss_mib": peak, "rss_before_mib": before, "model_grid": list(d["image"].shape[1:]),
                      "shape": list(labels.shape)}))  # fmt: skip
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.one_run:
        return one_run(args)
    runs = {"all": [], "steps": []}
    with tempfile.TemporaryDirectory() as folder:
        write_scan(args, Path(folder))
        base = [sys.executable, str(Path(__file__).resolve()), "--size", *map(str, args.size), "--voxel",
                *map(str, args.voxel), "--classes", str(args.classes), "--channels-per-step", str(args.channels_per_step)]  # fmt: skip
        for _ in range(args.repeats):
            for way in runs:
                done = subprocess.run([*base, "--one-run", way, folder], capture_output=True, text=True, check=True)
                runs[way].append(json.loads(done.stdout.strip().splitlines()[-1]))
        equal = bool(np.array_equal(np.load(Path(folder) / "all.npy"), np.load(Path(folder) / "steps.npy")))
    result = {
        "input": list(args.size), "voxel_mm": list(args.voxel), "model_grid": runs["all"][0]["model_grid"],
        "classes": args.classes, "channels_per_step": args.channels_per_step, "repeats": args.repeats,
        "seconds": {k: min(r["seconds"] for r in v) for k, v in runs.items()},
        "peak_rss_mib": {k: max(r["peak_rss_mib"] for r in v) for k, v in runs.items()},
        "postprocessing_peak_mib": {k: max(r["peak_rss_mib"] - r["rss_before_mib"] for r in v) for k, v in runs.items()},
        "labels_equal": equal, "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
    }  # fmt: skip
    full = 4 * args.classes * int(np.prod(args.size)) / 2**20
    print(f"segmentation post-processing, input {'x'.join(map(str, args.size))}, {args.classes} classes "
          f"(float32 maps at the input's grid: {full:.0f} MiB), model grid {'x'.join(map(str, result['model_grid']))}:")
    for way, label in (("all", "Invertd of all classes, argmax"), ("steps", f"{args.channels_per_step} classes per step")):
        print(f"  {label}: {result['seconds'][way]:.2f} s, peak RSS {result['peak_rss_mib'][way]:.0f} MiB, "
              f"of which post-processing {result['postprocessing_peak_mib'][way]:.0f} MiB")
    print(f"  labels {'x'.join(map(str, runs['all'][0]['shape']))}, equal: {equal}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
