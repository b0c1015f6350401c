"""The unetr_finetune bundle end to end: train, stop, resume, evaluate, infer, segment, under torchrun; its
progress, pictures and summary."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from medgmae.checkpoint import make_checkpoint
from medgmae.finetune.data import prepare_datalists
from medgmae.finetune.run_record import write_run_record
from medgmae.networks.vit import MaskedViTEncoder
from medgmae.preprocessing import PreprocessingSpec

from bundle_helpers import tensorboard_shown
from data_helpers import nifti_file
from finetune_helpers import (
    REPO,
    CONFIGS,
    make_case,
    two_case_datalist,
    truncated_copy,
    bundle_in_this_process,
    bundle_process,
    run_bundle,
    check_progress_pictures_and_summary,
)


def _two_epochs(encoder_pt: Path) -> list[str]:
    """Fine-tuning from ``encoder_pt`` for 2 epochs on 3 small phantoms (one of the 2 training cases labelled), flags
    but ``--output_dir``: the runs of :func:`straight` and of the tests that compare against it."""
    return ["--device", "cpu", "--feature_size", "4",  # roi_size: the encoder's 24^3
            "--phantom_shape", "[32, 32, 24]", "--phantom_cases", "3", "--num_samples", "1",
            "--pretrained", str(encoder_pt), "--label_fraction", "0.5", "--lr_schedule_epochs", "2", "--max_epochs", "2"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> SimpleNamespace:
    """An encoder.pt recording 2 mm voxels and a (-200, 300) HU window (not the bundle's defaults; ``enc``, ``spec``,
    ``encoder_pt``), and the 2 epochs of :func:`_two_epochs` from it trained uninterrupted into ``run``: what the runs
    stopped and resumed in this module must end as. Read, never written, by the tests."""
    root = tmp_path_factory.mktemp("straight")
    torch.manual_seed(0)
    enc = MaskedViTEncoder(img_size=24, patch_size=12, hidden_size=48, num_layers=2, num_heads=4, mlp_ratio=2.0)
    encoder_pt = root / "encoder.pt"
    spec = PreprocessingSpec(spacing=2.0, hu_window=(-200.0, 300.0), input_size=24, patch_size=12)
    torch.save(make_checkpoint("medgmae-encoder", enc.config(), enc.state_dict(), spec, {"source": "test"}), encoder_pt)
    run_bundle("training", "train.json", *_two_epochs(encoder_pt), "--output_dir", str(root / "run"))
    return SimpleNamespace(enc=enc, spec=spec, encoder_pt=encoder_pt, run=root / "run")


def test_bundle_train_resume_evaluate_infer(tmp_path, straight):
    """The chain pre-training -> fine-tuning -> evaluation / inference with the pre-processing read from the
    checkpoints: encoder.pt records 2 mm voxels and a (-200, 300) HU window (not the bundle's defaults), and
    best_model.pt carries them on to evaluation and inference."""
    out = tmp_path / "run"
    common = ["--output_dir", str(out), *_two_epochs(straight.encoder_pt)[:-2]]  # less --max_epochs
    proc = run_bundle("training", "train.json", *common, "--max_epochs", "1")
    _check_the_first_epoch(out, proc.stdout + proc.stderr, straight.enc, straight.spec)
    _check_the_resume_matches_an_uninterrupted_run(out, straight.run, common)
    _check_the_evaluation(out)
    _check_inference_in_another_orientation_and_spacing(out, tmp_path)
    _check_a_resumed_segmentation_skips_only_this_models_outputs(out, tmp_path)
    # the earlier model's evaluation and segmentations are replaced by a fresh run in this folder too
    made = {p for p in out.rglob("*") if p.is_file() and p.relative_to(out).parts[0] in ("eval", "segmentations")}
    assert len(made) == 4 and made <= _replaced_by_a_fresh_run(out)


def _replaced_by_a_fresh_run(out: Path) -> set[Path]:
    """The files in ``out`` that a fresh run in that folder replaces (its CheckpointHandler's ``earlier_outputs``)."""
    config = json.loads((CONFIGS / "train.json").read_text(encoding="utf-8"))
    handler = next(h for h in config["train"]["handlers"] if isinstance(h, dict) and h["_target_"].endswith("CheckpointHandler"))
    return {p for pattern in handler["earlier_outputs"] for p in out.glob(pattern)}


def _check_the_first_epoch(out: Path, log: str, enc: MaskedViTEncoder, spec: PreprocessingSpec) -> None:
    """One epoch fine-tuned from the pre-trained encoder: its training cases, best model, progress, pictures and
    summary, all replaced by a fresh run."""
    n = len(enc.state_dict())
    assert f"loaded {n}/{n} pre-trained encoder tensors" in log
    chosen = json.loads((out / "training_cases.json").read_text(encoding="utf-8"))
    assert chosen["num_total"] == 2 and len(chosen["cases"]) == 1
    best = torch.load(out / "best_model.pt", weights_only=True)
    assert best["kind"] == "medgmae-unetr" and best["extra"]["epoch"] == 1 and 0.0 <= best["extra"]["metric"] <= 1.0
    assert best["preprocessing"] == spec.to_dict()  # read from encoder.pt, passed on
    assert "differs from" not in log
    # the encoder was fine-tuned from the pre-trained weights, the decoder was trained
    assert not torch.equal(best["state_dict"]["vit.blocks.0.attn.qkv.weight"], enc.state_dict()["blocks.0.attn.qkv.weight"])
    check_progress_pictures_and_summary(out, log)
    # a fresh run in this folder replaces every output of this one (its data, record and checkpoints aside)
    replaced = _replaced_by_a_fresh_run(out)
    written = {p for p in out.rglob("*") if p.is_file() and not p.name.startswith("checkpoint_")
               and p.relative_to(out).parts[0] not in ("cache", "phantom") and p.name != "training_cases.json"}  # fmt: skip
    assert written and written <= replaced, sorted(str(p.relative_to(out)) for p in written - replaced)


def _check_the_resume_matches_an_uninterrupted_run(out: Path, straight: Path, common: list[str]) -> None:
    """The run in ``out`` resumed to 2 epochs, and the same 2 epochs trained uninterrupted into ``straight``."""
    proc = run_bundle("training", "train.json", *common, "--max_epochs", "2", "--resume", "true")
    assert "resumed from" in proc.stdout + proc.stderr and (out / "checkpoint_epoch=2.pt").is_file()
    ckpt = torch.load(out / "checkpoint_epoch=2.pt", weights_only=True)
    assert ckpt["engine"]["epoch"] == 2 and ckpt["engine"]["iteration"] == 2
    # the same 2 epochs uninterrupted, validating after each as the resumed run did: the same weights and best
    # model (the epoch checkpoint is written after the validation, whose data loader draws from the global RNG)
    again = torch.load(straight / "checkpoint_epoch=2.pt", weights_only=True)
    for name, weights in again["objects"]["network"].items():
        assert torch.equal(weights, ckpt["objects"]["network"][name]), name
    assert torch.load(straight / "best_model.pt", weights_only=True)["extra"] == torch.load(out / "best_model.pt", weights_only=True)["extra"]


def _check_the_evaluation(out: Path) -> None:
    """evaluate.json on the run's best model: the recorded pre-processing, its metrics and per-case Dice."""
    proc = run_bundle("evaluating", "evaluate.json", "--output_dir", str(out), "--device", "cpu")
    assert "Got new best metric" not in proc.stdout + proc.stderr  # a one-off evaluation has no "best"
    assert (f"pre-processing of {out / 'best_model.pt'}: orientation RAS, spacing [2.0, 2.0, 2.0] mm (recorded), "
            "HU window [-200.0, 300.0] (recorded), crop 24x24x24") in proc.stdout + proc.stderr  # fmt: skip
    metrics = json.loads((out / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert f"mean Dice {metrics['mean_dice']:.5f} over 1 case " in proc.stdout + proc.stderr
    assert "per-class Dice of the evaluation (1 case):\n| class | Dice |" in proc.stdout + proc.stderr
    assert metrics["num_cases"] == 1 and len(metrics["dice_per_class"]) == 17
    assert 0.0 <= metrics["mean_dice"] <= 1.0
    with open(out / "eval" / "per_case_dice.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["case"] == "case_0002"
    assert rows[0]["image"].endswith("case_0002.nii.gz")
    values = [float(v) for k, v in rows[0].items() if k not in ("case", "image", "predicted_but_absent") and v != ""]
    assert values and all(0.0 <= v <= 1.0 for v in values)


def _check_inference_in_another_orientation_and_spacing(out: Path, tmp_path: Path) -> None:
    """inference.json on an image in another orientation and spacing: the segmentation is in the input's space."""
    src = nib.load(out / "phantom" / "imagesTr" / "case_0002.nii.gz")
    data = np.asarray(src.dataobj)[::-1, :, ::2].astype(np.int16)  # L-to-R flipped, 4 mm slices
    affine = src.affine @ np.array([[-1, 0, 0, data.shape[0] - 1], [0, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1.0]])
    moved = nifti_file(tmp_path / "input" / "moved.nii.gz", data, affine)
    bundle_in_this_process("inferring", "inference.json", output_dir=str(out), device="cpu", input_files=[str(moved)])
    seg = nib.load(out / "segmentations" / "moved_seg.nii.gz")
    assert seg.shape == data.shape
    np.testing.assert_allclose(seg.affine, nib.load(moved).affine, atol=1e-5)
    assert np.asarray(seg.dataobj).max() < 18
    # the class names travel: best_model.pt records the datalist's, and the colour table beside the segmentations
    # (3D Slicer's "index name R G B A" lines) names every label value written
    labels = json.loads((out / "phantom" / "dataset.json").read_text(encoding="utf-8"))["labels"]
    names = [labels[str(i)] for i in range(len(labels))]
    assert torch.load(out / "best_model.pt", weights_only=True)["config"]["class_names"] == names
    rows = [line.split() for line in (out / "segmentations" / "labels.ctbl").read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#")]  # fmt: skip
    assert {int(r[0]): r[1] for r in rows} == {i: n.replace(" ", "_") for i, n in enumerate(names)}
    assert all(len(r) == 6 and all(0 <= int(v) <= 255 for v in r[2:]) for r in rows)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {int(r[0]) for r in rows}


def _check_a_resumed_segmentation_skips_only_this_models_outputs(out: Path, tmp_path: Path) -> None:
    """``--resume true``: a case whose segmentation this model wrote with these settings is not segmented again
    (its file untouched), a new case is; another overlap rewrites both; with every case done nothing runs. Each file
    records what made it in its NIfTI description."""
    seg_dir = tmp_path / "seg_resume"
    first = out / "phantom" / "imagesTr" / "case_0002.nii.gz"
    second = shutil.copy(first, tmp_path / "input" / "second.nii.gz")
    run = lambda files, **kw: bundle_in_this_process("inferring", "inference.json", output_dir=str(out), device="cpu",
                                                     seg_dir=str(seg_dir), input_files=[str(f) for f in files], **kw)  # noqa: E731
    stamp = lambda name: (seg_dir / name).stat().st_mtime_ns  # noqa: E731
    run([first])
    made_by = nib.load(seg_dir / "case_0002_seg.nii.gz").header["descrip"].tobytes().rstrip(b"\0").decode()
    assert made_by.startswith("medgmae-seg ") and len(made_by) == 44
    before = stamp("case_0002_seg.nii.gz")
    run([first, second], resume=True)
    assert stamp("case_0002_seg.nii.gz") == before and (seg_dir / "second_seg.nii.gz").is_file()
    run([first, second], resume=True, sw_overlap=0.25)  # another run's outputs: segmented again
    assert stamp("case_0002_seg.nii.gz") != before
    again = nib.load(seg_dir / "second_seg.nii.gz").header["descrip"].tobytes().rstrip(b"\0").decode()
    assert again.startswith("medgmae-seg ") and again != made_by
    stamps = {p.name: p.stat().st_mtime_ns for p in seg_dir.iterdir()}
    Path(second).write_bytes(Path(second).read_bytes()[:400])  # a done case's input is neither read nor refused
    run([first, second], resume=True, sw_overlap=0.25)  # every case done: nothing segmented, nothing written
    assert {p.name: p.stat().st_mtime_ns for p in seg_dir.iterdir()} == stamps


def test_a_run_stopped_while_validating_keeps_the_epochs_training(tmp_path, stop_while_validating, straight):
    """SIGTERM while epoch 1 was validated (after the sliding-window evaluation) saved checkpoint_interrupted.pt and no
    epoch checkpoint, so the resume trained epoch 1 again. The epoch's training is now saved as
    checkpoint_epoch=1.pt, marked as not validated; the resume validates epoch 1, trains epoch 2 alone and ends as
    the uninterrupted run: weights, optimiser, scheduler, best value and best model (the validation's data loader
    draws from the global random generator: the marked checkpoint holds the generators as training left them)."""
    run, uninterrupted = tmp_path / "run", straight.run
    common = _two_epochs(straight.encoder_pt)  # the 2 epochs that straight.run trained uninterrupted
    stop = stop_while_validating(CONFIGS / "train.json", tmp_path, epoch=1)
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", f"['{CONFIGS / 'train.json'}','{stop}']",
           "--logging_file", str(CONFIGS / "logging.conf"), *common, "--output_dir", str(run)]  # fmt: skip
    stopped = subprocess.run(cmd, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=400)
    assert stopped.returncode == -15, stopped.stderr[-3000:]
    assert stopped.stderr.rstrip().splitlines()[-1].startswith("terminated (SIGTERM) while validating epoch 1: its "
                                                               "training is saved in checkpoint_epoch=1.pt")  # fmt: skip
    assert not (run / "checkpoint_interrupted.pt").exists()
    saved = torch.load(run / "checkpoint_epoch=1.pt", weights_only=True)
    assert saved["engine"]["pending"] == "validation" and saved["objects"]["best"] == {"best": -float("inf"), "best_epoch": 0}
    resumed = run_bundle("training", "train.json", *common, "--output_dir", str(run), "--resume", "true")
    log = resumed.stdout + resumed.stderr
    assert "validating epoch 1 before training on" in log
    assert "epoch 1/2: train_loss" not in log and log.count("epoch 2/2: train_loss") == 1  # epoch 1 not trained again
    a, b = (torch.load(d / "checkpoint_epoch=2.pt", weights_only=True) for d in (run, uninterrupted))
    assert a["engine"] == b["engine"] and a["objects"]["best"] == b["objects"]["best"]
    assert a["objects"]["lr_scheduler"] == b["objects"]["lr_scheduler"]
    for name, weights in b["objects"]["network"].items():
        assert torch.equal(weights, a["objects"]["network"][name]), name
    oa, ob = a["objects"]["optimizer"]["state"], b["objects"]["optimizer"]["state"]
    assert oa.keys() == ob.keys() and all(torch.equal(oa[i]["exp_avg"], ob[i]["exp_avg"]) for i in oa)
    assert torch.equal(a["random_state"]["torch"], b["random_state"]["torch"])
    ba, bb = (torch.load(d / "best_model.pt", weights_only=True) for d in (run, uninterrupted))
    assert ba["extra"] == bb["extra"] and all(torch.equal(ba["state_dict"][k], bb["state_dict"][k]) for k in bb["state_dict"])
    # epoch 1's validation scalars, logged before the stop and again by the resume, shown once: as uninterrupted
    assert tensorboard_shown(run / "tensorboard") == tensorboard_shown(uninterrupted / "tensorboard")


def test_printed_evaluate_command_runs_after_training_on_a_datalist(tmp_path):
    """The 'next: evaluate' command printed at the end of a run trained with dataset_dir / datalist evaluates on
    that data (it used to look for the run's phantom datalist); the run then segments inputs that share a file name
    into unique files, and refuses a truncated input before writing anything."""
    import shlex

    dl, out = two_case_datalist(tmp_path / "data"), tmp_path / "run"
    proc = run_bundle("training", "train.json", "--dataset_dir", str(tmp_path / "data"), "--datalist", str(dl),
                      "--output_dir", str(out), "--device", "cpu", "--roi_size", "[24, 24, 24]", "--feature_size", "4",
                      "--num_samples", "1", "--max_epochs", "1", "--num_workers", "0", "--progress_bar", "false")
    line = next(x for x in (proc.stdout + proc.stderr).splitlines() if x.strip().startswith("evaluate: python"))
    cmd = shlex.split(line.split("evaluate: ", 1)[1])
    assert cmd[:5] == ["python", "-m", "monai.bundle", "run", "evaluating"] and "--datalist" in cmd
    done = subprocess.run([sys.executable, *cmd[1:], "--device", "cpu"], cwd=REPO, capture_output=True, encoding="utf-8",
                          errors="replace", timeout=400)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "eval" / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["num_cases"] == 1 and metrics["datalist"] == str(dl.resolve())
    run_bundle("evaluating", "evaluate.json", "--output_dir", str(out), "--device", "cpu")  # the record alone suffices
    assert json.loads((out / "eval" / "metrics.json").read_text(encoding="utf-8"))["datalist"] == str(dl.resolve())

    # segmentation: inputs with one file name get unique outputs; a truncated input stops before anything is written
    src = json.loads(dl.read_text(encoding="utf-8"))["validation"][0]["image"]
    same = []
    for patient in ("patA", "patB"):
        (tmp_path / patient).mkdir()
        same.append(str(shutil.copy(src, tmp_path / patient / "ct.nii.gz")))
    run_bundle("inferring", "inference.json", "--output_dir", str(out), "--device", "cpu", "--input_files", repr(same))
    assert sorted(p.name for p in (out / "segmentations").iterdir()) == ["labels.ctbl", "patA_ct_seg.nii.gz", "patB_ct_seg.nii.gz"]
    trunc = truncated_copy(src, tmp_path / "trunc.nii.gz")
    cmd = [sys.executable, "-m", "monai.bundle", "run", "inferring", "--config_file", str(CONFIGS / "inference.json"),
           "--output_dir", str(out), "--device", "cpu", "--seg_dir", str(tmp_path / "seg2"), "--input_files", repr([src, trunc])]
    bad = subprocess.run(cmd, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=400)
    assert bad.returncode != 0 and "trunc.nii.gz" in bad.stderr and not (tmp_path / "seg2").exists()


def test_multi_gpu_config_two_process_gloo(tmp_path):
    """train.json + multi_gpu_train.json on 2 CPU processes (gloo): sharded training, gradients all-reduced, rank 0
    alone writes checkpoints (with both ranks' random states), the best model and the logs."""
    out = tmp_path / "ddp"
    configs = f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "monai.bundle",
           "run", "training", "--config_file", configs, "--logging_file", str(CONFIGS / "logging.conf"),
           "--output_dir", str(out), "--device", "cpu", "--roi_size", "[24, 24, 24]", "--feature_size", "4",
           "--encoder", "{'patch_size': 12, 'hidden_size': 48, 'num_layers': 1, 'num_heads': 4, 'mlp_ratio': 2.0}",
           "--phantom_shape", "[32, 32, 24]", "--phantom_cases", "3", "--num_samples", "1", "--max_epochs", "1"]  # fmt: skip
    # run from tmp_path: this checkout's package first on the path (not another installed copy)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, encoding="utf-8", errors="replace", timeout=400, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ckpt = torch.load(out / "checkpoint_epoch=1.pt", weights_only=True)
    assert ckpt["engine"] == {"epoch": 1, "iteration": 1, "max_epochs": 1}  # 2 training cases over 2 ranks
    assert len(ckpt["random_state_ranks"]) == 2
    assert not any(k.startswith("module.") for k in ckpt["objects"]["network"])
    best = torch.load(out / "best_model.pt", weights_only=True)
    assert best["extra"]["epoch"] == 1 and 0.0 <= best["extra"]["metric"] <= 1.0
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and len({p.name.split(".")[-2] for p in events}) == 1  # written by one process: rank 0
    assert not list(out.glob("rank*"))


def test_a_data_error_of_a_first_run_leaves_no_output_folder(tmp_path):
    """A first run stopped by its data (a label value outside the class range) leaves no run folder behind (its
    output folder used to be created up front and left empty)."""
    cases = [make_case(tmp_path / "data", "c0"), make_case(tmp_path / "data", "c1", max_label=20)]
    dl = tmp_path / "data" / "dl.json"
    dl.write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}, "training": cases[:1], "validation": cases[1:]}))
    out = tmp_path / "run"
    proc = bundle_process("training", "train.json", "--datalist", str(dl), "--output_dir", str(out), "--device", "cpu",
                          "--num_workers", "0", "--roi_size", "[24, 24, 24]")  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "outside the class range" in log.split("\nerror: ")[-1], log[-3000:]
    assert not out.exists()


def test_summary_segment_command_names_an_image_of_the_run(tmp_path):
    """The printed segment command works when pasted: it names the first validation image of the run's datalist
    (as training_cases.json records it), parsed by the inference config as one existing file."""
    import ast
    import shlex

    from medgmae.finetune.report import FinetuneSummary

    dl, out = two_case_datalist(tmp_path), tmp_path / "run"
    write_run_record(out, prepare_datalists(str(tmp_path), str(dl), out)["record"])
    report = SimpleNamespace(metrics={"mean_dice": 0.5, "dice_per_class": {"liver": 0.5}, "num_cases": 1},
                             output_dir=out / "validation")
    saver = SimpleNamespace(best=0.5, best_epoch=1, path=out / "best_model.pt")
    line = next(v for k, v in FinetuneSummary(out, report, saver).next_commands().items() if k == "segment")
    args = shlex.split(line)
    files = ast.literal_eval(args[args.index("--input_files") + 1])
    assert files == [str(tmp_path / "c2_img.nii.gz")] and Path(files[0]).is_file()
    assert "--input_files \"['" + files[0] + "']\"" in line  # written as the README writes it, not as '['"'"'...'"'"']'
    from medgmae.finetune.report import _list_flag

    for path in ("plain/case 1.nii.gz", "it's.nii.gz", "a$HOME.nii.gz", 'say "x".nii.gz', "c!d.nii.gz", "e\\f.nii.gz",
                 "g`id`.nii.gz"):  # through bash itself: $ and backquotes expand in double quotes, ! interactively
        word = _list_flag([path])
        echoed = subprocess.run(["bash", "-ic", f"printf %s {word}"], capture_output=True, text=True, env={"HOME": "/h"})
        assert ast.literal_eval(echoed.stdout) == [path], (path, word, echoed.stdout, echoed.stderr)

