"""A refused resume of the 3D bundles (MedGMAE pre-training, UNETR fine-tuning) names, for each setting it names,
the bundle flag and saved value that resume the run, quoted for a POSIX shell; every setting their records hold has
such a flag, but those the bundle fixes and, in fine-tuning from a ``--pretrained`` file, those the file gives (the
refusal says where they come from instead); and the words a refusal gives do resume a real tiny run."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch
from finetune_helpers import CONFIGS as FINETUNE_CONFIGS
from finetune_helpers import bundle_process as finetune_process
from finetune_helpers import FIRST_EPOCH, encoder_file, flag_map
from monai.bundle import ConfigParser
from monai.losses import DiceCELoss
from pretrain_helpers import SMALL, TRAIN, bundle_process, succeeded
from resume_flag_helpers import given_words, leaves

from medgmae.engine.records import check_flags, resume_flags
from medgmae.finetune import build_unetr
from medgmae.mae_training import ModelConfigRecord, build_model
from medgmae.networks import MedGMAE
from medgmae.networks.vit import MaskedViTEncoder

PRETRAIN_MULTI = Path(TRAIN).parent / "multi_gpu_train.json"
FINETUNE_TRAIN = FINETUNE_CONFIGS / "train.json"
#: what the pre-training bundle fixes: one channel, MedGMAE*'s levels by --model_kind, the [0, 1] mapping clipped
PRETRAIN_FIXED = {"in_channels", "multi_level", "preprocessing.intensity_range", "preprocessing.clip"}
#: what the fine-tuning bundle fixes: a 3D encoder without dropout, with qkv bias, RAS, the [0, 1] mapping clipped
FINETUNE_FIXED = {"model.spatial_dims", "model.dropout_rate", "model.qkv_bias", "preprocessing.orientation",
                  "preprocessing.intensity_range", "preprocessing.clip"}  # fmt: skip
#: what a --pretrained file gives fine-tuning: the encoder's architecture, its input and patch
FROM_PRETRAINED = {f"model.{k}" for k in ("in_channels", "img_size", "patch_size", "hidden_size", "num_layers",
                                          "num_heads", "mlp_ratio")} | {"preprocessing.input_size", "preprocessing.patch_size"}  # fmt: skip


def _names(flag: str | tuple) -> list[str]:
    """The flags of a checked flag (:func:`check_flags`): one, or an ``"items"`` form's several."""
    return [flag] if isinstance(flag, str) else [flag[0]] if isinstance(flag[0], str) else list(flag[0])


def _takes(flag: str | tuple, config: dict, network: list) -> bool:
    """Whether a bundle takes every flag of ``flag``: a top-level key of its config, ``network_def#<argument>`` of
    one of its network's builders, ``encoder#<key>`` of its ``encoder`` or ``loss#<argument>`` of its DiceCELoss."""

    def takes(name: str) -> bool:
        part, _, key = name.partition("#")
        if not key:
            return name in config
        if part == "network_def":
            return any(key in inspect.signature(f).parameters for f in network)
        if part == "loss":
            return key in inspect.signature(DiceCELoss).parameters
        return part == "encoder" and key in config["encoder"]

    return all(takes(name) for name in _names(flag))


def _args(settings: dict) -> list[str]:
    """``{"--flag": value}`` as command-line words (each flag once: the bundles refuse one given twice)."""
    return [w for k, v in settings.items() for w in (k, str(v))]


def _flagged(given: dict) -> dict:
    return {f"--{k}": v for k, v in given.items()}


def test_a_setting_of_several_values_gives_each_its_own_flag():
    """``[[flag, flag], "items"]``: a saved HU window as its two flags; no words for a value of another length; a
    malformed form refused naming the setting. A MedGMAE* refused for its intensity rule names the flag once."""
    flags = {"preprocessing.hu_window": [["a_min", "a_max"], "items"], "patch_size": ["patch_size", "side"]}
    saved = {"preprocessing": {"hu_window": [-175.0, 250.5]}, "patch_size": [8, 8, 16]}
    diff = ["preprocessing.hu_window: saved [-175.0, 250.5], now [-100.0, 250.5]", "patch_size: saved [8, 8, 16], now [8, 8, 8]"]
    assert resume_flags(flags, diff, saved) == ["--a_min -175.0", "--a_max 250.5", '--patch_size "[8, 8, 16]"']
    assert resume_flags(flags, diff[:1], {"preprocessing": {"hu_window": [1.0]}}) == []
    assert check_flags({"w": [("a", "b"), "items"]}) == {"w": (("a", "b"), "items")}
    for bad in ({"w": [[], "items"]}, {"w": [["a", 3], "items"]}, {"w": ["a", "items"]}):
        with pytest.raises(ValueError, match=r"flags\['w'\]"):
            check_flags(bad)

    def star(rule: str) -> MedGMAE:
        return build_model("medgmae-star", img_size=16, patch_size=8, num_gaussians=2, level_intensity=rule)

    level = {"level_intensity": "network_def#level_intensity"}
    with pytest.raises(ValueError) as refused:
        ModelConfigRecord(star("logit"), flags=level).load_state_dict(ModelConfigRecord(star("clamp")).state_dict())
    assert "(here --network_def#level_intensity clamp) or" in str(refused.value), refused.value


def _built_from_words(words: dict) -> MedGMAE:
    """The model a pre-training run builds given ``words`` (:func:`given_words`) beside a small base, each read as
    the bundle's parser reads a flag's value: JSON where it parses, else text."""

    def read(text: str):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    args = {"kind": "medgmae", "img_size": 16, "patch_size": 8, "num_gaussians": 2}
    for flag, text in words.items():
        args[{"model_kind": "kind"}.get(flag, flag.removeprefix("network_def#"))] = read(text)
    return build_model(**args)


def test_a_model_of_another_kind_is_resumed_by_its_kind_and_fields():
    """A MedGMAE* run (its own sigma_mu and level rule) resumed as MedGMAE was refused with ``--model_kind
    medgmae-star`` alone, and that was refused again for the fields; the words now give the kind first and the
    saved fields that differ, and the model they build is accepted. The bundle's own flags are used."""
    flags = json.loads(Path(TRAIN).read_text(encoding="utf-8"))["resume_records"]["config"]["flags"]
    saved = build_model("medgmae-star", img_size=16, patch_size=8, num_gaussians=2, sigma_mu=0.1, level_intensity="clamp")
    with pytest.raises(ValueError) as refused:
        ModelConfigRecord(_built_from_words({}), flags=flags).load_state_dict(ModelConfigRecord(saved).state_dict())
    message = str(refused.value)
    assert message.index("kind: saved 'medgmae-star'") < message.index("sigma_mu: saved 0.1"), message
    words = given_words(message)
    assert list(words)[0] == "model_kind" and words["model_kind"] == "medgmae-star", message
    assert words["network_def#sigma_mu"] == "0.1" and words["network_def#level_intensity"] == "clamp", message
    ModelConfigRecord(_built_from_words(words), flags=flags).load_state_dict(ModelConfigRecord(saved).state_dict())


@pytest.mark.parametrize("kind", ["medgmae", "medgmae-star", "voxel-mae"])
def test_every_setting_the_pretraining_records_hold_has_a_flag_the_bundle_takes(kind, tmp_path):
    """The model and settings records as the bundle builds them (each model kind): every setting has a flag the
    bundle takes but those it fixes; the multi-GPU config changes none of the records, flags or the keys they name."""
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"roi_size": 32, "patch_size": 8, "num_gaussians": 8, "pixdim": 3.0, "device": "cpu", "model_kind": kind,
                   "output_dir": str(tmp_path)})  # fmt: skip
    config, settings = parser.get_parsed_content("resume_records#config"), parser.get_parsed_content("resume_records#settings")
    fields = leaves(config.state_dict()["config"]) | {"kind"} | {f"preprocessing.{k}" for k in config.state_dict()["preprocessing"]}
    assert fields - set(config.flags) == PRETRAIN_FIXED - ({"multi_level"} if kind == "voxel-mae" else set())
    assert leaves(settings.settings) == set(settings.flags)
    raw = json.loads(Path(TRAIN).read_text(encoding="utf-8"))
    for flag in [*config.flags.values(), *settings.flags.values()]:
        assert _takes(flag, raw, [build_model, MedGMAE]), flag
    merged = ConfigParser()
    merged.read_config([TRAIN, str(PRETRAIN_MULTI)])
    for key in ("resume_records", "network_def", "preprocessing"):
        assert merged.get(key) == ConfigParser.load_config_files(TRAIN)[key], key
    for flag in [*config.flags.values(), *settings.flags.values()]:
        assert all(merged.get(name.partition("#")[0]) is not None for name in _names(flag)), flag


def test_a_pretraining_resume_names_every_flag_and_their_words_resume(tmp_path, folder_state):
    """A run resumed with another model, pre-processing and optimiser is refused naming each flag and saved value
    (the HU window as --a_min and --a_max, the spacing quoted); those words, as the shell splits them, given in
    place of the changed settings, resume the run on the saved ones."""
    out = tmp_path / "run"
    base = {**dict(zip(SMALL[::2], SMALL[1::2])), "--output_dir": str(out), "--num_workers": "0"}
    succeeded(bundle_process("run", "training", "--config_file", TRAIN, *_args({**base, "--max_epochs": 1}), cwd=tmp_path))
    before = folder_state(out)
    changed = {"--max_epochs": 2, "--resume": "true", "--patch_size": 16, "--num_gaussians": 16, "--pixdim": 2.0,
               "--a_min": -100, "--network_def#min_scale": 0.002, "--learning_rate": 0.001, "--augment": "true"}  # fmt: skip
    proc = bundle_process("run", "training", "--config_file", TRAIN, *_args({**base, **changed}), cwd=tmp_path)
    message = proc.stderr.split("\nerror: ")[-1]
    assert proc.returncode != 0 and "different model configuration" in message, proc.stderr[-3000:]
    assert ('(here --pixdim "[3.0, 3.0, 3.0]" --a_min -175.0 --a_max 250.0 --patch_size 8 --num_gaussians 8 '
            "--network_def#min_scale 0.001)") in message, message
    assert "(here --learning_rate 0.00015 --augment false)" in message, message
    assert folder_state(out) == before
    given = given_words(message)
    assert given == {"pixdim": "[3.0, 3.0, 3.0]", "a_min": "-175.0", "a_max": "250.0", "patch_size": "8",
                     "num_gaussians": "8", "network_def#min_scale": "0.001", "learning_rate": "0.00015", "augment": "false"}  # fmt: skip

    args = _args({**base, **changed, **_flagged(given)})
    succeeded(bundle_process("run", "training", "--config_file", TRAIN, *args, cwd=tmp_path))
    model = torch.load(out / "model.pt", weights_only=True)
    assert model["config"]["num_gaussians"] == 8 and model["config"]["min_scale"] == 0.001
    assert model["preprocessing"]["spacing"] == [3.0, 3.0, 3.0] and model["preprocessing"]["hu_window"] == [-175.0, 250.0]
    assert (out / "checkpoint_epoch=2.pt").is_file()


def test_a_split_drawn_by_seed_and_sizes_that_differ_are_resumed_by_their_words(tmp_path, folder_state):
    """A run on a folder of volumes (no dataset.json: the split drawn with --seed and --val_fraction) with a patch
    of unequal sides, resumed with the defaults, was refused offering no words for the patch (its flag takes a
    list) nor the split's seed; the refusal now gives both, and those words resume the run."""
    import nibabel as nib
    import numpy as np

    volumes, out = tmp_path / "volumes", tmp_path / "run"
    volumes.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        hu = rng.uniform(-1000.0, 1000.0, (48, 48, 40)).astype(np.float32)
        nib.save(nib.Nifti1Image(hu, np.diag([3.0, 3.0, 3.0, 1.0])), volumes / f"case{i}.nii.gz")
    base = {**dict(zip(SMALL[::2], SMALL[1::2])), "--output_dir": str(out), "--num_workers": "0", "--dataset_dir": str(volumes)}
    first = {"--patch_size": "[8, 8, 16]", "--seed": 1, "--val_fraction": 0.34, "--max_epochs": 1}
    succeeded(bundle_process("run", "training", "--config_file", TRAIN, *_args({**base, **first}), cwd=tmp_path))
    before = folder_state(out)
    resume = {**base, "--max_epochs": 2, "--resume": "true"}
    proc = bundle_process("run", "training", "--config_file", TRAIN, *_args(resume), cwd=tmp_path)
    message = proc.stderr.split("\nerror: ")[-1]
    assert proc.returncode != 0 and "patch_size: saved [8, 8, 16], now [8, 8, 8]" in message, proc.stderr[-3000:]
    assert "drawn with --seed and --val_fraction: give the run's (here --seed 1 --val_fraction 0.34)" in message, message
    assert folder_state(out) == before
    given = given_words(message)
    assert given == {"patch_size": "[8, 8, 16]", "seed": "1", "val_fraction": "0.34"}, message
    succeeded(bundle_process("run", "training", "--config_file", TRAIN, *_args({**resume, **_flagged(given)}), cwd=tmp_path))
    assert (out / "checkpoint_epoch=2.pt").is_file()


FINETUNE_BASE = {"--device": "cpu", "--feature_size": 4, "--phantom_shape": "[32, 32, 24]", "--phantom_cases": 3,
                 "--num_samples": 1, "--progress_bar": "false", "--batch_size": 1}  # fmt: skip


def _finetune_flags(pretrained: str) -> dict:
    parser = ConfigParser()
    parser.read_config(str(FINETUNE_TRAIN))
    parser.update({"pretrained": pretrained})
    return check_flags(parser.get_parsed_content("settings_record#flags"))


def test_a_fine_tuning_resume_names_every_flag_and_their_words_resume(finetune_first_epoch, folder_state):
    """A run from scratch resumed with another encoder, crop, spacing, rate and loss weight is refused naming each
    flag and saved value (the encoder's as ``--encoder#...``); the words resume it. Every setting the run records
    has a flag the bundle takes but those it fixes; the multi-GPU config changes no record, flag or key they name."""
    out = finetune_first_epoch  # FINETUNE_BASE, 24^3 crops, one epoch (finetune_helpers.FIRST_EPOCH)
    base = {**FINETUNE_BASE, "--output_dir": str(out), "--roi_size": "[24, 24, 24]"}
    assert flag_map(_args({**base, "--max_epochs": 1})) == flag_map([*FIRST_EPOCH, "--output_dir", str(out)])
    flags = _finetune_flags("")
    recorded = torch.load(out / "checkpoint_epoch=1.pt", weights_only=True)["objects"]["settings"]["settings"]
    assert leaves(recorded) - set(flags) == FINETUNE_FIXED
    raw = json.loads(FINETUNE_TRAIN.read_text(encoding="utf-8"))
    assert all(_takes(flag, raw, [build_unetr]) for flag in flags.values()), flags
    merged = ConfigParser()
    merged.read_config([str(FINETUNE_TRAIN), str(FINETUNE_CONFIGS / "multi_gpu_train.json")])
    for key in ("settings_record", "resume_flags", "network_def", "encoder", "loss", "best_saver"):
        assert merged.get(key) == raw[key], key

    before = folder_state(out)
    changed = {"--max_epochs": 2, "--resume": "true", "--roi_size": "[36, 36, 36]", "--encoder#hidden_size": 48,
               "--encoder#num_heads": 2, "--pixdim": 2.0, "--learning_rate": 0.01, "--loss#lambda_ce": 0.5}  # fmt: skip
    proc = finetune_process("training", "train.json", *_args({**base, **changed}))
    message = proc.stderr.split("\nerror: ")[-1]
    assert proc.returncode != 0 and "UNETR fine-tuning with other settings" in message, proc.stderr[-3000:]
    assert ('(here --pixdim "[1.5, 1.5, 2.0]" --learning_rate 0.0003 --loss#lambda_ce 1.0 --roi_size "[24, 24, 24]" '
            "--encoder#hidden_size 96 --encoder#num_heads 4)") in message, message
    assert "Where they come from" not in message and folder_state(out) == before
    args = _args({**base, **changed, **_flagged(given_words(message))})
    resumed = finetune_process("training", "train.json", *args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "checkpoint_epoch=2.pt").is_file()


def test_a_fine_tuning_resume_from_a_pretrained_file_flags_its_overrides_and_sources_the_rest(tmp_path, folder_state):
    """From a --pretrained file, the encoder's architecture and pre-processing are the file's: not flagged, the
    refusal says where they come from; --pixdim and --hu_range, which override the file, and the rest are flagged.
    A run given --pixdim 2.5 resumed without it (the file's 2.0) is refused naming --pixdim 2.5, which resumes it;
    one resumed from another encoder names its fields and their source, and no flag for them."""
    out, enc = tmp_path / "run", encoder_file(tmp_path / "encoder.pt")
    base = {**FINETUNE_BASE, "--output_dir": str(out), "--pretrained": str(enc)}
    assert finetune_process("training", "train.json", *_args({**base, "--pixdim": 2.5, "--max_epochs": 1})).returncode == 0
    flags = _finetune_flags(str(enc))
    recorded = torch.load(out / "checkpoint_epoch=1.pt", weights_only=True)["objects"]["settings"]["settings"]
    assert leaves(recorded) - set(flags) == FINETUNE_FIXED | FROM_PRETRAINED
    assert {flags["preprocessing.spacing"], flags["preprocessing.hu_window"]} == {"pixdim", "hu_range"}

    before = folder_state(out)
    changed = {"--max_epochs": 2, "--resume": "true", "--feature_size": 8}
    proc = finetune_process("training", "train.json", *_args({**base, **changed}))
    message = proc.stderr.split("\nerror: ")[-1]
    assert proc.returncode != 0 and "preprocessing.spacing: saved [2.5, 2.5, 2.5], now [2.0, 2.0, 2.0]" in message, message
    assert "Where they come from: preprocessing.*: the --pretrained file records them, unless --pixdim" in message
    # --feature_size is no setting of the encoder: its own source, not "the encoder's part comes from the file"
    assert "model.feature_size: --feature_size gives it, not the --pretrained file" in message, message
    assert "model.*" not in message
    assert '(here --feature_size 4 --pixdim "[2.5, 2.5, 2.5]")' in message, message
    assert folder_state(out) == before
    given = _flagged(given_words(message))
    assert given == {"--feature_size": "4", "--pixdim": "[2.5, 2.5, 2.5]"}

    other = torch.load(enc, weights_only=True)  # another architecture: its fields are the file's, named with their source
    other["config"]["mlp_ratio"] = 4.0
    other["state_dict"] = MaskedViTEncoder(**other["config"]).state_dict()
    torch.save(other, tmp_path / "other.pt")
    proc = finetune_process("training", "train.json", *_args({**base, **changed, **given, "--pretrained": str(tmp_path / "other.pt")}))
    message = proc.stderr.split("\nerror: ")[-1]
    assert proc.returncode != 0 and "model.mlp_ratio: saved 2.0, now 4.0" in message, message
    assert "model.*: the encoder's part comes from the --pretrained file" in message and "(here" not in message
    assert folder_state(out) == before

    # the same architecture with other weights (another SHA-256): resumed from the checkpoint's weights, which the
    # log says, not "loaded ... tensors from" / "encoder loaded from" the file; the record keeps the run's encoder
    twin = torch.load(enc, weights_only=True)
    twin["state_dict"] = {k: v + 1.0 for k, v in twin["state_dict"].items()}
    torch.save(twin, tmp_path / "twin.pt")
    resumed = finetune_process("training", "train.json", *_args({**base, **changed, **given, "--pretrained": str(tmp_path / "twin.pt")}))
    logged = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "checkpoint_epoch=2.pt").is_file()
    assert f"--pretrained {tmp_path / 'twin.pt'} (SHA-256 " in logged and "does not use the given file" in logged, logged[-3000:]
    assert "pre-trained encoder tensors from" not in logged and "encoder loaded from" not in logged
    assert "encoder continued from " in logged and "checkpoint_epoch=1.pt, fine-tuned" in logged
    record = json.loads((out / "training_cases.json").read_text(encoding="utf-8"))
    assert record["pretrained"]["path"] == str(enc.resolve())


def test_a_fine_tuning_resume_from_another_pretrained_file_leads_with_the_file(tmp_path, folder_state):
    """Resumed from a --pretrained file of another orientation, spacing and window, the refusal offered the words of
    --pixdim and --hu_range as if they were enough, but the orientation has no flag: pasted, they were refused again.
    It now leads with the interrupted run's --pretrained file, which alone gives the orientation, and gives the
    others' words after it; pasted with the other file they are refused again for the orientation alone, and with
    the run's own file they resume it."""
    out, enc = tmp_path / "run", encoder_file(tmp_path / "encoder.pt")
    other = encoder_file(tmp_path / "other.pt", orientation="LPS", spacing=2.5, hu_window=(-100.0, 200.0))
    base = {**FINETUNE_BASE, "--output_dir": str(out), "--pretrained": str(enc)}
    assert finetune_process("training", "train.json", *_args({**base, "--max_epochs": 1})).returncode == 0
    before = folder_state(out)
    resume = {**base, "--max_epochs": 2, "--resume": "true"}
    proc = finetune_process("training", "train.json", *_args({**resume, "--pretrained": str(other)}))
    message = proc.stderr.split("\nerror: ")[-1]
    assert proc.returncode != 0 and "preprocessing.orientation: saved 'RAS', now 'LPS'" in message, proc.stderr[-3000:]
    assert ("Resume with the interrupted run's --pretrained file (which alone gives preprocessing.orientation: no flag "
            "does) and the saved values of the others (here --pixdim") in message, message
    given = _flagged(given_words(message))
    assert set(given) == {"--pixdim", "--hu_range"} and folder_state(out) == before, message
    again = finetune_process("training", "train.json", *_args({**resume, **given, "--pretrained": str(other)}))
    message = again.stderr.split("\nerror: ")[-1]
    assert again.returncode != 0 and "(preprocessing.orientation: saved 'RAS', now 'LPS')" in message, message
    resumed = finetune_process("training", "train.json", *_args({**resume, **given}))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (out / "checkpoint_epoch=2.pt").is_file()
