"""Fine-tuning test cases: NIfTI cases, datalists, encoder files and running the unetr_finetune bundle."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from medgmae.checkpoint import make_checkpoint
from medgmae.finetune.spec import finetuned_spec
from medgmae.networks.vit import MaskedViTEncoder
from medgmae.preprocessing import PreprocessingSpec

from data_helpers import nifti_file


REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "unetr_finetune" / "configs"


def make_case(root: Path, name: str, shape=(12, 12, 8), label_shape=None, label_affine=None, max_label=2, nan=False):
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    image = np.random.default_rng(0).normal(0, 50, shape).astype(np.float32)
    if nan:
        image[0, 0, 0] = np.nan
    label = np.zeros(label_shape or shape, np.uint8)
    label[2:6, 2:6, 2:5] = max_label
    return {
        "image": nifti_file(root / f"{name}_img.nii.gz", image, affine),
        "label": nifti_file(root / f"{name}_lab.nii.gz", label, affine if label_affine is None else label_affine),
    }


def two_case_datalist(root: Path) -> Path:
    cases = [make_case(root, f"c{i}") for i in range(3)]
    dl = root / "dl.json"
    dl.write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}, "training": cases[:2], "validation": cases[2:]}))
    return dl


BTCV_CLASSES = ["background", "spleen", "right kidney", "left kidney", "gallbladder", "esophagus", "liver", "stomach",
                "aorta", "inferior vena cava", "portal and splenic veins", "pancreas", "right adrenal gland",
                "left adrenal gland"]  # fmt: skip


def truncated_copy(src: str, dst: Path) -> str:
    data = Path(src).read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: len(data) // 2])
    return str(dst)


def bundle_process(run_id: str, config: str, *overrides: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` of this bundle, whatever its exit status."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(CONFIGS / config),
           "--logging_file", str(CONFIGS / "logging.conf"), *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=400)


def run_bundle(run_id: str, config: str, *overrides: str) -> subprocess.CompletedProcess:
    proc = bundle_process(run_id, config, *overrides)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


#: A one-epoch fine-tuning run from scratch on 3 generated 32 x 32 x 24 phantoms (2 trained, 1 validated), 24^3 crops,
#: batch size 1 (2 iterations an epoch), no progress bar: the run the resume refusals start from (with ``--output_dir``).
FIRST_EPOCH = ["--device", "cpu", "--roi_size", "[24, 24, 24]", "--feature_size", "4", "--phantom_shape", "[32, 32, 24]",
               "--phantom_cases", "3", "--num_samples", "1", "--progress_bar", "false", "--batch_size", "1",
               "--max_epochs", "1"]  # fmt: skip


def flag_map(words: list[str]) -> dict[str, str]:
    """``--flag value`` words as ``{flag: value}``: two command lines given the same flags in another order compare
    equal (a test sharing :func:`first_epoch_run` checks that its own first run's flags are :data:`FIRST_EPOCH`'s)."""
    assert len(words) % 2 == 0 and all(w.startswith("--") for w in words[::2]), words
    return {k: str(v) for k, v in zip(words[::2], words[1::2])}


def first_epoch_run(root: Path) -> tuple[Path, Path]:
    """Train :data:`FIRST_EPOCH` into ``root / "run"`` and keep a copy of what it wrote in ``root / "pristine"``
    (file times kept): ``(run, pristine)``, for :func:`restored_run`."""
    import shutil

    out = root / "run"
    run_bundle("training", "train.json", *FIRST_EPOCH, "--output_dir", str(out))
    return out, Path(shutil.copytree(out, root / "pristine", symlinks=True, copy_function=shutil.copy2))


def restored_run(out: Path, pristine: Path) -> Path:
    """``out`` as :func:`first_epoch_run` left it, whatever a test did to it since: the same path (a run records its
    folder and its cases by absolute path), the same bytes and modification times."""
    import shutil

    if out.exists():
        shutil.rmtree(out)
    return Path(shutil.copytree(pristine, out, symlinks=True, copy_function=shutil.copy2))


def bundle_in_this_process(run_id: str, config: str, **overrides) -> None:
    """``monai.bundle.run`` of this bundle in the test's own process, as a notebook runs it (its errors raised, not
    printed): for a test of what a run computes and writes, not of its command line (:func:`bundle_process`), without
    the seconds a new Python process takes to import the toolkit."""
    from monai.bundle import run

    run(run_id, config_file=str(CONFIGS / config), logging_file=False, **overrides)


FILTERED = ("nvImageCodec", "torch.meshgrid", "Orientationd.__init__:labels")


def check_progress_pictures_and_summary(out: Path, log: str) -> None:
    import math

    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from medgmae.finetune import val_transforms

    assert not any(text in log for text in FILTERED), [t for t in FILTERED if t in log]
    assert "epoch 1/1: train_loss" in log and "Iter: 1/" not in log  # one line per epoch, not per iteration
    assert "fine-tuning finished: 1 epoch; best validation mean Dice" in log and "| liver |" in log
    assert "per-class Dice of the last validation (1 case):" in log
    # the evaluator's key metric (MONAI's MeanDice) and the report's mean Dice are one number
    best = re.search(r"Got new best metric of val_mean_dice: (\S+)", log).group(1)
    assert re.search(r"mean Dice (\S+) over 1 case ", log).group(1) == f"{float(best):.5f}"
    assert torch.load(out / "best_model.pt", weights_only=True)["kind"] == "medgmae-unetr"
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    dice = [e.value for e in acc.Scalars("val_mean_dice")]
    # the start line, and train/lr per iteration: the decoder's base rate (3e-4) at the cosine's start
    assert re.search(r"fine-tuning runs on cpu, AMP off, network UNETR \(feature size 4, [\d,]+ parameters, [\d,]+ "
                     r"trainable\), encoder loaded from \S+encoder\.pt, fine-tuned, learning rate 3e-4 \(\d+ parameter "
                     r"groups\), global batch 1 crop per step \(1 process x 1 volume x 1 crop\)", log)
    assert [(e.step, round(e.value, 8)) for e in acc.Scalars("train/lr")][:1] == [(1, 3e-4)]
    assert len(dice) == 1 and math.isfinite(dice[0]) and "val/segmentation" in acc.Tags()["images"]
    # at the iteration that ends the epoch (train_loss's last), so that a resume's purge step covers it too
    assert [e.step for e in acc.Scalars("val_mean_dice")] == [acc.Scalars("train_loss")[-1].step]
    assert [e.step for e in acc.Images("val/segmentation")] == [acc.Scalars("train_loss")[-1].step]  # the same axis
    table = (out / "dice_per_class.md").read_text(encoding="utf-8").splitlines()
    assert table[:2] == ["| class | Dice |", "| --- | --- |"] and len(table) == 2 + 17 + 1
    # two rows (prediction, label) of 3 slices of the pre-processed validation case, enlarged to >= 160 pixels
    case = json.loads((out / "phantom" / "dataset.json").read_text(encoding="utf-8"))["validation"][0]
    root = out / "phantom"
    spec = finetuned_spec(out / "best_model.pt")  # the run's pre-processing, recorded in its best model
    shape = val_transforms(spec)({k: str(root / v) for k, v in case.items()})["image"].shape[1:]
    f = -(-160 // max(shape))
    x, y, z = (f * n for n in shape)
    cell_h, cell_w = max(z, y) + 14, max(y, x)  # sagittal (z, y), coronal (z, x), axial (y, x)
    pic = np.asarray(Image.open(out / "segmentation.png").convert("RGB"))
    assert pic.shape == (14 + 2 * (cell_h + 2) + 2, 3 * (cell_w + 2) + 2, 3) and pic.astype(float).var() > 100.0


def encoder_file(path: Path, img_size: int = 24, **preprocessing) -> Path:
    """A small encoder.pt, its pre-processing at 2 mm unless ``preprocessing`` (:class:`PreprocessingSpec` arguments)
    says otherwise."""
    enc = MaskedViTEncoder(img_size=img_size, patch_size=12, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    spec = PreprocessingSpec(**{"spacing": 2.0, **preprocessing}, input_size=img_size, patch_size=12)
    torch.save(make_checkpoint("medgmae-encoder", enc.config(), enc.state_dict(), spec), path)
    return path


def fake_run(folder: Path, fraction: float, cases: int, subset_seed: int, training_seed: int | None = None,
             pretrained: dict | None = None, epochs: int = 0, best: tuple[float, int] | None = None,
             last: dict | None = None, preprocessing: dict | None = None, model_preprocessing: dict | None = None,
             total: int = 100, source: dict | None = None) -> Path:
    """A fine-tuning run folder holding the files a run of the bundle writes, with the given values:
    ``training_cases.json`` (without ``training_seed`` / ``pretrained`` when ``training_seed`` is ``None``, as runs
    wrote it before they were recorded), ``checkpoint_epoch=<epochs>.pt`` (empty: only its name is read),
    ``best_model.pt`` (``best``: metric and epoch; no weights) and ``validation/metrics.json`` (``last``: Dice by
    class, their mean its ``mean_dice``); ``preprocessing`` is recorded in ``training_cases.json`` (as runs record it
    since they do), ``model_preprocessing`` in ``best_model.pt``; ``cases`` of ``total`` training cases are chosen,
    the first ones of the datalist ``/d/dataset.json`` (``source``: another ``{"dataset_dir", "datalist"}``)."""
    from medgmae.finetune.run_record import case_record, write_run_record

    chosen = [{"image": f"/d/c{i}.nii.gz", "label": f"/d/l{i}.nii.gz"} for i in range(cases)]
    record = case_record(fraction, subset_seed, total, chosen, source or {"dataset_dir": "/d", "datalist": "/d/dataset.json"})
    if training_seed is not None:
        record.update(training_seed=training_seed, pretrained=pretrained or {"path": "", "kind": "", "source": ""})
    if preprocessing is not None:
        record["preprocessing"] = preprocessing
    write_run_record(folder, record)
    if epochs:
        (folder / f"checkpoint_epoch={epochs}.pt").write_bytes(b"")
    if best is not None:
        fake_best_model(folder, *best, preprocessing=model_preprocessing)
    if last is not None:
        (folder / "validation").mkdir()
        metrics = {"mean_dice": sum(last.values()) / len(last), "dice_per_class": last, "num_cases": 2}
        (folder / "validation" / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return folder


def fake_best_model(folder: Path, metric: float, epoch: int, preprocessing: dict | None = None) -> Path:
    """A run's ``best_model.pt`` in ``folder`` recording ``metric`` at ``epoch`` (no weights) and ``preprocessing``
    (a ``PreprocessingSpec.to_dict()``, ``None`` for none), as a validation that improved writes it (replacing the
    one there)."""
    path = folder / "best_model.pt"
    extra = {"epoch": epoch, "metric_name": "val_mean_dice", "metric": metric}
    torch.save(make_checkpoint("medgmae-unetr", {"out_channels": 3}, {}, preprocessing, extra), path)
    return path


#: Two pre-processings as runs record them (``PreprocessingSpec.to_dict()``), written out here.
COARSE_PREPROCESSING = {"orientation": "LPS", "spacing": [2.0, 2.0, 3.0], "hu_window": [-1000.0, 1000.0],
                        "intensity_range": [0.0, 1.0], "clip": True, "input_size": [96, 96, 96],
                        "patch_size": [16, 16, 16]}  # fmt: skip
FINE_PREPROCESSING = {**COARSE_PREPROCESSING, "orientation": "RAS", "spacing": [1.5, 1.5, 1.5],
                      "hu_window": [-175.0, 250.5]}  # fmt: skip


def fake_epoch_checkpoint(folder: Path, epoch: int, max_epochs: int, settings: dict, validation: list) -> Path:
    """``checkpoint_epoch=<epoch>.pt`` in ``folder`` as the bundle's checkpoint handler writes it (no weights): the
    engine's ``epoch`` and ``max_epochs``, a settings record of ``settings`` and a record of the ``validation``
    cases (datalist items of files)."""
    from types import SimpleNamespace

    from medgmae.engine.checkpoint_handler import CheckpointHandler
    from medgmae.engine.records import CasesRecord, SettingsRecord

    records = {"settings": SettingsRecord(settings, "UNETR fine-tuning"),
               "validation": CasesRecord(validation, what="UNETR fine-tuning", role="validated on")}  # fmt: skip
    engine = SimpleNamespace(state=SimpleNamespace(epoch=epoch, iteration=epoch, max_epochs=max_epochs, dataloader=[]))
    return CheckpointHandler(folder, records).save(engine, f"checkpoint_epoch={epoch}.pt", gather=False)


def fake_evaluation(folder: Path, dice_space: str, datalist: str, data_key: str = "validation") -> dict:
    """``eval/metrics.json`` of ``folder`` as the evaluation bundle's report writes it: one case scored (Dice 1 of
    its one class), with the entries ``evaluate.json`` adds (``dice_space``, ``datalist``, ``data_key``)."""
    from ignite.engine import Engine

    from medgmae.finetune.evaluate import SegmentationReport

    onehot = torch.zeros(2, 4, 4, 4)
    onehot[1, :2], onehot[0, 2:] = 1, 1
    report = SegmentationReport(folder / "eval", ["background", "liver"],
                                extra={"dice_space": dice_space, "datalist": datalist, "data_key": data_key})
    evaluator = Engine(lambda engine, batch: [{"pred": onehot, "label": onehot}])
    report.attach(evaluator)
    evaluator.run([0], max_epochs=1)
    return report.metrics
