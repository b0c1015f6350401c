"""The end of a pre-training run: a PNG of the curves and a closing summary with the next commands.

:class:`PretrainSummary` runs when training completes (main process): it writes ``curves.png`` (validation PSNR,
training and validation loss, validation SSIM per epoch; also in TensorBoard as ``curves``), logs the best
validation PSNR and its epoch, where ``model.pt``, ``encoder.pt``, ``best_model.pt`` (when a validation has written
it: a run whose best epoch's file was lost claims none until one is written again), the pictures and the
TensorBoard log are, and the commands that use them (fine-tuning, zero-shot inference, reconstruction
initialisation), and saves the same as ``summary.json``, with the settings and the software the run started with
(``software``: :func:`medgmae.software.software_versions`) and, after a resume, each resume's epoch, loader
workers, software and changed settings (``resumes``), from the run's
:class:`~medgmae.engine.start_record.StartRecord`, which its checkpoints keep. Every ``interval`` epochs before the
last (the bundles' ``picture_interval``) it also writes ``curves.png`` and ``summary.json`` of the run so far,
marked ``"in_progress": true``, so that a run stopped for good (a job's time limit, never resumed) keeps them: once
this run has written its ``model.pt`` (at its first checkpoint, when a fresh run has removed an earlier run's files:
before, they would have replaced an earlier run's closing ones), its ``files`` only the files this run wrote and its
``next`` only the commands whose input files are written.
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path
from typing import Any, Mapping

from ignite.engine import Engine, Events

from medgmae.data.fingerprint import file_fingerprint
from medgmae.engine import MetricHistory, is_main_process
from medgmae.files import absolute_path, bundle_config, save_json_atomic
from medgmae.engine.figures import add_image, line_plot, save_png
from medgmae.mae_training.export import ENCODER_FILE, MODEL_FILE
from medgmae.mae_training.validation import BEST_MODEL_FILE
from medgmae.engine.start_record import StartRecord
from medgmae.whole_numbers import positive_count

__all__ = ["PretrainSummary", "curves_figure", "finetune_dir", "next_commands"]

logger = logging.getLogger("medgmae.mae_training")

CURVES_FILE = "curves.png"


def curves_figure(history: MetricHistory):
    """``(H, W, 3)`` uint8 picture of validation PSNR, training / validation loss and validation SSIM per epoch."""
    return line_plot(
        [
            ("validation masked PSNR (dB)", {"validation": history.get("val_psnr")}),
            ("loss (masked MSE)", {"training": history.get("train_loss"), "validation": history.get("val_loss")}),
            ("validation masked SSIM", {"validation": history.get("val_ssim")}),
        ]
    )


#: what the fine-tuning command asks for in place of a labelled dataset after pre-training on a user's data
LABELLED_DATA = "/path/to/labelled/data"
#: The placeholder of the fine-tuning command for a datalist without a ``labels`` map.
NUM_CLASSES = "NUM_CLASSES"


def finetune_dir(out: Path) -> Path:
    """The fine-tuning folder suggested after the pre-training run ``out``: ``<parent>/<run name>_finetune``, one per
    pre-training run, so following the suggestions of two runs (``pre/``, ``pre_star/``) keeps both results."""
    out = Path(out)
    return out.parent / f"{out.name or 'pretrain'}_finetune"


def labelled_datalist(source: str) -> str:
    """The Decathlon datalist ``source`` is or holds (a folder's ``dataset.json``) when every item of its
    ``training`` list has a ``label``: fine-tuning can use it as it is; ``""`` otherwise."""
    from medgmae.data.datalist import DatasetError, load_datalist_json

    path = Path(source) if str(source).strip() else None
    if path is not None and path.is_dir():
        path = path / "dataset.json"
    if path is None or path.suffix.lower() != ".json" or not path.is_file():
        return ""
    try:
        training = load_datalist_json(path, check_lists=False).get("training")  # judged below
    except DatasetError:
        return ""
    ok = isinstance(training, list) and training and all(isinstance(it, dict) and it.get("label") for it in training)
    return str(path) if ok else ""


def _has_class_names(datalist: str) -> bool:
    """Whether the Decathlon datalist has a ``labels`` map (class index -> name), from which fine-tuning takes the
    number of classes."""
    from medgmae.data.datalist import DatasetError, load_datalist_json

    try:
        labels = load_datalist_json(Path(datalist), check_lists=False).get("labels")
    except DatasetError:
        return False
    return isinstance(labels, dict) and bool(labels)


def _unlisted_decathlon(source: str) -> bool:
    """Whether ``source`` is a folder of ``imagesTr/`` and ``labelsTr/`` without a ``dataset.json`` (fine-tuning
    needs one: :mod:`medgmae.data.decathlon` writes it)."""
    path = Path(source) if str(source).strip() else None
    return bool(path and path.is_dir() and (path / "imagesTr").is_dir() and (path / "labelsTr").is_dir()
                and not (path / "dataset.json").exists())  # fmt: skip


def next_commands(
    out: Path, model_kind: str, example_image: str, pretrained_on: str = "", data_dir: str = ""
) -> dict[str, str]:
    """The follow-up commands of README's "Using it" table with this run's paths filled in.

    Args:
        out: the pre-training run folder.
        model_kind: ``medgmae``, ``medgmae-star`` or ``voxel-mae``.
        example_image: a volume for the inference commands (fine-tuning reads the crop size from ``encoder.pt``).
        pretrained_on: the user's data the run pre-trained on (its ``datalist`` or ``dataset_dir``); empty for
            generated phantoms. Fine-tuning needs labels: a datalist with labels (:func:`labelled_datalist`) is
            given to it as ``--datalist``; other data make the command ask for a labelled dataset (``--dataset_dir``
            :data:`LABELLED_DATA`) instead of defaulting to phantoms.
        data_dir: the ``dataset_dir`` that datalist's relative paths resolved against (``""``: its own folder).
    """
    q = shlex.quote
    unlisted = _unlisted_decathlon(pretrained_on)  # imagesTr/ + labelsTr/ without dataset.json: medgmae-datalist pairs them
    if labelled := labelled_datalist(pretrained_on):
        data = f" --datalist {q(labelled)}" + (f" --dataset_dir {q(data_dir)}" if str(data_dir).strip() else "")
        if not _has_class_names(labelled):  # fine-tuning reads the class count from the datalist's "labels" map
            data += f" --num_classes {NUM_CLASSES}"
    elif unlisted:
        data = f" --dataset_dir {q(str(pretrained_on))}"
    else:
        data = f" --dataset_dir {LABELLED_DATA}" if str(pretrained_on).strip() else ""
    cmds = {"datalist": f"medgmae-datalist {q(str(pretrained_on))}"} if unlisted else {}
    cmds["fine-tune"] = (f"python -m monai.bundle run training --config_file {q(bundle_config('unetr_finetune', 'train.json'))} "
                         f"--pretrained {q(str(out / ENCODER_FILE))} --output_dir {q(str(finetune_dir(out)))}" + data)  # fmt: skip
    if model_kind != "voxel-mae":  # zero-shot Gaussians need a Gaussian model
        image = q(example_image or "ct.nii.gz")
        cmds["zero-shot inference"] = (
            f"python -m monai.bundle run inferring --config_file {q(bundle_config('medgmae_pretrain', 'inference.json'))} "
            f"--model_path {q(str(out / MODEL_FILE))} --image {image} --inference_dir {q(str(out / 'gaussians'))}"
        )
        scan, rec = q(str(out / "scan")), q(str(out / "recon"))
        # parallel beam: projected with ASTRA's CPU weights on any machine (a 120-view cone scan of a full phantom
        # needs the ray marcher on a CPU, over 10 GB of memory), and a few hundred iterations
        cmds["reconstruction init"] = (
            f"medgmae-recon simulate --volume {image} --geometry parallel --views 60 --out {scan} && "
            f"medgmae-recon reconstruct --projections {scan}/projections.npy --geometry {scan}/geometry.json "
            f"--fbp {scan}/fbp.nii.gz --init medgmae --checkpoint {q(str(out / MODEL_FILE))} "
            f"--iterations 300 --reference {scan}/reference.nii.gz --out {rec}"
        )
    return cmds


def _absolute_or_empty(path: str | Path | None) -> str:
    """``path`` as an absolute path's text (:func:`~medgmae.files.absolute_path`), ``""`` when none is given."""
    text = str(path or "").strip()
    return str(absolute_path(text)) if text else ""


class PretrainSummary:
    """Closing summary of a pre-training run (see the module docstring); main process only. Every path it records
    and names in its commands is absolute (``summary.json`` is read later, from other folders); the config files of
    the commands are named as :func:`~medgmae.files.bundle_config` names them.

    Args:
        output_dir: the run folder.
        history: the run's :class:`~medgmae.engine.MetricHistory`.
        model_kind: ``medgmae``, ``medgmae-star`` or ``voxel-mae``.
        example_image: a volume to put in the inference commands (e.g. the first validation volume).
        tensorboard_dir: the TensorBoard log folder.
        summary_writer: TensorBoard ``SummaryWriter`` (the curves go there too; it is flushed).
        pretrained_on: the user's data the run pre-trained on (``datalist`` or ``dataset_dir``); empty for phantoms
            (see :func:`next_commands`).
        data_dir: the ``dataset_dir`` a ``datalist``'s relative paths resolved against (``""``: none).
        settings: the run's settings, recorded in ``summary.json`` so that runs can be compared from their
            folders (e.g. the model's config, its pre-processing and the training settings: the seed, which with
            the software and the device decides the weights, and the data loader's ``num_workers``); ``None``: not
            recorded. Used where no ``record`` is given (a run that is not resumed).
        record: the run's :class:`~medgmae.engine.start_record.StartRecord` among its checkpoints' objects, made
            with its settings (the bundles'): ``summary.json`` then names the start's settings and software and the
            resumes (:meth:`~medgmae.engine.start_record.StartRecord.summary`).
        interval: epochs between the curves and summary of the run so far (:meth:`progress`); ``None``: none,
            only the closing ones. Attach it after the checkpoint handler and the model export (their epoch's
            validation, checkpoint and ``model.pt`` come first; a resumed run's epoch is set when it starts).
    """

    def __init__(
        self,
        output_dir: str | Path,
        history: MetricHistory,
        model_kind: str,
        example_image: str = "",
        tensorboard_dir: str | Path | None = None,
        summary_writer: Any = None,
        pretrained_on: str = "",
        data_dir: str = "",
        settings: Mapping | None = None,
        record: StartRecord | None = None,
        interval: int | None = None,
    ) -> None:
        # absolute paths: summary.json is read later, from other folders than the one the run was started in
        self.out, self.history, self.model_kind = absolute_path(output_dir), history, str(model_kind)
        self.settings = json.loads(json.dumps(settings, default=str)) if settings is not None else None
        if record is not None and not isinstance(record, StartRecord):
            raise ValueError(f"record must be a StartRecord or None, got {type(record).__name__}")
        self.record = record
        self.interval = None if interval is None else positive_count(interval, "picture_interval")
        self.data_dir = _absolute_or_empty(data_dir)
        self.example_image = _absolute_or_empty(example_image)
        self.tensorboard_dir = absolute_path(tensorboard_dir) if tensorboard_dir else self.out / "tensorboard"
        self.writer, self.pretrained_on = summary_writer, _absolute_or_empty(pretrained_on)
        self.title = "pre-training finished"
        self.model_note = "last epoch" + ("" if self.model_kind == "voxel-mae" else ": zero-shot inference, reconstruction init")
        self.encoder_note = "encoder for fine-tuning"
        self._found: dict[str, tuple[int, int] | None] = {}  # the model files a fresh run found as it started

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._on_started)
        engine.add_event_handler(Events.COMPLETED, self)
        if self.interval is not None:  # after the epoch's validation (run by the checkpoint handler, attached before)
            engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._due), self.progress)

    def _on_started(self, engine: Engine) -> None:
        """Note the model files the folder holds as a fresh run starts: an earlier run's, until this run rewrites
        them (a resumed run, whose epoch the checkpoint handler attached before has set, wrote those it finds)."""
        fresh = not getattr(engine.state, "epoch", 0)
        self._found = {n: file_fingerprint(self.out / n) for n in (MODEL_FILE, ENCODER_FILE, BEST_MODEL_FILE)} if fresh else {}

    def written(self, name: str) -> bool:
        """Whether this run wrote the file ``name`` of its folder: it is there, and not as the run found it."""
        sig = file_fingerprint(self.out / name)
        return sig is not None and (name not in self._found or sig != self._found[name])

    def _due(self, engine: Engine, epoch: int) -> bool:
        return epoch % self.interval == 0 and epoch != engine.state.max_epochs  # the last: the closing summary

    def summary(self, engine: Engine, in_progress: bool = False) -> dict:
        """What the summary says, as JSON-serialisable data; ``in_progress``: of the run so far (its epochs
        trained, the model files this run has written yet, the next commands whose input files they are)."""
        h, out = self.history, self.out
        kept = (MODEL_FILE, ENCODER_FILE) + ((BEST_MODEL_FILE,) if h.has_best else ())  # a lost one is not claimed
        files = {name: str(out / name) for name in kept if not in_progress or self.written(name)}
        commands = self.commands()
        if in_progress:  # not a command on a file not written yet (e.g. an earlier run's model.pt)
            unwritten = {str(out / n) for n in (MODEL_FILE, ENCODER_FILE) if n not in files}
            commands = {k: c for k, c in commands.items() if not unwritten.intersection(shlex.split(c))}
        return {
            "in_progress": bool(in_progress),
            "epochs": int(engine.state.epoch),
            "model_kind": self.model_kind,
            "best_val_psnr": h.best_value if h.has_best else None,
            "best_epoch": h.best_epoch if h.has_best else None,
            "last_val_psnr": h.latest("val_psnr"),
            "last_val_ssim": h.latest("val_ssim"),
            "files": {**files, "pictures": str(out / "pictures"), "curves": str(out / CURVES_FILE),
                      "tensorboard": str(self.tensorboard_dir)},  # fmt: skip
            "next": commands,
            **self._start_record(engine).summary(),
        }

    def _start_record(self, engine: Engine) -> StartRecord:
        """The run's start record: the one given, or this session's (``settings``, the engine's device, which
        MONAI's workflows keep in its state)."""
        return self.record or StartRecord(self.settings, device=getattr(engine.state, "device", None))

    def commands(self) -> dict[str, str]:
        """The follow-up commands printed at the end (subclasses for other bundles override this)."""
        return next_commands(self.out, self.model_kind, self.example_image, self.pretrained_on, self.data_dir)

    def text(self, s: dict) -> str:
        """The summary as console lines."""
        f = s["files"]
        best = (f"best validation masked PSNR {s['best_val_psnr']:.2f} dB at epoch {s['best_epoch']}"
                if s["best_epoch"] is not None else "no best validation model")  # fmt: skip
        last = s["last_val_ssim"]
        lines = [
            f"{self.title}: {s['epochs']} epoch{'' if s['epochs'] == 1 else 's'} of {s['model_kind']}; {best}"
            + (f" (last SSIM {last:.4f})" if last is not None else ""),
            f"  {MODEL_FILE:<14} {f[MODEL_FILE]}  ({self.model_note})",
            f"  {ENCODER_FILE:<14} {f[ENCODER_FILE]}  ({self.encoder_note})",
            f"  {BEST_MODEL_FILE:<14} {f[BEST_MODEL_FILE]}  (best validation PSNR, model.pt format)" if BEST_MODEL_FILE in f
            else f"  {BEST_MODEL_FILE:<14} none: no validation has written one",
            f"  {'pictures':<14} {f['pictures']}  and curves {f['curves']}",
            f"  {'TensorBoard':<14} tensorboard --logdir {shlex.quote(f['tensorboard'])}",
            "next:",
        ]
        lines += [f"  {name}: {cmd}" for name, cmd in s["next"].items()]
        if "reconstruction init" in s["next"]:
            lines.append("  (the reconstruction grows the zero-shot start to one Gaussian per 8 voxels of the scan, at "
                         "least 20,000: on a CPU a scan of this size takes many minutes, and it shows the time left as "
                         "it goes; a smaller --num-gaussians is quicker and coarser)")  # fmt: skip
        if NUM_CLASSES in s["next"].get("fine-tune", ""):
            lines.append(f"  (the datalist has no 'labels' map naming its classes: replace {NUM_CLASSES} by the number "
                         "of classes, background included)")  # fmt: skip
        if "datalist" in s["next"]:
            lines.append("  (fine-tuning pairs each image with its label map through a dataset.json, which "
                         f"{self.pretrained_on} lacks: medgmae-datalist writes one from imagesTr/ and labelsTr/)")
        if LABELLED_DATA in s["next"].get("fine-tune", ""):
            lines.append(
                f"  (fine-tuning needs labels: replace {LABELLED_DATA} by a labelled dataset (its dataset.json, or"
                f" add --datalist); {self.pretrained_on} was the pre-training data; without --dataset_dir /"
                " --datalist the fine-tuning uses generated phantoms)"
            )
        return "\n".join(lines)

    def progress(self, engine: Engine) -> None:
        """``curves.png`` and ``summary.json`` (``"in_progress": true``) of the run so far, each written atomically,
        at the end of an ``interval``-th epoch once this run has written its ``model.pt`` (main process; a log line,
        no TensorBoard image, no closing lines)."""
        if not is_main_process() or not self.written(MODEL_FILE):  # before its first checkpoint: an earlier run's
            return  # closing files, which that checkpoint removes, are not replaced
        save_png(curves_figure(self.history), self.out / CURVES_FILE)
        save_json_atomic(self.summary(engine, in_progress=True), self.out / "summary.json")
        logger.info("epoch %d: wrote %s and %s (the run so far)", engine.state.epoch, CURVES_FILE, "summary.json")

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        img = curves_figure(self.history)
        save_png(img, self.out / CURVES_FILE)
        add_image(self.writer, "curves", img, engine.state.epoch)
        s = self.summary(engine)
        save_json_atomic(s, self.out / "summary.json")
        logger.info("\n%s", self.text(s))
