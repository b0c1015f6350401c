"""A refused resume of the 2D bundles names, for each setting it names, the bundle flag and saved value that resume
the run, quoted so that a POSIX shell passes the value whole (``--window "[-1000.0, 1000.0]"``); every setting the
2D GMAE and GViT records hold has such a flag, and the words a refusal gives do resume a real tiny run."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from gmae2d_helpers import GMAE_TRAIN, GVIT_TRAIN, TINY_GMAE, gmae_parser, train_gmae2d_bundle
from gvit_helpers import TINY, gvit_bundle_command, run_gvit_bundle, shapes_dataset
from monai.bundle import ConfigParser
from resume_flag_helpers import given_words, leaves

from medgmae.engine.records import SettingsRecord, check_flags, resume_flags
from medgmae.engine.resume_words import unflagged
from medgmae.mae_training import ModelConfigRecord
from medgmae.twod.gmae import GMAE2D
from medgmae.twod.gvit_phases import RESUME_FLAGS
from medgmae.twod.windows import window_setting

REPO = Path(__file__).resolve().parents[1]


def _chain(e: BaseException) -> str:
    """The messages of an exception and its causes, one text."""
    texts = []
    while e is not None:
        texts.append(str(e))
        e = e.__cause__ or e.__context__
    return "\n".join(texts)


def _top_level_flag(flag: str, config: dict, network: type) -> bool:
    """Whether a bundle takes ``flag``: a top-level key of its config, or ``network_def#<argument>`` of its network."""
    if flag.startswith("network_def#"):
        return flag.removeprefix("network_def#") in inspect.signature(network.__init__).parameters
    return flag in config


def test_the_flag_words_are_quoted_as_the_shell_must_read_them():
    """Each value comes back whole from a POSIX shell (``sh``), as the bundle reads it: a list
    as the list, text with a space or a quote as it was, an empty text as empty; plain values stay unquoted."""
    saved = {"window": [-1000.0, 1000.0], "dataset_dir": '/data/my "ct" $x', "flip": True, "note": "", "none": None}
    flags = {k: k for k in saved}
    words = resume_flags(flags, [f"{k}: saved ..., now ..." for k in saved], saved)
    assert words[0] == '--window "[-1000.0, 1000.0]"' and words[2] == "--flip true" and words[4] == "--none null"
    said = subprocess.run(["sh", "-c", "printf '%s\\0' " + " ".join(words)], capture_output=True, text=True, check=True)
    split = dict(zip(*[iter(said.stdout.split("\0")[:-1])] * 2))  # the words as a POSIX shell hands them over
    assert window_setting(split["--window"]) == (-1000.0, 1000.0)
    assert split["--dataset_dir"] == '/data/my "ct" $x' and split["--note"] == "" and split["--none"] == "null"
    # a size per axis given by one flag: the side when all are equal; sizes that differ as the quoted list where the
    # flag takes one ("side"), else no words but the reason (the 2D bundles' "edge" flags take one number only)
    sides = {"img_size": ("image_size", "edge"), "patch_size": ["patch_size", "edge"]}
    diff = ["img_size: saved [32, 32], now [16, 16]", "patch_size: saved [8, 4], now [4, 4]"]
    sizes = {"img_size": [32, 32], "patch_size": [8, 4]}
    assert resume_flags(sides, diff, sizes) == ["--image_size 32"]
    assert unflagged(sides, diff, sizes) == {"patch_size": "--patch_size takes one size for every side"}
    assert resume_flags({**sides, "patch_size": ["patch_size", "side"]}, diff, sizes) == ["--image_size 32", '--patch_size "[8, 4]"']
    assert unflagged({"img_size": "image_size"}, diff, sizes) == {"patch_size": ""}  # no flag at all
    # only the settings the refusal names, each flag once
    assert resume_flags({"a": "x", "b": "x", "c": "c"}, ["a: saved 1, now 2", "b: saved 1, now 3"], {"a": 1, "b": 1, "c": 5}) == ["--x 1"]
    for bad in ({"a": 3}, {"a": ["x", "cube"]}, ["a"]):
        with pytest.raises(ValueError, match="flag"):
            check_flags(bad)
    with pytest.raises(ValueError, match="flag"):
        SettingsRecord({"a": 1}, flags={"a": ("x", "y", "z")})


def test_a_model_configuration_refusal_names_the_flags_of_the_saved_fields():
    """ModelConfigRecord given flags names them with the saved values (the sizes as the one side the flag takes);
    without flags its message is as before."""
    small = GMAE2D(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4)
    saved = GMAE2D(img_size=32, patch_size=8, model_size="tiny", num_gaussians=8)
    flags = {"img_size": ["image_size", "side"], "num_gaussians": "num_gaussians", "patch_size": ["patch_size", "side"]}
    with pytest.raises(ValueError) as refused:
        ModelConfigRecord(small, flags=flags).load_state_dict(ModelConfigRecord(saved).state_dict())
    assert "img_size: saved [32, 32], now [16, 16]" in str(refused.value)
    assert "Resume with the saved settings (here --image_size 32 --num_gaussians 8) or" in str(refused.value)
    with pytest.raises(ValueError, match=r"Resume with the saved settings or train"):
        ModelConfigRecord(small).load_state_dict(ModelConfigRecord(saved).state_dict())
    # sides that differ, which the bundle's --image_size (one number) cannot give: said, not offered as a word
    wide = GMAE2D(img_size=(32, 48), patch_size=8, model_size="tiny", num_gaussians=8)
    edges = {**flags, "img_size": ["image_size", "edge"]}
    with pytest.raises(ValueError) as refused:
        ModelConfigRecord(small, flags=edges).load_state_dict(ModelConfigRecord(wide).state_dict())
    assert ("Resume with the saved settings (here --num_gaussians 8); no flag gives img_size (--image_size takes one "
            "size for every side): give it as the interrupted run did or train") in str(refused.value), refused.value


def test_every_setting_the_2d_records_hold_has_a_flag_the_bundle_takes(tmp_path):
    """The 2D GMAE's settings and model records and GViT's phase records, as the bundles build them: each setting
    has a flag, and each flag is one the bundle takes (a top-level key, or an argument of its network for
    ``network_def#...``); GViT's channels and classes alone have none (the data give them)."""
    gmae = gmae_parser(tmp_path, dataset_dir="")
    settings, config = gmae.get_parsed_content("resume_records#settings"), gmae.get_parsed_content("resume_records#config")
    assert leaves(settings.settings) == set(settings.flags)
    assert set(config.state_dict()["config"]) == set(config.flags)
    raw = json.loads(Path(GMAE_TRAIN).read_text(encoding="utf-8"))
    for flag in [*settings.flags.values(), *config.flags.values()]:
        assert _top_level_flag(flag if isinstance(flag, str) else flag[0], raw, GMAE2D), flag

    from medgmae.twod.gvit import GViT

    parser = ConfigParser()
    parser.read_config(GVIT_TRAIN)
    parser.update({"output_dir": str(tmp_path / "gvit"), "dataset_dir": str(shapes_dataset(tmp_path / "shapes")),
                   "window": [-500, 500], "device": "cpu", "image_size": 16, "patch_size": 4, "num_gaussians": 4})  # fmt: skip
    recorded = leaves(parser.get_parsed_content("workflow").settings("joint"))
    assert recorded - set(RESUME_FLAGS) == {"model.in_channels", "model.num_classes"}
    raw = json.loads(Path(GVIT_TRAIN).read_text(encoding="utf-8"))
    for flag in RESUME_FLAGS.values():
        assert _top_level_flag(flag if isinstance(flag, str) else flag[0], raw, GViT), flag


def test_a_2d_gmae_resume_names_the_window_and_model_flags_and_their_words_resume(tmp_path, folder_state):
    """A run trained with --window "[-1000, 1000]" resumed without it (and with another model and optimiser) is
    refused naming each setting's flag and saved value, the window quoted; those words, as the shell splits them,
    given to the command line in place of the changed settings, resume the run on the saved window."""
    out = tmp_path / "run"
    train_gmae2d_bundle(out, max_epochs=1, window="[-1000, 1000]")
    before = folder_state(out)
    changed = {"max_epochs": 2, "resume": True, "num_gaussians": 16, "patch_size": 4, "learning_rate": 0.001}
    with pytest.raises(Exception) as info:
        train_gmae2d_bundle(out, **changed)
    message = _chain(info.value)
    assert "window: saved [-1000.0, 1000.0], now [-350.0, 400.0]" in message, message
    assert '--window "[-1000.0, 1000.0]"' in message and "--learning_rate 0.0005" in message, message
    assert "num_gaussians: saved 32, now 16" in message and "(here --patch_size 8 --num_gaussians 32)" in message, message
    assert folder_state(out) == before
    given = given_words(message)
    assert given == {"num_gaussians": "32", "patch_size": "8", "window": "[-1000.0, 1000.0]", "learning_rate": "0.0005"}

    settings = {**TINY_GMAE, **changed, **given}
    args = [w for k, v in settings.items() for w in (f"--{k}", str(v))]
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", GMAE_TRAIN, "--output_dir", str(out), *args]
    resumed = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", cwd=REPO, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    model = torch.load(out / "model.pt", weights_only=True)
    assert model["extra"]["data"]["window"] == [-1000.0, 1000.0] and model["config"]["num_gaussians"] == 32
    assert (out / "checkpoint_epoch=2.pt").is_file()


def test_a_gvit_resume_names_the_window_and_model_flags_and_their_words_resume(tmp_path, folder_state):
    """A GViT run on a folder of pictures trained with a window, resumed without it and with another model, rate,
    loss and guidance, is refused naming each flag and saved value (every phase that records the setting); those
    words given to the command line in place of the changed settings resume it."""
    out, shapes = tmp_path / "run", shapes_dataset(tmp_path / "shapes")
    base = {**TINY, "num_explanations": 0, "dataset_dir": str(shapes)}
    run_gvit_bundle("train.json", output_dir=str(out), window="[-500, 500]", **base)
    before = folder_state(out)
    changed = {"resume": True, "num_gaussians": 8, "patch_size": 8, "learning_rate": 0.01, "pixel_loss": "mse", "gamma": 0.05}
    with pytest.raises(Exception) as info:
        run_gvit_bundle("train.json", output_dir=str(out), **{**base, **changed})
    message = _chain(info.value)
    assert "data.window: saved [-500.0, 500.0], now None" in message and '--window "[-500.0, 500.0]"' in message, message
    for words in ("--num_gaussians 12", "--patch_size 4", "--learning_rate 0.001", "--pixel_loss bce", "--gamma 0.1"):
        assert words in message, (words, message)
    assert folder_state(out) == before
    given = given_words(message)
    assert given == {"num_gaussians": "12", "patch_size": "4", "window": "[-500.0, 500.0]", "learning_rate": "0.001",
                     "pixel_loss": "bce", "gamma": "0.1"}  # fmt: skip

    args = [w for k, v in {**base, **changed, **given}.items() for w in (f"--{k}", str(v))]
    resumed = gvit_bundle_command("train.json", "--output_dir", str(out), *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    model = torch.load(out / "model.pt", weights_only=True)
    assert model["extra"]["data"]["window"] == [-500.0, 500.0] and model["config"]["num_gaussians"] == 12


@pytest.mark.parametrize("text, expected", [("false", False), ("true", True), ("False", False), ("0", False)])
def test_a_true_false_network_flag_given_as_text_is_read_as_the_word_says(tmp_path, text, expected):
    """``--network_def#loss_on_all_pixels false`` reaches the network as the text ``'false'`` (the bundle command
    line hands the word on as it is, which a refusal's own words give): the network reads it as False, not as the
    non-empty text bool() takes for True, so the words a refusal gives for a saved False resume the run."""
    parser = gmae_parser(tmp_path, **{"network_def#loss_on_all_pixels": text})
    assert parser.get_parsed_content("network_def").loss_on_all_pixels is expected
