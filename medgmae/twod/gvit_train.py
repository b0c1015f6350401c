"""GViT's three-phase training as MONAI engines.

1. ``"warmup"``: the Gaussian encoder alone, on the reconstruction loss ``L_pix + lambda L_perc``;
   the classifier is frozen.
2. ``"classifier"``: the encoder is frozen (eval mode, so each image has one fixed set of Gaussians) and the
   classifier is trained on its Gaussians with cross-entropy.
3. ``"joint"``: both are trained. The classifier follows ``dL_cls/dphi``; the encoder follows the guided gradient
   of equation (1), ``dL_rec/dtheta + gamma dL_cls/dtheta`` (see :mod:`medgmae.twod.guidance`), applied every
   ``guidance_interval`` iterations (the paper's Algorithm 1 uses 10) and ``gamma = 0`` in between. With
   ``gamma = 0`` this is the paper's no-guidance baseline: the encoder sees only the reconstruction loss.

Each phase is a :class:`monai.engines.SupervisedTrainer` whose ``iteration_update`` is a
:class:`~medgmae.twod.gvit_step.GViTIteration` (AdamW, warm-up + cosine, :class:`monai.optimizers.WarmupCosineSchedule`).
Its handlers come from a list, the bundle's ``train#handlers``, of handlers and per-phase handler factories (:mod:`medgmae.twod.gvit_phases`:
checkpoints in one sub-folder per phase, so that ``resume`` skips finished phases and continues the interrupted one;
the LR schedule; a progress bar and a loss line per epoch). The iteration fires MONAI's ``IterationEvents``,
so ``GradientClipHandler`` clips between the backward pass and the step.
:class:`GViTWorkflow` runs the phases in order, writes ``model.pt`` and evaluates (``metrics.json``). Every phase's
checkpoints also keep the run's :class:`~medgmae.engine.start_record.StartRecord`, so that ``metrics.json`` and
``summary.json`` name the loader workers and software the run started with, and each resume (its phase, epoch,
loader workers, software and the data or training settings it changed) however many phases later it came.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from ignite.engine import Engine, Events
from monai.engines import SupervisedTrainer
from monai.optimizers import WarmupCosineSchedule
from torch import nn

from medgmae.engine import check_resume_fits, resolve_device
from medgmae.engine.decay_rule import decay_groups
from medgmae.engine.earlier_run import EarlierRun
from medgmae.engine.restore import refusal
from medgmae.engine.resume import epoch_checkpoints
from medgmae.engine.run_words import loader_items, plural
from medgmae.engine.start_record import StartRecord
from medgmae.twod.classification_split import without_split_files
from medgmae.twod.guidance import ReconstructionLoss, check_gamma
from medgmae.twod.gvit_phases import (START_IN_RECORDS, PhaseCheckpoint, PhaseContext, default_phase_handlers,
                                       phase_handlers, resume_records)  # fmt: skip
from medgmae.twod.gvit_run_line import gvit_run_line
from medgmae.twod.gvit_settings import guidance_note, phase_settings, training_settings
from medgmae.twod.gvit_step import PHASES, GViTIteration, check_phase, phase_parameters, set_phase
from medgmae.whole_numbers import nonnegative_count

__all__ = [
    "build_phase_trainer",
    "GViTWorkflow",
]

logger = logging.getLogger("medgmae.gvit")

#: a run's results in its folder (:func:`~medgmae.twod.gvit_eval.evaluate_gvit`, :func:`~medgmae.twod.gvit_summary.
#: gvit_summary`), made stale by training
RESULT_FILES = ("model.pt", "metrics.json", "summary.json", "predictions.csv", "confusion_matrix.png", "explanations/*.png")


def build_phase_trainer(
    phase: str,
    model: nn.Module,
    train_loader,
    max_epochs: int,
    device: torch.device | str = "cpu",
    lr: float = 1e-3,
    weight_decay: float = 0.05,
    warmup_fraction: float = 0.1,
    rec_loss: ReconstructionLoss | None = None,
    gamma: float = 0.1,
    guidance_interval: int = 1,
    render_backend: str = "auto",
    amp: bool = False,
    checkpoint_dir: str | Path | None = None,
    handlers: Sequence[Any | Callable[[PhaseContext], Any]] | None = None,
    settings: Mapping | None = None,
    cases: Sequence[Mapping] | None = None,
    run_record: StartRecord | None = None,
) -> SupervisedTrainer:
    """A MONAI trainer for one phase: AdamW (betas 0.9/0.95) on the phase's parameters, warm-up + cosine LR.

    Args:
        phase: ``"warmup"``, ``"classifier"`` or ``"joint"``.
        model: a :class:`~medgmae.twod.gvit.GViT`.
        train_loader: yields ``{"image": (B, C, H, W) in [0, 1], "label": (B,)}``.
        max_epochs: epochs of this phase (>= 1).
        device: training device.
        lr, weight_decay: AdamW settings; biases, norms and tokens are not decayed (MAE's rule,
            :func:`~medgmae.engine.decay_rule.decay_groups`).
        warmup_fraction: fraction of the phase's iterations with linear LR warm-up.
        rec_loss, gamma, guidance_interval, render_backend, amp: see
            :class:`~medgmae.twod.gvit_step.GViTIteration`.
        checkpoint_dir: folder of this phase's checkpoints (none when None).
        settings, cases: what a resumed phase must share with its checkpoint (:class:`PhaseContext`).
        run_record: the run's start and resumes, kept in the phase's checkpoints (:class:`PhaseContext`).
        handlers: handlers and handler factories (see the module doc); default :func:`default_phase_handlers`.
    """
    check_phase(phase)
    if max_epochs < 1:
        raise ValueError(f"max_epochs of phase {phase!r} must be >= 1, got {max_epochs}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    set_phase(model, phase)
    opt = torch.optim.AdamW(decay_groups(phase_parameters(model, phase), weight_decay), lr=lr, betas=(0.9, 0.95))
    total = max(1, max_epochs * len(train_loader))
    sched = WarmupCosineSchedule(opt, warmup_steps=int(warmup_fraction * total), t_total=total, warmup_multiplier=0.1)
    folder = None if checkpoint_dir is None else Path(checkpoint_dir)
    ctx = PhaseContext(phase, model, opt, sched, folder, settings, cases, run_record)
    trainer = SupervisedTrainer(
        device=torch.device(device), max_epochs=max_epochs, train_data_loader=train_loader, network=model,
        optimizer=opt, loss_function=rec_loss or ReconstructionLoss(),
        iteration_update=GViTIteration(phase, rec_loss, gamma, guidance_interval, render_backend, amp),
        train_handlers=phase_handlers(default_phase_handlers() if handlers is None else handlers, ctx),
        amp=False, decollate=False,
    )  # fmt: skip
    trainer.add_event_handler(Events.STARTED, lambda _: set_phase(model, phase))
    return trainer


class GViTWorkflow:
    """The three phases in order, then ``model.pt`` and the evaluation (``metrics.json``) in ``output_dir``.

    Args:
        model: a :class:`~medgmae.twod.gvit.GViT`.
        train_loader: training batches.
        val_loader: evaluation batches (the training loader is used when None).
        class_names: class index -> name.
        output_dir: run folder: ``checkpoints/<phase>/``, ``model.pt``, ``metrics.json``, PNGs.
        epochs: ``{"warmup": n, "classifier": n, "joint": n}``; a phase with 0 epochs is skipped.
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        lr, weight_decay: AdamW settings of every phase.
        gamma: guidance strength in ``[0, 0.1]``; 0 trains without guidance.
        guidance_interval: iterations per guidance step in the joint phase.
        pixel_loss, perceptual_weight: reconstruction loss (see :class:`~medgmae.twod.guidance.ReconstructionLoss`).
        amp: bf16 autocast on CUDA, off on CPU.
        render_backend: 2D renderer backend.
        num_explanations: explanation PNGs written by the evaluation.
        handlers: every phase's handlers and handler factories (see the module doc); default
            :func:`default_phase_handlers` (no resume).
        data_settings: how the training data were chosen (``ClassificationData.settings``; the bundle adds its
            ``augment``), saved in ``model.pt`` for the evaluation and recorded in ``metrics.json``.
        cases: the training items, checked with their files' sizes on resume (None: not checked).
        seed: the run's seed (the bundle's ``seed``, which seeds MONAI's ``set_determinism``), recorded with the
            training loader's ``num_workers`` in ``model.pt`` (``extra["run"]``); ``None``: not recorded.
    """

    def __init__(
        self,
        model: nn.Module,
        train_loader,
        val_loader,
        class_names,
        output_dir: str | Path,
        epochs: Mapping[str, int],
        device: str = "auto",
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        gamma: float = 0.1,
        guidance_interval: int = 1,
        pixel_loss: str = "bce",
        perceptual_weight: float = 0.1,
        amp: bool = False,
        render_backend: str = "auto",
        num_explanations: int = 8,
        handlers: Sequence | None = None,
        data_settings: Mapping | None = None,
        cases: Sequence[Mapping] | None = None,
        seed: int | None = None,
    ) -> None:
        unknown = set(epochs) - set(PHASES)
        if unknown:
            raise ValueError(f"epochs has unknown phases {sorted(unknown)}; expected {PHASES}")
        for k, v in epochs.items():
            if not isinstance(v, int) or v < 0:
                raise ValueError(f"epochs[{k!r}] must be a non-negative int, got {v!r}")
        if not any(epochs.get(p, 0) for p in PHASES):
            raise ValueError("every phase has 0 epochs: nothing to train")
        if len(class_names) != model.num_classes:
            raise ValueError(f"{len(class_names)} class names for a model with {model.num_classes} classes")
        if not isinstance(amp, bool):
            raise ValueError(f"amp must be a bool, got {amp!r}")
        self.device, self.amp = resolve_device(device), amp  # amp off the GPU: said in the start line (run_line)
        self.model = model.to(self.device)
        self.train_loader, self.val_loader = train_loader, val_loader
        self.class_names, self.output_dir = list(class_names), Path(output_dir)
        self.epochs = {p: int(epochs.get(p, 0)) for p in PHASES}
        self.rec_loss = ReconstructionLoss(pixel_loss, perceptual_weight)
        self.kwargs = dict(lr=lr, weight_decay=weight_decay, gamma=check_gamma(gamma), guidance_interval=guidance_interval,
                           render_backend=render_backend, amp=amp, handlers=handlers)  # fmt: skip
        self.num_explanations = num_explanations
        self.data_settings = dict(data_settings) if data_settings is not None else None
        self.cases = None if cases is None else list(cases)
        self.seed = None if seed is None else nonnegative_count(seed, "seed")
        self.trainers: dict[str, SupervisedTrainer] = {}
        self.run_record: StartRecord | None = None  # made as the run starts (run)

    def training_settings(self) -> dict:
        """How the model was trained (:func:`~medgmae.twod.gvit_settings.training_settings`), recorded in
        ``model.pt``, ``metrics.json`` and ``summary.json``."""
        return training_settings(self.epochs, self.kwargs, self.rec_loss)

    def settings(self, phase: str | None = None) -> dict:
        """What a resumed ``phase`` must share with its checkpoint (:func:`~medgmae.twod.gvit_settings.phase_settings`)."""
        return phase_settings(phase, self.model.config(), self.data_settings, self.kwargs, self.rec_loss)

    def run_line(self) -> str:
        """The start line: device, AMP, renderer, model, Gaussians, image size, phase epochs and global batch
        (:func:`~medgmae.twod.gvit_run_line.gvit_run_line`)."""
        batch = getattr(self.train_loader, "batch_size", None)
        return gvit_run_line(self.model, self.device, self.amp, self.kwargs["render_backend"], self.epochs, batch,
                             loader_items(self.train_loader))  # fmt: skip

    def trainer(self, phase: str) -> SupervisedTrainer:
        """The (new) MONAI trainer of ``phase``."""
        if self.run_record is not None:
            self.run_record.stage = phase  # a resume from this phase's checkpoint names it
        self.trainers[phase] = build_phase_trainer(
            phase, self.model, self.train_loader, self.epochs[phase], self.device, rec_loss=self.rec_loss,
            checkpoint_dir=self.output_dir / "checkpoints" / phase,
            settings=self.settings(phase), cases=self.cases, run_record=self.run_record, **self.kwargs,
        )  # fmt: skip
        return self.trainers[phase]

    def check_resume(self) -> None:
        """With a resuming :class:`~medgmae.twod.gvit_phases.PhaseCheckpoint` among the handlers, refuse up front,
        before any phase trains, a phase checkpoint that this run cannot continue: past its ``<phase>_epochs``
        (named so), another epoch length or other settings (:func:`~medgmae.engine.check_resume_fits`; a finished
        phase is passed through). Every phase is checked: one error names each refusing phase's checkpoint and all
        its differences, a line each, so that a resume with another learning rate and another ``gamma`` names both
        (the joint phase alone records the guidance); phases refusing alike are one line (:func:`_phase_refusals`)."""
        if not any(isinstance(h, PhaseCheckpoint) and h.resume for h in self.kwargs["handlers"] or ()):
            return
        refused, phases = [], []
        for phase in (p for p in PHASES if self.epochs[p] > 0):
            records = resume_records(self.settings(phase), self.cases)
            try:
                check_resume_fits(self.output_dir / "checkpoints" / phase, self.train_loader, self.epochs[phase],
                                  records=records, finished_ok=True, key=f"{phase}_epochs")  # fmt: skip
            except ValueError as e:
                refused.append(e)
                phases.append(phase)
        if refused:  # a ResumeRefused when every phase's is one: the bundle prints it alone, as the 3D bundles do
            raise refusal(_phase_refusals(self.output_dir / "checkpoints", phases, refused), refused) from refused[0]

    def _first_phase_to_train(self, resume: bool) -> str | None:
        """The first phase this run trains: of a fresh run, its first phase with epochs; of a resumed one, the first
        whose newest epoch checkpoint is short of its epochs (``None``: every phase has finished)."""
        for p in (p for p in PHASES if self.epochs[p] > 0):
            saved = epoch_checkpoints(self.output_dir / "checkpoints" / p)
            if not resume or not saved or saved[0][0] < self.epochs[p]:
                return p
        return None

    def _stale_outputs(self) -> tuple[str, str, Callable[[Engine], None]] | None:
        """What this run makes stale, with phase checkpoints: the checkpoints of every phase after the first it
        trains (of a fresh run, of every other phase: an earlier run's; of a resumed one, trained after the earlier
        state of the phase it continues, e.g. after a shorter warm-up) and the run's results (``model.pt``,
        ``metrics.json``, ``summary.json``, the confusion matrix, explanations). Named now; the returned handler
        removes them once the first phase trained has saved a checkpoint (a run stopped before removes nothing).
        Left in place, a resume would take those phases as finished by this run.

        Returns:
            ``(first phase trained, what is removed, the removing handler)``, or ``None`` when nothing is stale.
        """
        checkpoints = [h for h in self.kwargs["handlers"] or () if isinstance(h, PhaseCheckpoint)]
        resume = any(h.resume for h in checkpoints)
        first = self._first_phase_to_train(resume) if checkpoints else None
        if first is None:
            return None
        later = PHASES[PHASES.index(first) + 1 :] if resume else [p for p in PHASES if p != first]
        stale = {p: EarlierRun(self.output_dir / "checkpoints" / p, patterns=()) for p in later}
        stale["results"] = EarlierRun(self.output_dir, patterns=RESULT_FILES)
        found = {p: note for p, run in stale.items() if (note := run.find())}
        if not found:
            return None
        what = "; ".join(f"{p}: {note}" for p, note in found.items())

        def remove(_: Engine) -> None:
            for p in found:
                stale[p].remove(keep=self.output_dir)  # none of this run's checkpoints is among them
            logger.info("removed from %s what this run made stale (%s)", self.output_dir, what)

        return first, what, remove

    def _remove_after_first_save(self, trainer: Engine, remove: Callable[[Engine], None]) -> None:
        """Call ``remove`` at the trainer's first epoch end of this run (after its checkpoint handler's save)."""
        done = []

        def once(engine: Engine) -> None:
            if not done:
                done.append(True)
                remove(engine)

        trainer.add_event_handler(Events.EPOCH_COMPLETED, once)

    def run(self) -> dict:
        """Train every phase with epochs > 0, save ``model.pt``, evaluate; returns the metrics."""
        from medgmae.twod.gvit_eval import evaluate_gvit

        self.check_resume()
        # the start's data and training settings, loader workers and software, kept in every phase's checkpoints
        # with each resume's (its phase and epoch): metrics.json and summary.json name them
        start = {"data": without_split_files(self.data_settings), "training": self.training_settings()}
        self.run_record = StartRecord(start, getattr(self.train_loader, "num_workers", None), self.device,
                                      recorded_in=START_IN_RECORDS)
        stale = self._stale_outputs()
        if stale is not None:
            later = any(self.epochs[p] > 0 for p in PHASES[PHASES.index(stale[0]) + 1 :])
            logger.warning("this run trains the %r phase, so %searlier results no longer hold: %s are removed when it "
                           "saves its first checkpoint", stale[0], "the phases after it start afresh and " if later else "",
                           stale[1])  # fmt: skip
        logger.info(self.run_line())
        for phase in PHASES:
            if self.epochs[phase] > 0:
                logger.info("GViT phase %r: %s%s", phase, plural(self.epochs[phase], "epoch"), guidance_note(phase, self.kwargs["gamma"], self.kwargs["guidance_interval"]))
                trainer = self.trainer(phase)
                if stale is not None and phase == stale[0]:  # added after its checkpoint handler: after its save
                    self._remove_after_first_save(trainer, stale[2])
                trainer.run()
        training, workers = self.training_settings(), getattr(self.train_loader, "num_workers", None)
        run = None if self.seed is None else {"seed": self.seed, **({} if workers is None else {"num_workers": workers})}
        self.model.save(self.output_dir / "model.pt", class_names=self.class_names, data=self.data_settings,
                        training=training, run=run)  # fmt: skip
        has_val = self.val_loader is not None and len(self.val_loader) > 0
        if not has_val:
            logger.warning("no validation images (val_fraction 0, classes too small to hold one out, or a CSV without "
                           "val rows): the model is evaluated on its training images, an accuracy that overstates what "
                           "it does on new images")  # fmt: skip
        # the start's data loader workers beside the seed (recorded; the seed, the software and the device decide the
        # run), its software and each resume's (run_record: the model's data and training are checked or named there)
        data = {**(without_split_files(self.data_settings) or {}), "num_workers": self.run_record.start["num_workers"]}
        ran = {k: v for k, v in self.run_record.summary().items() if k != "settings"}
        record = {"split": "val" if has_val else "train", "data": data, "training": training, **ran}
        return evaluate_gvit(
            self.model, self.val_loader if has_val else self.train_loader, self.class_names, self.output_dir,
            device=self.device, num_explanations=self.num_explanations, render_backend=self.kwargs["render_backend"],
            record=record,
        )  # fmt: skip


def _phase_refusals(folder: Path, phases: Sequence[str], refused: Sequence[Exception]) -> str:
    """The refusals of ``phases`` (checkpoints in ``folder/<phase>``), a line each; said once, naming the phases
    as ``folder/{warmup,classifier}/checkpoint_epoch=1.pt``, when they differ in nothing but the checkpoint (a run
    of an earlier version: each phase refuses the same settings).

    Args:
        folder: the run's ``checkpoints`` folder.
        phases: the refusing phases, in order.
        refused: each phase's refusal.

    Returns:
        The error's text.
    """
    texts, names, shapes = [str(e) for e in refused], set(), set()
    for text, phase in zip(texts, phases):
        found = re.search(re.escape(str(folder / phase)) + r"[\\/](checkpoint_epoch=\d+\.pt)", text)
        names.add(found.group(1) if found else None)
        shapes.add(text.replace(found.group(0), "\0") if found else text)
    if len(texts) > 1 and len(shapes) == 1 and None not in names:
        name = names.pop() if len(names) == 1 else "checkpoint_epoch=N.pt"
        return shapes.pop().replace("\0", str(folder / ("{" + ",".join(phases) + "}") / name))
    return "\n".join(texts)
