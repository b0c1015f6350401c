"""The fine-tuning run record: its training seed, pre-trained encoder and pre-processing, as started and resumed."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch

from medgmae.checkpoint import make_checkpoint
from medgmae.finetune.run_record import (
    case_record,
    check_resume_matches,
    pretrained_record,
    read_run_record,
    start_record,
    write_run_record,
)
from medgmae.finetune.runs_table import main
from medgmae.networks.vit import MaskedViTEncoder

from finetune_helpers import COARSE_PREPROCESSING as _COARSE, FINE_PREPROCESSING as _FINE, encoder_file, run_bundle


def test_the_pretrained_record_names_the_file_and_its_source(tmp_path):
    enc = MaskedViTEncoder(img_size=24, patch_size=12, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    path = tmp_path / "encoder.pt"
    torch.save(make_checkpoint("medgmae-encoder", enc.config(), enc.state_dict(), None, {"source": "medgmae-star"}), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert pretrained_record(path) == {"path": str(path.resolve()), "kind": "medgmae-encoder", "source": "medgmae-star",
                                       "sha256": digest}  # fmt: skip
    assert pretrained_record(encoder_file(tmp_path / "bare.pt"))["source"] == ""  # an encoder.pt that records none
    assert pretrained_record("") == {"path": "", "kind": "", "source": "", "sha256": ""}
    record = start_record(case_record(0.1, 4, 10, []), "", 9)
    assert (record["seed"], record["training_seed"], record["pretrained"]["path"]) == (4, 9, "")


@pytest.mark.parametrize("source, config, kind", [
    ("VoxelMAE", {}, "voxel-mae"), ("GMAE2D", {}, "gmae2d"), ("MedGMAE", {"multi_level": False}, "medgmae"),
    ("MedGMAE", {"multi_level": True}, "medgmae-star"), ("MedGMAE", {}, "medgmae or medgmae-star"),
    ("medgmae-star", {}, "medgmae-star"),
])  # fmt: skip
def test_an_old_encoders_class_name_source_is_recorded_as_its_kind(tmp_path, source, config, kind):
    """An encoder.pt written before 2026-12-04 records its source as the model class (MedGMAE for MedGMAE and
    MedGMAE* runs alike); the run record holds the kind, as for a newer file, and for a MedGMAE source whose file
    does not tell which, both."""
    enc = MaskedViTEncoder(img_size=24, patch_size=12, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    path = tmp_path / "encoder.pt"
    torch.save(make_checkpoint("medgmae-encoder", {**enc.config(), **config}, enc.state_dict(), None, {"source": source}), path)
    assert pretrained_record(path)["source"] == kind


def test_a_record_without_the_new_keys_still_resumes(tmp_path):
    """A run recorded before the training seed and encoder were resumes; those keys are not compared (another
    --seed or --pretrained is the settings check's to judge), the cases still are."""
    cases = [{"image": "/d/a.nii.gz", "label": "/d/la.nii.gz"}]
    data = {"dataset_dir": "/d", "datalist": ""}
    write_run_record(tmp_path, case_record(0.1, 0, 10, cases, data))
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"")
    check_resume_matches(tmp_path, start_record(case_record(0.1, 0, 10, cases, data), "", 3))
    write_run_record(tmp_path, start_record(case_record(0.1, 0, 10, cases, data), "", 3))
    check_resume_matches(tmp_path, case_record(0.1, 0, 10, cases, data))
    with pytest.raises(ValueError, match=r"label_fraction differ"):
        check_resume_matches(tmp_path, start_record(case_record(0.2, 0, 10, cases, data), "", 3))


def test_a_resume_keeps_the_training_seed_and_encoder_its_run_recorded(tmp_path):
    """A resume with another --seed (or --pretrained) rewrote the record with it, though the run continues from its
    checkpoint's weights and random state; a resume into a folder with no checkpoint is a fresh start and records
    its own."""
    write_run_record(tmp_path, start_record(case_record(0.1, 0, 10, []), "/m/encoder.pt", 3))
    resumed = start_record(case_record(0.1, 0, 10, []), "", 7, resumed=tmp_path)
    assert (resumed["training_seed"], resumed["pretrained"]["path"]) == (7, "")  # no checkpoint: a fresh start
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"")
    resumed = start_record(case_record(0.1, 0, 10, []), "", 7, resumed=tmp_path)
    assert (resumed["training_seed"], resumed["pretrained"]["path"]) == (3, "/m/encoder.pt")
    assert start_record(case_record(0.1, 0, 10, []), "", 7)["training_seed"] == 7  # not a resume
    write_run_record(tmp_path, case_record(0.1, 0, 10, []))  # recorded before these keys: they stay unrecorded
    resumed = start_record(case_record(0.1, 0, 10, []), "", 7, resumed=tmp_path)
    assert "training_seed" not in resumed and "pretrained" not in resumed


def test_a_resume_given_another_encoder_says_it_continues_the_checkpoint(tmp_path, caplog):
    """A resume given a --pretrained file of other content (SHA-256) than its run started from was accepted in
    silence, logging 'loaded 34/34 pre-trained encoder tensors from <new file>' and 'encoder loaded from <new file>'
    while it continued the checkpoint's weights. Now one warning names both files and says so; the network is
    built from the file's architecture without loading its weights, and the run line names the checkpoint. The same
    content at another path, and a fresh start, say nothing."""
    import logging

    from medgmae.finetune import build_unetr
    from medgmae.finetune.run_line import FinetuneRunLine, finetune_run_line

    enc = encoder_file(tmp_path / "encoder.pt")
    other = torch.load(enc, weights_only=True)
    other["state_dict"] = {k: v + 1.0 for k, v in other["state_dict"].items()}
    torch.save(other, tmp_path / "other.pt")
    (tmp_path / "copy.pt").write_bytes(enc.read_bytes())
    run = tmp_path / "run"
    run.mkdir()
    write_run_record(run, start_record(case_record(0.1, 0, 10, []), enc, 3))
    (run / "checkpoint_epoch=1.pt").write_bytes(b"")
    with caplog.at_level(logging.INFO, logger="medgmae"):
        start_record(case_record(0.1, 0, 10, []), tmp_path / "copy.pt", 3, resumed=run)
        assert "WARNING" not in [r.levelname for r in caplog.records]
        resumed = start_record(case_record(0.1, 0, 10, []), tmp_path / "other.pt", 3, resumed=run)
        net = build_unetr(2, 24, tmp_path / "other.pt", resume_dir=run)
        fresh = build_unetr(2, 24, tmp_path / "other.pt", resume_dir=tmp_path)  # no checkpoint there: loaded
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    digest = hashlib.sha256(enc.read_bytes()).hexdigest()
    assert len(warned) == 1 and f"--pretrained {tmp_path / 'other.pt'} (SHA-256 " in warned[0], warned
    assert f"not the encoder this run started from, {enc} (SHA-256 {digest[:12]})" in warned[0]
    assert f"continues the weights of {run / 'checkpoint_epoch=1.pt'} and does not use the given file" in warned[0]
    assert resumed["pretrained"]["sha256"] == digest
    loaded = [r.getMessage() for r in caplog.records if "pre-trained encoder tensors from" in r.getMessage()]
    assert len(loaded) == 1  # the fresh start's alone
    state, kept = net.vit.state_dict(), other["state_dict"]
    assert not any(torch.equal(state[k], kept[k]) for k in kept if k in state and kept[k].numel() > 1)
    assert all(torch.equal(fresh.vit.state_dict()[k], kept[k]) for k in kept if k in fresh.vit.state_dict())
    assert FinetuneRunLine(str(tmp_path / "other.pt"), resume_dir=run).resumed == run / "checkpoint_epoch=1.pt"
    assert FinetuneRunLine(str(tmp_path / "other.pt"), resume_dir=None).resumed is None
    line = finetune_run_line(net, torch.optim.AdamW(net.parameters()), "cpu", False, tmp_path / "other.pt",
                             resumed=run / "checkpoint_epoch=1.pt")
    assert f"encoder continued from {run / 'checkpoint_epoch=1.pt'}, fine-tuned" in line and "loaded from" not in line


def test_a_bundle_run_records_its_encoder_and_training_seed(tmp_path, capsys):
    """... and what else decides its weights: the loader workers (one here; phantom runs default to none), the
    software, the encoder file's content; the start line states the seed."""
    encoder = encoder_file(tmp_path / "encoder.pt")
    out = tmp_path / "run"
    proc = run_bundle("training", "train.json", "--output_dir", str(out), "--device", "cpu", "--feature_size", "4",
                      "--phantom_shape", "[32, 32, 24]", "--phantom_cases", "3", "--num_samples", "1", "--max_epochs", "1",
                      "--pretrained", str(encoder), "--seed", "3", "--subset_seed", "0", "--progress_bar", "false",
                      "--num_workers", "1")  # fmt: skip
    record = read_run_record(out)
    assert (record["training_seed"], record["seed"], record["num_workers"]) == (3, 0, 1)
    assert record["pretrained"] == {"path": str(encoder.resolve()), "kind": "medgmae-encoder", "source": "",
                                    "sha256": hashlib.sha256(encoder.read_bytes()).hexdigest()}  # fmt: skip
    assert record["software"]["packages"]["torch"] == torch.__version__
    assert re.search(r"fine-tuning runs on cpu, .*, global batch 1 crop per step \(1 process x 1 volume x 1 crop\), "
                     r"seed 3\n", proc.stdout + proc.stderr)  # fmt: skip
    assert record["preprocessing"] == torch.load(out / "best_model.pt", weights_only=True, mmap=True)["preprocessing"]
    assert main([str(out), "--per-class"]) == 0
    row = capsys.readouterr().out.splitlines()[2].split(" | ")
    assert row[1:4] == ["medgmae-encoder", str(encoder.resolve()), "1.0000"] and row[6:9] == ["3", "0", "1"]
    best = torch.load(out / "best_model.pt", weights_only=True, mmap=True)["extra"]["metric"]
    metrics = json.loads((out / "validation" / "metrics.json").read_text(encoding="utf-8"))
    assert row[9] == f"{best:.4f}" and row[11] == f"{metrics['mean_dice']:.4f}"
    assert metrics["software"]["packages"]["torch"] == torch.__version__


def test_the_run_record_holds_the_preprocessing_a_resume_keeps(tmp_path):
    from medgmae.preprocessing import PreprocessingSpec

    record = case_record(1.0, 0, 2, [{"image": "a", "label": "b"}])
    started = start_record(record, "", 4, preprocessing=PreprocessingSpec.from_dict(_COARSE))
    assert started["preprocessing"] == _COARSE
    assert "preprocessing" not in start_record(record, "", 4)
    write_run_record(tmp_path, started)
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"")
    resumed = start_record(record, "", 9, tmp_path, preprocessing=PreprocessingSpec.from_dict(_FINE))
    assert (resumed["preprocessing"], resumed["training_seed"]) == (_COARSE, 4)
    with pytest.raises(TypeError, match="preprocessing must be a PreprocessingSpec"):
        start_record(record, "", 4, preprocessing=_COARSE)
