"""The models the masked-autoencoder bundles build, by name, and the record of a model's configuration that
training checkpoints carry (so that a model can be rebuilt from a training checkpoint alone)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch.nn as nn

from medgmae.checkpoint import run_record
from medgmae.engine import unwrap_model
from medgmae.engine.resume_words import check_flags, resume_flags, unflagged
from medgmae.engine.restore import ResumeRefused
from medgmae.networks.medgmae import MedGMAE
from medgmae.networks.voxel_mae import VoxelMAE
from medgmae.preprocessing import PreprocessingSpec
from medgmae.settings_diff import settings_differences

__all__ = ["MODEL_KINDS", "ModelConfigRecord", "build_model"]

#: ``model`` names accepted by :func:`build_model`.
MODEL_KINDS = ("medgmae", "medgmae-star", "voxel-mae")


def build_model(
    kind: str = "medgmae",
    model_size: str = "tiny",
    img_size: Sequence[int] | int = 96,
    patch_size: Sequence[int] | int = 12,
    num_gaussians: int = 512,
    mask_ratio: float = 0.75,
    loss_on_all_voxels: bool = False,
    preprocessing: PreprocessingSpec | None = None,
    run_settings: Mapping | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a pre-training model by name (what the bundle configs instantiate).

    Args:
        kind: ``"medgmae"``, ``"medgmae-star"`` (multi-level) or ``"voxel-mae"``.
        model_size: ViT preset.
        img_size: crop size.
        patch_size: patch edge(s).
        num_gaussians: K (ignored by the voxel-MAE).
        mask_ratio: training mask ratio.
        loss_on_all_voxels: MSE on every voxel instead of the masked ones.
        preprocessing: the data pre-processing the model is trained with, recorded in its checkpoints; its
            ``input_size`` and ``patch_size`` must match ``img_size`` and ``patch_size``.
        run_settings: the training run's seed and data loader workers, ``{"seed", "num_workers"}``
            (:func:`medgmae.checkpoint.run_record`), set as the model's ``run_settings``: recorded in its
            ``model.pt``, ``best_model.pt`` and ``encoder.pt`` as ``extra["run"]``. Not part of its ``config()``.
        kwargs: further :class:`~medgmae.networks.MedGMAE` arguments (``scale_cap``, ``level_multipliers``...).

    Returns:
        The model.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind must be one of {MODEL_KINDS}, got {kind!r}")
    common = dict(img_size=img_size, patch_size=patch_size, model_size=model_size, mask_ratio=mask_ratio,
                  loss_on_all_voxels=loss_on_all_voxels)  # fmt: skip
    if kind == "voxel-mae":
        model = VoxelMAE(**common)  # the Gaussian-only arguments do not apply
    else:
        model = MedGMAE(**common, num_gaussians=num_gaussians, multi_level=kind == "medgmae-star", **kwargs)
    if preprocessing is not None:
        if tuple(preprocessing.input_size) != model.img_size or tuple(preprocessing.patch_size) != model.patch_size:
            raise ValueError(
                f"the pre-processing's input_size {preprocessing.input_size} / patch_size {preprocessing.patch_size} "
                f"differ from the model's img_size {model.img_size} / patch_size {model.patch_size}"
            )
        model.preprocessing = preprocessing
    model.run_settings = run_record(run_settings) if run_settings is not None else None
    return model


class ModelConfigRecord:
    """``state_dict``-able record of a model's kind, config and pre-processing, stored in training checkpoints as
    ``"config"`` (``{"kind", "config", "preprocessing"}``, the model-file fields of :mod:`medgmae.checkpoint`) so
    that :meth:`MedGMAE.from_checkpoint` can rebuild the model from a training checkpoint alone.

    Args:
        network: the model (DDP-wrapped or not).
        flags: ``{field: bundle flag}`` (:func:`~medgmae.engine.resume_words.resume_flags`: ``[flag, "side"]``
            for a flag taking one size for every axis or a list, ``[flag, "edge"]`` for one taking one number only,
            ``[[flag, flag], "items"]`` for a field of a flag per value), the
            fields ``kind``, ``preprocessing.<key>`` and the config's: a refusal naming one of them says the flags
            and saved values that resume the run (``--num_gaussians 32``, ``--a_min -175.0 --a_max 250.0``).
    """

    def __init__(self, network: nn.Module, flags: Mapping[str, Any] | None = None) -> None:
        self.network, self.flags = unwrap_model(network), check_flags(flags)

    def state_dict(self) -> dict:
        spec = getattr(self.network, "preprocessing", None)
        return {"kind": self.network.kind, "config": self.network.config(), "preprocessing": spec.to_dict() if spec else None}

    def load_state_dict(self, state: dict) -> None:
        """Check that a resumed run builds the model its checkpoint was trained with.

        The saved config is first brought to this version's arguments (``upgrade_config``: a MedGMAE* config from
        before ``level_intensity`` existed names the clamp rule it was trained with). The config's fields are
        named bare (``num_gaussians``), beside ``kind`` and ``preprocessing``.

        Args:
            state: what :meth:`state_dict` returned when the checkpoint was written.

        Raises:
            ResumeRefused: naming each differing field (:func:`~medgmae.settings_diff.settings_differences`) and how
                to resume with the saved ones (a refusal of the settings given, which a bundle prints alone).
        """
        saved = dict(state)
        if isinstance(saved.get("config"), dict):
            saved["config"] = type(self.network).upgrade_config(dict(saved["config"]))
        diff = settings_differences(_record_fields(saved), _record_fields(self.state_dict()))
        if diff:
            self._refuse(diff, _record_fields(saved))

    def _refuse(self, diff: list[str], saved: dict) -> None:
        """Raise the refusal naming ``diff`` and the words that give the ``saved`` fields (:attr:`flags`): a
        different kind first, as its ``--model_kind`` before the words of the other fields that differ (the fields
        only the current kind has give none: the saved kind leaves them out); the saved ``level_intensity`` rule,
        which has no top-level key, as the override that restores it (a run from before it existed was trained
        with the clamp rule, which ``upgrade_config`` records)."""
        rule, kind = saved.get("level_intensity"), saved.get("kind")
        diff = sorted(diff, key=lambda line: not line.startswith("kind: "))
        other_kind = diff[0].startswith("kind: ")
        unset = [d for d in diff if other_kind and d.endswith("now (not set)")]  # fields only the saved kind has
        changed = any(d.startswith("level_intensity") and d not in unset for d in diff) and isinstance(rule, str)
        given = resume_flags(self.flags, diff, saved)
        given += [w for w in [f"--network_def#level_intensity {rule}"] * changed if w not in given]
        if other_kind and not any(w.startswith("--model_kind ") for w in given):
            given.append(f"--model_kind {kind}")
        given = sorted(given, key=lambda w: not w.startswith("--model_kind "))
        example = f" (here {' '.join(given)})" if given else ""
        cannot = [f"{name} ({why})" for name, why in unflagged(self.flags, diff, saved).items() if why]
        shown = [d for d in diff if d not in unset] + ["and the fields of that model"] * bool(unset)
        raise ResumeRefused(
            "the checkpoint was written by a different model configuration (" + "; ".join(shown) + "). Resume "
            f"with the saved settings{example}"
            + (f"; no flag gives {', '.join(cannot)}: give it as the interrupted run did" if cannot else "")
            + " or train into a new output_dir"
        )


def _record_fields(record: dict) -> dict:
    """A model record's ``kind`` and ``preprocessing`` with its config's fields beside them (a record without a
    config dict keeps it under ``config``)."""
    config = record.get("config")
    if not isinstance(config, dict):
        return dict(record)
    return {**{k: v for k, v in record.items() if k != "config"}, **config}
