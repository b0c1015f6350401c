"""The toolkit's one checkpoint format and its loader.

Every model file the toolkit writes (``model.pt``, ``encoder.pt``, ``best_model.pt`` of MedGMAE, MedGMAE*,
voxel-MAE, 2D GMAE, GViT and fine-tuned UNETR) is a dict::

    {"format": "medgmae", "version": 1, "kind": str, "config": dict, "preprocessing": dict | None,
     "state_dict": {name: Tensor}, "extra": dict}

holding only tensors, numbers, strings, lists and dicts, so it loads with ``torch.load(weights_only=True)``:
opening a checkpoint someone shared never runs code. :func:`load_checkpoint` names the file in every error and,
for a checkpoint of another kind, both kinds.

``extra["run"]`` (:data:`RUN_KEY`, :func:`run_record`), where a training run wrote the file, is that run's seed and
data loader workers, so that a model file handed on alone says how it was trained; files written before it was
recorded have none (:attr:`Checkpoint.run` is ``None``).

Training (resume) checkpoints of :class:`medgmae.engine.CheckpointHandler` follow the same rule (only plain data),
and :func:`load_checkpoint` also accepts them, reading the model from their ``objects`` (and the data settings from
their settings record). One without a model record is refused with a
:class:`~medgmae.checkpoint_checks.TrainingStateError` that carries what it holds, so that a caller can name the run
it came from without reading the file again.

Here are the kinds, the writer and the loader (with its one-entry cache of the file last read memory-mapped); how a
file is read and checked as a model file of this format, and the refusals, are in :mod:`medgmae.checkpoint_checks`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from medgmae.checkpoint_checks import (
    FORMAT, RUN_KEY, VERSION, CheckpointRefused, read_model_record, recorded_preprocessing, run_record,
    training_state_record,
)  # fmt: skip
from medgmae.torch_files import load_torch_file, save_torch_atomic
from medgmae.preprocessing import PreprocessingSpec
from medgmae.whole_numbers import positive_count
from medgmae.words import plural_noun

__all__ = [
    "Checkpoint",
    "CHECKPOINT_KINDS",
    "ENCODER_KIND",
    "LEGACY_SOURCES",
    "MEDGMAE_EITHER",
    "encoder_source",
    "make_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "model_file_kind",
    "kept_model_problem",
    "lost_best_warning",
    "record_preprocessing",
    "run_record",
    "RUN_KEY",
]

ENCODER_KIND = "medgmae-encoder"
#: kind -> what it is, for messages.
CHECKPOINT_KINDS = {
    "medgmae": "MedGMAE model",
    "medgmae-star": "MedGMAE* model",
    "voxel-mae": "voxel-MAE model",
    ENCODER_KIND: "pre-trained ViT encoder",
    "gmae2d": "2D GMAE model",
    "gvit": "GViT classifier",
    "patch-vit": "patch-ViT classifier (GViT baseline)",
    "medgmae-unetr": "fine-tuned UNETR",
}
#: The pre-training an ``encoder.pt`` written before 2026-12-04 records as its source (``extra.source``), which named
#: the model class, -> its kind (files since record the kind itself). ``MedGMAE`` was written for MedGMAE and MedGMAE*
#: runs alike: :func:`encoder_source` tells them apart by a ``multi_level`` in the recorded config where there is one.
LEGACY_SOURCES = {"MedGMAE": "medgmae", "VoxelMAE": "voxel-mae", "GMAE2D": "gmae2d"}
#: The source of an old ``MedGMAE`` encoder that records nothing telling MedGMAE from MedGMAE* (an encoder's config
#: never does): both, rather than a guess that would group a MedGMAE* run with MedGMAE ones.
MEDGMAE_EITHER = "medgmae or medgmae-star"


@dataclass
class Checkpoint:
    """A loaded model file.

    Attributes:
        kind: one of :data:`CHECKPOINT_KINDS`.
        config: the model's constructor arguments.
        state_dict: the weights.
        preprocessing: the recorded pre-processing (``None`` for models without one, e.g. 2D).
        extra: anything else the writer stored (plain data).
        path: the file it came from.
    """

    kind: str
    config: dict
    state_dict: dict
    preprocessing: PreprocessingSpec | None = None
    extra: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def run(self) -> dict | None:
        """The training run's ``{"seed", "num_workers"}`` (``extra["run"]``); ``None`` for a file written before
        it was recorded, or by no training run."""
        run = self.extra.get(RUN_KEY)
        return dict(run) if isinstance(run, dict) else None


def make_checkpoint(
    kind: str,
    config: Mapping,
    state_dict: Mapping[str, torch.Tensor],
    preprocessing: PreprocessingSpec | Mapping | None = None,
    extra: Mapping | None = None,
    run: Mapping | None = None,
) -> dict:
    """The payload of a model file (see the module docstring), ``run`` (:func:`run_record`) as ``extra["run"]``;
    raises ``ValueError`` for an unknown kind or a malformed ``run``."""
    if kind not in CHECKPOINT_KINDS:
        raise ValueError(f"unknown checkpoint kind {kind!r}; known: {sorted(CHECKPOINT_KINDS)}")
    extra = {**dict(extra or {}), **({} if run is None else {RUN_KEY: run_record(run)})}
    if isinstance(preprocessing, PreprocessingSpec):
        preprocessing = preprocessing.to_dict()
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "config": dict(config),
        "preprocessing": None if preprocessing is None else dict(preprocessing),
        "state_dict": dict(state_dict),
        "extra": extra,
    }


def save_checkpoint(path: str | os.PathLike, payload: Mapping) -> Path:
    """Write a :func:`make_checkpoint` payload atomically; returns the path. ``TypeError`` for a model itself,
    ``ValueError`` for another dict (a bare ``state_dict()``, which :func:`load_checkpoint` would refuse): nothing is
    written then."""
    what, use = f"{path}: payload must be a make_checkpoint dict", "use model.model_checkpoint() or make_checkpoint()"
    if not isinstance(payload, Mapping):
        raise TypeError(f"{what}, got a {type(payload).__name__}; {use}")
    if payload.get("format") != FORMAT or not {"kind", "config", "state_dict"} <= set(payload):
        raise ValueError(f"{what} (format {FORMAT!r}, kind, config, state_dict), got another dict; {use}")
    return save_torch_atomic(dict(payload), path)


def model_file_kind(path: str | os.PathLike) -> str | None:
    """The kind of model a toolkit file holds (memory-mapped: its weights are not read): a model file's ``kind``, a
    training checkpoint's model record's ``kind``, and for an ``encoder.pt`` the pre-training it came from by its
    dimensions only: ``"gmae2d"`` for a 2D encoder, ``"medgmae"`` for any 3D one (also one whose recorded source is a
    voxel-MAE or MedGMAE* run; :func:`_kind_phrase` names the source); ``None`` for a file that is missing,
    unreadable, not in the toolkit's format or a training state without a model record."""
    try:
        payload = load_torch_file(path, mmap=True)
    except (OSError, ValueError, RuntimeError):
        return None
    if not isinstance(payload, dict):
        return None
    if payload.get("format") != FORMAT:  # a training state: its model record, as load_checkpoint reads it
        state = training_state_record(payload)
        return None if state is None else state["kind"]
    if payload.get("kind") == ENCODER_KIND:
        return "gmae2d" if (payload.get("config") or {}).get("spatial_dims") == 2 else "medgmae"
    return payload.get("kind")


def encoder_source(source: Any, config: Mapping | None = None) -> str:
    """The pre-training an encoder's recorded source (``extra.source``) names, as a kind: the kind itself, or for a
    file written before sources were kinds its class name mapped by :data:`LEGACY_SOURCES`.

    Args:
        source: the recorded source (a kind, a legacy class name, anything else another writer stored, or nothing).
        config: the recorded model config, where one is at hand: its ``multi_level`` tells an old ``MedGMAE``
            source's MedGMAE (``False``) from MedGMAE* (``True``).

    Returns:
        The kind (``"medgmae-star"`` for an old ``MedGMAE`` source whose config says ``multi_level``;
        :data:`MEDGMAE_EITHER` where nothing says which), another string unchanged, ``""`` for no string.

    Raises:
        TypeError: ``config`` is neither a mapping nor ``None``.
    """
    if config is not None and not isinstance(config, Mapping):
        raise TypeError(f"config must be a mapping or None, got {type(config).__name__}")
    if not isinstance(source, str):
        return ""
    kind = LEGACY_SOURCES.get(source, source)
    if source != "MedGMAE":
        return kind
    multi_level = (config or {}).get("multi_level")
    if multi_level is None:
        return MEDGMAE_EITHER
    return "medgmae-star" if multi_level else "medgmae"


def _kind_phrase(kind: str | None, ckpt: dict | None = None) -> str:
    """``"a <kind> checkpoint (<what it is>)"``; an encoder's names the run it comes from (``extra.source``, read by
    :func:`encoder_source`)."""
    if kind not in CHECKPOINT_KINDS:
        return f"a checkpoint of kind {kind!r}"
    ckpt = ckpt or {}
    source = encoder_source((ckpt.get("extra") or {}).get("source"), ckpt.get("config")) if kind == ENCODER_KIND else ""
    run = f", from a {source} run" if source in CHECKPOINT_KINDS or source == MEDGMAE_EITHER else ""
    return f"a {kind} checkpoint ({CHECKPOINT_KINDS[kind]}{run})"


def _accepted_kinds(kinds: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """The accepted checkpoint kinds as a tuple (``None``: any), every one a known kind.

    Args:
        kinds: accepted kind(s), as :func:`load_checkpoint` takes them.

    Returns:
        The kinds, or ``None`` to accept any.

    Raises:
        ValueError: an unknown kind.
    """
    accepted = None if kinds is None else ((kinds,) if isinstance(kinds, str) else tuple(kinds))
    unknown = [k for k in accepted or () if k not in CHECKPOINT_KINDS]
    if unknown:  # a misspelt kind would refuse every file as being of another kind

        kind = "kind" if len(unknown) == 1 else plural_noun("kind")
        raise ValueError(f"unknown checkpoint {kind} {unknown}: the kinds are {sorted(CHECKPOINT_KINDS)}")
    return accepted


#: The model file last read memory-mapped to the CPU, by path, inode, size, times and map_location (_mapped_record).
_MAPPED: dict[tuple, dict] = {}


def _mapped_record(path: Path, map_location: Any) -> dict:
    """:func:`~medgmae.checkpoint_checks.read_model_record` of ``path`` memory-mapped, read again only when the file
    changed since the last read (rewritten or replaced: another inode, size, modification or change time): a
    fine-tuning start reads its ``--pretrained`` file for the settings check, the pre-processing, the run record and
    the weights. One file is kept, as its mapping (no copy of its weights)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns,
           str(map_location))  # fmt: skip
    if key not in _MAPPED:
        record = read_model_record(path, map_location, True)
        _MAPPED.clear()
        _MAPPED[key] = record
    return _MAPPED[key]


def load_checkpoint(
    path: str | os.PathLike,
    kinds: str | Sequence[str] | None = None,
    needed_for: str | None = None,
    map_location: Any = "cpu",
    mmap: bool = False,
) -> Checkpoint:
    """Read a model file (or a training checkpoint holding a model) safely and check its kind.

    Args:
        path: the file.
        kinds: accepted kind(s); ``None`` accepts any.
        needed_for: what the caller needs it for, for the wrong-kind message, e.g.
            ``"--init medgmae needs a medgmae model.pt"``.
        map_location: passed to :func:`torch.load`.
        mmap: memory-map the file (:func:`medgmae.torch_files.load_torch_file`): a caller that needs the kind, config or
            pre-processing but not the weights then reads only those. The file last read so to the CPU is not read again
            while it is unchanged on disk (:func:`_mapped_record`).

    Returns:
        The :class:`Checkpoint`.

    Raises:
        FileNotFoundError: the file is missing.
        TrainingStateError: a training-state checkpoint without a model record (a ``ValueError``;
            :mod:`medgmae.checkpoint_checks`).
        ValueError: a folder, unreadable / unsafe file, not a model file, or another kind; the message names the
            file.
    """
    accepted = _accepted_kinds(kinds)
    path = Path(path).expanduser()
    cached = mmap and path.is_file() and isinstance(map_location, (str, torch.device))
    cached = cached and torch.device(map_location).type == "cpu"  # a GPU copy kept for good would hold its memory
    ckpt = _mapped_record(path, map_location) if cached else read_model_record(path, map_location, mmap)
    kind = ckpt["kind"]
    if accepted is not None and kind not in accepted:
        want = needed_for or f"expected {' or '.join(accepted)}"
        raise CheckpointRefused(f"{path.name} is {_kind_phrase(kind, ckpt)}; {want} (file: {path})")
    preprocessing = recorded_preprocessing(ckpt, path)
    return Checkpoint(
        kind=kind,
        config=dict(ckpt["config"]),
        state_dict=dict(ckpt["state_dict"]),
        preprocessing=preprocessing,
        extra=dict(ckpt.get("extra") or {}),
        path=path,
    )


def kept_model_problem(
    path: str | os.PathLike, epoch: int, recorded_epoch: Callable[[dict], Any], kinds: str | Sequence[str] | None = None
) -> str | None:
    """Why the model file a run keeps for one of its epochs (its ``best_model.pt``) does not hold that epoch's
    weights, read with :func:`load_checkpoint` (memory-mapped: the weights are not read); ``None`` when it does, or
    when it records no epoch (a file written before its epoch was recorded: readable, taken as it is).

    Args:
        path: the file.
        epoch: the epoch the run's records say it holds (>= 1).
        recorded_epoch: the epoch the file records, from its ``extra`` (e.g. ``lambda extra: extra.get("epoch")``;
            ``None``: none recorded).
        kinds: accepted kind(s); ``None`` accepts any.

    Returns:
        ``"it is missing"``, ``"it cannot be read (<why>)"``, ``"it holds epoch M's weights"`` or ``None``.

    Raises:
        ValueError: ``epoch`` is not a positive whole number.
        TypeError: ``recorded_epoch`` is not callable.
    """
    return _kept_model(path, epoch, recorded_epoch, kinds)[0]


def _kept_model(
    path: str | os.PathLike, epoch: int, recorded_epoch: Callable[[dict], Any], kinds: str | Sequence[str] | None
) -> tuple[str | None, Any]:
    """:func:`kept_model_problem`'s answer and the epoch the file records (``None`` where none is read)."""
    epoch = positive_count(epoch, "epoch")
    if not callable(recorded_epoch):
        raise TypeError(f"recorded_epoch must be a function of the file's extra, got {type(recorded_epoch).__name__}")
    try:
        ckpt = load_checkpoint(path, kinds, mmap=True)
    except FileNotFoundError:
        return "it is missing", None
    except ValueError as e:  # cut short, damaged, not a model file, another kind
        return f"it cannot be read ({str(e).removeprefix(f'{path}: ').replace(str(path), 'the file')})", None
    recorded = recorded_epoch(ckpt.extra)
    return (None if recorded is None or recorded == epoch else f"it holds epoch {recorded}'s weights"), recorded


def lost_best_warning(
    path: str | os.PathLike, epoch: int, best: str, recorded_epoch: Callable[[dict], Any],
    kinds: str | Sequence[str] | None = None,
) -> str | None:  # fmt: skip
    """The warning of a resumed run whose records name a best epoch that its ``best_model.pt`` does not hold
    (:func:`kept_model_problem`: missing, unreadable or of another epoch), ``None`` when the file holds it; the
    caller forgets that best, so that the next validation writes the file again.

    Args:
        path: the run's ``best_model.pt``.
        epoch: the best epoch the run's records name (>= 1).
        best: the best score as the warning shows it, e.g. ``"best validation PSNR 31.20 dB"``.
        recorded_epoch, kinds: as for :func:`kept_model_problem`.

    Returns:
        ``"<path>: <problem>: epoch N's weights (<best>) are lost; the next validation writes it"`` or ``None``.
    """
    problem, recorded = _kept_model(path, epoch, recorded_epoch, kinds)
    if problem is None:
        return None
    if isinstance(recorded, int) and recorded > epoch:  # written after the checkpoint resumed from (one every
        # checkpoint_interval epochs): the resume trains that epoch again
        problem += ", of an epoch the stopped run trained after its newest checkpoint, which this resume trains again"
    return f"{path}: {problem}: epoch {epoch}'s weights ({best}) are lost; the next validation writes it"


def record_preprocessing(
    path: str | os.PathLike, out: str | os.PathLike, orientation: str, spacing: Sequence[float] | float,
    hu_window: Sequence[float], replace: bool = False,
) -> Path:  # fmt: skip
    """Write a copy of a 3D model file that records no pre-processing (written before models recorded it), stating
    the pre-processing its training used, so that every consumer reads it from the file (instead of the defaults,
    with a warning); the sizes are the network's own. Every value is given: none is taken from a default.

    Args:
        path: a ``model.pt``, ``best_model.pt`` or ``encoder.pt`` of 3D pre-training, or a fine-tuning ``best_model.pt``.
        out: the file to write (atomically; another name than ``path`` keeps the original).
        orientation: the axis codes its training data were oriented to (the bundle's ``orientation``).
        spacing: the voxel spacing in mm its training data were resampled to (one value or three, as ``pixdim``).
        hu_window: the HU window ``(a_min, a_max)`` its training mapped to [0, 1].
        replace: state these values where the file records pre-processing already (refused otherwise).

    Returns:
        ``out``.

    Raises:
        ValueError: ``path`` is no 3D model file of this toolkit, records pre-processing already (without
            ``replace``), or a value is malformed.
    """
    ckpt = load_checkpoint(path)
    size, patch = ckpt.config.get("img_size"), ckpt.config.get("patch_size")
    if not (isinstance(size, (list, tuple)) and len(size) == 3 and patch is not None):  # a 2D model's are pairs
        raise CheckpointRefused(f"{path}: a {ckpt.kind} file, not a 3D model or encoder with an input size")
    if ckpt.preprocessing is not None and not replace:  # the consumers read it already: overwriting it is no repair
        raise CheckpointRefused(f"{path} records its pre-processing already ({ckpt.preprocessing.orientation}, "
                                f"spacing {list(ckpt.preprocessing.spacing)} mm, HU window {list(ckpt.preprocessing.hu_window)}): "
                                "pass replace=True to state other values")  # fmt: skip
    spacing = (float(spacing),) * 3 if isinstance(spacing, (int, float)) else tuple(spacing)
    spec = PreprocessingSpec(orientation=orientation, spacing=spacing, hu_window=tuple(hu_window), input_size=size,
                             patch_size=patch)  # fmt: skip
    return save_checkpoint(out, make_checkpoint(ckpt.kind, ckpt.config, ckpt.state_dict, spec, ckpt.extra))
