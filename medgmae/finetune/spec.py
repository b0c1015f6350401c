"""The pre-processing of a fine-tuning run and of a fine-tuned model.

:func:`finetune_spec`: the spec a run trains with, from its pre-trained ``encoder.pt`` (its recorded spacing and HU
window, overrides warned about) or, without one, MONAI's BTCV recipe. :func:`finetuned_spec`: the spec a fine-tuned
``best_model.pt`` records, for evaluation and inference. Both log what they chose and where it came from.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Sequence

from medgmae.distributed import is_main_process
from medgmae.preprocessing import RECORD_ADVICE, PreprocessingSpec, describe_preprocessing, model_preprocessing, spec_with_overrides

__all__ = ["finetune_spec", "finetuned_spec"]

logger = logging.getLogger("medgmae.finetune.data")  # the run's log names these lines as before they moved here

#: Fine-tuning spacing without a pre-trained encoder (MONAI's BTCV UNETR recipe); with one, its recorded spacing.
DEFAULT_PIXDIM = (1.5, 1.5, 2.0)


def finetune_spec(
    pretrained: str | Path = "",
    pixdim: Sequence[float] | float | None = None,
    hu_range: Sequence[float] | None = None,
    roi_size: Sequence[int] | int = 96,
    patch_size: Sequence[int] | int | None = None,
) -> PreprocessingSpec:
    """The pre-processing of a fine-tuning run.

    With a pre-trained ``encoder.pt`` its recorded spacing and HU window are used unless ``pixdim`` / ``hu_range``
    are given; a given value that differs from the recorded one is used with a warning naming both. An encoder that
    records none gets the pre-training defaults (:func:`~medgmae.preprocessing.model_preprocessing`, as zero-shot
    inference and ``--init medgmae`` do) with its warning, unless both are given. Without an encoder,
    :data:`DEFAULT_PIXDIM` and the toolkit's HU window apply.

    Args:
        pretrained: path of ``encoder.pt`` or ``""``.
        pixdim: spacing override (mm) or ``None``.
        hu_range: ``(a_min, a_max)`` override or ``None``.
        roi_size: training crop / sliding-window size.
        patch_size: the encoder's patch size, recorded in the spec (the pre-trained encoder's when there is one).

    Returns:
        The :class:`~medgmae.preprocessing.PreprocessingSpec`, written into ``best_model.pt``.

    Raises:
        ValueError: a ``roi_size`` other than the pre-trained encoder's ``img_size`` (naming ``--roi_size``).
    """
    from medgmae.finetune.weights import read_encoder_for

    recorded, enc_patch = None, None
    if pretrained:
        ckpt = read_encoder_for(pretrained, roi_size, mmap=True)  # the spec and config: no weights read
        recorded, enc_patch = ckpt.preprocessing, ckpt.config.get("patch_size")
        if recorded is None and (pixdim is None or hu_range is None) and is_main_process():
            model_preprocessing(ckpt, str(pretrained), _advice("pre-trained"))
    origin = lambda given: "given" if given is not None else f"recorded in {pretrained}" if recorded else "default"  # noqa: E731
    spacing_from, window_from = origin(pixdim), origin(hu_range)
    if not pretrained and pixdim is None:
        pixdim = DEFAULT_PIXDIM
    spec = spec_with_overrides(recorded, pixdim, hu_range, source=str(pretrained))
    spec = dataclasses.replace(spec, input_size=roi_size, patch_size=enc_patch or patch_size or spec.patch_size)
    logger.info("%s", describe_preprocessing(spec, {"orientation": origin(None), "spacing": spacing_from, "hu_window": window_from}))
    return spec


def _advice(trained: str) -> str:
    """What a file that records no pre-processing is told: no flag gives the orientation, so recording the spec
    comes first; ``--pixdim`` / ``--hu_range`` give the rest."""
    return (f"{RECORD_ADVICE}, which alone gives its orientation (no flag does: RAS here); or give --pixdim and "
            f"--hu_range as it was {trained} with")


def finetuned_spec(
    checkpoint: str | Path, pixdim: Sequence[float] | float | None = None, hu_range: Sequence[float] | None = None
) -> PreprocessingSpec:
    """The pre-processing recorded in a fine-tuned ``best_model.pt``, with optional overrides (warned about); for a
    file that records none, :func:`~medgmae.preprocessing.model_preprocessing`'s default at the network's own
    window, with its warning."""
    from types import SimpleNamespace

    from medgmae.checkpoint import load_checkpoint
    from medgmae.finetune.best_model import FINETUNED_KIND

    ckpt = load_checkpoint(checkpoint, FINETUNED_KIND, "evaluation and inference need the best_model.pt of a fine-tuning run")
    default = None if ckpt.preprocessing is not None else model_preprocessing(
        SimpleNamespace(img_size=ckpt.config.get("img_size"), patch_size=ckpt.config.get("patch_size")), str(checkpoint),
        _advice("fine-tuned"))  # fmt: skip
    spec = spec_with_overrides(ckpt.preprocessing, pixdim, hu_range, source=str(checkpoint), trained_by="fine-tuning",
                               default=default)  # fmt: skip
    origin = lambda given: "given" if given is not None else "recorded" if default is None else "default"  # noqa: E731
    logger.info("pre-processing of %s: orientation %s, spacing %s mm (%s), HU window %s (%s), crop %s", checkpoint,
                spec.orientation, list(spec.spacing), origin(pixdim), list(spec.hu_window), origin(hu_range),
                "x".join(map(str, spec.input_size)))  # fmt: skip
    return spec
