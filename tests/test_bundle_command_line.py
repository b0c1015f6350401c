"""A bundle's command line: unknown, misspelled and other bundles' keys, YAML argument files, run() keywords."""

from __future__ import annotations

import sys

import pytest

from medgmae.bundle_checks import BundleSettingError, check_settings

from bundle_helpers import BUNDLES, run_bundle, setting_error_text


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
