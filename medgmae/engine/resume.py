"""Finding and reading a run's newest checkpoint, and the checks that refuse a resume it cannot continue.

:class:`~medgmae.engine.checkpoint_handler.CheckpointHandler` runs these checks when the engine starts. By then a bundle has
built its trainer, and with it its TensorBoard writers (each creates an event file) and the run's records, so a
bundle also calls :func:`check_resume_fits` first in its ``training`` steps: a resume with another epoch length
(a changed batch size), an epoch at or beyond ``max_epochs`` or other model settings then stops before anything is
built or written.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch.distributed as dist

from medgmae.data.phantom.writer import recorded_differences
from medgmae.distributed import rank_world
from medgmae.engine.records import unrecorded_states
from medgmae.engine.restore import ResumeRefused, refusal, restore_states
from medgmae.torch_files import load_torch_file
from medgmae.words import plural

logger = logging.getLogger(__name__)

__all__ = [
    "epoch_checkpoints",
    "latest_checkpoint",
    "phantom_resume_differences",
    "read_latest_checkpoint",
    "resumed_engine_record",
    "loader_record",
    "saved_loader_record",
    "check_epoch_length",
    "inexact_resume_notes",
    "FINAL_CHECKPOINT",
    "closing_steps_left",
    "check_max_epochs",
    "check_resume_fits",
]


_EPOCH_FILE = re.compile(r"^checkpoint_epoch=(\d+)\.pt$")


def epoch_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """``(N, path)`` of every ``checkpoint_epoch=N.pt`` in ``output_dir``, newest first (none: an empty list)."""
    d = Path(output_dir)
    if not d.is_dir():
        return []
    return sorted(((int(m.group(1)), p) for p in d.iterdir() if (m := _EPOCH_FILE.match(p.name))), reverse=True)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The ``checkpoint_epoch=N.pt`` in ``output_dir`` with the largest N, or None."""
    found = epoch_checkpoints(output_dir)
    return found[0][1] if found else None


def phantom_resume_differences(
    run_dir: str | Path, num_cases: int, seed: int, shape: Sequence[int] | None, spacing: Sequence[float] | float | None,
    num_validation: int | None, labels: Mapping[str, str] | None = None,
) -> list[str]:
    """How a resumed run's phantom settings differ from those of the phantoms in ``run_dir/phantom``, which its
    checkpoint trained on (:func:`~medgmae.data.phantom.writer.recorded_differences`): checked before they would be generated again, so that a
    refused resume leaves them as they were; ``[]`` without an epoch checkpoint in ``run_dir`` (nothing to resume)."""
    if latest_checkpoint(run_dir) is None:
        return []
    return recorded_differences(Path(run_dir) / "phantom", num_cases, seed, shape or None, spacing or None,
                                num_validation, labels=labels)  # fmt: skip


def read_latest_checkpoint(
    output_dir: str | Path, select: Callable[[Mapping], dict] | None = None
) -> tuple[Path | None, dict | None]:
    """The newest epoch checkpoint, read by rank 0 and broadcast to the other ranks (a collective under
    torch.distributed: every rank calls it).

    Args:
        output_dir: the run's checkpoint folder (need only be visible to rank 0).
        select: what to keep of the checkpoint (e.g. its engine state); the file is then memory-mapped, so that
            tensors not selected are not read, and only the selection is broadcast. ``None``: the whole checkpoint.

    Returns:
        ``(path, checkpoint)``, or ``(None, None)`` when the folder holds no epoch checkpoint.

    Raises:
        ResumeRefused: the file does not load (:func:`medgmae.torch_files.load_torch_file`'s words) or holds no
            training state (its ``engine`` record: a model file copied to a checkpoint's name), with the way on:
            remove it to resume from the epoch before, or start afresh.
    """
    rank, world = rank_world()
    box: list = [None, None]
    if rank == 0:
        path = latest_checkpoint(output_dir)
        if path is not None:
            try:
                ckpt = load_torch_file(path, "cpu", mmap=select is not None)
            except ValueError as e:  # cut short or damaged (a copy stopped halfway): a refusal, not a crash
                raise ResumeRefused(f"the newest checkpoint cannot be resumed from: {e}; {_way_on(output_dir)}") from None
            if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("engine"), Mapping):  # no epoch to go on from
                raise ResumeRefused(
                    f"the newest checkpoint cannot be resumed from: {path} holds no training state (no 'engine' record "
                    "of its epoch: a model's weights, such as model.pt, copied to a checkpoint's name?); "
                    f"{_way_on(output_dir)}"
                )  # fmt: skip
            box = [str(path), ckpt if select is None else select(ckpt)]
    if world > 1:
        dist.broadcast_object_list(box, src=0)
    return (None, None) if box[0] is None else (Path(box[0]), box[1])


def _way_on(output_dir: str | Path) -> str:
    """What to do about a newest checkpoint that cannot be resumed from: remove it to resume from the one before, or
    to start afresh."""
    found = epoch_checkpoints(output_dir)
    return (f"remove it to resume from {found[1][1].name}, the one before" if len(found) > 1 else
            "remove it, or run without --resume true to start afresh")  # fmt: skip


def resumed_engine_record(output_dir: str | Path, resume: bool) -> dict:
    """``{"iteration", "pending"}`` of the newest epoch checkpoint in ``output_dir`` that a resume continues from:
    its iteration and whether its epoch was saved pending validation (:data:`~medgmae.engine.epoch_validation.PENDING`
    or ``None``); ``{}`` when the run starts afresh or the checkpoint holds no readable engine state (the resume
    itself then says why)."""
    path = latest_checkpoint(output_dir) if resume else None
    if path is None:
        return {}
    try:
        engine = load_torch_file(path, "cpu", mmap=True).get("engine") or {}
        return {"iteration": int(engine["iteration"]), "pending": engine.get("pending")}
    except (ValueError, AttributeError, KeyError, TypeError):
        return {}


def loader_record(loader: Any) -> dict:
    """A training data loader's batch size, length, workers (``None`` where it has no such attribute or length), the
    number of training processes (1 without torch.distributed) and ``item_seeded`` (a ``SeededDataLoader``, whose
    crops do not depend on ``num_workers``), as checkpoints record them."""
    batch_size, workers = getattr(loader, "batch_size", None), getattr(loader, "num_workers", None)
    try:
        length = len(loader)
    except TypeError:
        length = None
    return {"batch_size": batch_size if isinstance(batch_size, int) else None, "epoch_length": length,
            "num_workers": workers if isinstance(workers, int) else None, "world_size": rank_world()[1],
            "item_seeded": getattr(loader, "item_seeded", False) is True}  # fmt: skip


def saved_loader_record(ckpt: Mapping) -> dict:
    """The :func:`loader_record` a checkpoint holds, its ``world_size`` filled in for checkpoints written before it
    was recorded (the length of ``random_state_ranks``, which multi-process runs save, else 1); other entries
    missing from older checkpoints are ``None``.

    Args:
        ckpt: the checkpoint (or a selection of it holding ``loader`` and, for older files, ``random_state_ranks``
            or its length as ``saved_ranks``).
    """
    saved = dict(ckpt.get("loader") or {}) if isinstance(ckpt.get("loader"), Mapping) else {}
    record = {key: saved.get(key) for key in ("batch_size", "epoch_length", "num_workers", "world_size", "item_seeded")}
    if not isinstance(record["world_size"], int):
        ranks = ckpt.get("random_state_ranks")
        record["world_size"] = len(ranks) if isinstance(ranks, list) else int(ckpt.get("saved_ranks") or 1)
    return record


def check_epoch_length(path: Path, engine: Mapping, saved_loader: Mapping | None, current_loader: Mapping) -> None:
    """Refuse a checkpoint whose iterations per epoch differ from this run's: ignite would count the saved
    iterations against the new epoch length and end the run at once, or train past the schedule.

    Args:
        path: the checkpoint, as the message names it.
        engine: its ``{"epoch", "iteration"}``.
        saved_loader: its :func:`saved_loader_record` (``None`` in checkpoints written before it was recorded).
        current_loader: this run's :func:`loader_record`.

    Raises:
        ValueError: naming both epoch lengths and, where known, both batch sizes or both process counts.
    """
    epoch, iteration = int(engine["epoch"]), int(engine["iteration"])
    epoch_length = current_loader.get("epoch_length")
    if epoch_length is None or epoch == 0 or iteration == epoch * epoch_length:
        return
    old, new = (saved_loader or {}).get("batch_size"), current_loader.get("batch_size")
    then = f"{iteration / epoch:g} per epoch" + (f", batch size {old}" if old is not None else "")
    now = f"{plural(epoch_length, 'iteration')} per epoch" + (f" (batch size {new})" if new is not None else "")
    was, now_world = (saved_loader or {}).get("world_size"), current_loader.get("world_size")
    if isinstance(was, int) and isinstance(now_world, int) and was != now_world:
        cause = (f"the number of training processes changed: saved {was}, now {now_world} (each process trains on "
                 "its share of the cases)")  # fmt: skip
        settings = f" (torchrun --nproc_per_node {was}" if was > 1 else " (one process, without torchrun"
        settings += f", --batch_size {old})" if old is not None and new is not None and old != new else ")"
    elif old is not None and new is not None and old != new:
        cause, settings = f"the batch size changed from {old} to {new}", f" (--batch_size {old})"
    else:  # the items an epoch draws: cases (3D), images (2D), or crops of each
        same = f" (the batch size, {old}, did not)" if old is not None and old == new else ""
        cause, settings = f"the number of training cases or images, or the samples per case, changed{same}", ""
    raise ResumeRefused(
        f"checkpoint {path} is at epoch {epoch} after {iteration} iterations ({then}), but this run has {now}: "
        f"{cause}. Resume with the settings of the interrupted run{settings}, or start a new output folder"
    )


def inexact_resume_notes(path: Path, saved_loader: Mapping, current_loader: Mapping) -> list[str]:
    """What makes a resume that :func:`check_epoch_length` accepts differ from an uninterrupted run: another number
    of training processes (the global batch changes with it), a checkpoint of a loader whose workers drew the crops
    (then another ``num_workers`` too). Rank 0 logs each as a warning, so that a multi-process run says it once.

    Args:
        path: the checkpoint, as the notes name it.
        saved_loader: its :func:`saved_loader_record` (entries unknown to older checkpoints are ``None`` and not
            compared).
        current_loader: this run's :func:`loader_record`.

    Returns:
        The notes (on every rank), empty when the resume continues the run exactly.
    """
    notes, (was, now) = [], (saved_loader.get("world_size"), current_loader.get("world_size"))
    if isinstance(was, int) and isinstance(now, int) and was != now:
        then_batch, now_batch = saved_loader.get("batch_size"), current_loader.get("batch_size")
        batches = (f"{was} x {then_batch} to {now} x {now_batch} (processes x batch size)"
                   if then_batch is not None and now_batch is not None else f"{was} to {now} processes' batches")  # fmt: skip
        note = (f"checkpoint {path} was saved by {was} training process{'es' if was > 1 else ''} and this run has "
                f"{now}: the resume is not exact, the global batch of each step changes from {batches} and the "
                "cases are shared out among the processes differently")  # fmt: skip
        if now > was:
            new_ranks = f"the processes of ranks {was}-{now - 1} start" if now - was > 1 else f"the process of rank {was} starts"
            note += (f"; {new_ranks} from random states derived from rank 0's saved state and the rank (crops and "
                     "masks of their own, the same on every such resume)")  # fmt: skip
        notes.append(note)
    was, now = saved_loader.get("num_workers"), current_loader.get("num_workers")
    seeded = current_loader.get("item_seeded") is True
    if seeded != (saved_loader.get("item_seeded") is True):
        then, now_draws = ("whose workers drew", "draws each item's") if seeded else ("that drew each item's", "does not draw")
        notes.append(f"checkpoint {path} was saved by a loader {then} random crops (an earlier release, or another data "
                     f"loader) and this run's loader {now_draws} from the epoch's seed and the item, so the resume "
                     "continues with other random draws (crops, augmentation, masks) than the interrupted run's")
    elif not seeded and isinstance(was, int) and isinstance(now, int) and was != now:  # workers draw the crops
        notes.append(f"checkpoint {path} was saved with num_workers={was} and this run has num_workers={now}: the "
                     "resume is not exact (the loader workers draw the random crops, so the crops differ from an "
                     f"uninterrupted run); resume with --num_workers {was} to continue it exactly")  # fmt: skip
    if rank_world()[0] == 0:
        for note in notes:
            logger.warning(note)
    return notes


#: The checkpoint a run writes as the last of its completion steps (after its model files and summary).
FINAL_CHECKPOINT = "checkpoint_final.pt"


def closing_steps_left(path: str | Path, iteration: int) -> bool:
    """Whether the run that wrote the epoch checkpoint ``path`` (at ``iteration``) stopped before its completion
    steps ended: no readable ``checkpoint_final.pt`` beside it at that iteration or later (a run writes it last,
    after its model files and summary). Read by rank 0 and broadcast (a collective under torch.distributed: every
    rank calls it). Only meaningful for a checkpoint of its run's last epoch (:func:`check_max_epochs`).

    Args:
        path: the newest epoch checkpoint.
        iteration: the iteration it was saved at.

    Returns:
        ``True`` when the closing steps are left to do (the final checkpoint is missing, unreadable or older).
    """
    rank, world = rank_world()
    box: list = [True]
    if rank == 0:
        final = Path(path).parent / FINAL_CHECKPOINT
        try:  # memory-mapped: only the engine state is read
            engine = load_torch_file(final, "cpu", mmap=True).get("engine", {}) if final.is_file() else {}
            box = [int(engine.get("iteration", -1)) < int(iteration)]
        except (OSError, ValueError, AttributeError, TypeError):  # every rank must reach the broadcast
            box = [True]
    if world > 1:
        dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def check_max_epochs(
    path: Path,
    epoch: int,
    max_epochs: int | None,
    finished_ok: bool = False,
    key: str = "max_epochs",
    saved: Mapping | None = None,
) -> None:
    """Refuse a checkpoint that leaves this run nothing to do: one past ``max_epochs``, or one that has already
    trained ``max_epochs`` epochs and whose run went on to finish (ignite would start, train nothing and still run
    its completion handlers, which rewrite the run's final files from an empty epoch). A run stopped after saving
    its last epoch but before its completion steps ended is accepted: the checkpoint records that its run was to
    train exactly that many epochs (not a run stopped mid-training and resumed with a lowered ``max_epochs``) and
    there is no ``checkpoint_final.pt`` of its iteration (:func:`closing_steps_left`); its resume trains nothing
    and writes the closing outputs from the saved state.

    Args:
        path: the checkpoint, as the message names it.
        epoch: the epochs it has trained.
        max_epochs: this run's epochs (``None``: not checked).
        finished_ok: accept a checkpoint at exactly ``max_epochs`` (a finished stage of a longer run that a resume
            passes through, e.g. a GViT phase).
        key: the setting the message names (``"joint_epochs"`` for a GViT phase).
        saved: the checkpoint's engine record (``epoch``, ``iteration``, and the ``max_epochs`` of the run that wrote
            it; ``None``, or a record without ``max_epochs``: a checkpoint at ``max_epochs`` is refused). A collective
            under torch.distributed when it names this epoch as its run's last.

    Raises:
        ValueError: naming the checkpoint's epoch and ``max_epochs``.
    """
    if max_epochs is None:
        return
    epoch, max_epochs = int(epoch), int(max_epochs)
    if epoch > max_epochs:
        raise ResumeRefused(f"checkpoint {path} is at epoch {epoch}, beyond {key}={max_epochs}: raise {key} to continue")
    if epoch == max_epochs and not finished_ok and not _closing_left(path, epoch, saved):
        raise ResumeRefused(
            f"checkpoint {path} has already trained {epoch} epoch{'' if epoch == 1 else 's'} = --{key} {max_epochs}: "
            f"nothing to resume; give a larger --{key} to train on"
        )


def _closing_left(path: Path, epoch: int, saved: Mapping | None) -> bool:
    """Whether ``path``, at ``epoch``, is the last epoch of a run stopped in its closing steps (see
    :func:`check_max_epochs`)."""
    if not isinstance(saved, Mapping) or saved.get("max_epochs") is None or "iteration" not in saved:
        return False  # a checkpoint from before runs recorded their length: refused as it was
    return int(saved["max_epochs"]) == epoch and closing_steps_left(path, int(saved["iteration"]))


def _resume_parts(records: Mapping[str, Any]) -> Callable[[Mapping], dict]:
    """A ``select`` for :func:`read_latest_checkpoint`: the engine state, the loader record and the saved states of
    ``records`` (those the checkpoint holds)."""

    def select(ckpt: Mapping) -> dict:
        objects = ckpt.get("objects") if isinstance(ckpt.get("objects"), Mapping) else {}
        ranks = ckpt.get("random_state_ranks")
        return {"engine": ckpt.get("engine"), "loader": ckpt.get("loader"),
                "saved_ranks": len(ranks) if isinstance(ranks, list) else None,
                "records": {name: objects[name] for name in records if name in objects}}  # fmt: skip

    return select


def check_resume_fits(
    output_dir: str | Path,
    train_loader: Any,
    max_epochs: int | None = None,
    resume: bool = True,
    records: Mapping[str, Any] | None = None,
    finished_ok: bool = False,
    key: str = "max_epochs",
) -> Path | None:
    """Refuse, before a trainer is built or anything is written, a resume that the newest checkpoint in
    ``output_dir`` cannot continue: another epoch length (a changed batch size, number of training cases or
    samples per case), an epoch at or beyond ``max_epochs`` (nothing left to train), or a settings record that
    refuses its saved state (e.g. a :class:`~medgmae.mae_training.ModelConfigRecord` of a model built with other
    settings). Weights and other tensors of the checkpoint are not read.

    What needs the run's weights (a weight that does not fit) stays with
    :class:`~medgmae.engine.checkpoint_handler.CheckpointHandler` when the engine starts. Under torch.distributed every rank
    calls it (rank 0 reads the checkpoint and broadcasts what it needs).

    Args:
        output_dir: the run's checkpoint folder.
        train_loader: this run's training data loader (its length is the epoch length).
        max_epochs: this run's epochs (``None``: not checked).
        resume: whether the run resumes (``False``: nothing is checked).
        records: name -> record among the ``CheckpointHandler``'s objects, checked with ``load_state_dict``
            against the saved state of that name.
        finished_ok: accept a checkpoint that has trained exactly ``max_epochs`` (:func:`check_max_epochs`).
        key: the setting that gave ``max_epochs``, as the messages name it.

    Returns:
        The checkpoint the run will resume from, ``None`` when it starts from scratch.

    Raises:
        ValueError: naming the checkpoint and both epoch lengths and batch sizes, the epochs, or the records and
            what they refused; another epoch length and refusing records are named in one error (one line each),
            so that a resume with another data folder and another setting names both.
    """
    if not resume:
        return None
    records = dict(records or {})
    path, ckpt = read_latest_checkpoint(output_dir, select=_resume_parts(records))
    if path is None:
        return path
    # a settings record the checkpoint lacks still compares the settings whose earlier values are known
    saved = {**unrecorded_states({n: r for n, r in records.items() if n not in ckpt["records"]}), **ckpt["records"]}
    refused = []  # another epoch length and other settings or data are named together: one error lists every change
    for check in (lambda: check_epoch_length(path, ckpt["engine"], saved_loader_record(ckpt), loader_record(train_loader)),
                  lambda: check_max_epochs(path, ckpt["engine"]["epoch"], max_epochs, finished_ok, key, ckpt["engine"]),
                  lambda: restore_states(path, ((name, records[name]) for name in saved), saved)):  # fmt: skip
        try:
            check()
        except ValueError as e:
            refused.append(e)
    if refused:
        raise refusal("\n".join(str(e) for e in refused), refused) from refused[0]
    return path
