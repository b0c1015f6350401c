"""A folder another run holds and the evaluation, inference and export bundles: refused, or warned about."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from medgmae.folder_lock import FolderInUse, hold_folder, release_folder

from bundle_helpers import run_bundle

from folder_lock_helpers import other_run  # noqa: F401 - fixtures


def _writing_run(config: str, root: Path) -> tuple[str, str, list[str]]:
    """An evaluation or inference config that writes files, ready to run on tiny inputs made under ``root``: its run
    id, the key of the folder it writes into, and its other settings."""
    import numpy as np
    import torch

    from data_helpers import nifti_file
    from finetune_helpers import two_case_datalist
    from gvit_helpers import SIZE, shapes_dataset
    from model_helpers import tiny_model_file

    root.mkdir(parents=True)
    if config == "medgmae_pretrain/configs/inference.json":
        image = nifti_file(root / "ct.nii.gz", np.random.default_rng(0).normal(0, 200, (20, 20, 16)).astype(np.float32))
        model = tiny_model_file(root / "model.pt", spacing=2.0)
        return "inferring", "inference_dir", ["--model_path", str(model), "--image", image]
    if config.startswith("gvit_classification/"):
        from medgmae.twod.gvit import GViT

        GViT(1, SIZE, 2, num_gaussians=4, patch_size=4).save(root / "model.pt", class_names=["bar", "disc"])
        shapes, settings = shapes_dataset(root / "shapes"), ["--model_path", str(root / "model.pt")]
        if config.endswith("inference.json"):
            return "inferring", "inference_dir", [*settings, "--image_dir", str(shapes / "bar")]
        return "evaluating", "eval_dir", [*settings, "--dataset_dir", str(shapes), "--num_explanations", "0"]
    datalist, settings = two_case_datalist(root), ["--checkpoint", str(_finetuned_file(root / "best.pt"))]
    if config.endswith("inference.json"):
        return "inferring", "seg_dir", [*settings, "--input_files", f"['{root / 'c0_img.nii.gz'}']"]
    return "evaluating", "eval_dir", [*settings, "--datalist", str(datalist)]


def _finetuned_file(path: Path) -> Path:
    """A tiny fine-tuned UNETR's ``best_model.pt`` (3 classes, 24 x 24 x 12 patches) at ``path``."""
    import torch

    from medgmae.checkpoint import make_checkpoint
    from medgmae.networks.unetr import MedGMAEUNETR
    from medgmae.networks.vit import MaskedViTEncoder
    from medgmae.preprocessing import PreprocessingSpec

    enc = MaskedViTEncoder(img_size=(24, 24, 12), patch_size=12, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    net = MedGMAEUNETR(3, encoder=enc, feature_size=4)
    spec = PreprocessingSpec(spacing=2.0, input_size=(24, 24, 12), patch_size=12)
    torch.save(make_checkpoint("medgmae-unetr", net.config(), net.state_dict(), spec, {"epoch": 1}), path)
    return path


WRITING_CONFIGS = ["medgmae_pretrain/configs/inference.json", "gvit_classification/configs/inference.json",
                   "gvit_classification/configs/evaluate.json", "unetr_finetune/configs/inference.json",
                   "unetr_finetune/configs/evaluate.json"]  # fmt: skip


@pytest.mark.parametrize("config", WRITING_CONFIGS)
def test_an_evaluation_or_inference_refuses_a_folder_another_run_holds(config, tmp_path, other_run):
    """Two evaluations or inferences into one folder wrote at once, each one's files over the other's: the second
    is refused, naming the folder and the run holding it, and writes nothing; once that run has ended it runs."""
    run_id, key, settings = _writing_run(config, tmp_path / "inputs")
    folder = tmp_path / "out"
    holder = other_run(folder)
    refused = run_bundle(run_id, config, *settings, f"--{key}", str(folder), "--device", "cpu")
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: FolderInUse: --{key} {folder}: another run is writing into it (process "
                           f"{holder.pid}: "), refused.stderr[-2000:]  # fmt: skip
    assert list(folder.iterdir()) == []
    holder.stdin.close()
    holder.wait(timeout=30)
    ran = run_bundle(run_id, config, *settings, f"--{key}", str(folder), "--device", "cpu")
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert list(folder.iterdir()) != []


def test_an_export_refuses_a_folder_another_run_holds_and_writes_nothing(tmp_path, other_run):
    """export.json wrote ``model.ts`` into its folder without holding it: a second export, or a training run in that
    folder (a new run there removes an earlier ``model.ts``), went on writing beside it. It is refused, naming the
    folder and the run holding it, with the folder as it was; once that run has ended it exports."""
    folder = tmp_path / "run"
    folder.mkdir()
    _finetuned_file(folder / "best_model.pt")
    holder = other_run(folder)  # as a training run (or another export) holds it
    refused = run_bundle("exporting", "unetr_finetune/configs/export.json", "--output_dir", str(folder))
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: FolderInUse: --export_path {folder}: another run is writing into it (process "
                           f"{holder.pid}: "), refused.stderr[-2000:]  # fmt: skip
    assert [p.name for p in folder.iterdir()] == ["best_model.pt"]
    holder.stdin.close()
    holder.wait(timeout=30)
    ran = run_bundle("exporting", "unetr_finetune/configs/export.json", "--output_dir", str(folder))
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert sorted(p.name for p in folder.iterdir()) == ["best_model.pt", "model.ts"]


def test_a_gvit_evaluation_writes_the_phantom_task_only_into_a_run_folder_it_holds(tmp_path, other_run):
    """Without a ``dataset_dir``, GViT's evaluate.json wrote the default phantom task into ``output_dir/data``
    holding only its ``eval_dir``: beside a training run writing that task (which holds ``output_dir``), it cleared
    and rewrote the run's slices. It is refused, naming the folder and the run holding it, with nothing written;
    once that run has ended it writes the task and evaluates; a finished task there is only read, beside a run holding
    the folder."""
    import torch

    from medgmae.twod.gvit import GViT

    run, store = tmp_path / "run", tmp_path / "store"
    torch.manual_seed(0)
    recorded = {"dataset_dir": "", "default_root": str(run / "data"), "num_phantoms": 3, "seed": 0,
                "val_fraction": 0.2, "image_size": 16}  # fmt: skip
    GViT(in_channels=1, img_size=16, num_classes=3, num_gaussians=6, model_size="tiny", patch_size=4).save(
        store / "model.pt", data=recorded)
    holder = other_run(run)  # as a training run into it holds it
    settings = ["--output_dir", str(run), "--model_path", str(store / "model.pt"), "--num_explanations", "0",
                "--device", "cpu"]  # fmt: skip
    refused = run_bundle("evaluating", "gvit_classification/configs/evaluate.json", *settings)
    assert refused.returncode != 0
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: FolderInUse: --output_dir {run}: another run is writing into it (process "
                           f"{holder.pid}: "), refused.stderr[-2000:]  # fmt: skip
    assert list(run.iterdir()) == []
    holder.stdin.close()
    holder.wait(timeout=30)
    ran = run_bundle("evaluating", "gvit_classification/configs/evaluate.json", *settings)
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert (run / "data" / "task.json").is_file() and (run / "eval" / "metrics.json").is_file()
    other_run(run)  # a finished task of these settings is only read: evaluating beside a training run goes on
    again = run_bundle("evaluating", "gvit_classification/configs/evaluate.json", *settings)
    assert again.returncode == 0, again.stderr[-3000:]


def test_an_evaluation_warns_of_a_run_holding_the_folder_of_the_model_it_scores(tmp_path, other_run, caplog):
    """An evaluation run while the fine-tuning still trained scored a best_model.pt that a later epoch then replaced,
    without a word. It warns, one line naming the process, and runs; the training's lock is not taken (the holder
    is told from /proc/locks): a training run starting meanwhile is not refused."""
    from medgmae.finetune.best_model import warn_if_training
    from medgmae.folder_lock import folder_holder

    _, _, settings = _writing_run("unetr_finetune/configs/evaluate.json", tmp_path / "run")
    checkpoint = tmp_path / "run" / "best.pt"
    assert folder_holder(tmp_path / "run") is None and not warn_if_training(checkpoint)
    holder = other_run(tmp_path / "run")
    held = folder_holder(tmp_path / "run")
    assert held[0] == holder.pid and held[1].startswith(f"{sys.executable} -c import sys from medgmae.folder_lock")
    ran = run_bundle("evaluating", "unetr_finetune/configs/evaluate.json", *settings, "--eval_dir",
                     str(tmp_path / "eval"), "--device", "cpu")  # fmt: skip
    assert ran.returncode == 0, ran.stderr[-3000:]
    said = [line for line in (ran.stdout + ran.stderr).splitlines() if "another run holds this run folder" in line]
    assert len(said) == 1 and f"{tmp_path / 'run'}: another run holds this run folder (process {holder.pid}: " in said[0]
    assert said[0].endswith("evaluate again once it has ended") and (tmp_path / "eval" / "metrics.json").is_file()
    with pytest.raises(FolderInUse):  # the evaluation took nothing from the holder
        hold_folder(tmp_path / "run")
    holder.stdin.close()
    holder.wait(timeout=30)
    hold_folder(tmp_path / "run")
    try:  # this process's own hold is no other run's
        assert folder_holder(tmp_path / "run")[0] == os.getpid() and not warn_if_training(checkpoint)
    finally:
        release_folder(tmp_path / "run")
    with pytest.raises(ValueError, match="checkpoint: expected the path"):
        warn_if_training("")
