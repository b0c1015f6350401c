"""Resuming a fine-tuning run: refused changes of data, label fraction, batch size or phantoms name the setting and
write nothing; the recorded data are the default of evaluation."""

from __future__ import annotations

import json
import os

import pytest

from medgmae.finetune.data import evaluation_cases, prepare_datalists, select_label_fraction
from medgmae.data.datalist import DatasetError
from medgmae.finetune.run_record import write_run_record

from finetune_helpers import CONFIGS, FIRST_EPOCH, make_case, two_case_datalist, bundle_process, flag_map, run_bundle


def test_resume_with_other_label_fraction_is_refused(tmp_path):
    dl, out = two_case_datalist(tmp_path), tmp_path / "run"
    first = prepare_datalists(str(tmp_path), str(dl), out, label_fraction=0.5)
    write_run_record(out, first["record"])
    recorded = (out / "training_cases.json").read_text(encoding="utf-8")
    # stopped before its first epoch checkpoint (e.g. a failure in epoch 1): nothing trained, nothing binds a resume
    assert len(prepare_datalists(str(tmp_path), str(dl), out, label_fraction=1.0, resume=True)["training"]) == 2
    (out / "checkpoint_epoch=1.pt").write_bytes(b"")  # only its name is read here
    with pytest.raises(DatasetError) as e:
        prepare_datalists(str(tmp_path), str(dl), out, label_fraction=1.0, resume=True)
    message = str(e.value)
    assert "1 of 2 training cases (label_fraction 0.5" in message and "2 of 2 training cases (label_fraction 1.0" in message
    assert "--label_fraction 0.5" in message and "--output_dir" in message
    assert (out / "training_cases.json").read_text(encoding="utf-8") == recorded  # the record is kept
    again = prepare_datalists(str(tmp_path), str(dl), out, label_fraction=0.5, resume=True)
    assert again["training"] == first["training"]
    prepare_datalists(str(tmp_path), str(dl), out, label_fraction=1.0)  # a fresh start may change it


def test_a_moved_phantom_run_resumes_and_moved_data_are_named(tmp_path):
    """A phantom run folder moved or copied elsewhere resumes (its generated cases moved with it); a datalist whose
    cases moved is refused with the first differing case named, as the two choices otherwise read alike."""
    from medgmae.finetune.run_record import case_record, check_resume_matches

    def cases(root):
        return [{"image": f"{root}/phantom/imagesTr/case_{i}.nii.gz", "label": f"{root}/phantom/labelsTr/case_{i}.nii.gz"}
                for i in range(2)]  # fmt: skip

    out = tmp_path / "moved"
    write_run_record(out, case_record(1.0, 0, 2, cases("/old/run"), {"dataset_dir": "", "datalist": ""}))
    (out / "checkpoint_epoch=1.pt").write_bytes(b"")
    check_resume_matches(out, case_record(1.0, 0, 2, cases(str(out)), {"dataset_dir": "", "datalist": ""}))  # resumes
    data = {"dataset_dir": "/data/btcv", "datalist": "/data/btcv/dataset.json"}
    write_run_record(out, case_record(1.0, 0, 2, cases("/data/btcv"), data))
    with pytest.raises(DatasetError, match=r"\(cases differ; e.g. recorded /data/btcv/phantom/imagesTr/case_0.nii.gz, "
                                           r"now /mnt/btcv/phantom/imagesTr/case_0.nii.gz\)"):  # fmt: skip
        check_resume_matches(out, case_record(1.0, 0, 2, cases("/mnt/btcv"), data))


def test_a_run_on_a_relative_datalist_resumes_however_the_datalist_is_named(tmp_path, monkeypatch):
    """A run started on ``../data/ds/dataset_decathlon.json`` records its cases by absolute path and resumes with
    the datalist named absolutely or from another working folder; a record of the earlier relative form resumes from
    its working folder; other cases are still refused."""
    data, work, out = tmp_path / "data" / "ds", tmp_path / "work", tmp_path / "run"
    cases = [make_case(data / "imagesTr", f"c{i}") for i in range(3)]
    relative = [{k: os.path.relpath(v, data) for k, v in case.items()} for case in cases]
    dl = data / "dataset_decathlon.json"
    dl.write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}, "training": relative[:2],
                              "validation": relative[2:]}))  # fmt: skip
    work.mkdir()
    monkeypatch.chdir(work)
    write_run_record(out, prepare_datalists("", "../data/ds/dataset_decathlon.json", out)["record"])
    (out / "checkpoint_epoch=1.pt").write_bytes(b"")  # only its name is read here
    recorded = json.loads((out / "training_cases.json").read_text(encoding="utf-8"))
    assert [c["image"] for c in recorded["cases"]] == [cases[0]["image"], cases[1]["image"]]  # absolute
    prepare_datalists("", str(dl), out, resume=True)  # named absolutely
    monkeypatch.chdir(data)
    prepare_datalists("", "dataset_decathlon.json", out, resume=True)  # from another working folder
    monkeypatch.chdir(work)  # a record of relative cases, as written before, resumes from its working folder
    old = [{k: os.path.relpath(v, work) for k, v in case.items()} for case in recorded["cases"]]
    (out / "training_cases.json").write_text(json.dumps({**recorded, "cases": old}))
    prepare_datalists("", str(dl), out, resume=True)
    dl.write_text(json.dumps({"labels": {"0": "bg", "1": "a", "2": "b"}, "training": [relative[2], relative[1]],
                              "validation": relative[:1]}))  # fmt: skip
    with pytest.raises(DatasetError, match=r"cases differ; e\.g\. recorded /.*/data/ds/imagesTr/c0_img\.nii\.gz, "
                                           r"now /.*/data/ds/imagesTr/c2_img\.nii\.gz"):  # fmt: skip
        prepare_datalists("", str(dl), out, resume=True)


def test_resume_compares_the_label_fraction_as_a_number(tmp_path):
    """The recorded selection is compared as every resume compares settings (medgmae.settings_diff): a fraction
    written back from JSON or given as 1e-1 is the same setting, another fraction is named."""
    from medgmae.finetune.run_record import case_record, check_resume_matches

    cases = [{"image": "/d/a.nii.gz", "label": "/d/la.nii.gz"}]
    data = {"dataset_dir": "/d", "datalist": ""}
    write_run_record(tmp_path, case_record(0.1, 0, 10, cases, data))
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"")
    check_resume_matches(tmp_path, case_record(0.1 + 1e-12, 0, 10, cases, data))
    check_resume_matches(tmp_path, case_record(1e-1, 0, 10, cases, data))
    with pytest.raises(DatasetError, match=r"\(label_fraction differ\)"):
        check_resume_matches(tmp_path, case_record(0.2, 0, 10, cases, data))


def test_the_subset_seed_keeps_the_cases_across_training_seeds(tmp_path):
    """--subset_seed fixes the labelled subset (recorded as the record's seed) whatever --seed trains with, so a 10 %
    experiment repeats over training seeds on the same cases; without it --seed chooses, as before."""
    cases = [make_case(tmp_path, f"c{i}") for i in range(10)]
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"labels": {"0": "background", "1": "a", "2": "b"}, "training": cases,
                              "validation": cases[:1]}))  # fmt: skip
    picks = {s: prepare_datalists("", str(dl), tmp_path / f"r{s}", label_fraction=0.2, seed=s, subset_seed=7)
             for s in range(4)}  # fmt: skip
    assert all(p["training"] == picks[0]["training"] and p["record"]["seed"] == 7 for p in picks.values())
    own = [prepare_datalists("", str(dl), tmp_path / "own", label_fraction=0.2, seed=s)["training"] for s in range(4)]
    assert any(o != own[0] for o in own) and own[0] == select_label_fraction(cases, 0.2, 0)
    config = json.loads((CONFIGS / "train.json").read_text(encoding="utf-8"))
    assert config["subset_seed"] == "@seed" and "subset_seed=int(@subset_seed)" in config["data"]


def test_evaluation_defaults_to_the_recorded_data(tmp_path):
    dl, out = two_case_datalist(tmp_path), tmp_path / "run"
    write_run_record(out, prepare_datalists(str(tmp_path), str(dl), out)["record"])
    record = json.loads((out / "training_cases.json").read_text(encoding="utf-8"))
    assert record["datalist"] == str(dl.resolve()) and record["dataset_dir"] == str(tmp_path.resolve())
    data = evaluation_cases("", "", out)
    assert data["datalist"] == str(dl.resolve()) and [c["image"] for c in data["cases"]] == [str(tmp_path / "c2_img.nii.gz")]


@pytest.mark.parametrize("damage", ["truncated", "not json", "a list", "datalist a number"])
def test_a_damaged_run_record_is_refused_not_taken_for_a_missing_one(tmp_path, damage):
    """A training_cases.json that is there but does not read as a record is refused, naming it and the way forward:
    evaluation and segmentation do not fall back to the run's phantom datalist, a resume does not continue without
    the recorded encoder and seed. Data given explicitly still evaluate; a missing record keeps the phantom default."""
    from medgmae.finetune.run_record import case_record, start_record

    dl, out = two_case_datalist(tmp_path), tmp_path / "run"
    write_run_record(out, prepare_datalists(str(tmp_path), str(dl), out)["record"])
    phantom = two_case_datalist(out / "phantom").rename(out / "phantom" / "dataset.json")  # a phantom run before it
    (out / "checkpoint_epoch=1.pt").write_bytes(b"")  # only its name is read here
    record = out / "training_cases.json"
    text = record.read_text(encoding="utf-8")
    damaged = {"truncated": text[:50], "not json": "training cases: c0, c1\n", "a list": "[]",
               "datalist a number": json.dumps({**json.loads(text), "datalist": 5})}[damage]  # fmt: skip
    record.write_text(damaged, encoding="utf-8")
    with pytest.raises(DatasetError) as e:
        evaluation_cases("", "", out)
    assert str(record) in str(e.value) and "pass --datalist / --dataset_dir explicitly, or restore the file" in str(e.value)
    assert "\n" not in str(e.value).strip()
    for resume in (lambda: prepare_datalists(str(tmp_path), str(dl), out, resume=True),
                   lambda: start_record(case_record(1.0, 0, 2, []), "", 0, resumed=out)):  # fmt: skip
        with pytest.raises(DatasetError) as e:
            resume()
        assert str(record) in str(e.value) and "--resume false" in str(e.value)
    assert record.read_text(encoding="utf-8") == damaged  # left for the user to restore
    assert evaluation_cases(str(tmp_path), str(dl), out)["datalist"] == str(dl)  # data given: the record is not read
    record.unlink()
    assert evaluation_cases("", "", out)["datalist"] == str(phantom)  # no record: the run's phantom data, as before


def test_resume_with_another_batch_size_writes_nothing(finetune_first_epoch, folder_state):
    """A resume refused because the batch size changed (2 training cases: 2 iterations per epoch at batch size 1,
    1 at batch size 2) stops before training_cases.json or a TensorBoard event file is written: the run folder is
    byte for byte as it was, and the error names both batch sizes and both epoch lengths."""
    out = finetune_first_epoch  # one epoch at batch size 1 (finetune_helpers.FIRST_EPOCH)
    common = ["--output_dir", str(out), "--device", "cpu", "--roi_size", "[24, 24, 24]", "--feature_size", "4",
              "--phantom_shape", "[32, 32, 24]", "--phantom_cases", "3", "--num_samples", "1", "--progress_bar", "false"]
    assert flag_map([*common, "--max_epochs", "1", "--batch_size", "1"]) == flag_map([*FIRST_EPOCH, "--output_dir", str(out)])
    assert (out / "training_cases.json").is_file() and len(list((out / "tensorboard").iterdir())) == 1
    before = folder_state(out)
    proc = bundle_process("training", "train.json", *common, "--max_epochs", "2", "--batch_size", "2", "--resume", "true")
    assert proc.returncode != 0
    assert ("after 2 iterations (2 per epoch, batch size 1), but this run has 1 iteration per epoch (batch size 2): "
            "the batch size changed from 1 to 2") in proc.stderr and "--batch_size 1" in proc.stderr, proc.stderr[-3000:]
    assert folder_state(out) == before
    # another decoder width changes weight shapes: named (not a size mismatch of some tensor), nothing written
    changed = common[:]
    changed[changed.index("--feature_size") + 1] = "8"
    proc = bundle_process("training", "train.json", *changed, "--max_epochs", "2", "--batch_size", "1", "--resume", "true")
    summary = proc.stderr.split("\nerror: ")[-1]
    assert proc.returncode != 0 and "UNETR fine-tuning with other settings" in summary, proc.stderr[-3000:]
    assert "model.feature_size: saved 4, now 8" in summary and "size mismatch" not in proc.stderr
    assert folder_state(out) == before
    # another pre-processing (spacing, HU window) or optimiser setting changes no weight shape: named, nothing written
    proc = bundle_process("training", "train.json", *common, "--max_epochs", "2", "--batch_size", "1", "--resume", "true",
                          "--pixdim", "[2.0, 2.0, 2.0]", "--hu_range", "[-100, 200]", "--learning_rate", "0.01",
                          "--freeze_encoder", "true")
    summary = proc.stderr.split("\nerror: ")[-1]
    assert proc.returncode != 0 and "UNETR fine-tuning with other settings" in summary, proc.stderr[-3000:]
    for named in ("preprocessing.spacing: saved [1.5, 1.5, 2.0], now [2.0, 2.0, 2.0]", "preprocessing.hu_window",
                  "optimiser.learning_rate: saved 0.0003, now 0.01", "optimiser.freeze_encoder: saved False, now True"):
        assert named in summary, (named, summary)
    assert "parameter groups" not in proc.stderr and folder_state(out) == before
    # the best model is chosen on the validation cases: a datalist listing other ones is refused, nothing written
    datalist = out / "phantom" / "dataset.json"
    cases = json.loads(datalist.read_text(encoding="utf-8"))
    assert cases["validation"] and cases["validation"] != cases["training"][:1]
    datalist.write_text(json.dumps({**cases, "validation": cases["training"][:1]}))
    before = folder_state(out)
    proc = bundle_process("training", "train.json", *common, "--max_epochs", "2", "--batch_size", "1", "--resume", "true")
    summary = proc.stderr.split("\nerror: ")[-1]
    assert proc.returncode != 0 and "UNETR fine-tuning validated on other data" in summary, proc.stderr[-3000:]
    assert folder_state(out) == before


def test_resume_of_a_finished_run_is_refused_and_writes_nothing(finetune_first_epoch, folder_state):
    """A resume whose checkpoint has already trained --max_epochs epochs has nothing to train: it is refused before
    anything is built, instead of rewriting dice_per_class.md from an empty epoch ("0 cases"), checkpoint_final.pt
    and a new TensorBoard event file. A run stopped in its closing steps resumes to write them."""
    out = finetune_first_epoch  # a one-epoch run (finetune_helpers.FIRST_EPOCH)
    common = ["--output_dir", str(out), "--device", "cpu", "--roi_size", "[24, 24, 24]", "--feature_size", "4",
              "--phantom_shape", "[32, 32, 24]", "--phantom_cases", "3", "--num_samples", "1", "--progress_bar", "false",
              "--max_epochs", "1"]
    assert flag_map([*common, "--batch_size", "1"]) == flag_map([*FIRST_EPOCH, "--output_dir", str(out)])  # 1: the default
    assert (out / "dice_per_class.md").is_file() and (out / "checkpoint_final.pt").is_file()
    before = folder_state(out)
    proc = bundle_process("training", "train.json", *common, "--resume", "true")
    assert proc.returncode != 0
    assert (f"{out / 'checkpoint_epoch=1.pt'} has already trained 1 epoch = --max_epochs 1: nothing to resume; "
            "give a larger --max_epochs to train on") in proc.stderr, proc.stderr[-3000:]
    assert folder_state(out) == before
    # stopped in its closing steps (after checkpoint_epoch=1.pt, before checkpoint_final.pt, its last): a resume
    # trains nothing and writes them from the saved state and the last validation's metrics.json
    table = (out / "dice_per_class.md").read_text(encoding="utf-8")
    (out / "dice_per_class.md").unlink()
    (out / "checkpoint_final.pt").unlink()
    closing = bundle_process("training", "train.json", *common, "--resume", "true")
    assert closing.returncode == 0, closing.stderr[-3000:]
    assert (out / "dice_per_class.md").read_text(encoding="utf-8") == table and (out / "checkpoint_final.pt").is_file()


def test_a_resume_with_other_phantom_settings_leaves_the_runs_phantoms_as_they_were(tmp_path):
    """A resume refused for another --seed first generated the run's phantom data again (other volumes under the
    checkpoint, which evaluation then scored without a word): refused before any phantom is written, naming the
    setting; the same settings resume."""
    from medgmae.data.datalist import DatasetError
    from medgmae.finetune.data import prepare_datalists

    out = tmp_path / "run"
    kw = dict(phantom_cases=4, phantom_shape=(32, 32, 24), phantom_spacing=(4.0, 4.0, 4.0))
    prepare_datalists("", "", out, seed=0, **kw)
    (out / "checkpoint_epoch=1.pt").write_bytes(b"")  # the run has a checkpoint to resume (only its name is read)
    before = {p: p.read_bytes() for p in sorted((out / "phantom").rglob("*")) if p.is_file()}
    with pytest.raises(DatasetError) as refused:
        prepare_datalists("", "", out, seed=1, resume=True, **kw)
    assert f"cannot resume {out}: its checkpoint trained on phantoms generated with other settings" in str(refused.value)
    assert "subset_seed (default: seed): saved 0, now 1" in str(refused.value), refused.value
    assert {p: p.read_bytes() for p in sorted((out / "phantom").rglob("*")) if p.is_file()} == before
    prepare_datalists("", "", out, seed=0, resume=True, **kw)  # the run's own settings resume



def test_a_refused_resume_leaves_the_pre_checks_ledger_as_it_was(finetune_first_epoch, folder_state):
    """A resume refused by its checkpoint (another batch size) after the pre-check read a changed data file again
    rewrote the pre-check's ledger (``cache/precheck.json``) first: the run folder is now byte for byte as it was,
    and a resume that goes on records the file's new time in the ledger."""
    out = finetune_first_epoch  # one epoch at batch size 1 (finetune_helpers.FIRST_EPOCH)
    common = ["--output_dir", str(out), "--device", "cpu", "--roi_size", "[24, 24, 24]", "--feature_size", "4",
              "--phantom_shape", "[32, 32, 24]", "--phantom_cases", "3", "--num_samples", "1", "--progress_bar", "false",
              "--batch_size", "1"]  # fmt: skip
    assert flag_map([*common, "--max_epochs", "1"]) == flag_map([*FIRST_EPOCH, "--output_dir", str(out)])
    ledger = out / "cache" / "precheck.json"
    image = json.loads((out / "phantom" / "dataset.json").read_text(encoding="utf-8"))["training"][0]["image"]
    image = out / "phantom" / image if not os.path.isabs(image) else image
    os.utime(image, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))  # changed: the pre-check reads it again
    assert ledger.is_file() and "1000000000000000000" not in ledger.read_text(encoding="utf-8")
    before = folder_state(out)
    proc = bundle_process("training", "train.json", *common[:-1], "2", "--max_epochs", "2", "--resume", "true")
    assert proc.returncode != 0 and "the batch size changed from 1 to 2" in proc.stderr, proc.stderr[-3000:]
    assert folder_state(out) == before
    run_bundle("training", "train.json", *common, "--max_epochs", "2", "--resume", "true")
    assert "1000000000000000000" in ledger.read_text(encoding="utf-8")


def test_a_damaged_record_stops_evaluation_segmentation_and_resume_of_the_bundle(finetune_first_epoch, folder_state):
    """A run whose training_cases.json was cut short: the bundle's evaluation, segmentation of the run's validation
    cases and resume stop with one line naming the file, and write nothing (evaluation used to score the phantom
    data, a resume to continue and rewrite the record without the run's encoder and seed)."""
    out = finetune_first_epoch  # a one-epoch run (finetune_helpers.FIRST_EPOCH)
    common = ["--output_dir", str(out), "--device", "cpu", "--roi_size", "[24, 24, 24]", "--feature_size", "4",
              "--phantom_shape", "[32, 32, 24]", "--phantom_cases", "3", "--num_samples", "1", "--progress_bar", "false"]
    assert flag_map([*common, "--max_epochs", "1", "--batch_size", "1"]) == flag_map([*FIRST_EPOCH, "--output_dir", str(out)])
    record = out / "training_cases.json"
    record.write_bytes(record.read_bytes()[:50])
    before = folder_state(out)
    for run_id, config, more in (("evaluating", "evaluate.json", []), ("inferring", "inference.json", []),
                                 ("training", "train.json", ["--max_epochs", "2", "--resume", "true"])):  # fmt: skip
        proc = bundle_process(run_id, config, *(common if run_id == "training" else common[:4]), *more)
        error = proc.stderr.split("\nerror: ")[-1].strip()
        assert proc.returncode != 0 and error.startswith("DatasetError: ") and len(error.splitlines()) == 1, proc.stderr[-3000:]
        assert f"{record}: the run record is not valid JSON" in error
        assert ("--resume false" if run_id == "training" else "pass --datalist / --dataset_dir explicitly") in error
        assert folder_state(out) == before  # no eval/, no segmentations/, no new checkpoint or record
