"""A small supervised trainer with the toolkit's checkpoint handler, for the tests of the training engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from monai.engines import SupervisedTrainer
from monai.transforms import Compose, Lambdad, RandGaussianNoised

from medgmae.engine import CheckpointHandler, GradientClipHandler, NonFiniteLossHandler


def make_trainer(out_dir: Path, max_epochs: int, resume: bool, lr: float = 0.05, clip: float | None = None, extra: dict | None = None,
                 batch_size: int = 2, finished_ok: bool = False, earlier_outputs: tuple[str, ...] | None = None,
                 later_stage: bool = False, validation: list | None = None, amp: bool = False,
                 device: str = "cpu", save_interval: int = 1):  # fmt: skip
    """A SupervisedTrainer (6 items, 3 iterations an epoch at batch 2) checkpointed by CheckpointHandler;
    ``amp`` passes on to the trainer (its GradScaler, made in ``run``, is MONAI's CUDA one unless a test replaces
    ``torch.cuda.amp.GradScaler``); the network and the steps on ``device``."""
    torch.manual_seed(0)
    np.random.seed(0)
    data = [{"image": np.full((1, 4), i, np.float32), "label": np.full((1, 2), i % 3, np.float32)} for i in range(6)]
    transform = Compose([RandGaussianNoised(keys="image", prob=1.0, std=0.5), Lambdad("label", lambda x: x)])
    transform.set_random_state(seed=1)
    ds = Dataset(data, transform)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 2)).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    more = ({} if earlier_outputs is None else {"earlier_outputs": earlier_outputs}) | ({"later_stage": True} if later_stage else {})
    more |= {"validation": [make(net) for make in validation]} if validation else {}
    handlers = [CheckpointHandler(out_dir, {"network": net, "optimizer": opt, **(extra or {})}, resume=resume, source=ds,
                                  finished_ok=finished_ok, save_interval=save_interval, **more)]  # fmt: skip
    handlers.append(NonFiniteLossHandler())
    if clip:
        handlers.append(GradientClipHandler(clip))
    trainer = SupervisedTrainer(
        device=torch.device(device),
        max_epochs=max_epochs,
        train_data_loader=loader,
        network=net,
        optimizer=opt,
        loss_function=lambda p, t: ((p - t.flatten(1)) ** 2).mean(),
        train_handlers=handlers,
        amp=amp,
    )
    return trainer, net
