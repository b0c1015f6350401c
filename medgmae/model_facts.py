"""What a model file is (``medgmae-info --model FILE``): its kind, the network it builds and the pre-processing
contract it carries, read without building the network or running a job, so that a model handed on can be checked
before a long run.

The file is read as every consumer reads it (:func:`medgmae.checkpoint_checks.read_model_record`, memory-mapped: the
weights are not read, their sizes are), so a file the consumers refuse is refused here with the same message. The
facts: the kind (:data:`medgmae.checkpoint.CHECKPOINT_KINDS`; an ``encoder.pt``'s pre-training by
:func:`medgmae.checkpoint.encoder_source`), whether it is a training checkpoint (the state ``--resume`` continues),
the format version, the network's sizes from its config (with the widths of its ``model_size``,
:data:`medgmae.networks.vit.VIT_PRESETS`) and its parameter count summed over the weights' shapes, the recorded
pre-processing or, where it records none, what the consumers fall back to
(:func:`medgmae.preprocessing.model_preprocessing`) and :data:`~medgmae.preprocessing.RECORD_ADVICE`, the training
run's record (``extra["run"]``) and the toolkit's commands that take this kind (:func:`consumers`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

__all__ = ["SIZE_KEYS", "consumers", "model_facts", "model_lines"]

#: The config entries reported as the network's sizes, in this order, where the config has them.
SIZE_KEYS = ("spatial_dims", "img_size", "patch_size", "in_channels", "out_channels", "model_size", "hidden_size",
             "num_layers", "num_heads", "feature_size", "num_gaussians", "num_queries", "num_classes",
             "multi_level", "level_multipliers")  # fmt: skip

#: The fine-tuning consumer's name (it refuses a 2D encoder and a training checkpoint).
FINE_TUNING = "fine-tuning --pretrained (unetr_finetune training)"


def consumers() -> dict[str, tuple[str, ...]]:
    """The toolkit's consumers of model files -> the kinds each accepts, taken from the kinds their loaders check.

    Returns:
        ``{consumer: kinds}``: zero-shot inference and ``--init medgmae`` read ``MedGMAE.checkpoint_kinds``,
        fine-tuning an ``encoder.pt`` (3D only) or a 3D pre-training model file (``MODEL_KINDS``), segmentation the
        fine-tuned kind, ``medgmae-2d`` zero-shot a 2D GMAE model and GViT evaluation / inference a GViT model.
    """
    from medgmae.checkpoint import ENCODER_KIND
    from medgmae.finetune.best_model import FINETUNED_KIND
    from medgmae.mae_training.models import MODEL_KINDS
    from medgmae.networks import MedGMAE

    return {
        "zero-shot inference (medgmae_pretrain inferring)": tuple(MedGMAE.checkpoint_kinds),
        "medgmae-recon reconstruct --init medgmae": tuple(MedGMAE.checkpoint_kinds),
        FINE_TUNING: (ENCODER_KIND, *MODEL_KINDS),
        "evaluation and segmentation (unetr_finetune evaluating / inferring / exporting)": (FINETUNED_KIND,),
        "medgmae-2d layers / segment / edges --checkpoint": ("gmae2d",),
        "GViT evaluation and inference (gvit_classification evaluating / inferring)": ("gvit",),
    }


def _taken_by(kind: str, dims: Any, training_state: bool) -> list[str]:
    """The consumers (:func:`consumers`) that take a file of ``kind``; fine-tuning takes no 2D encoder and no
    training checkpoint."""
    taken = [name for name, kinds in consumers().items() if kind in kinds]
    if training_state or dims == 2:
        taken = [name for name in taken if name != FINE_TUNING]
    if kind == "medgmae-encoder" and dims == 2:  # a 2D GMAE's encoder: read by no command, as its model.pt is
        taken = []
    return taken


def _parameters(state_dict: dict) -> int:
    """The number of values in the weights, from their shapes (memory-mapped tensors are not read)."""
    return sum(math.prod(tuple(v.shape)) for v in state_dict.values() if hasattr(v, "shape"))


def _network(config: dict) -> dict[str, Any]:
    """The size entries of ``config`` (:data:`SIZE_KEYS`) and, for a ``model_size`` preset, its encoder widths."""
    from medgmae.networks.vit import VIT_PRESETS

    sizes = {key: config[key] for key in SIZE_KEYS if key in config}
    if not config.get("multi_level", True):  # the levels of a one-level model are not used
        sizes.pop("level_multipliers", None)
    preset = VIT_PRESETS.get(config.get("model_size"))  # type: ignore[arg-type]
    if preset is not None:
        for key in ("hidden_size", "num_layers", "num_heads"):
            sizes.setdefault(key, getattr(preset, key))
    return sizes


def _preprocessing(spec: Any, config: dict) -> dict[str, Any]:
    """``{"recorded": True, **spec}``, or where none is recorded ``{"recorded": False, "fallback": the spec consumers
    use (3D: the default at the network's own sizes), "advice": RECORD_ADVICE}`` (``fallback`` and ``advice``
    ``None`` for 2D)."""
    from medgmae.preprocessing import RECORD_ADVICE, default_spec_at

    if spec is not None:
        return {"recorded": True, **spec.to_dict()}
    fallback = default_spec_at(config.get("img_size"), config.get("patch_size"))  # model_preprocessing's fallback
    fallback = None if fallback is None else fallback.to_dict()
    return {"recorded": False, "fallback": fallback, "advice": RECORD_ADVICE if fallback else None}


def model_facts(path: str | os.PathLike) -> dict[str, Any]:
    """What the model file at ``path`` is (module docstring), as JSON-ready data.

    Args:
        path: a model file (``model.pt``, ``best_model.pt``, ``encoder.pt``) or a training checkpoint holding one.

    Returns:
        ``{"path", "kind", "what", "source" (an encoder's pre-training kind, else absent), "training_state",
        "version" (``None`` for a training checkpoint), "network" (sizes), "config", "parameters",
        "preprocessing" ({"recorded": True, orientation, spacing, hu_window, ...} or {"recorded": False,
        "fallback", "advice"}), "run" (seed, num_workers; ``None``: not recorded), "software" (where recorded),
        "consumers" (the commands taking this kind)}``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a file that is not a model file of this toolkit (the message names it and what it is).
    """
    from medgmae.checkpoint import CHECKPOINT_KINDS, ENCODER_KIND, RUN_KEY, encoder_source
    from medgmae.checkpoint_checks import read_model_record, recorded_preprocessing

    path = Path(path).expanduser()
    record = read_model_record(path, "cpu", True)
    kind, config, extra = str(record["kind"]), dict(record["config"]), dict(record.get("extra") or {})
    training_state = bool(extra.get("training_state"))
    what = CHECKPOINT_KINDS.get(kind, "a kind this toolkit does not know")
    facts: dict[str, Any] = {"path": str(path), "kind": kind, "what": what}
    if kind == ENCODER_KIND:
        facts["source"] = encoder_source(extra.get("source"), config) or None
    run = extra.get(RUN_KEY)
    facts.update(training_state=training_state, version=None if training_state else record.get("version"),
                 network=_network(config), config=config, parameters=_parameters(record["state_dict"]),
                 preprocessing=_preprocessing(recorded_preprocessing(record, path), config),
                 run=dict(run) if isinstance(run, dict) else None)  # fmt: skip
    if isinstance(extra.get("software"), dict):
        facts["software"] = dict(extra["software"])
    facts["consumers"] = _taken_by(kind, config.get("spatial_dims"), training_state)
    return facts


def _shown(value: Any, key: str = "") -> str:
    """A size as the lines show it: a list as ``32x32x32`` (levels as ``[1, 2, 4]``), anything else as it is."""
    if key == "level_multipliers":
        return str(list(value))
    return "x".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


def _spec_text(spec: dict) -> str:
    """A pre-processing record as one line's text."""
    spacing = " x ".join(f"{v:g}" for v in spec["spacing"])
    window = ", ".join(f"{v:g}" for v in spec["hu_window"])
    return (f"orientation {spec['orientation']}, {spacing} mm voxels, HU window [{window}], input size "
            f"{_shown(spec['input_size'])}, patch size {_shown(spec['patch_size'])}")  # fmt: skip


def model_lines(facts: dict[str, Any]) -> list[tuple[str, str]]:
    """``facts`` (:func:`model_facts`) as ``medgmae-info``'s labelled lines."""
    what = facts["what"] + (f", from a {facts['source']} pre-training" if facts.get("source") else "")
    state = "; a training checkpoint (the state --resume continues), read for its model record"
    state = state if facts["training_state"] else ""
    version = "none (a training checkpoint)" if facts["version"] is None else str(facts["version"])
    network = ", ".join(f"{key} {_shown(value, key)}" for key, value in facts["network"].items())
    lines = [("model", facts["path"]), ("  kind", f"{facts['kind']} ({what}){state}"), ("  format version", version),
             ("  network", network or "no sizes recorded"), ("  parameters", f"{facts['parameters']:,}")]  # fmt: skip
    spec = facts["preprocessing"]
    if spec["recorded"]:
        lines.append(("  pre-processing", _spec_text(spec)))
    else:
        fallback = spec["fallback"]
        uses = (f"consumers fall back to the default, {_spec_text(fallback)}, with a warning; {spec['advice']}"
                if fallback else "a 2D model, to which the 3D pre-processing contract does not apply")  # fmt: skip
        lines.append(("  pre-processing", f"none recorded: {uses}"))
    run = facts["run"]
    if run is None:
        lines.append(("  run", "not recorded"))
    else:
        workers = f", {run['num_workers']} data loader workers" if "num_workers" in run else ""
        lines.append(("  run", f"seed {run['seed']}{workers}"))
    if "software" in facts:
        lines.append(("  software", ", ".join(f"{k} {v}" for k, v in facts["software"].items())))
    lines.append(("  taken by", "; ".join(facts["consumers"]) or "no command of the toolkit"))
    return lines
