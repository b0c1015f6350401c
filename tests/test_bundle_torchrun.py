"""Bundle configs started the wrong way: one-process configs under torchrun, the multi-GPU config alone or first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from medgmae.bundle_checks import BundleSettingError, check_settings

from bundle_helpers import REPO, BUNDLES


def test_a_config_started_the_wrong_way_is_refused(monkeypatch):
    """A one-process config under torchrun (each process would run the whole job and remove the others' outputs
    as an earlier run's) and a multi-process config without torchrun (no process group to join) are settings
    problems, named with the config to add or the launcher to use."""
    from medgmae.bundle_checks import process_problems

    for var in ("WORLD_SIZE", "RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    assert process_problems(False) == [] and check_settings({}) is True
    assert "is started by torchrun" in process_problems(True)[0]
    monkeypatch.setenv("WORLD_SIZE", "2")  # exported by a job environment, one process started: not refused
    assert process_problems(False) == []
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    assert process_problems(False) == [] and process_problems(True) == []  # torchrun --nproc_per_node 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert process_problems(True) == []
    with pytest.raises(BundleSettingError) as e:
        check_settings({}, multi_gpu_config="bundles/x/configs/multi_gpu_train.json")
    assert "torchrun runs 2 processes (WORLD_SIZE=2) but this config runs in one" in str(e.value)
    assert f"list {REPO}/bundles/x/configs/multi_gpu_train.json after {REPO}/bundles/x/configs/train.json" in str(e.value)
    assert "without torchrun" in process_problems(False)[0]


@pytest.mark.parametrize("bundle", ["medgmae_pretrain", "unetr_finetune"])
def test_the_multi_gpu_config_suggested_under_torchrun_is_the_given_configs_sibling(tmp_path, monkeypatch, bundle):
    """A one-process config started by torchrun from another folder is refused naming its multi-process sibling by
    a path that works from that folder (the one given, relative or absolute), in a command that can be pasted."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for var, value in (("TORCHELASTIC_RUN_ID", "none"), ("WORLD_SIZE", "2"), ("RANK", "0")):
        monkeypatch.setenv(var, value)
    runner = "/env/lib/python3.11/site-packages/monai/bundle/__main__.py"
    configs = BUNDLES / bundle / "configs"
    for given in (os.path.relpath(configs / "train.json"), str(configs / "train.json")):
        multi = str(Path(given).parent / "multi_gpu_train.json")
        monkeypatch.setattr(sys, "argv", [runner, "run", "training", "--config_file", given])
        with pytest.raises(BundleSettingError) as e:
            check_settings({}, multi_gpu_config=f"bundles/{bundle}/configs/multi_gpu_train.json")
        assert f"list {multi} after {given} in --config_file" in str(e.value), str(e.value)
        assert f"""--config_file "['{given}','{multi}']\"""" in str(e.value) and Path(multi).is_file()


def test_the_multi_gpu_config_named_first_is_refused_with_the_command_listing_it_after_train(tmp_path, monkeypatch):
    """Its ``initialize`` starts with :func:`check_base_config`: given alone or first, the config is refused in one
    line naming it and the command that lists it after its train.json; after train.json it passes."""
    from medgmae.bundle_checks import check_base_config

    monkeypatch.chdir(tmp_path)
    for var in ("WORLD_SIZE", "RANK", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    runner = "/env/lib/python3.11/site-packages/monai/bundle/__main__.py"
    configs = Path(os.path.relpath(BUNDLES / "unetr_finetune" / "configs"))
    one, multi = str(configs / "train.json"), str(configs / "multi_gpu_train.json")
    for files in (multi, f"['{multi}','{one}']"):
        monkeypatch.setattr(sys, "argv", [runner, "run", "training", "--config_file", files])
        with pytest.raises(BundleSettingError) as e:
            check_base_config("train.json", "multi_gpu_train.json")
        assert len(str(e.value).splitlines()) == 1
        assert f"--config_file: {multi} adds multi-GPU training to train.json and does not run alone" in str(e.value)
        assert f"""--config_file "['{one}','{multi}']" ...`; nothing was written""" in str(e.value)
    monkeypatch.setattr(sys, "argv", [runner, "run", "training", "--config_file", f"['{one}','{multi}']"])
    assert check_base_config("train.json", "multi_gpu_train.json") is True
    monkeypatch.setattr(sys, "argv", ["/usr/bin/pytest"])  # not the bundle runner: nothing to check
    assert check_base_config() is True


def test_a_multi_gpu_config_listed_before_train_is_refused_by_train_json_first(tmp_path, folder_state):
    """Listed before train.json, the multi-GPU config's settings (its first check included) are replaced by
    train.json's, as MONAI merges in order: without torchrun the run trained in one process and then failed on a
    name only the multi-GPU config imports, its outputs written. train.json's own first check now refuses it in
    one line naming the command that lists it after train.json, before anything is written."""
    configs = BUNDLES / "medgmae_pretrain" / "configs"
    one, multi = configs / "train.json", configs / "multi_gpu_train.json"
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "TORCHELASTIC_RUN_ID")}
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", f"['{multi}','{one}']",
           "--output_dir", str(out), "--device", "cpu", "--max_epochs", "1"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode != 0
    line = (f"--config_file: {multi} adds multi-GPU training to train.json and does not run alone or before it: list "
            f"it after {one} in --config_file, `torchrun --standalone --nproc_per_node N -m monai.bundle run training "
            f"--config_file \"['{one}','{multi}']\" ...`")  # fmt: skip
    last = proc.stderr.strip().splitlines()[-2:]
    assert last == ["error: BundleSettingError: 1 bad setting, nothing was written:", f"  {line}"], proc.stderr[-3000:]
    assert not out.exists() and "NameError" not in proc.stderr


@pytest.mark.parametrize("bundle", ["medgmae_pretrain", "unetr_finetune"])
def test_a_multi_gpu_config_given_alone_under_torchrun_says_to_list_it_after_train(tmp_path, bundle):
    """``--config_file multi_gpu_train.json`` alone failed in MONAI's merge of its ``train#sampler`` key (a
    KeyError traceback on each rank): both ranks now stop on the one-line refusal, non-zero, nothing written."""
    out = tmp_path / "run"
    multi = BUNDLES / bundle / "configs" / "multi_gpu_train.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "monai.bundle",
           "run", "training", "--config_file", str(multi), "--output_dir", str(out), "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    line = (f"error: BundleSettingError: --config_file: {multi} adds multi-GPU training to train.json and does not "
            f"run alone or before it: list it after {multi.with_name('train.json')} in --config_file, `torchrun --standalone "
            f"--nproc_per_node 2 -m monai.bundle run training --config_file \"['{multi.with_name('train.json')}',"
            f"'{multi}']\" ...`; nothing was written")  # fmt: skip
    assert line in proc.stderr.splitlines(), proc.stderr[-3000:]
    assert "rank 1 stopped: BundleSettingError: --config_file:" in proc.stderr
    assert "KeyError" not in proc.stderr and not out.exists()


def test_torchrun_of_a_one_process_bundle_writes_nothing(tmp_path):
    """Two processes started by torchrun on a bundle without multi-process training (2D GMAE) both stop at the
    settings check, with a non-zero exit, before either makes its output folder."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "monai.bundle",
           "run", "training", "--config_file", str(BUNDLES / "gmae2d_pretrain" / "configs" / "train.json"),
           "--output_dir", str(out), "--device", "cpu"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode != 0
    assert "torchrun runs 2 processes (WORLD_SIZE=2) but this config runs in one" in proc.stderr, proc.stderr[-3000:]
    assert not out.exists()
