"""Zero-shot figure-ground and edges of 2D GMAE on phantom CT slices, against scikit-image baselines.

1. Pre-trains a 2D GMAE with the ``gmae2d_pretrain`` bundle on axial slices of training phantoms (CPU is fine:
   a few minutes with the defaults), unless ``--checkpoint`` gives a trained ``model.pt``.
2. On slices of held-out phantoms (other seeds), with known organ labels and body masks:

   * reconstruction PSNR of the full rendering (mask ratio 0);
   * figure-ground: per-pixel layer assignment with ``L`` layers and threshold ``th``; foreground = layers
     ``>= split``. IoU against the body mask and against the union of organ labels, for every split (the split
     used by default, ``L // 2``, and the best one over the data set are reported), beside Otsu's threshold of
     the image intensities (scikit-image) as a classical zero-shot baseline;
   * edges: layer-assignment discontinuities at ``l@4``, ``l@8``, ``l@16`` against scikit-image's Sobel magnitude
     (threshold swept) and Canny (sigma swept). The reference edges are the boundaries of the label map with the
     body as one more label. F-score with a tolerance of ``--tolerance`` pixels (a predicted edge pixel counts as
     correct within that distance of a reference one and vice versa; counts summed over the data set, the best
     parameter of each method chosen over the whole data set, i.e. ODS).

Usage::

    python bench/gmae2d_zero_shot.py --output-dir /tmp/gmae2d_bench            # train, then evaluate
    python bench/gmae2d_zero_shot.py --checkpoint runs/gmae2d/model.pt --output-dir /tmp/eval
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage import feature, filters

from medgmae.twod import layering as L
from medgmae.twod.data2d import edge_map, phantom_slices
from medgmae.twod.gmae import GMAE2D

REPO = Path(__file__).resolve().parents[1]


def pretrain(args) -> Path:
    from monai.bundle import run

    out = Path(args.output_dir) / "train"
    run(
        "training",
        config_file=str(REPO / "bundles" / "gmae2d_pretrain" / "configs" / "train.json"),
        logging_file=str(REPO / "bundles" / "gmae2d_pretrain" / "configs" / "logging.conf"),
        output_dir=str(out),
        model_size=args.model_size,
        image_size=args.image_size,
        patch_size=args.patch_size,
        num_gaussians=args.num_gaussians,
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        num_phantoms=args.train_cases,
        slices_per_case=args.slices_per_case,
        learning_rate=args.lr,
        device=args.device,
        seed=args.seed,
    )
    return out / "model.pt"


def f_score(pred: np.ndarray, gt: np.ndarray, tol: int) -> tuple[int, int, int, int]:
    """Counts ``(matched predicted, predicted, matched reference, reference)`` with a distance tolerance."""
    struct = np.ones((2 * tol + 1, 2 * tol + 1), bool)
    gt_d = ndimage.binary_dilation(gt, struct) if tol > 0 else gt
    pred_d = ndimage.binary_dilation(pred, struct) if tol > 0 else pred
    return int((pred & gt_d).sum()), int(pred.sum()), int((gt & pred_d).sum()), int(gt.sum())


def summarise(counts: np.ndarray) -> dict:
    tp_p, n_p, tp_r, n_r = counts
    p = tp_p / max(n_p, 1)
    r = tp_r / max(n_r, 1)
    return {"precision": p, "recall": r, "f": 2 * p * r / max(p + r, 1e-12)}


def evaluate(model: GMAE2D, args) -> dict:
    size = model.img_size
    items = phantom_slices(args.eval_cases, args.slices_per_case, size, seed=10_000 + args.seed, in_channels=model.in_channels)
    num_layers, ths = args.num_layers, args.thresholds
    granularities = (4, 8, 16)
    sobel_ts = np.linspace(0.02, 0.5, 25)
    canny_sigmas = (0.5, 1.0, 1.5, 2.0, 3.0)
    iou_body = np.zeros((len(ths), num_layers + 1, len(items)))  # split L: nothing is foreground
    iou_organ = np.zeros_like(iou_body)
    otsu_body, otsu_organ, psnr = [], [], []
    edge_counts = {f"gmae l@{n}": np.zeros((len(ths), 4)) for n in granularities}
    sobel_counts = np.zeros((len(sobel_ts), 4))
    canny_counts = np.zeros((len(canny_sigmas), 4))
    tol = args.tolerance
    model.eval()
    for i, item in enumerate(items):
        x = torch.as_tensor(item["image"])[None]
        body = torch.as_tensor(item["body"][0] > 0)
        organs = torch.as_tensor(item["label"][0] > 0)
        seg = item["label"][0].astype(np.int32)
        seg[(seg == 0) & (item["body"][0] > 0)] = 255
        gt_edges = edge_map(seg)
        with torch.no_grad():
            g = model.predict_gaussians(x)
            full = model.render(g)
            psnr.append(float(10 * torch.log10(1.0 / (full - x).square().mean().clamp_min(1e-12))))
            cumulative = {n: L.cumulative_renders(g, n, size, "torch") for n in set(granularities) | {num_layers}}
            for t, th in enumerate(ths):
                assign = L.layer_assignment(cumulative[num_layers], th)[0]
                for split in range(num_layers + 1):
                    fg = L.figure_ground(assign, split)
                    iou_body[t, split, i] = float(L.mask_iou(fg, body))
                    iou_organ[t, split, i] = float(L.mask_iou(fg, organs))
                for n in granularities:
                    e = L.edges_from_assignment(L.layer_assignment(cumulative[n], th))[0].numpy()
                    edge_counts[f"gmae l@{n}"][t] += f_score(e, gt_edges, tol)
        img = item["image"][0]
        fg_otsu = torch.as_tensor(img > filters.threshold_otsu(img))
        otsu_body.append(float(L.mask_iou(fg_otsu, body)))
        otsu_organ.append(float(L.mask_iou(fg_otsu, organs)))
        mag = filters.sobel(img)
        for j, t in enumerate(sobel_ts):
            sobel_counts[j] += f_score(mag > t, gt_edges, tol)
        for j, s in enumerate(canny_sigmas):
            canny_counts[j] += f_score(feature.canny(img, sigma=s), gt_edges, tol)

    def best(counts, params, name):
        scores = [summarise(c) for c in counts]
        k = int(np.argmax([s["f"] for s in scores]))
        return {**scores[k], name: params[k]}

    mean_body, mean_organ = iou_body.mean(-1), iou_organ.mean(-1)
    default_t = ths.index(0.05) if 0.05 in ths else 0
    tb, sb = np.unravel_index(np.argmax(mean_body), mean_body.shape)
    to, so = np.unravel_index(np.argmax(mean_organ), mean_organ.shape)
    return {
        "num_images": len(items),
        "image_size": list(size),
        "psnr_full_render_db": float(np.mean(psnr)),
        "figure_ground": {
            "num_layers": num_layers,
            "default": {"threshold": ths[default_t], "split": num_layers // 2,
                        "iou_body": float(mean_body[default_t, num_layers // 2]),
                        "iou_organs": float(mean_organ[default_t, num_layers // 2])},
            "best_body": {"threshold": ths[tb], "split": int(sb), "iou_body": float(mean_body[tb, sb])},
            "best_organs": {"threshold": ths[to], "split": int(so), "iou_organs": float(mean_organ[to, so])},
            "iou_body_by_split_at_default_threshold": [round(float(v), 4) for v in mean_body[default_t]],
            "iou_organs_by_split_at_default_threshold": [round(float(v), 4) for v in mean_organ[default_t]],
            "otsu": {"iou_body": float(np.mean(otsu_body)), "iou_organs": float(np.mean(otsu_organ))},
        },  # fmt: skip
        "edges": {
            "tolerance_px": tol,
            **{name: best(c, list(ths), "threshold") for name, c in edge_counts.items()},
            "sobel": best(sobel_counts, [float(t) for t in sobel_ts], "threshold"),
            "canny": best(canny_counts, list(canny_sigmas), "sigma"),
        },
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, default=None, help="evaluate this model.pt instead of training one")
    p.add_argument("--model-size", default="tiny")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--num-gaussians", type=int, default=128)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--train-cases", type=int, default=16)
    p.add_argument("--eval-cases", type=int, default=4)
    p.add_argument("--slices-per-case", type=int, default=8)
    p.add_argument("--num-layers", type=int, default=16)
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    p.add_argument("--tolerance", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    ckpt = args.checkpoint or pretrain(args)
    t_train = time.time() - t0
    model = GMAE2D.from_checkpoint(ckpt)
    t1 = time.time()
    results = evaluate(model, args)
    results.update(
        checkpoint=str(ckpt), train_seconds=round(t_train, 1) if args.checkpoint is None else None,
        eval_seconds=round(time.time() - t1, 1), model_config=model.config(), args={k: str(v) for k, v in vars(args).items()},
        device=f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        command=" ".join([Path(sys.executable).name, *sys.argv]),
    )  # fmt: skip
    out = Path(args.output_dir) / "results_gmae2d.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
