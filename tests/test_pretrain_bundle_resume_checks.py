"""Resumes the medgmae_pretrain bundle refuses, leaving the run's folder byte for byte as it was: another batch size
or other settings (also after a data file changed: the pre-check's ledger kept), other training or validation data
of the same count, other phantom settings (the bundle's runs and exact resumption: test_pretrain_bundle.py)."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from pretrain_helpers import SMALL, TRAIN, bundle_process, succeeded


@pytest.fixture
def runs(pretrain_runs):
    """One short run generating phantoms (then resumed to 2 epochs) and an uninterrupted 2-epoch run (conftest.py)."""
    return pretrain_runs


def test_resume_with_another_batch_size_writes_nothing(runs, tmp_path, folder_state):
    """A copy of the 2-epoch run (2 training volumes: 2 iterations per epoch at batch size 1) resumed with batch
    size 2 is refused before its TensorBoard writer exists: the folder is byte for byte as it was, and the error
    names both batch sizes and both epoch lengths. So is a resume with another number of Gaussians."""
    import shutil

    out = shutil.copytree(runs["straight"], tmp_path / "run", copy_function=shutil.copy2)
    before = folder_state(out)

    def resume(flag: str, value: str) -> subprocess.CompletedProcess:
        small = SMALL[:]
        small[small.index(flag) + 1] = value
        return bundle_process("run", "training", "--config_file", TRAIN, *small, "--dataset_dir", str(runs["dataset"]),
                       "--output_dir", str(out), "--max_epochs", "3", "--num_workers", "0", "--resume", "true", cwd=tmp_path)

    proc = resume("--batch_size", "2")
    assert proc.returncode != 0
    assert ("checkpoint_epoch=2.pt is at epoch 2 after 4 iterations (2 per epoch, batch size 1), but this run has 1 "
            "iteration per epoch (batch size 2)") in proc.stderr, proc.stderr[-3000:]
    assert folder_state(out) == before
    proc = resume("--num_gaussians", "16")
    assert proc.returncode != 0 and "num_gaussians: saved 8, now 16" in proc.stderr, proc.stderr[-3000:]
    assert folder_state(out) == before
    # the restored optimiser would keep its saved learning rate; other validation crops would score another set
    proc = bundle_process("run", "training", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(runs["dataset"]), "--output_dir",
                   str(out), "--max_epochs", "3", "--num_workers", "0", "--resume", "true", "--learning_rate", "0.001",
                   "--val_crops", "3", cwd=tmp_path)  # fmt: skip
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert ("MedGMAE pre-training with other settings (optimiser.learning_rate: saved 0.00015, now 0.001; "
            "validation.val_crops: saved 2, now 3)") in proc.stderr, proc.stderr[-3000:]
    # crops per volume and step, and the gradient clipping, change what is trained without changing the epoch's length
    small = SMALL[:]
    small[small.index("--num_samples") + 1] = "2"
    proc = bundle_process("run", "training", "--config_file", TRAIN, *small, "--dataset_dir", str(runs["dataset"]), "--output_dir",
                   str(out), "--max_epochs", "3", "--num_workers", "0", "--resume", "true", "--grad_clip", "0.5", cwd=tmp_path)  # fmt: skip
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert ("MedGMAE pre-training with other settings (step.grad_clip: saved 1.0, now 0.5; step.num_samples: "
            "saved 1, now 2)") in proc.stderr, proc.stderr[-3000:]
    assert folder_state(out) == before


def test_resume_on_other_data_of_the_same_count_writes_nothing(runs, tmp_path, folder_state):
    """The phantom dataset moved elsewhere resumes (paths compare relative to the data's folder); with one training
    volume edited (same number of cases, so the same epoch length) the resume is refused naming the file, and the
    run's folder, its cache folder (the pre-check's ledger) included, is byte for byte as it was: the pre-check
    runs after the resume check."""
    import shutil

    import nibabel as nib

    out = shutil.copytree(runs["straight"], tmp_path / "run", copy_function=shutil.copy2)
    data = shutil.copytree(runs["dataset"].parent, tmp_path / "moved" / "phantom")
    args = ["run", "training", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(data / "dataset.json"),
            "--output_dir", str(out), "--num_workers", "0", "--resume", "true"]  # fmt: skip
    moved = shutil.copytree(out, tmp_path / "moved_run", copy_function=shutil.copy2)
    succeeded(bundle_process(*[str(moved) if a == str(out) else a for a in args], "--max_epochs", "3", cwd=tmp_path))
    before = folder_state(out)
    for path in sorted(data.rglob("*.nii.gz")):  # every image edited: whichever the split trains on
        if "label" not in path.name:
            img = nib.load(path)
            voxels = np.asarray(img.dataobj).copy()
            voxels[:4] = np.random.default_rng(0).integers(-100, 100, voxels[:4].shape)
            nib.save(nib.Nifti1Image(voxels, img.affine, img.header), path)
    proc = bundle_process(*args, "--max_epochs", "3", cwd=tmp_path)
    assert proc.returncode != 0 and "MedGMAE pre-training trained on other data: 2 cases then, 2 now" in proc.stderr, proc.stderr[-3000:]
    assert '2 differing (saved {"image": ["imagesTr/' in proc.stderr, proc.stderr[-3000:]
    assert "drawn with --seed and --val_fraction" in proc.stderr, proc.stderr[-3000:]  # what chooses the cases
    assert folder_state(out) == before


def test_resume_with_another_validation_list_writes_nothing(runs, tmp_path, folder_state):
    """The best model is chosen on the validation volumes: a resume whose datalist lists other ones (training
    unchanged) is refused naming both, and the run's folder is byte for byte as it was."""
    import shutil

    out = shutil.copytree(runs["straight"], tmp_path / "run", copy_function=shutil.copy2)
    data = shutil.copytree(runs["dataset"].parent, tmp_path / "data" / "phantom")
    datalist = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
    assert datalist["validation"] and datalist["validation"] != datalist["training"][:1]
    datalist["validation"] = datalist["training"][:1]
    (data / "dataset.json").write_text(json.dumps(datalist))
    before = folder_state(out)
    proc = bundle_process("run", "training", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(data / "dataset.json"),
                   "--output_dir", str(out), "--num_workers", "0", "--resume", "true", "--max_epochs", "3", cwd=tmp_path)
    assert proc.returncode != 0 and "MedGMAE pre-training validated on other data" in proc.stderr, proc.stderr[-3000:]
    assert folder_state(out) == before


def test_resume_with_other_phantom_settings_writes_nothing(runs, tmp_path, folder_state):
    """A copy of the phantom run resumed with another phantom shape is refused naming the setting, before any
    phantom is generated again: the run's folder (its phantoms and cache included) is byte for byte as it was."""
    import shutil

    out = shutil.copytree(runs["resumed"], tmp_path / "run", copy_function=shutil.copy2)
    before = folder_state(out)
    small = SMALL[:]
    small[small.index("--phantom_shape") + 1] = "[48,48,44]"
    proc = bundle_process("run", "training", "--config_file", TRAIN, *small, "--output_dir", str(out), "--max_epochs", "3",
                   "--num_workers", "0", "--resume", "true", cwd=tmp_path)  # fmt: skip
    assert proc.returncode != 0 and "trained on phantoms generated with other settings" in proc.stderr, proc.stderr[-3000:]
    assert "phantom_shape: saved [48, 48, 40], now [48, 48, 44]" in proc.stderr, proc.stderr[-3000:]
    assert folder_state(out) == before


def test_an_augmented_run_resumes_bit_for_bit_and_keeps_its_augment(runs, tmp_path, folder_state):
    """``--augment true`` on the phantom data of the shared runs: a 1-epoch run resumed to 2 epochs ends with the
    weights of an uninterrupted 2-epoch run (the augmentation's draws are restored with the other random states),
    and those differ from the unaugmented run's of the same seed and data (the setting reaches the crops). A resume
    without ``--augment true`` is refused naming the setting, the folder byte for byte as it was."""
    from pretrain_helpers import read_checkpoint

    def train(out, epochs: int, *more: str) -> subprocess.CompletedProcess:
        return bundle_process("run", "training", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(runs["dataset"]),
                              "--output_dir", str(out), "--num_workers", "0", "--max_epochs", str(epochs), *more, cwd=tmp_path)  # fmt: skip

    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    succeeded(train(resumed, 1, "--augment", "true"))
    before = folder_state(resumed)
    proc = train(resumed, 2, "--resume", "true")
    assert proc.returncode != 0 and "step.augment: saved True, now False" in proc.stderr, proc.stderr[-3000:]
    assert folder_state(resumed) == before
    resume = succeeded(train(resumed, 2, "--augment", "true", "--resume", "true"))
    assert "crops augmented as in the paper" in resume.stdout + resume.stderr
    succeeded(train(straight, 2, "--augment", "true"))
    a, b = read_checkpoint(resumed / "checkpoint_epoch=2.pt"), read_checkpoint(straight / "checkpoint_epoch=2.pt")
    plain = read_checkpoint(runs["straight"] / "checkpoint_epoch=2.pt")
    wa, wb, wp = a["objects"]["model"], b["objects"]["model"], plain["objects"]["model"]
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)
    assert any(not np.array_equal(wa[k].numpy(), wp[k].numpy()) for k in wa)


def test_a_truncated_newest_checkpoint_is_a_refusal_naming_the_one_before(runs, tmp_path, folder_state):
    """A copy of the run whose newest checkpoint was cut short (a copy stopped halfway) stopped the resume in three
    chained tracebacks; it is a refusal in one line, naming the file, what is wrong with it and the checkpoint
    before it to resume from, and the folder stays as it was."""
    import shutil

    out = shutil.copytree(runs["straight"], tmp_path / "run", copy_function=shutil.copy2)
    newest = out / "checkpoint_epoch=2.pt"
    assert not (out / "checkpoint_epoch=1.pt").exists()  # the run keeps its newest only: the refusal says start afresh
    shutil.copy2(newest, tmp_path / "intact.pt")
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    before = folder_state(out)
    proc = bundle_process("run", "training", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(runs["dataset"]),
                          "--output_dir", str(out), "--max_epochs", "3", "--num_workers", "0", "--resume", "true", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: ResumeRefused: the newest checkpoint cannot be resumed from: {newest}: not a complete "
                           "PyTorch file"), last
    assert last.endswith("remove it, or run without --resume true to start afresh"), last
    assert folder_state(out) == before
    shutil.copy2(tmp_path / "intact.pt", out / "checkpoint_epoch=1.pt")  # an older one there: it is named
    proc = bundle_process("run", "training", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(runs["dataset"]),
                          "--output_dir", str(out), "--max_epochs", "3", "--num_workers", "0", "--resume", "true", cwd=tmp_path)
    assert proc.stderr.strip().splitlines()[-1].endswith("remove it to resume from checkpoint_epoch=1.pt, the one before")


def test_a_refused_resume_after_a_data_file_changed_leaves_the_pre_checks_ledger_as_it_was(runs, tmp_path, folder_state):
    """A copy of the phantom run whose first training volume's modification time changed (the pre-check reads it
    again and rewrites its ledger, ``cache/precheck.json``) resumed with batch size 2 or another crop size: refused
    before the pre-check runs, the folder byte for byte as it was; a resume that goes on records the new time."""
    import os
    import shutil

    out = shutil.copytree(runs["resumed"], tmp_path / "run", copy_function=shutil.copy2)
    ledger = out / "cache" / "precheck.json"
    image = json.loads((out / "phantom" / "dataset.json").read_text(encoding="utf-8"))["training"][0]["image"]
    os.utime(out / "phantom" / image, ns=(10**18, 10**18))  # changed: the pre-check reads it again
    assert ledger.is_file() and str(10**18) not in ledger.read_text(encoding="utf-8")
    before = folder_state(out)

    def resume(flag: str, value: str) -> subprocess.CompletedProcess:
        small = SMALL[:]
        small[small.index(flag) + 1] = value
        return bundle_process("run", "training", "--config_file", TRAIN, *small, "--output_dir", str(out), "--max_epochs",
                              "3", "--resume", "true", cwd=tmp_path)  # fmt: skip

    proc = resume("--batch_size", "2")
    assert proc.returncode != 0 and "the batch size changed from 1 to 2" in proc.stderr, proc.stderr[-3000:]
    assert folder_state(out) == before
    proc = resume("--roi_size", "48")
    assert proc.returncode != 0 and "img_size: saved [32, 32, 32], now [48, 48, 48]" in proc.stderr, proc.stderr[-3000:]
    assert folder_state(out) == before
    succeeded(resume("--batch_size", "1"))
    assert str(10**18) in ledger.read_text(encoding="utf-8")
