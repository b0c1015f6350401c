"""The checkpoint handler shared by the toolkit's MONAI bundles: atomic checkpoints and exact resume (devices and
``unwrap_model``: :mod:`medgmae.engine.devices`).

MONAI's own ``CheckpointSaver`` writes with ``atomic=False`` (see its source) and restores neither the random
number generators nor the random transforms' states, so an interrupted save can leave a truncated file and a
resumed run diverges from an uninterrupted one. :class:`CheckpointHandler` closes both gaps; everything else
(trainers, stats, TensorBoard, LR scheduling via ``monai.handlers.LrScheduleHandler`` with
``monai.optimizers.WarmupCosineSchedule``) comes from MONAI.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch.distributed as dist
from ignite.engine import Engine, Events

from medgmae.distributed import rank_world
from medgmae.engine.devices import to_device
from medgmae.engine.earlier_run import EARLIER_OUTPUTS, EarlierRun, before_first_save, file_list
from medgmae.engine.epoch_validation import PENDING, EpochValidation, ResumeEvents
from medgmae.engine.resume import (
    FINAL_CHECKPOINT,
    check_epoch_length,
    check_max_epochs,
    epoch_checkpoints,
    inexact_resume_notes,
    loader_record,
    read_latest_checkpoint,
    saved_loader_record,
)
from medgmae.engine.restore import records_first, restore_scaler, restore_states, scaler_state
from medgmae.engine.random_state import RandomStateTracker
from medgmae.engine.records import restorable
from medgmae.engine.start_record import note_resume
from medgmae.engine.step_guards import diverged_error, non_finite_weights
from medgmae.files import os_error_message, remove_interrupted_writes
from medgmae.torch_files import save_torch_atomic
from medgmae.whole_numbers import positive_count

__all__ = ["CheckpointHandler"]

logger = logging.getLogger("medgmae.engine")

#: What a run stopped by an error or Ctrl-C saves: its state within an epoch, which a resume does not continue from.
INTERRUPTED = "checkpoint_interrupted.pt"


class CheckpointHandler:
    """Atomic checkpoints at epoch ends and on interruption, and exact resume.

    Every ``save_interval`` epochs and at the last (``max_epochs``) it writes ``checkpoint_epoch=N.pt`` (keeping the
    newest ``n_saved``) with the state dicts of ``objects`` and of the trainer's gradient scaler under amp
    (``engine.scaler``, restored on resume: :func:`~medgmae.engine.restore.restore_scaler`), the engine's
    epoch/iteration, the training loader's batch size, epoch length and workers and the number of processes
    (:func:`~medgmae.engine.resume.loader_record`) and a :class:`RandomStateTracker`. When the run stops on an
    exception (including Ctrl-C) it writes ``checkpoint_interrupted.pt`` (the state within the epoch, kept to
    inspect: a resume continues from the newest epoch checkpoint, and removes it once it has saved a later one) and
    re-raises; when it stops while the epoch's ``validation`` handlers run (at a checkpoint's epoch), it writes the
    epoch's training instead, as ``checkpoint_epoch=N.pt`` marked as not yet validated, from which a resume
    validates the epoch and trains on (:mod:`~medgmae.engine.epoch_validation`); at a normal end it writes
    ``checkpoint_final.pt``. A run that does not resume, started in a folder holding an earlier run's checkpoints or
    outputs (``earlier_outputs``), names them when it starts and removes them when it writes its first epoch
    checkpoint (:class:`~medgmae.engine.earlier_run.EarlierRun`), naming each file: kept, the earlier run's
    higher epoch numbers would have outranked this run's own checkpoints (the newest ``n_saved`` were kept by
    number), a later ``--resume`` would have continued the earlier run, the pictures and curves of both runs
    would have been mixed, and a run stopped early would have left the earlier run's models and summary beside
    its own checkpoints. When Ctrl-C stops a run that has no epoch checkpoint to continue from, the interrupt
    carries a ``resume_advice`` saying so, which :func:`medgmae.bundle_errors.summarise_errors` prints instead of
    the usual advice to resume. With ``resume=True`` it loads the newest epoch checkpoint in ``output_dir`` when
    the engine starts and continues from the next epoch, bit for bit on the same machine and software. A checkpoint
    whose state does not fit (another kind of run; an object refusing it, such as a model configuration record)
    stops the run at the start with an error naming the file and the object, and writes no checkpoint. A bundle
    calls :func:`~medgmae.engine.resume.check_resume_fits` before it builds its trainer, so that a resume with another
    epoch length (batch size), an epoch at or beyond ``max_epochs`` or another model configuration is refused
    before its TensorBoard writers and records write anything.

    Under torch.distributed every rank attaches it, and only rank 0 writes: at each epoch end the random states of
    all ranks are gathered into the checkpoint (``random_state_ranks``); on resume rank 0 reads the checkpoint and
    broadcasts it, and each rank restores the weights, optimiser and its own random states, so a resumed DDP run
    continues as the uninterrupted one (``output_dir`` need only be visible to rank 0). A resume with another number
    of processes (or of loader workers, where they draw the crops) is warned as not exact
    (:func:`~medgmae.engine.resume.inexact_resume_notes`); ranks the checkpoint lacks draw from seeds derived from rank 0's state (:meth:`RandomStateTracker.load_rank_state`).

    Attach it before ``monai.handlers.StatsHandler``: both re-raise from their ``EXCEPTION_RAISED`` handler, and
    ignite stops calling an event's handlers at the first that raises, so a handler attached after StatsHandler
    would never write ``checkpoint_interrupted.pt``.

    Args:
        output_dir: folder for checkpoints.
        objects: name -> object with ``state_dict``/``load_state_dict`` (network, optimizer, lr_scheduler, ...).
        resume: load the newest checkpoint at start when there is one.
        source: dataset or transform chain whose random transforms' states are saved (recommended).
        save_interval: epochs between checkpoints (a bundle's ``checkpoint_interval``; the last epoch has one too).
        n_saved: epoch checkpoints kept.
        map_location: where tensors are loaded on resume.
        finished_ok: on resume, accept a checkpoint that has already trained ``max_epochs`` epochs (the engine then
            trains nothing); by default it is refused as :func:`~medgmae.engine.resume.check_resume_fits` refuses
            it, since the completion handlers would rewrite the run's final files from an empty epoch, unless its
            run stopped in its closing steps (:func:`~medgmae.engine.resume.check_max_epochs`), which the resume
            then runs.
        earlier_outputs: what a fresh run replaces of an earlier run besides its checkpoints, as globs under
            ``output_dir`` (:mod:`medgmae.engine.earlier_run`): a bundle lists every output it writes there; the
            default is the progress pictures and TensorBoard event files.
        later_stage: a later stage of a run whose earlier stages checkpoint elsewhere (a GViT phase): on resume, a
            folder without a checkpoint is a stage not reached yet, logged as starting, not warned about.
        validation: the handlers that validate the model at epoch ends (``None`` entries left out), which this
            handler attaches between the end of the epoch's training and the epoch's checkpoint: list them here,
            not among the trainer's handlers.
    """

    def __init__(
        self,
        output_dir: str | Path,
        objects: Mapping[str, Any],
        resume: bool = False,
        source: Any = None,
        save_interval: int = 1,
        n_saved: int = 1,
        map_location: Any = "cpu",
        finished_ok: bool = False,
        earlier_outputs: tuple[str, ...] = EARLIER_OUTPUTS,
        later_stage: bool = False,
        validation: Sequence[Any] = (),
    ) -> None:
        save_interval, n_saved = positive_count(save_interval, "save_interval"), positive_count(n_saved, "n_saved")
        for name, obj in objects.items():
            if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
                raise ValueError(f"checkpoint object '{name}' ({type(obj).__name__}) has no state_dict/load_state_dict")
        self.output_dir = Path(output_dir)
        self.objects = dict(objects)
        self.resume = bool(resume)
        self.rng = RandomStateTracker(source)
        self.save_interval, self.n_saved, self.map_location = save_interval, n_saved, map_location
        self.finished_ok, self.later_stage = bool(finished_ok), bool(later_stage)
        self.resumed_from: Path | None = None
        self._failed_resume = False
        self._saved_epoch = False  # whether this run has written an epoch checkpoint
        self._last_epoch: int | None = None  # the epoch of the newest checkpoint this run saved or resumed from
        self._final: dict | None = None  # checkpoint_final.pt's state, collected as the run completes
        self._completed_iteration = 0  # the last iteration whose step finished (Ctrl-C advice)
        self._saved_for: BaseException | None = None  # the error whose state _on_exception saved
        self._earlier_run = EarlierRun(self.output_dir, tuple(earlier_outputs))  # replaced at the first save
        self.validation = EpochValidation(validation)  # also keeps the epoch's training state while it is validated
        self._stopped_validating: int | None = None  # the epoch whose training a stop in its validation saved
        self._writing_epoch = False  # while checkpoint_epoch=N.pt is written (a stop there also saves the kept state)

    def attach(self, engine: Engine) -> None:
        engine.register_events(*ResumeEvents)
        engine.add_event_handler(Events.STARTED, self._on_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._due), self._on_trained)
        self.validation.attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._due), self._on_epoch)
        engine.add_event_handler(Events.COMPLETED, self._collect_final)  # before the other completion steps
        engine.add_event_handler(Events.EXCEPTION_RAISED, self._on_exception)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._on_iteration)

    def _due(self, engine: Engine, epoch: int) -> bool:
        """Whether ``epoch`` ends with a checkpoint: a multiple of ``save_interval``, or the last epoch."""
        return epoch % self.save_interval == 0 or epoch == engine.state.max_epochs

    def _on_iteration(self, engine: Engine) -> None:
        self._completed_iteration = engine.state.iteration

    def _payload(self, engine: Engine, gather: bool = True) -> dict:
        random_state = self.rng.state_dict()
        payload = {
            "engine": {"epoch": engine.state.epoch, "iteration": engine.state.iteration,
                       "max_epochs": engine.state.max_epochs},
            "loader": loader_record(engine.state.dataloader),
            "objects": {k: v.state_dict() for k, v in self.objects.items()},
            "random_state": random_state, "scaler": scaler_state(engine),  # the GradScaler under amp, else None
        }
        rank, world = rank_world()
        if gather and world > 1:  # a collective: every rank reaches it at the same epoch end
            states: list = [None] * world
            dist.all_gather_object(states, random_state)
            payload["random_state_ranks"] = states
        return payload

    def save(self, engine: Engine, filename: str, gather: bool = True, payload: dict | None = None) -> Path | None:
        """Write ``filename`` in ``output_dir`` (rank 0 only; every rank calls it when ``gather`` and no ``payload``
        collected earlier is given)."""
        payload = self._payload(engine, gather) if payload is None else payload
        if rank_world()[0] != 0:
            return None
        path = save_torch_atomic(payload, self.output_dir / filename)
        logger.info("saved checkpoint %s (epoch %d, iteration %d)", path, engine.state.epoch, engine.state.iteration)
        return path

    def _on_trained(self, engine: Engine) -> None:
        """Keep the state the epoch's training left, to save if the run stops while validating it (every rank: the
        random states are gathered; :meth:`EpochValidation.keep`)."""
        self.validation.keep(self._payload(engine, gather=True), self.objects)

    def _on_epoch(self, engine: Engine) -> None:
        self._writing_epoch = True  # left set by a stop in the save, which _on_exception then reports
        saved = self.save(engine, f"checkpoint_epoch={engine.state.epoch}.pt")
        self._writing_epoch = False
        self.validation.take()  # validated and saved: a stop from here on saves checkpoint_interrupted.pt (before,
        # a stop while this checkpoint is written saves the kept state as the epoch's, to be validated again)
        if saved is not None:
            self._after_epoch_save(saved, engine.state.epoch)

    def _save_pending(self, engine: Engine) -> None:
        """Write the state :meth:`_on_trained` kept as the epoch's checkpoint, marked as not yet validated (rank 0)."""
        payload = self.validation.take()
        epoch = int(payload["engine"]["epoch"])
        saved = self.save(engine, f"checkpoint_epoch={epoch}.pt", payload=payload)
        if saved is None:
            return
        self._stopped_validating = epoch
        logger.info("stopped while %s epoch %d: %s holds the epoch's training; a resume validates the epoch and "
                    "trains on", "saving" if self._writing_epoch else "validating", epoch, saved)  # fmt: skip
        self._after_epoch_save(saved, epoch)

    def _after_epoch_save(self, saved: Path, epoch: int) -> None:
        """What follows the save of ``checkpoint_epoch=N.pt`` (rank 0): the interrupted run's or an earlier run's
        files removed, older epoch checkpoints pruned."""
        self._saved_epoch, self._last_epoch = True, epoch
        if self.resume:
            self._remove_interrupted("has saved a later checkpoint")
        elif removed := self._earlier_run.remove(keep=saved):
            logger.info("removed %d file%s of the earlier run from %s: %s", len(removed), "s" if len(removed) > 1 else "",
                        self.output_dir, file_list(removed, self.output_dir))  # fmt: skip
        self._prune_epoch_checkpoints()

    def _prune_epoch_checkpoints(self) -> None:
        """Keep the newest ``n_saved`` epoch checkpoints (rank 0)."""
        for _, p in epoch_checkpoints(self.output_dir)[self.n_saved :]:
            p.unlink(missing_ok=True)

    def _remove_interrupted(self, why: str) -> None:
        """Remove the ``checkpoint_interrupted.pt`` of the run this one resumes, once this run has saved a later
        epoch checkpoint or ended (rank 0; ``why`` is said in the log)."""
        interrupted = self.output_dir / INTERRUPTED
        if interrupted.is_file():
            interrupted.unlink()
            logger.info("removed %s of the interrupted run: this resumed run %s", interrupted, why)

    def _first_save(self, engine: Engine) -> int:
        """The epoch of a fresh run's first checkpoint."""
        return min(self.save_interval, getattr(engine.state, "max_epochs", None) or self.save_interval)

    def _note_earlier_run(self, engine: Engine) -> None:
        """Remember (and name) what another run left in ``output_dir``, which this fresh run replaces."""
        if (warning := self._earlier_run.warning(self._first_save(engine))) and rank_world()[0] == 0:
            logger.warning("%s", warning)

    def _collect_final(self, engine: Engine) -> None:
        """Collect ``checkpoint_final.pt``'s state as the run completes, before the completion steps (every rank:
        the random states are gathered here, not after the steps rank 0 alone runs, where the other ranks would wait
        for it, stranded if one of those steps failed)."""
        self._final = self._payload(engine, gather=True)

    def _on_completed(self, engine: Engine) -> None:
        """Write ``checkpoint_final.pt``, the last of the completion steps (attached when the run starts, after every
        other handler's): its presence tells a finished run from one stopped in its closing steps
        (:func:`~medgmae.engine.resume.closing_steps_left`)."""
        payload, self._final = self._final, None
        self.save(engine, FINAL_CHECKPOINT, gather=False, payload=payload)
        if rank_world()[0] == 0:
            self._prune_epoch_checkpoints()  # a run stopped between an epoch's save and its pruning finishes it here
            if self.resume:
                self._remove_interrupted("has ended")

    def _interrupted_advice(self, engine: Engine | None = None) -> str | None:
        """How to go on after Ctrl-C that stopped an epoch's validation, or came when no epoch checkpoint of this run
        (saved or resumed from) exists yet, for the last line :func:`medgmae.bundle_errors.summarise_errors` prints;
        ``None`` when a resume continues this run."""
        state = getattr(engine, "state", None)
        if self._stopped_validating is not None:
            epoch = self._stopped_validating
            when = f"while writing epoch {epoch}'s checkpoint" if self._writing_epoch else f"while validating epoch {epoch}"
            return (f"interrupted {when}: its training is saved in checkpoint_epoch={epoch}.pt; run the same command "
                    "with --resume true to validate it and train on")  # fmt: skip
        if not self.finished_ok and self._last_epoch is not None and self._last_epoch == getattr(state, "max_epochs", None):
            return (f"interrupted in the run's closing steps, after its last epoch ({self._last_epoch}) was saved: run "
                    "the same command with --resume true to write its closing outputs (its summary and final files) "
                    "from that checkpoint without training")  # fmt: skip
        if self._saved_epoch or self.resumed_from is not None:
            return None
        none_here = not epoch_checkpoints(self.output_dir)
        if none_here and self.later_stage:  # a GViT phase after finished ones
            return (f"interrupted before this stage saved a checkpoint (none in {self.output_dir}): run the same command "
                    "with --resume true to continue after the stages already finished (without it, a new run trains "
                    "them again and replaces their checkpoints)")  # fmt: skip
        if not none_here and self.resume:
            return None
        length = getattr(state, "epoch_length", None)
        # ignite counts an iteration when it starts: the epoch is done only if its last iteration completed
        first = self._first_save(engine) if state is not None else 1
        done = bool(state is not None and length and state.iteration and state.iteration % length == 0
                    and self._completed_iteration == state.iteration and state.epoch == first)  # fmt: skip
        if none_here:
            return (f"interrupted {before_first_save(first, done)}: there is no checkpoint_epoch=N.pt in "
                    f"{self.output_dir} to continue from, so the same command (with or without --resume true) trains "
                    "there from the first epoch again")  # fmt: skip
        return self._earlier_run.kept_advice(before_first_save(first, done))  # left as they were until the first save

    def _on_exception(self, engine: Engine, e: BaseException) -> None:
        # ignite fires EXCEPTION_RAISED twice for an error within an epoch (the epoch's handler, then the run's):
        # the state is saved once (a base model's checkpoint is over a gigabyte)
        if self._failed_resume or self._saved_for is e:
            raise self._advised(engine, e)
        said = isinstance(e, (KeyboardInterrupt, FloatingPointError))  # a stop, or an error that names its cause
        diverged = None if said else diverged_error(self.objects, engine, e)
        if diverged is not None:  # e.g. the renderer refusing NaN Gaussians: said as what it is, the NaN state not saved
            self._saved_for = diverged  # ignite's second firing, with this error, passes it on
            raise diverged from e
        self._saved_for = e
        nan_state = non_finite_weights(self.objects) if isinstance(e, FloatingPointError) else None
        try:  # no collective here: the other ranks may not have failed (the pending state was gathered before)
            if self.validation.pending is not None:  # stopped while validating: the epoch's training is kept
                self._save_pending(engine)
            elif nan_state is not None:  # a non-finite loss whose step already spoilt the weights: nothing to keep
                logger.warning("%s at the failing step: its state is not saved as %s", nan_state, INTERRUPTED)
            else:
                self.save(engine, INTERRUPTED, gather=False)
        except Exception as save_error:  # never mask the original error; a write's error names its file once
            said = os_error_message(save_error) if isinstance(save_error, OSError) else None
            logger.error("could not save the interrupted checkpoint: %s", said or save_error)
        raise self._advised(engine, e)

    def _advised(self, engine: Engine, e: BaseException) -> BaseException:
        """``e``, given the ``resume_advice`` that the last line of the bundle's output reads when it is Ctrl-C or
        SIGTERM (rank 0)."""
        if isinstance(e, KeyboardInterrupt) and rank_world()[0] == 0:
            e.resume_advice = self._interrupted_advice(engine)
        return e

    def _on_started(self, engine: Engine) -> None:
        self._stopped_validating, self._writing_epoch = None, False  # a handler run again after a stop
        if not engine.has_event_handler(self._on_completed, Events.COMPLETED):  # after every other completion step
            engine.add_event_handler(Events.COMPLETED, self._on_completed)
        if rank_world()[0] == 0 and (left := remove_interrupted_writes(self.output_dir)):
            logger.warning("removed what %d killed write%s left in %s: %s", len(left), "s" if len(left) > 1 else "",
                           self.output_dir, file_list(left, self.output_dir))  # fmt: skip
        if not self.resume:
            self._note_earlier_run(engine)
            return
        self._failed_resume = True  # until the state is restored (or no checkpoint is found), a failure, reading
        path, ckpt = self._read_latest()  # the checkpoint too, writes no checkpoint_interrupted.pt
        if path is None:
            self._failed_resume = False
            if rank_world()[0] == 0:
                interrupted = (self.output_dir / INTERRUPTED).is_file()
                logger.log(logging.INFO if interrupted or self.later_stage else logging.WARNING,  # a mistyped folder?
                           "resume: no checkpoint_epoch=N.pt in %s yet: training starts from its first epoch%s",
                           self.output_dir,
                           f" ({INTERRUPTED} holds the interrupted run's state within an epoch, which a resume does "
                           "not continue: a run continues from the end of its last saved epoch)" if interrupted
                           else "" if self.later_stage else " (is this the folder of the run to resume?)")  # fmt: skip
            return
        epoch, iteration = ckpt["engine"]["epoch"], ckpt["engine"]["iteration"]
        saved_loader, current_loader = saved_loader_record(ckpt), loader_record(engine.state.dataloader)
        check_epoch_length(path, ckpt["engine"], saved_loader, current_loader)
        check_max_epochs(path, epoch, engine.state.max_epochs, self.finished_ok, saved=ckpt["engine"])
        restore, saved = restorable(path, self.objects, ckpt.get("objects", {}))
        restore_states(path, records_first(restore), saved)
        note_resume(restore, epoch, saved)  # a StartRecord adds this session to the run's resumes
        restore_scaler(path, engine, ckpt)
        inexact_resume_notes(path, saved_loader, current_loader)
        ranks = ckpt.get("random_state_ranks")
        self.rng.load_rank_state(ranks if isinstance(ranks, list) and ranks else [ckpt["random_state"]], rank_world()[0])
        engine.state.epoch, engine.state.iteration = epoch, iteration
        self.resumed_from, self._failed_resume, self._last_epoch = path, False, epoch
        pending = ckpt["engine"].get("pending") == PENDING
        if rank_world()[0] == 0:
            logger.info("resumed from %s at epoch %d (iteration %d)", path, epoch, iteration)
            if epoch == engine.state.max_epochs and not self.finished_ok:
                logger.info("%s has trained all %d epoch%s; its run stopped before its closing steps, which this run "
                            "writes without training", path, epoch, "" if epoch == 1 else "s")  # fmt: skip
        if pending:
            self._validate_pending(engine, path)

    def _validate_pending(self, engine: Engine, path: Path) -> None:
        """Validate the epoch whose checkpoint ``path`` was saved while it was validated, then save the epoch's
        checkpoint as an uninterrupted run does (every rank, at the engine's start)."""
        if rank_world()[0] == 0:
            logger.info("%s was saved while its epoch %d was validated: validating epoch %d before training on", path,
                        engine.state.epoch, engine.state.epoch)  # fmt: skip
        self._on_trained(engine)  # saved again, marked, should this validation be cut short too
        self.validation.run(engine)
        self._on_epoch(engine)
        engine.fire_event(ResumeEvents.PENDING_EPOCH_SAVED)  # the epoch-end steps after the checkpoint (export)

    def _read_latest(self) -> tuple[Path | None, dict | None]:
        """The newest epoch checkpoint, read by rank 0 and broadcast to the other ranks, on ``map_location``."""
        path, ckpt = read_latest_checkpoint(self.output_dir)
        if path is not None and self.map_location != "cpu":
            ckpt = to_device(ckpt, self.map_location)
        return path, ckpt

