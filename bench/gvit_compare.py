"""GViT on the default phantom-slice task: with and without guidance, against a patch ViT of the same size.

All models use the same data, batch size, optimiser (AdamW, betas 0.9/0.95, weight decay 0.05 under MAE's rule:
biases, norms, tokens and position embeddings not decayed, ``medgmae.engine.decay_rule``), learning rate and
warm-up + cosine schedule. GViT runs its three phases; the warm-up and classifier phases are shared by the two
GViT variants (identical up to that point), which then differ only in the joint phase (gamma = 0.1 or 0). The patch
ViT has the widths and depth of GViT's classifier and is trained with cross-entropy for as many epochs as GViT's
classifier sees (classifier + joint phases). ``--augment`` gives every model the bundle's augmented training images
(``medgmae/twod/gvit_augment.py``); validation images are never augmented.

Example (CPU, a few minutes)::

    python bench/gvit_compare.py --out runs/bench_gvit

Prints a Markdown table and writes ``results.json`` into ``--out``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from monai.data import DataLoader
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler
from monai.optimizers import WarmupCosineSchedule
from monai.utils import set_determinism

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's packages, not an installed copy

from medgmae.engine.decay_rule import decay_groups  # noqa: E402
from medgmae.files import atomic_write  # noqa: E402
from medgmae.twod.classification_data import load_classification_data, make_dataset  # noqa: E402
from medgmae.twod.phantom_task import write_phantom_slice_task  # noqa: E402
from medgmae.twod.gvit import GViT, PatchViTClassifier  # noqa: E402
from medgmae.twod.gvit_eval import classification_metrics, predict  # noqa: E402
from medgmae.twod.gvit_train import build_phase_trainer  # noqa: E402
from medgmae.twod.guidance import ReconstructionLoss  # noqa: E402


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def _train_patch_vit(model, loader, epochs, lr, device):
    opt = torch.optim.AdamW(decay_groups(model, 0.05), lr=lr, betas=(0.9, 0.95))  # MAE's rule, as GViT's phases
    total = max(1, epochs * len(loader))
    sched = WarmupCosineSchedule(opt, warmup_steps=int(0.1 * total), t_total=total, warmup_multiplier=0.1)
    trainer = SupervisedTrainer(
        device=device, max_epochs=epochs, train_data_loader=loader, network=model, optimizer=opt,
        loss_function=lambda logits, y: F.cross_entropy(logits, y.long().view(-1)),
        train_handlers=[LrScheduleHandler(sched, print_lr=False, epoch_level=False)], decollate=False,
    )  # fmt: skip
    trainer.run()


def _parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/bench_gvit", help="output folder (task data, results.json)")
    ap.add_argument("--epochs", type=int, nargs=3, default=[8, 8, 6], metavar=("WARMUP", "CLASSIFIER", "JOINT"))
    ap.add_argument("--num_gaussians", type=int, default=36)
    ap.add_argument("--model_size", default="tiny")
    ap.add_argument("--image_size", type=int, default=24)
    ap.add_argument("--patch_size", type=int, default=4)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--gamma", type=float, default=0.1)
    ap.add_argument("--encoder_mode", default="denoising", choices=["denoising", "queries"])
    ap.add_argument("--num_cases", type=int, default=10, help="phantoms of the task (at least 3: the last 2 validate)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--augment", action="store_true",
                    help="augment the training images as the bundle's augment setting does (flip, crop [0.5, 1]; "
                         "every model, the patch ViT included); off by default, as the runs recorded before it")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.num_cases < 3:
        ap.error(f"--num_cases must be at least 3 (the last 2 phantoms form the validation split), got {args.num_cases}")
    return args


def _print_table(results: dict) -> None:
    names = results["class_names"]
    print("\n| model | val accuracy | " + " | ".join(names) + " | params | train s |")
    print("|---|---|" + "---|" * len(names) + "---|---|")
    for name, r in results["models"].items():
        pc = " | ".join(f"{r['per_class_accuracy'][c]:.3f}" for c in names)
        print(f"| {name} | {r['accuracy']:.3f} | {pc} | {r['params']:,} | {r['train_seconds']} |")


def _train_gvits(args, data, train_loader, val_loader, device, record) -> None:
    """GViT's warm-up and classifier phases once, then its joint phase with and without guidance from there."""
    e_warm, e_cls, e_joint = args.epochs
    rec = ReconstructionLoss("bce", 0.1)
    gvit = GViT(data.channels, args.image_size, data.num_classes, args.num_gaussians, args.model_size, args.patch_size,
                mode=args.encoder_mode).to(device)
    t0 = time.time()
    for phase, epochs in (("warmup", e_warm), ("classifier", e_cls)):
        build_phase_trainer(phase, gvit, train_loader, epochs, device, lr=args.lr, rec_loss=rec).run()
    shared = time.time() - t0
    tag = "GViT" if args.encoder_mode == "denoising" else "GViT (learned queries)"
    record(f"{tag} after classifier phase (frozen Gaussians)", gvit, shared)
    state, rng = copy.deepcopy(gvit.state_dict()), torch.get_rng_state()
    for name, gamma in ((f"{tag} + guidance (gamma={args.gamma})", args.gamma), (f"{tag}, no guidance (gamma=0)", 0.0)):
        gvit.load_state_dict(state)
        torch.set_rng_state(rng)
        t0 = time.time()
        trainer = build_phase_trainer("joint", gvit, train_loader, e_joint, device, lr=args.lr, rec_loss=rec, gamma=gamma)
        trainer.run()
        with torch.no_grad():
            gvit.eval()
            x = next(iter(val_loader))["image"].to(device)
            r = rec(gvit.encoder.decode(gvit.encoder(x)).render(x.shape[-2:]), x).item()
        record(name, gvit, shared + time.time() - t0, {"val_reconstruction_loss": round(r, 4)})


def main(argv=None) -> dict:
    args = _parse(argv)
    out = Path(args.out)
    device = torch.device(args.device)
    data = load_classification_data(
        write_phantom_slice_task(out / "data", num_cases=args.num_cases, seed=args.seed, image_size=args.image_size)
    )
    set_determinism(seed=args.seed)
    train_ds = make_dataset(data.train, args.image_size, data.channels, augment=args.augment)
    val_loader = DataLoader(make_dataset(data.val, args.image_size, data.channels), batch_size=args.batch_size)
    train_loader = DataLoader(train_ds, batch_size=args.batch_size, shuffle=True)
    results: dict = {"task": data.counts, "class_names": data.class_names, "args": vars(args), "models": {}}

    def record(name, model, seconds, extra=None):
        labels, preds = predict(model, val_loader, device)
        m = classification_metrics(labels, preds, data.class_names)
        results["models"][name] = {"accuracy": m["accuracy"], "per_class_accuracy": m["per_class_accuracy"],
                                   "params": _params(model), "train_seconds": round(seconds, 1), **(extra or {})}  # fmt: skip
        print(f"{name}: accuracy {m['accuracy']:.3f} per class {m['per_class_accuracy']} ({seconds:.0f} s)", flush=True)

    _train_gvits(args, data, train_loader, val_loader, device, record)
    set_determinism(seed=args.seed)
    vit = PatchViTClassifier(data.channels, args.image_size, data.num_classes, args.model_size, args.patch_size).to(device)
    t0 = time.time()
    _train_patch_vit(vit, train_loader, sum(args.epochs[1:]), args.lr, device)
    record(f"patch ViT ({args.model_size}, patch {args.patch_size})", vit, time.time() - t0)

    results["device"] = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    with atomic_write(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2))
    _print_table(results)
    return results


if __name__ == "__main__":
    main()
