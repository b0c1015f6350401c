"""GViT in tests: the image size of the model tests, the bundle on a tiny setting, a shapes dataset, the
workflow the bundle builds, and a resumed run compared with an uninterrupted one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from monai.bundle import run
from monai.utils import set_determinism
from PIL import Image
import torch

from medgmae.engine.seeded_loader import SeededDataLoader
from medgmae.twod.classification_data import make_dataset
from medgmae.twod.gvit import GViT
from medgmae.twod.gvit_phases import default_phase_handlers
from medgmae.twod.gvit_train import GViTWorkflow

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "gvit_classification"
SIZE = 16  # image edge of the model tests: the smallest that keeps an 11-pixel SSIM window
TINY = dict(max_epochs=1, num_phantoms=3, image_size=16, patch_size=4, num_gaussians=12, batch_size=32, device="cpu",
            num_explanations=2)


def perturb_head(enc: torch.nn.Module, seed: int = 0) -> None:
    """The residual head starts at zero; give it weights so that gradients reach the whole encoder."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in enc.head[-1].parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def gvit_bundle_command(config: str, *args: str, run_id: str = "training") -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(BUNDLE / "configs" / config),
           "--logging_file", str(BUNDLE / "configs" / "logging.conf"), *args]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", cwd=REPO, env=env, timeout=300)


def run_gvit_bundle(config: str, run_id: str = "training", **overrides) -> None:
    """``monai.bundle run`` in this process (the CLI path is exercised by the bad-input test)."""
    run(run_id, config_file=str(BUNDLE / "configs" / config), **overrides)


def shapes_dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    for cls in ("disc", "bar"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(8):
            a = np.zeros((16, 16), np.uint8)
            cy, cx = rng.integers(5, 11, 2)
            if cls == "disc":
                a[(yy - cy) ** 2 + (xx - cx) ** 2 < 10] = 220
            else:
                a[cy - 1 : cy + 1, 2:14] = 220
            Image.fromarray(a).save(root / cls / f"{i}.png")
    return root


def count_iterations(workflow: GViTWorkflow) -> list[str]:
    """Make ``workflow``'s trainers record each iteration they run by its phase's name; returns the list they fill."""
    from ignite.engine import Events

    build, iterations = workflow.trainer, []

    def counted(phase):
        trainer = build(phase)
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda _: iterations.append(phase))
        return trainer

    workflow.trainer = counted
    return iterations


def gvit_workflow(
    data, out: Path, resume: bool, augment: bool = False, epochs: dict | None = None, seed: int | None = None
) -> GViTWorkflow:
    """The workflow the bundle builds, small; with ``augment`` the training images are augmented, their random
    transforms checkpointed and ``augment`` recorded in the data settings, as the bundle does. ``epochs``: each
    phase's epochs (default warm-up 1, classifier 1, joint 2); ``seed``: the run's seed, as the bundle gives it (the
    model file records it)."""
    set_determinism(seed=0)
    train_ds = make_dataset(data.train, 16, 1, augment=augment)
    train = SeededDataLoader(train_ds, batch_size=4, shuffle=True)  # the bundle's loaders
    val = SeededDataLoader(make_dataset(data.val, 16, 1), batch_size=4)
    model = GViT(1, 16, 2, num_gaussians=6, patch_size=4)
    handlers = default_phase_handlers(resume=resume, source=train_ds if augment else None)
    return GViTWorkflow(model, train, val, data.class_names, out, epochs or {"warmup": 1, "classifier": 1, "joint": 2},
                        device="cpu", render_backend="torch", num_explanations=0, handlers=handlers, cases=data.train,
                        data_settings={"augment": True} if augment else None, seed=seed)  # fmt: skip


def assert_as_uninterrupted(straight: dict, folder: Path, model: torch.nn.Module, metrics: dict) -> None:
    """A resumed run (its ``model`` and ``metrics``, its folder ``folder``) ended as the ``straight`` run (``{"dir",
    "weights", "metrics"}``): weights, each phase's optimiser (every moment and step count) and scheduler as its
    last checkpoint saved them, and the metrics."""
    sa, sb = straight["weights"], model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    for phase in ("warmup", "classifier", "joint"):
        a, b = (torch.load(d / "checkpoints" / phase / "checkpoint_final.pt", weights_only=True)["objects"]
                for d in (straight["dir"], folder))  # fmt: skip
        assert a["lr_scheduler"] == b["lr_scheduler"], phase
        assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"], phase
        ma, mb = a["optimizer"]["state"], b["optimizer"]["state"]
        assert ma.keys() == mb.keys() and all(torch.equal(ma[i][k], mb[i][k]) for i in ma for k in ma[i]), phase
    assert metrics["confusion_matrix"] == straight["metrics"]["confusion_matrix"]
