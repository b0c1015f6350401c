"""Tiny untrained MedGMAE models and their ``model.pt`` files, for the tests of what reads a pre-trained model (the
zero-shot start, reconstruction, the bench scripts)."""

from __future__ import annotations

from pathlib import Path

import torch

from medgmae.networks.medgmae import MedGMAE
from medgmae.preprocessing import PreprocessingSpec


def tiny_medgmae(img_size: int = 16, spacing: float = 12.0, num_gaussians: int = 48, seed: int = 0) -> MedGMAE:
    """A tiny MedGMAE (patches of 8, the torch renderer) seeded with ``seed``, whose recorded pre-processing is an
    ``img_size``^3 window at ``spacing`` mm (read back by ``--init medgmae`` and the zero-shot start)."""
    torch.manual_seed(seed)
    model = MedGMAE(img_size=img_size, patch_size=8, model_size="tiny", num_gaussians=num_gaussians,
                    render_backend="torch")  # fmt: skip
    model.preprocessing = PreprocessingSpec(spacing=spacing, input_size=img_size, patch_size=8)
    return model


def tiny_model_file(path: str | Path, **kwargs) -> Path:
    """:func:`tiny_medgmae` (``kwargs``) saved as a ``model.pt`` at ``path``; returns the path."""
    path = Path(path)
    torch.save(tiny_medgmae(**kwargs).model_checkpoint(), path)
    return path
