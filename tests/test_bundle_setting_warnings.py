"""A bundle's warnings about settings that do nothing, and its refusal of output folders with unexpanded tildes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from medgmae.bundle_checks import BundleSettingError, check_settings


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
