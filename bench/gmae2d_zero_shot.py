"""Zero-shot figure-ground and edges of 2D GMAE on phantom CT slices, against scikit-image baselines.

1. Pre-trains a 2D GMAE with the ``gmae2d_pretrain`` bundle on axial slices of training phantoms (CPU is fine:
   a few minutes with the defaults), unless ``--checkpoint`` gives a trained ``model.pt``.
2. On slices of held-out phantoms (other seeds), with known organ labels and body masks:

   * reconstruction PSNR of the full rendering (mask ratio 0);
   * figure-ground: per-pixel layer assignment with ``L`` layers and threshold ``th``; foreground = layers
     ``>= split``. IoU against the body mask and against the union of organ labels, for every split (the split
     used by default, ``L // 2``, and the best one over the data set are reported), beside Otsu's threshold of
     the image intensities (scikit-image) as a classical zero-shot baseline;
   * edges: layer-assignment discontinuities at ``l@4``, ``l@8``, ``l@16`` (at most the model's number of
     Gaussians: ``l@4``, ``l@8`` for 8 Gaussians) against scikit-image's Sobel magnitude
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages, not an installed copy

from medgmae.cli_types import positive_int  # noqa: E402
from medgmae.files import atomic_write  # noqa: E402
from medgmae.twod import layering as L  # noqa: E402
from medgmae.twod.data2d import edge_map, phantom_slices  # noqa: E402
from medgmae.twod.gmae import GMAE2D  # noqa: E402

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
        flip=True,  # random left-right mirroring, as measured in bench/RESULTS.md (the bundle's default then; now off)
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


def edge_granularities(num_gaussians: int) -> tuple[int, ...]:
    """The layer counts of the edge maps for a model of ``num_gaussians`` Gaussians: ``medgmae-2d edges``'s
    defaults (:func:`medgmae.twod.layering.default_granularities`), so the bench measures what the tool computes."""
    return tuple(L.default_granularities(num_gaussians))


SOBEL_THRESHOLDS = np.linspace(0.02, 0.5, 25)
CANNY_SIGMAS = (0.5, 1.0, 1.5, 2.0, 3.0)


def _score_gmae(model: GMAE2D, x, body, organs, gt_edges, args, acc: dict, i: int) -> None:
    """Image ``i``'s full-render PSNR, figure-ground IoUs (every threshold and split) and edge counts into ``acc``."""
    num_layers, size = args.num_layers, model.img_size
    with torch.no_grad():
        g = model.predict_gaussians(x)
        full = model.render(g)
        acc["psnr"].append(float(10 * torch.log10(1.0 / (full - x).square().mean().clamp_min(1e-12))))
        granularities = edge_granularities(model.num_gaussians)
        cumulative = {n: L.cumulative_renders(g, n, size, "torch") for n in set(granularities) | {num_layers}}
        for t, th in enumerate(args.thresholds):
            assign = L.layer_assignment(cumulative[num_layers], th)[0]
            for split in range(num_layers + 1):
                fg = L.figure_ground(assign, split)
                acc["iou_body"][t, split, i] = float(L.mask_iou(fg, body))
                acc["iou_organ"][t, split, i] = float(L.mask_iou(fg, organs))
            for n in granularities:
                e = L.edges_from_assignment(L.layer_assignment(cumulative[n], th))[0].numpy()
                acc["edges"][f"gmae l@{n}"][t] += f_score(e, gt_edges, args.tolerance)


def _score_baselines(img: np.ndarray, body, organs, gt_edges, tol: int, acc: dict) -> None:
    """Otsu figure-ground and Sobel / Canny edge counts of one image into ``acc``."""
    fg_otsu = torch.as_tensor(img > filters.threshold_otsu(img))
    acc["otsu_body"].append(float(L.mask_iou(fg_otsu, body)))
    acc["otsu_organ"].append(float(L.mask_iou(fg_otsu, organs)))
    mag = filters.sobel(img)
    for j, t in enumerate(SOBEL_THRESHOLDS):
        acc["sobel"][j] += f_score(mag > t, gt_edges, tol)
    for j, s in enumerate(CANNY_SIGMAS):
        acc["canny"][j] += f_score(feature.canny(img, sigma=s), gt_edges, tol)


def _best(counts, params, name) -> dict:
    """The scores of the parameter with the best F-score."""
    scores = [summarise(c) for c in counts]
    k = int(np.argmax([s["f"] for s in scores]))
    return {**scores[k], name: params[k]}


def _figure_ground_summary(acc: dict, ths: list, num_layers: int) -> dict:
    mean_body, mean_organ = acc["iou_body"].mean(-1), acc["iou_organ"].mean(-1)
    default_t = ths.index(0.05) if 0.05 in ths else 0
    tb, sb = np.unravel_index(np.argmax(mean_body), mean_body.shape)
    to, so = np.unravel_index(np.argmax(mean_organ), mean_organ.shape)
    return {
        "num_layers": num_layers,
        "default": {"threshold": ths[default_t], "split": num_layers // 2,
                    "iou_body": float(mean_body[default_t, num_layers // 2]),
                    "iou_organs": float(mean_organ[default_t, num_layers // 2])},
        "best_body": {"threshold": ths[tb], "split": int(sb), "iou_body": float(mean_body[tb, sb])},
        "best_organs": {"threshold": ths[to], "split": int(so), "iou_organs": float(mean_organ[to, so])},
        "iou_body_by_split_at_default_threshold": [round(float(v), 4) for v in mean_body[default_t]],
        "iou_organs_by_split_at_default_threshold": [round(float(v), 4) for v in mean_organ[default_t]],
        "otsu": {"iou_body": float(np.mean(acc["otsu_body"])), "iou_organs": float(np.mean(acc["otsu_organ"]))},
    }  # fmt: skip


def evaluate(model: GMAE2D, args) -> dict:
    size = model.img_size
    items = phantom_slices(args.eval_cases, args.slices_per_case, size, seed=10_000 + args.seed, in_channels=model.in_channels)
    ths = args.thresholds
    iou = np.zeros((len(ths), args.num_layers + 1, len(items)))  # split L: nothing is foreground
    acc = {"iou_body": iou, "iou_organ": np.zeros_like(iou), "psnr": [], "otsu_body": [], "otsu_organ": [],
           "edges": {f"gmae l@{n}": np.zeros((len(ths), 4)) for n in edge_granularities(model.num_gaussians)},
           "sobel": np.zeros((len(SOBEL_THRESHOLDS), 4)), "canny": np.zeros((len(CANNY_SIGMAS), 4))}  # fmt: skip
    model.eval()
    for i, item in enumerate(items):
        body = torch.as_tensor(item["body"][0] > 0)
        organs = torch.as_tensor(item["label"][0] > 0)
        seg = item["label"][0].astype(np.int32)
        seg[(seg == 0) & (item["body"][0] > 0)] = 255
        gt_edges = edge_map(seg)
        _score_gmae(model, torch.as_tensor(item["image"])[None], body, organs, gt_edges, args, acc, i)
        _score_baselines(item["image"][0], body, organs, gt_edges, args.tolerance, acc)
    return {
        "num_images": len(items),
        "image_size": list(size),
        "psnr_full_render_db": float(np.mean(acc["psnr"])),
        "figure_ground": _figure_ground_summary(acc, list(ths), args.num_layers),
        "edges": {
            "tolerance_px": args.tolerance,
            **{name: _best(c, list(ths), "threshold") for name, c in acc["edges"].items()},
            "sobel": _best(acc["sobel"], [float(t) for t in SOBEL_THRESHOLDS], "threshold"),
            "canny": _best(acc["canny"], list(CANNY_SIGMAS), "sigma"),
        },
    }


def check_layers(p: argparse.ArgumentParser, args, num_gaussians: int, source: str) -> None:
    """Resolve ``--num-layers`` for a model of ``num_gaussians`` Gaussians (from ``source``); a usage error if it
    asks for more layers than Gaussians."""
    if args.num_layers is None:
        args.num_layers = L.default_num_layers(num_gaussians)
    elif args.num_layers > num_gaussians:
        p.error(f"--num-layers {args.num_layers} exceeds the {num_gaussians} Gaussians of {source} (a layer needs one)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--checkpoint", type=Path, default=None, help="evaluate this model.pt instead of training one")
    p.add_argument("--model-size", default="tiny")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--patch-size", type=int, default=8)
    p.add_argument("--num-gaussians", type=positive_int, default=128, help="Gaussians of the model trained here")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--train-cases", type=int, default=16)
    p.add_argument("--eval-cases", type=int, default=4)
    p.add_argument("--slices-per-case", type=int, default=8)
    p.add_argument("--num-layers", type=positive_int, default=None,
                   help=f"figure-ground layers (default: {L.DEFAULT_NUM_LAYERS}, or the number of Gaussians if fewer)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    p.add_argument("--tolerance", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.checkpoint is None:  # checked before the pre-training; a given model is checked once loaded
        check_layers(p, args, args.num_gaussians, "--num-gaussians")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    ckpt = args.checkpoint or pretrain(args)
    t_train = time.time() - t0
    model = GMAE2D.from_checkpoint(ckpt)
    check_layers(p, args, model.num_gaussians, f"the model of --checkpoint {ckpt}")
    t1 = time.time()
    results = evaluate(model, args)
    results.update(
        checkpoint=str(ckpt), train_seconds=round(t_train, 1) if args.checkpoint is None else None,
        eval_seconds=round(time.time() - t1, 1), model_config=model.config(), args={k: str(v) for k, v in vars(args).items()},
        device=f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        command=" ".join([Path(sys.executable).name, *sys.argv]),
    )  # fmt: skip
    out = Path(args.output_dir) / "results_gmae2d.json"
    with atomic_write(out) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
