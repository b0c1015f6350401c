"""A bundle's command line: unknown and misspelled keys, YAML argument files, configs started the wrong way (and
the multi-GPU config's place), warnings about settings that do nothing, unexpanded tildes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medgmae.bundle_checks import BundleSettingError, check_settings

from bundle_helpers import REPO, BUNDLES, run_bundle, setting_error_text


def test_unknown_keys_of_a_bundle_command_line(tmp_path, monkeypatch):
    """A misspelled key was added by MONAI as a new, unread setting: the run went on with the default."""
    from medgmae.bundle_checks import unknown_key_problems

    config = tmp_path / "train.json"
    config.write_text('{"max_epochs": 2, "batch_size": 1, "train": {"handlers": []}}')
    runner = "/env/lib/python3.11/site-packages/monai/bundle/__main__.py"
    argv = [runner, "run", "training", "--config_file", str(config), "--logging_file", "l.conf", "--max_epoch", "5",
            "--batch-size=2", "--train#handlers", "[]", "--nonsense"]  # fmt: skip
    assert unknown_key_problems(argv) == [
        "--max_epoch: not a setting of train.json (did you mean --max_epochs?)",
        "--nonsense: not a setting of train.json",
    ]
    # nested overrides, part by part: an argument the _target_ takes passes (listed or not), one it does not take, or
    # a key of a plain mapping, does not; a component taking **kwargs, or one that cannot be found, takes anything;
    # parts past a list or a reference are MONAI's to check; keys a later config file adds count (MONAI's merge)
    config.write_text('{"net": {"_target_": "torch.nn.Linear", "in_features": 8, "out_features": 1}, "opts": {"lr": 1},'
                      ' "kw": {"_target_": "medgmae.mae_training.build_model", "num_gaussians": 8},'
                      ' "odd": {"_target_": "x.Net"}, "broken": {"_target_": "broken_module_for_test.Net"},'
                      ' "train": {"handlers": [{"a": 1}]}, "model": "@net"}')  # fmt: skip
    (tmp_path / "broken_module_for_test.py").write_text("raise ImportError('an optional dependency is missing')\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # a component whose module fails to import: MONAI reports it
    extra = tmp_path / "extra.json"
    extra.write_text('{"net#note": null}')
    argv = [runner, "run", "--config_file", f"['{config}','{extra}']", "--net#in_featurs", "4", "--net#bias", "false",
            "--net#dropout", "0.1", "--opts#momentum", "0.9", "--train#handlers#0#b", "2", "--model#x", "1",
            "--kw#anything", "1", "--kw#num_gausians", "4", "--odd#whatever", "1", "--broken#whatever", "1",
            "--net#note", "x", "--net#out_features", "2"]  # fmt: skip
    assert unknown_key_problems(argv) == [
        "--net#in_featurs: 'in_featurs' is not a key of net (did you mean net#in_features?)",
        "--net#dropout: 'dropout' is not a key of net",
        "--opts#momentum: 'momentum' is not a key of opts",
        "--kw#num_gausians: 'num_gausians' is not a key of kw (did you mean kw#num_gaussians?)",  # **kwargs: a typo
    ]
    config.write_text('{"max_epochs": 2, "batch_size": 1, "train": {"handlers": []}}')
    listed = f"['{config}','{config}']"
    assert unknown_key_problems([runner, "run", "--config_file", listed, "--batch_size", "4"]) == []
    assert unknown_key_problems(["/usr/bin/pytest", "--max_epoch", "5"]) == []  # not the bundle runner: no opinion
    # other tools' names, too far from ours for a spelling match; an alias of a key the bundle lacks gets no hint
    config.write_text('{"learning_rate": 1e-4, "max_epochs": 2, "output_dir": "runs"}')
    assert unknown_key_problems([runner, "run", "--config_file", str(config), "--lr", "1e-3", "--epochs", "3", "--bs", "2"]) == [
        "--lr: not a setting of train.json (did you mean --learning_rate?)",
        "--epochs: not a setting of train.json (did you mean --max_epochs?)",
        "--bs: not a setting of train.json",
    ]
    # the phantom count is num_phantoms in three bundles, phantom_cases in fine-tuning: each is pointed to the other
    config.write_text('{"phantom_cases": 4, "phantom_shape": [64, 64, 64]}')
    assert unknown_key_problems([runner, "run", "--config_file", str(config), "--num_phantoms", "2"]) == [
        "--num_phantoms: not a setting of train.json (did you mean --phantom_cases?)"]


def test_a_misspelled_key_stops_the_bundle_first(tmp_path):
    out = tmp_path / "run"
    proc = run_bundle("training", "gmae2d_pretrain/configs/train.json", "--output_dir", str(out), "--max_epoch", "5")
    error = setting_error_text(proc.stdout + proc.stderr)
    assert proc.returncode != 0 and "--max_epoch: not a setting of train.json (did you mean --max_epochs?)" in error
    assert not out.exists()


def test_a_yaml_args_file_is_read(tmp_path):
    """MONAI reads ``--args_file overrides.yaml`` with PyYAML, a dependency of the toolkit: its values reach the
    settings check (a bad one is refused as from the command line, nothing written)."""
    args = tmp_path / "overrides.yaml"
    args.write_text(f"output_dir: {tmp_path / 'run'}\nmax_epochs: -3\n")
    proc = run_bundle("training", "gmae2d_pretrain/configs/train.json", "--args_file", str(args))
    assert proc.returncode != 0 and "--max_epochs: expected a positive integer, got '-3'" in proc.stdout + proc.stderr
    assert "No module named 'yaml'" not in proc.stderr and not (tmp_path / "run").exists()


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


def test_a_bad_key_is_named_once_not_again_for_the_defaults_copying_it(tmp_path, monkeypatch):
    """``precheck_workers`` defaults to ``@num_workers`` and ``lr_schedule_epochs`` to ``@max_epochs``: a bad
    ``--num_workers -1`` is that key's problem alone; a key the command line sets itself is still named."""
    config = tmp_path / "train.json"
    config.write_text('{"num_workers": 0, "precheck_workers": "@num_workers", "max_epochs": 2, '
                      '"lr_schedule_epochs": "@max_epochs", "batch_size": 1}')
    runner = "/env/lib/python3.11/site-packages/monai/bundle/__main__.py"
    settings = {"num_workers": (-1, "nonneg_int"), "precheck_workers": (-1, "nonneg_int"),
                "max_epochs": (1.5, "positive_int"), "lr_schedule_epochs": (1.5, "positive_int")}

    for var in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)

    def named(*flags: str) -> list[str]:
        monkeypatch.setattr(sys, "argv", [runner, "run", "training", "--config_file", str(config), *flags])
        with pytest.raises(BundleSettingError) as e:
            check_settings(settings)
        return [line.split(":")[0].strip() for line in str(e.value).splitlines()[1:]]

    assert named("--num_workers", "-1", "--max_epochs", "1.5") == ["--num_workers", "--max_epochs"]
    assert named("--num_workers", "-1", "--precheck_workers", "-1", "--max_epochs", "1.5") == [
        "--num_workers", "--precheck_workers", "--max_epochs"]
    args = tmp_path / "args.json"  # MONAI's --args_file: its keys are set as the command line's are
    args.write_text('{"num_workers": -1, "precheck_workers": -1}')
    assert named("--args_file", str(args), "--max_epochs", "1.5") == ["--num_workers", "--precheck_workers", "--max_epochs"]
    monkeypatch.setattr(sys, "argv", ["/usr/bin/pytest"])  # not the bundle runner: every bad key named
    with pytest.raises(BundleSettingError) as e:
        check_settings(settings)
    assert len(str(e.value).splitlines()) == 5


def test_phantom_settings_given_with_a_dataset_are_warned_about(tmp_path, monkeypatch, caplog):
    """``--num_phantoms 4`` beside ``--dataset_dir`` shapes nothing (the run reads the user's data): MONAI takes it
    silently, the settings check names it; one not given, or given for a phantom run, is not mentioned."""
    config = tmp_path / "train.json"
    config.write_text('{"num_phantoms": 8, "phantom_shape": null, "dataset_dir": ""}')
    runner = "/env/lib/python3.11/site-packages/monai/bundle/__main__.py"
    monkeypatch.setattr(sys, "argv", [runner, "run", "training", "--config_file", str(config), "--dataset_dir", "/d",
                                      "--num_phantoms", "4", "--phantom_shape", "[32,32,32]"])  # fmt: skip
    for var in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    with caplog.at_level("WARNING", logger="medgmae"):
        assert check_settings({}, unused_phantom_keys=["num_phantoms", "phantom_shape", "phantom_spacing"]) is True
        assert check_settings({}, unused_phantom_keys=[]) is True
    said = [r.getMessage() for r in caplog.records]
    assert said == ["--num_phantoms, --phantom_shape: these shape the generated phantom data, which this run does not "
                    "use (it reads the data given): ignored"], said


@pytest.mark.parametrize("config_name", ["train.json", "multi_gpu_train.json"])
def test_gaussian_settings_of_a_voxel_mae_run_are_warned_about(tmp_path, monkeypatch, caplog, config_name):
    """``--model_kind voxel-mae --num_gaussians 64`` trained a voxel-MAE without a word about the Gaussians it does
    not have: the pre-training bundle's settings check (its own expression, evaluated by MONAI) names them."""
    from monai.bundle import ConfigParser

    base = Path(__file__).resolve().parents[1] / "bundles" / "medgmae_pretrain" / "configs"
    files = [str(base / "train.json")] + ([str(base / config_name)] if config_name != "train.json" else [])
    parser = ConfigParser()
    parser.read_config(files)
    for var in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    if config_name != "train.json":
        monkeypatch.setenv("RANK", "0"), monkeypatch.setenv("WORLD_SIZE", "1")
    step = next(i for i, e in enumerate(parser["initialize"]) if "check_settings(" in e)
    runner = "/env/lib/python3.11/site-packages/monai/bundle/__main__.py"
    expected_voxel = ["--num_gaussians: a voxel-mae model has no Gaussians: ignored",
                      "--network_def#scale_cap: a voxel-mae model has no Gaussians: ignored"]  # a component's argument too
    for kind, expected in (("voxel-mae", expected_voxel), ("medgmae", [])):
        parser["model_kind"], parser["num_gaussians"], parser["output_dir"] = kind, 64, str(tmp_path / "run")
        monkeypatch.setattr(sys, "argv", [runner, "run", "training", "--config_file", str(files), "--model_kind", kind,
                                          "--num_gaussians", "64", "--network_def#scale_cap", "0.3"])  # fmt: skip
        caplog.clear()
        with caplog.at_level("WARNING", logger="medgmae"):
            assert parser.get_parsed_content(f"initialize#{step}", lazy=False) is True
        assert [r.getMessage() for r in caplog.records] == expected
    from medgmae.folder_lock import release_folder

    run = tmp_path / "run"  # held for a one-process run (medgmae.folder_lock; multi-process: after the group starts)
    assert (list(run.iterdir()) == []) if config_name == "train.json" else not run.exists()
    release_folder(run)


def test_an_output_folder_with_an_unexpanded_tilde_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    """``--output_dir "~/run"`` (quoted), ``--output_dir=~/run`` or an args file's ``~/run`` reach the bundle as
    written: its writers made a folder called ``~`` under the current one while nibabel wrote into the home folder,
    and the run failed after its work. Such an output folder is named with its expansion; inputs are expanded where
    they are read (``read_volume``, ``load_torch_file``, the datalist and 2D folder readers)."""
    from medgmae.torch_files import load_torch_file

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(sys, "argv", ["/usr/bin/pytest"])
    for var in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BundleSettingError) as e:
        check_settings({}, output_dirs={"output_dir": "~/run", "eval_dir": str(tmp_path / "eval")})
    assert str(e.value).splitlines()[1:] == [
        f"  --output_dir '~/run': starts with '~', which was not expanded (quoted on the command line, or from an "
        f"args file): give the full path, {home / 'run'}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing made, neither ./~ nor the home folder
    home.mkdir()
    torch.save({"x": torch.ones(2)}, home / "w.pt")
    assert torch.equal(load_torch_file("~/w.pt")["x"], torch.ones(2))


@pytest.mark.parametrize("cache_given", [False, True])
def test_folders_made_from_a_refused_output_dir_are_not_named_again(tmp_path, monkeypatch, cache_given):
    """``--output_dir "~/run"`` was refused in three lines, the other two naming ``--cache_dir`` and
    ``--tensorboard_dir``, which the user never set (the config makes them from ``--output_dir``); a folder the
    command line sets is still named."""
    config = str(Path(__file__).resolve().parents[1] / "bundles" / "unetr_finetune" / "configs" / "train.json")
    runner = "/env/lib/python3.11/site-packages/monai/bundle/__main__.py"
    given = ["--cache_dir", "~/run/cache"] if cache_given else []
    monkeypatch.setattr(sys, "argv", [runner, "run", "training", "--config_file", config, "--output_dir", "~/run", *given])
    for var in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    dirs = {"output_dir": "~/run", "tensorboard_dir": "~/run/tensorboard", "cache_dir": "~/run/cache"}
    with pytest.raises(BundleSettingError) as e:
        check_settings({}, output_dirs=dirs)
    named = [line.split()[0] for line in str(e.value).splitlines()[1:]]
    assert named == (["--output_dir", "--cache_dir"] if cache_given else ["--output_dir"])


def test_encoder_settings_of_a_run_from_a_pretrained_encoder_are_warned_about(tmp_path, monkeypatch, caplog):
    """``--pretrained encoder.pt --encoder#hidden_size 768`` fine-tuned the encoder.pt's own architecture without a
    word about the setting it ignores; the fine-tuning bundle's settings check names it (a run from scratch uses
    it)."""
    from monai.bundle import ConfigParser

    config = str(Path(__file__).resolve().parents[1] / "bundles" / "unetr_finetune" / "configs" / "train.json")
    parser = ConfigParser()
    parser.read_config(config)
    for var in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    step = next(i for i, e in enumerate(parser["initialize"]) if "check_settings(" in e)
    runner = "/env/lib/python3.11/site-packages/monai/bundle/__main__.py"
    expected = ["--encoder#hidden_size: the encoder comes from --pretrained, whose file records its architecture: "
                "ignored"]  # fmt: skip
    from finetune_helpers import encoder_file

    encoder = str(encoder_file(tmp_path / "encoder.pt"))
    for pretrained, said in ((encoder, expected), ("", [])):
        parser["pretrained"], parser["output_dir"] = pretrained, str(tmp_path / "run")
        monkeypatch.setattr(sys, "argv", [runner, "run", "training", "--config_file", config, "--pretrained",
                                          pretrained, "--encoder#hidden_size", "768"])  # fmt: skip
        caplog.clear()
        with caplog.at_level("WARNING", logger="medgmae"):
            parser.get_parsed_content(f"initialize#{step}", lazy=False)
        assert [r.getMessage() for r in caplog.records] == said


def test_a_bundle_run_from_python_has_its_keywords_checked_as_flags(tmp_path):
    """``monai.bundle.run(..., max_epoch=1)`` from a notebook: MONAI adds the misspelt key to the config as a new key
    that nothing reads, and the run trained the default 20 epochs. Its keywords are now checked as the command
    line's flags are, before anything is written; the caller's excepthook stays its own."""
    from monai.bundle import run

    hook, out = sys.excepthook, tmp_path / "run"
    with pytest.raises(RuntimeError) as e:  # MONAI wraps a failing config expression
        run("training", config_file=str(BUNDLES / "gmae2d_pretrain/configs/train.json"), output_dir=str(out),
            max_epoch=1, device="cpu")  # fmt: skip
    cause = e.value.__cause__
    assert isinstance(cause, BundleSettingError), repr(e.value)
    assert str(cause) == ("1 bad setting, nothing was written:\n"
                          "  --max_epoch: not a setting of train.json (did you mean --max_epochs?)")  # fmt: skip
    assert not out.exists() and sys.excepthook is hook


def test_another_bundles_settings_are_pointed_to_where_this_one_takes_them():
    """The real bundles' configs: pre-training's HU window is --a_min / --a_max, fine-tuning's --hu_range; fine-tuning
    takes the orientation and patch size from --pretrained (the encoder's own architecture from scratch) and has no
    Gaussians: each gets that note, not a spelling match of an unrelated key (--orientation was pointed to
    --epoch_end_iteration, --patch_size to --batch_size)."""
    from medgmae.bundle_checks import unknown_key_problems

    runner = "/env/lib/python3.11/site-packages/monai/bundle/__main__.py"
    finetune, pretrain = str(BUNDLES / "unetr_finetune/configs/train.json"), str(BUNDLES / "medgmae_pretrain/configs/train.json")
    argv = [runner, "run", "training", "--config_file", finetune, "--a_min", "-1000", "--a_max", "1000", "--orientation",
            "LPS", "--patch_size", "8", "--num_gaussians", "64"]  # fmt: skip
    assert unknown_key_problems(argv) == [
        "--a_min: not a setting of train.json (fine-tuning's HU window is --hu_range [a_min, a_max])",
        "--a_max: not a setting of train.json (fine-tuning's HU window is --hu_range [a_min, a_max])",
        "--orientation: not a setting of train.json (the orientation comes from --pretrained's recorded pre-processing; "
        "RAS from scratch)",
        "--patch_size: not a setting of train.json (the patch size comes from --pretrained's recorded architecture; "
        "--encoder#patch_size from scratch)",
        "--num_gaussians: not a setting of train.json (the Gaussian count is pre-training's decoder setting: fine-tuning "
        "takes only --pretrained's encoder)",
    ]
    assert unknown_key_problems([runner, "run", "training", "--config_file", pretrain, "--hu_range", "[-1000, 1000]"]) == [
        "--hu_range: not a setting of train.json (pre-training's HU window is --a_min and --a_max)"]
    evaluate = str(BUNDLES / "unetr_finetune/configs/evaluate.json")
    assert unknown_key_problems([runner, "run", "evaluating", "--config_file", evaluate, "--orientation", "LPS"]) == [
        "--orientation: not a setting of evaluate.json (the orientation comes from --checkpoint's recorded pre-processing)"]
    gvit = str(BUNDLES / "gvit_classification/configs/inference.json")
    assert unknown_key_problems([runner, "run", "inferring", "--config_file", gvit, "--hu_range", "[-500, 500]", "--a_min",
                                 "-500"]) == [  # fmt: skip
        "--hu_range: not a setting of inference.json (this bundle's intensity window is --window [low, high])",
        "--a_min: not a setting of inference.json (this bundle's intensity window is --window [low, high])"]
