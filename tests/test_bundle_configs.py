"""Every bundle config reads its true/false keys through ``medgmae.cli_types.as_bool``, and checks its settings and
output folders first (``medgmae.bundle_checks``).

``python -m monai.bundle run ... --resume false`` hands the config the *string* ``"false"`` (fire parses only
``False`` as a bool), which is truthy: a key read as ``@resume`` would resume. Each bundle therefore passes such keys
through ``as_bool``, which also rejects ``--amp maybe``.
"""

import json
import os
import re
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from medgmae.bundle_checks import BundleSettingError, check_settings

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "bundles").glob("*/configs/*.json") if p.name != "metadata.json")


TRAIN_CONFIGS = sorted(ROOT.glob("bundles/*/configs/train.json"))
#: keys a train config may leave out of ``checked_settings``: paths and folders (its output folders or the data readers
#: check them) and the 3D pre-processing's HU window and orientation (PreprocessingSpec checks them)
UNCHECKED = {"bundle_root", "dataset_dir", "datalist", "output_dir", "a_min", "a_max", "orientation"}


def _bool_keys(config: dict) -> list[str]:
    return [k for k, v in config.items() if isinstance(v, bool) and "#" not in k]


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)


@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parents[1].name}/{p.name}" for p in CONFIGS])
def test_true_false_keys_are_parsed_with_as_bool(path):
    config = json.loads(path.read_text(encoding="utf-8"))
    checked = config.pop("checked_settings", None)  # the up-front check reads the raw values (medgmae.bundle_checks)
    if checked is not None:
        assert {k: checked.get(k) for k in _bool_keys(config)} == {k: [f"@{k}", "bool"] for k in _bool_keys(config)}
    for key in _bool_keys(config):
        for text in _strings(config):
            for m in re.finditer(rf"@{re.escape(key)}(?![\w#])", text):
                before = text[: m.start()]
                assert before.endswith("as_bool("), f"{path.relative_to(ROOT)}: {text!r} reads @{key} without as_bool"
                assert text[m.end() :].startswith(f", '{key}')"), f"{path.relative_to(ROOT)}: as_bool(@{key}) must name {key!r}"


def test_a_false_flag_from_the_command_line_is_false():
    parser = ConfigParser({"imports": ["$from medgmae.cli_types import as_bool"], "resume": False,
                           "used": "$as_bool(@resume, 'resume')"})  # fmt: skip
    for text, expected in (("false", False), ("False", False), ("true", True), ("0", False)):
        parser["resume"] = text
        assert parser.get_parsed_content("used", lazy=False) is expected
    parser["resume"] = "maybe"
    with pytest.raises(RuntimeError) as error:  # MONAI wraps the expression's error
        parser.get_parsed_content("used", lazy=False)
    assert "resume must be true or false, got 'maybe'" in str(error.value.__cause__)


@pytest.mark.parametrize("bundle", sorted(p.parents[1] for p in ROOT.glob("bundles/*/configs/multi_gpu_train.json")),
                         ids=lambda p: p.name)  # fmt: skip
def test_multi_gpu_config_keeps_every_import_of_train(bundle):
    """MONAI merges configs key by key, so the multi-GPU file's ``imports`` list replaces train.json's: it must
    repeat every one of them (a missing ``as_bool`` failed only in a multi-process run)."""
    train = json.loads((bundle / "configs" / "train.json").read_text(encoding="utf-8"))["imports"]
    multi = json.loads((bundle / "configs" / "multi_gpu_train.json").read_text(encoding="utf-8"))["imports"]
    assert [i for i in train if i not in multi] == []


@pytest.mark.parametrize("bundle", sorted(p.parents[1] for p in ROOT.glob("bundles/*/configs/multi_gpu_train.json")),
                         ids=lambda p: p.name)  # fmt: skip
def test_multi_gpu_backend_follows_the_device_not_the_machine(bundle, monkeypatch):
    """``--device cpu`` on a GPU node trains CPU processes: the process group must be gloo (fine-tuning chose NCCL
    whenever CUDA was available, which fails for CPU tensors)."""
    from monai.bundle import ConfigParser

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU node
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "train.json"), str(bundle / "configs" / "multi_gpu_train.json")])
    parser["device"] = "cpu"
    assert parser.get_parsed_content("dist_backend", lazy=False) == "gloo"


def test_every_bundle_has_a_train_config():
    assert [p.parents[1].name for p in TRAIN_CONFIGS] == ["gmae2d_pretrain", "gvit_classification", "medgmae_pretrain",
                                                          "unetr_finetune"]  # fmt: skip


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=[p.parents[1].name for p in TRAIN_CONFIGS])
def test_train_configs_check_their_settings_and_folders_first(path):
    """``initialize`` starts with one ``check_settings`` call given the settings and the output folders (so that
    one error names every bad key, folders included); every plain number, true/false or text key the user can set
    is in ``checked_settings``."""
    config = json.loads(path.read_text(encoding="utf-8"))
    steps = config["initialize"]
    assert steps[0].startswith("$check_settings(@checked_settings, output_dirs={'output_dir': as_path_text(@output_dir, 'output_dir')"), steps
    assert not any("check_output_dirs(" in s for s in steps), steps
    checked = config["checked_settings"]
    assert all(v == [f"@{k}", v[1]] for k, v in checked.items()), "each entry checks the key it is named by"
    settable = {k for k, v in config.items() if isinstance(v, (bool, int, float, str)) and not str(v).startswith("$")}
    assert sorted(settable - set(checked) - UNCHECKED) == [], path.relative_to(ROOT)


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=[p.parents[1].name for p in TRAIN_CONFIGS])
def test_an_unusable_device_is_named_with_the_settings(path):
    """A device this machine lacks stops the run with the other settings, before phantoms are generated or the
    pre-check reads data (it failed when the trainer started)."""
    parser = ConfigParser()
    parser.read_config(str(path))
    parser.update({"device": "cuda:99", "batch_size": 0})
    with pytest.raises(BundleSettingError) as err:
        check_settings(parser.get_parsed_content("checked_settings"), output_dirs={})
    named = {line.split(":")[0].strip(): line for line in str(err.value).splitlines()[1:]}
    assert sorted(named) == ["--batch_size", "--device"], named
    assert "CUDA is not available" in named["--device"] or "does not exist" in named["--device"], named


#: the other configs with a device setting (evaluation, inference; the multi-process config takes each process's GPU)
DEVICE_CONFIGS = [p for p in CONFIGS if p.name not in ("train.json", "multi_gpu_train.json") and "device" in json.loads(p.read_text(encoding="utf-8"))]
assert len(DEVICE_CONFIGS) == 5, DEVICE_CONFIGS  # zero-shot inference, fine-tuning's and GViT's evaluation and inference


@pytest.mark.parametrize("path", DEVICE_CONFIGS, ids=[f"{p.parents[1].name}/{p.name}" for p in DEVICE_CONFIGS])
def test_evaluation_and_inference_name_an_unusable_device_with_the_settings(path):
    """``--device cuda`` on a machine without CUDA was a ValueError when the runner was built, after the settings
    check that says 'bad setting(s), nothing was written': now one of its lines, as in training."""
    parser = ConfigParser()
    parser.read_config(str(path))
    parser.update({"device": "cuda:99"})
    with pytest.raises(BundleSettingError) as err:
        check_settings(parser.get_parsed_content("checked_settings"), output_dirs={})
    named = {line.split(":")[0].strip(): line for line in str(err.value).splitlines()[1:]}
    assert "CUDA is not available" in named["--device"] or "does not exist" in named["--device"], named


#: the model kinds each training bundle writes (medgmae.checkpoint.CHECKPOINT_KINDS)
RUN_KINDS = {"gmae2d_pretrain": ["gmae2d"], "gvit_classification": ["gvit"], "medgmae_pretrain": ["medgmae", "medgmae-star", "voxel-mae"],
             "unetr_finetune": ["medgmae-unetr"]}  # fmt: skip


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=[p.parents[1].name for p in TRAIN_CONFIGS])
def test_a_folder_holding_another_bundles_run_is_refused(path, tmp_path):
    """A training run started in a folder holding another bundle's model (a 2D run in a 3D pre-training folder)
    would remove that run's checkpoints and models: refused up front, naming the file and its kind; a model of the
    bundle's own kinds is no problem (a fresh run replaces it, as documented)."""
    from medgmae.checkpoint import make_checkpoint, save_checkpoint

    bundle = path.parents[1].name
    steps = json.loads(path.read_text(encoding="utf-8"))["initialize"]
    assert f"run_kinds={RUN_KINDS[bundle]}" in steps[0].replace('"', "'"), steps[0]
    for other in (b for b in RUN_KINDS if b != bundle):
        kind = RUN_KINDS[other][0]
        save_checkpoint(tmp_path / other / "model.pt", make_checkpoint(kind, {}, {}))
        with pytest.raises(BundleSettingError, match=rf"holds model.pt of kind '{kind}' .*: another bundle's run"):
            check_settings({}, output_dirs={"output_dir": tmp_path / other}, run_kinds=RUN_KINDS[bundle])
    for kind in RUN_KINDS[bundle]:
        save_checkpoint(tmp_path / kind / "best_model.pt", make_checkpoint(kind, {}, {}))
        assert check_settings({}, output_dirs={"output_dir": tmp_path / kind}, run_kinds=RUN_KINDS[bundle])


def test_an_encoder_or_training_checkpoint_marks_another_bundles_run(tmp_path):
    """A 3D pre-training run stopped before its model.pt (its newest checkpoint_epoch=N.pt), or a folder holding only
    its encoder.pt, is another run for the 2D bundle; a 2D encoder.pt is the 2D bundle's own and another run for the
    3D pre-training."""
    import torch

    from medgmae.checkpoint import ENCODER_KIND, make_checkpoint, save_checkpoint

    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    torch.save({"engine": {}, "objects": {"model": {}, "config": {"kind": "medgmae", "config": {}}}},
               interrupted / "checkpoint_epoch=3.pt")  # fmt: skip
    encoder = tmp_path / "encoder"
    save_checkpoint(encoder / "encoder.pt", make_checkpoint(ENCODER_KIND, {"spatial_dims": 3}, {}))
    for folder, named in ((interrupted, "checkpoint_epoch=3.pt of kind 'medgmae'"), (encoder, "encoder.pt (a pre-trained ViT encoder of a 3D pre-training run)")):
        with pytest.raises(BundleSettingError, match=re.escape(named)):
            check_settings({}, output_dirs={"output_dir": folder}, run_kinds=RUN_KINDS["gmae2d_pretrain"])
        assert check_settings({}, output_dirs={"output_dir": folder}, run_kinds=RUN_KINDS["medgmae_pretrain"])
    save_checkpoint(tmp_path / "own" / "encoder.pt", make_checkpoint(ENCODER_KIND, {"spatial_dims": 2}, {}))
    assert check_settings({}, output_dirs={"output_dir": tmp_path / "own"}, run_kinds=RUN_KINDS["gmae2d_pretrain"])
    with pytest.raises(BundleSettingError, match=re.escape("encoder.pt (a pre-trained ViT encoder of a 2D pre-training run)")):
        check_settings({}, output_dirs={"output_dir": tmp_path / "own"}, run_kinds=RUN_KINDS["medgmae_pretrain"])


CHECKED_CONFIGS = [p for p in CONFIGS if "checked_settings" in json.loads(p.read_text(encoding="utf-8"))]


@pytest.mark.parametrize("path", CHECKED_CONFIGS, ids=[f"{p.parents[1].name}/{p.name}" for p in CHECKED_CONFIGS])
def test_settings_and_output_folders_are_checked_in_one_call(path):
    """A separate folder check would stop at the first of the two, and a second run name the other."""
    config = json.loads(path.read_text(encoding="utf-8"))
    steps = config["initialize"]
    assert re.fullmatch(r"\$check_settings\(@checked_settings, output_dirs=\{'(\w+)': as_path_text\(@\1, '\1'\).*\}(, run_kinds=\[.*\])?(, multi_gpu_config='[\w/.]+'|, torchrun=True)?(, unused_phantom_keys=\[[\w', ]+\] if .+ else \[\])?(, hold='(\w+)')?\)", steps[0]), steps
    assert not any("check_output_dirs(" in s for s in _strings(config)), path.relative_to(ROOT)


@pytest.mark.parametrize("bundle", ["medgmae_pretrain", "unetr_finetune"])
def test_the_documented_amos_filter_leaves_out_the_mri_cases(bundle, tmp_path):
    """Both 3D bundles feed every image through the CT HU window: their docs give a one-line filter that writes an
    AMOS ``dataset.json`` without its MRI cases (ids 500 and above)."""
    import subprocess
    import sys

    readme = (ROOT / "bundles" / bundle / "docs" / "README.md").read_text(encoding="utf-8")
    lines = [line for line in readme.splitlines() if line.startswith("python -c 'import json") and "< 500" in line]
    assert len(lines) == 1, f"{bundle}/docs/README.md gives no AMOS MRI filter"
    case = lambda folder, i: {"image": f"./images{folder}/amos_{i:04d}.nii.gz", "label": f"./labels{folder}/amos_{i:04d}.nii.gz"}  # noqa: E731
    (tmp_path / "dataset.json").write_text(json.dumps({
        "labels": {"0": "background", "1": "spleen"}, "training": [case("Tr", 1), case("Tr", 540), case("Tr", 499)],
        "validation": [case("Va", 8), case("Va", 507)], "test": [{"image": "./imagesTs/amos_0600.nii.gz"}]}))  # fmt: skip
    command = lines[0].removeprefix("python -c '").removesuffix("'")
    subprocess.run([sys.executable, "-c", command], cwd=tmp_path, check=True)
    out = json.loads((tmp_path / "dataset_ct.json").read_text(encoding="utf-8"))
    assert [c["image"][-11:-7] for c in out["training"] + out["validation"]] == ["0001", "0499", "0008"]
    assert out["labels"] == {"0": "background", "1": "spleen"} and len(out["test"]) == 1


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.parents[1].name)
def test_default_loader_workers_fit_the_cpus(path):
    """With a dataset of one's own, the default number of loader workers is at most the CPUs this process may use
    (PyTorch warns above that) and at most 4; phantom runs load in the main process."""
    parser = ConfigParser()
    parser.read_config(path)
    parser.update({"dataset_dir": "/data/ct", "datalist": "/data/ct/dataset.json"})
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert 0 <= int(parser.get_parsed_content("num_workers")) <= min(4, cpus)


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=lambda p: p.parents[1].name)
def test_default_loader_workers_share_the_cpus_between_torchrun_processes(path, monkeypatch):
    """Under torchrun the default is per process: the node's CPUs divided among its processes (torchrun's
    LOCAL_WORLD_SIZE), at least 1 and at most 4 (8 CPUs: 4 alone, 2 each for 4 processes, 1 each for 16)."""
    parser = ConfigParser()
    parser.read_config(path)
    if "num_workers" not in parser.config or not str(parser.config["num_workers"]).startswith("$"):
        pytest.skip("a fixed default")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    found = {}
    for processes in ("1", "4", "16"):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", processes)
        parser = ConfigParser()
        parser.read_config(path)
        parser.update({"dataset_dir": "/data/ct", "datalist": "/data/ct/dataset.json"})
        found[processes] = int(parser.get_parsed_content("num_workers"))
    assert found == {"1": 4, "4": 2, "16": 1}


def test_zero_shot_inference_runs_under_both_ids():
    """``run inferring`` (as in the fine-tuning bundle) and the older ``run inference`` both run the zero-shot steps."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / "medgmae_pretrain" / "configs" / "inference.json"))
    calls = []
    parser["runner"] = "$__import__('types').SimpleNamespace(run=lambda: 'ran')"
    for run_id in ("inferring", "inference", "run"):
        parser.parse()
        calls.append(parser.get_parsed_content(run_id))
    assert calls == [["ran"], ["ran"], ["ran"]]


def test_the_multi_gpu_config_a_refusal_names_exists():
    """A one-process config started by torchrun is refused naming the bundle's multi-process config: that file
    exists, and itself declares that it runs under torchrun; bundles without one name none."""
    named = {}
    for path in sorted((ROOT / "bundles").glob("*/configs/train.json")):
        first = json.loads(path.read_text(encoding="utf-8"))["initialize"][0]
        found = re.search(r"multi_gpu_config='([\w/.]+)'", first)
        named[path.parents[1].name] = found and found.group(1)
    assert named == {"gmae2d_pretrain": None, "gvit_classification": None,
                     "medgmae_pretrain": "bundles/medgmae_pretrain/configs/multi_gpu_train.json",
                     "unetr_finetune": "bundles/unetr_finetune/configs/multi_gpu_train.json"}
    for config in filter(None, named.values()):
        steps = json.loads((ROOT / config).read_text(encoding="utf-8"))["initialize"]
        assert steps[0] == "$check_base_config('train.json', 'multi_gpu_train.json')", config  # refused alone
        assert "torchrun=True" in steps[1], config


@pytest.mark.parametrize("bundle", ["medgmae_pretrain", "unetr_finetune"])
def test_the_multi_gpu_settings_check_is_the_one_process_check(bundle):
    """multi_gpu_train.json replaces train.json's ``initialize`` list: its settings check must be the same call
    (settings, folders, run kinds, phantom keys) but for how the processes are started."""
    configs = ROOT / "bundles" / bundle / "configs"
    one = json.loads((configs / "train.json").read_text(encoding="utf-8"))["initialize"][0]
    many = json.loads((configs / "multi_gpu_train.json").read_text(encoding="utf-8"))["initialize"][1]  # after check_base_config
    one = re.sub(r", multi_gpu_config='[\w/.]+'", "", one)
    assert many.replace(", torchrun=True", "") == one, (many, one)


def test_the_pretraining_defaults_are_the_toolkits_default_spec():
    """The pre-training bundle lists its pre-processing settings as plain keys (so that the docs' table and
    ``--a_min`` overrides read naturally); they must stay the spec every consumer falls back to."""
    from medgmae.preprocessing import DEFAULT_SPEC

    cfg = json.loads((ROOT / "bundles/medgmae_pretrain/configs/train.json").read_text(encoding="utf-8"))
    assert (cfg["a_min"], cfg["a_max"]) == DEFAULT_SPEC.hu_window
    assert (cfg["pixdim"],) * 3 == DEFAULT_SPEC.spacing
    assert cfg["orientation"] == DEFAULT_SPEC.orientation
    assert ((cfg["roi_size"],) * 3, (cfg["patch_size"],) * 3) == (DEFAULT_SPEC.input_size, DEFAULT_SPEC.patch_size)


@pytest.mark.parametrize("bundle, key", [("medgmae_pretrain", "resume_records#settings"), ("gmae2d_pretrain", "resume_records#settings")])
def test_a_checkpoint_recording_no_step_settings_resumes_with_a_warning(bundle, key, caplog):
    """grad_clip (and pre-training's num_samples) joined the settings a resume compares, as a section of their own
    ("step"): a checkpoint written before records no such section, and its run may have set --grad_clip to anything,
    so it resumes whatever the value, with a warning to give the same one; a record holding it refuses another."""
    import logging

    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle / "configs" / "train.json"))
    parser.update({"grad_clip": 0.5})
    record = parser.get_parsed_content(key)
    old = record.state_dict()
    del old["settings"]["step"]  # as an earlier version wrote it (its run had --grad_clip 0.5, unrecorded)
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        record.load_state_dict(old)
    # the pre-training bundle's step also records augment, whose earlier value (off) is known and compared
    unrecorded = "step.grad_clip or step.num_samples" if bundle == "medgmae_pretrain" else "step"
    assert f"records no {unrecorded} settings (an earlier version wrote it): they are not compared" in caplog.text
    saved = record.state_dict()
    parser.update({"grad_clip": 1.0})
    with pytest.raises(ValueError, match=r"step.grad_clip: saved 0.5, now 1.0"):
        parser.get_parsed_content(key, lazy=False).load_state_dict(saved)


@pytest.mark.parametrize("bundle, size_key, size, patch, ratio, refused", [
    ("medgmae_pretrain", "roi_size", 16, 16, 0.75, True),  # one patch: MAE keeps it visible
    ("medgmae_pretrain", "roi_size", 24, 12, 0.05, True),  # 8 patches x 0.05 = 0.4: none masked
    ("medgmae_pretrain", "roi_size", 24, 12, 0.2, False),  # 1.6: 2 masked
    ("medgmae_pretrain", "roi_size", 16, 16, 0.0, False),  # no masking asked (documented)
    ("medgmae_pretrain", "roi_size", 20, 12, 0.75, False),  # not a multiple of the patch: --roi_size's own error alone
    ("gmae2d_pretrain", "image_size", 32, 32, 0.75, True),
    ("gmae2d_pretrain", "image_size", 32, 16, 0.75, False),  # 4 patches: 3 masked
])  # fmt: skip
def test_a_mask_ratio_that_masks_no_patch_is_refused(bundle, size_key, size, patch, ratio, refused):
    """A crop of one patch (or a ratio rounding to no masked patch) trained with nothing masked while the log said
    "masked PSNR": refused with the settings, the count of patches named."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / bundle / "configs" / "train.json"))
    parser.update({size_key: size, "patch_size": patch, "mask_ratio": ratio})
    settings = parser.get_parsed_content("checked_settings")
    if not refused:
        check_settings({"mask_ratio": settings["mask_ratio"]}, output_dirs={})
        return
    with pytest.raises(BundleSettingError) as err:
        check_settings({"mask_ratio": settings["mask_ratio"]}, output_dirs={})
    n = (size // patch) ** (3 if bundle == "medgmae_pretrain" else 2)
    assert f"--mask_ratio: {ratio} masks no patch: a crop of {size} in patches of {patch} has {n} patch{'' if n == 1 else 'es'}," in str(err.value)
    assert ("or a larger ratio" in str(err.value)) == (n > 1)  # one patch stays visible whatever the ratio


def test_fine_tuning_refuses_a_resume_with_other_validation_or_loss_settings():
    """--val_interval (which epochs choose the best model), --sw_overlap (the validation Dice that chooses it) and
    the loss weights change the result without changing the epoch's length: they resumed silently; now named."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / "unetr_finetune" / "configs" / "train.json"))
    parser.update({"roi_size": 24, "encoder#patch_size": 12, "encoder#num_layers": 1, "feature_size": 4})
    saved = parser.get_parsed_content("settings_record").state_dict()
    parser.update({"val_interval": 2, "sw_overlap": 0.25, "loss#lambda_dice": 0.2})
    with pytest.raises(ValueError) as refused:
        parser.get_parsed_content("settings_record", lazy=False).load_state_dict(saved)
    for named in ("loss.lambda_dice: saved 1.0, now 0.2", "validation.val_interval: saved 1, now 2",
                  "validation.sw_overlap: saved 0.5, now 0.25"):
        assert named in str(refused.value), (named, refused.value)


def test_fine_tuning_refuses_a_layer_decay_above_one_with_the_settings():
    """--layer_decay 2 passed the settings check (a positive number) and failed in the optimiser, after the data
    were written."""
    parser = ConfigParser()
    parser.read_config(str(ROOT / "bundles" / "unetr_finetune" / "configs" / "train.json"))
    parser.update({"layer_decay": 2})
    with pytest.raises(BundleSettingError, match=r"--layer_decay: expected a number in \(0, 1\], got '2'"):
        check_settings({"layer_decay": parser.get_parsed_content("checked_settings")["layer_decay"]}, output_dirs={})


def _handler(config: dict, target: str) -> dict:
    """The entry of ``train#handlers`` whose ``_target_`` ends with ``target``."""
    return next(h for h in config["train"]["handlers"] if isinstance(h, dict) and h["_target_"].endswith(target))


@pytest.mark.parametrize("path", TRAIN_CONFIGS, ids=[p.parents[1].name for p in TRAIN_CONFIGS])
def test_every_training_bundle_takes_a_checkpoint_interval_checked_first(path):
    """Checkpoints (over 1 GB each for a 3D base model) were written every epoch; ``save_interval`` was reachable only
    as ``--train#handlers#3#save_interval``. Each training bundle has ``checkpoint_interval`` (1 by default), checked
    with the other settings, and its checkpoint handler and model export (the pre-trainings) follow it; in the
    pre-trainings the curves and summary of the run so far follow ``picture_interval``."""
    config = json.loads(path.read_text(encoding="utf-8"))
    assert config["checkpoint_interval"] == 1
    parser = ConfigParser()
    parser.read_config(str(path))
    parser.update({"checkpoint_interval": 0, "device": "cpu"})
    with pytest.raises(BundleSettingError) as err:
        check_settings(parser.get_parsed_content("checked_settings"), output_dirs={})
    assert "--checkpoint_interval: expected a positive integer, got '0'" in str(err.value)
    every = "$int(@checkpoint_interval)"
    if path.parents[1].name == "gvit_classification":
        assert _handler(config, "PhaseCheckpoint")["interval"] == every
        return
    assert _handler(config, ".CheckpointHandler")["save_interval"] == every
    if "pretrain" in path.parents[1].name:
        assert _handler(config, "ModelExportHandler")["interval"] == every
        assert _handler(config, "Summary")["interval"] == "$int(@picture_interval)"
