"""The fine-tuned UNETR exported as TorchScript with its pre-processing (medgmae.finetune.export, export.json)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medgmae.checkpoint import make_checkpoint
from medgmae.finetune.export import export_torchscript, load_exported
from medgmae.networks.unetr import MedGMAEUNETR
from medgmae.networks.vit import MaskedViTEncoder
from medgmae.preprocessing import PreprocessingSpec

from bundle_helpers import setting_error_in_process
from finetune_helpers import bundle_in_this_process

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "unetr_finetune" / "configs"
#: not the bundle's defaults: anisotropic spacing, another window, a non-cubic patch
SPEC = PreprocessingSpec(spacing=(0.8, 1.1, 2.5), hu_window=(-300.0, 400.0), input_size=(24, 24, 12), patch_size=12)


def _finetuned(path: Path, out_channels: int = 5) -> MedGMAEUNETR:
    torch.manual_seed(3)
    enc = MaskedViTEncoder(img_size=(24, 24, 12), patch_size=12, hidden_size=48, num_layers=2, num_heads=4, mlp_ratio=2.0)
    net = MedGMAEUNETR(out_channels, encoder=enc, feature_size=4).eval()
    torch.save(make_checkpoint("medgmae-unetr", net.config(), net.state_dict(), SPEC, {"epoch": 1}), path)
    return net


def test_export_matches_the_network_and_carries_the_spec(tmp_path):
    net = _finetuned(tmp_path / "best_model.pt")
    path = export_torchscript(tmp_path / "best_model.pt", tmp_path / "model.ts", CONFIGS / "metadata.json")
    traced, spec, meta = load_exported(path)
    assert spec == SPEC
    assert meta["roi_size"] == [24, 24, 12] and meta["in_channels"] == 1 and meta["out_channels"] == 5
    assert meta["name"] == "UNETR fine-tuning"  # the bundle's metadata travels too
    for seed in range(3):  # the network as built here, on inputs neither export nor tracing saw
        x = torch.randn(2, 1, 24, 24, 12, generator=torch.Generator().manual_seed(100 + seed))
        with torch.no_grad():
            torch.testing.assert_close(traced(x), net(x), atol=1e-4, rtol=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model.pt", "model.ts"]  # no temporary file left


def test_a_model_recording_no_preprocessing_is_exported_with_the_default_at_its_own_window(tmp_path, caplog):
    """A ``best_model.pt`` without a spec stopped the export with ``'NoneType' object has no attribute ...``."""
    net = _finetuned(tmp_path / "best_model.pt")
    torch.save(make_checkpoint("medgmae-unetr", net.config(), net.state_dict(), None, {"epoch": 1}), tmp_path / "best_model.pt")
    with caplog.at_level("WARNING"):
        _, spec, meta = load_exported(export_torchscript(tmp_path / "best_model.pt", tmp_path / "model.ts"))
    assert spec.spacing == (1.5, 1.5, 1.5) and spec.hu_window == (-175.0, 250.0)  # the pre-training bundle's defaults
    assert spec.input_size == (24, 24, 12) and meta["roi_size"] == [24, 24, 12]
    assert "best_model.pt records no pre-processing" in caplog.text


def _network_data_format_matches(model_ts: Path) -> tuple[dict, torch.Tensor]:
    """MONAI's ``network_data_format`` read back with plain MONAI, checked against a forward pass of the file."""
    from monai.data import load_net_with_metadata

    net, meta, _ = load_net_with_metadata(str(model_ts), map_location=torch.device("cpu"))
    fmt = meta["network_data_format"]
    image, pred = fmt["inputs"]["image"], fmt["outputs"]["pred"]
    x = torch.rand(1, image["num_channels"], *image["spatial_shape"])
    with torch.no_grad():
        y = net(x)
    assert list(y.shape[1:]) == [pred["num_channels"], *pred["spatial_shape"]]
    assert len(pred["channel_def"]) == pred["num_channels"] and len(image["channel_def"]) == image["num_channels"]
    return meta, y


def test_network_data_format_describes_the_exported_network(tmp_path):
    """model.ts's standard MONAI metadata follows the run (its patch, classes, spacing, window), not the bundle's
    96^3 / 14-class template; class names come from the datalist the run recorded."""
    _finetuned(tmp_path / "best_model.pt", out_channels=4)
    names = {"0": "background", "1": "liver", "2": "spleen", "3": "left kidney"}
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": names, "training": [], "validation": []}))
    (tmp_path / "training_cases.json").write_text(json.dumps({"datalist": str(tmp_path / "dataset.json")}))
    export_torchscript(tmp_path / "best_model.pt", tmp_path / "model.ts", CONFIGS / "metadata.json")
    meta, y = _network_data_format_matches(tmp_path / "model.ts")
    assert tuple(y.shape) == (1, 4, 24, 24, 12)
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["channel_def"] == names and meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [24, 24, 12]
    assert meta["network_data_format"]["inputs"]["image"]["modality"] == "CT"  # the template's other keys stay
    assert "24x24x12" in meta["description"] and "0.8 x 1.1 x 2.5 mm" in meta["description"]
    assert "[-300, 400]" in meta["description"] and "96" not in meta["description"]


def test_network_data_format_without_a_run_record_names_classes_generically(tmp_path):
    _finetuned(tmp_path / "best_model.pt", out_channels=3)
    export_torchscript(tmp_path / "best_model.pt", tmp_path / "model.ts")  # no template, no training_cases.json
    meta, _ = _network_data_format_matches(tmp_path / "model.ts")
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "class_1", "2": "class_2"}


def test_metadata_states_logits_and_the_runs_score_and_classes(tmp_path):
    """The output is described as unbounded logits (MONAI's "labels" format, value_range []), and eval_metrics /
    label_classes are the run's (best_model.pt's score, its 18 classes), not the template's placeholders."""
    from monai.bundle import verify_metadata

    net = _finetuned(tmp_path / "best_model.pt", out_channels=18)
    extra = {"epoch": 7, "metric_name": "val_mean_dice", "metric": 0.6125}
    torch.save(make_checkpoint("medgmae-unetr", net.config(), net.state_dict(), SPEC, extra), tmp_path / "best_model.pt")
    names = {str(i): ("background" if i == 0 else f"organ {i}") for i in range(18)}
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": names, "training": [], "validation": []}))
    (tmp_path / "training_cases.json").write_text(json.dumps({"datalist": str(tmp_path / "dataset.json")}))
    export_torchscript(tmp_path / "best_model.pt", tmp_path / "model.ts", CONFIGS / "metadata.json")
    meta, y = _network_data_format_matches(tmp_path / "model.ts")
    recorded = torch.load(tmp_path / "best_model.pt", weights_only=True)["extra"]
    assert meta["eval_metrics"] == {"mean_dice": recorded["metric"], "best_epoch": recorded["epoch"]}
    assert "18 classes" in meta["label_classes"] and "17 organ 17" in meta["label_classes"]
    assert "BTCV" not in meta["label_classes"] and "logits" in meta["pred_classes"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert pred["format"] == "labels" and pred["value_range"] == []
    assert y.min() < 0 or y.max() > 1  # logits: not confined to [0, 1]
    torch.testing.assert_close(torch.softmax(y, 1).sum(1), torch.ones_like(y[:, 0]))  # softmax gives probabilities
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    verify_metadata(meta_file=str(tmp_path / "meta.json"), filepath=str(REPO / "bundles" / "schema" / "meta_schema.json"))


def test_metadata_without_a_recorded_score_states_none(tmp_path):
    _finetuned(tmp_path / "best_model.pt", out_channels=3)  # extra: epoch only
    export_torchscript(tmp_path / "best_model.pt", tmp_path / "model.ts", CONFIGS / "metadata.json")
    assert "eval_metrics" not in load_exported(tmp_path / "model.ts")[2]


def test_load_exported_refuses_other_files(tmp_path):
    bad = tmp_path / "model.ts"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a TorchScript file"):
        load_exported(bad)
    with pytest.raises(FileNotFoundError, match="no such TorchScript file"):
        load_exported(tmp_path / "missing.ts")


def test_load_exported_names_a_model_file_given_for_an_export(tmp_path):
    """A fine-tuned ``best_model.pt`` (torch.save) was called "not a TorchScript file" with torch's "your checkpoint
    file is corrupted": it is named as the checkpoint it is, with the ways to use it; another torch.save file (a
    bare state_dict) as one, and not as corrupted."""
    import re

    net = _finetuned(tmp_path / "best_model.pt")
    with pytest.raises(ValueError) as refused:
        load_exported(tmp_path / "best_model.pt")
    assert str(refused.value) == (f"{tmp_path / 'best_model.pt'}: is a medgmae-unetr checkpoint (torch.save), not a "
                                  "TorchScript export: use load_finetuned, or export it with export.json")  # fmt: skip
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ValueError, match=re.escape("weights.pt: a file written by torch.save, not a TorchScript export")) as refused:
        load_exported(tmp_path / "weights.pt")
    assert "corrupted" not in str(refused.value)


def _run_export(*overrides: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "monai.bundle", "run", "exporting", "--config_file", str(CONFIGS / "export.json"),
           "--logging_file", str(CONFIGS / "logging.conf"), *overrides]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, encoding="utf-8", errors="replace", timeout=300)


def test_bundle_export_writes_model_ts_and_refuses_a_pretraining_file(tmp_path):
    _finetuned(tmp_path / "best_model.pt", out_channels=3)
    proc = _run_export("--output_dir", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert load_exported(tmp_path / "model.ts")[2]["out_channels"] == 3
    enc = MaskedViTEncoder(img_size=24, patch_size=12, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    wrong = tmp_path / "encoder.pt"
    torch.save(make_checkpoint("medgmae-encoder", enc.config(), enc.state_dict(), SPEC), wrong)
    proc = _run_export("--checkpoint", str(wrong), "--export_path", str(tmp_path / "other.ts"))
    assert proc.returncode != 0
    assert str(wrong) in proc.stderr and "medgmae-encoder" in proc.stderr and "export needs" in proc.stderr
    with pytest.raises(ValueError, match="is a folder"):
        export_torchscript(tmp_path / "best_model.pt", tmp_path)
    assert not (tmp_path / "other.ts").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_bundle_export_from_another_folder_reads_the_bundles_metadata(tmp_path):
    """The summary's export command (absolute config, the run folder relative to where it ran) works from a folder
    other than the repository root: the metadata template is the bundle's own ``metadata.json``."""
    (tmp_path / "rel_run").mkdir()
    _finetuned(tmp_path / "rel_run" / "best_model.pt", out_channels=3)
    proc = _run_export("--output_dir", "rel_run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    meta = load_exported(tmp_path / "rel_run" / "model.ts")[2]
    bundle_meta = json.loads((CONFIGS / "metadata.json").read_text(encoding="utf-8"))
    assert meta["version"] == bundle_meta["version"] and meta["name"] == bundle_meta["name"]


def test_config_folder_is_the_first_config_files_folder(tmp_path, monkeypatch):
    from medgmae.bundle_command_line import config_folder

    (tmp_path / "copy" / "configs").mkdir(parents=True)
    (tmp_path / "copy" / "configs" / "export.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    runner = str(Path(json.__file__).parents[1] / "site-packages" / "monai" / "bundle" / "__main__.py")
    assert config_folder("unetr_finetune", [runner, "run", "--config_file", "copy/configs/export.json"]) == str(
        tmp_path / "copy" / "configs")
    assert config_folder("unetr_finetune", ["pytest"]) == str(CONFIGS)


def _plain_monai_segmentation(model_ts: Path, image: Path) -> np.ndarray:
    """Labels of ``image`` from ``model.ts`` with plain MONAI, following only the file's metadata (no toolkit code)."""
    from monai.data import load_net_with_metadata
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import (Activationsd, AsDiscreted, Compose, CropForegroundd, EnsureChannelFirstd,
                                  EnsureTyped, Invertd, LoadImaged, Orientationd, ScaleIntensityRanged, Spacingd)  # fmt: skip

    net, meta, _ = load_net_with_metadata(str(model_ts), map_location=torch.device("cpu"))
    p, recipe = meta["preprocessing"], meta["inference"]
    (crop,) = recipe["after_preprocessing"]
    assert crop["transform"] == "CropForegroundd" and crop["select"] == "image > 0"
    steps = recipe["preprocessing_steps"]
    assert [step["transform"] for step in steps] == ["Orientationd", "Spacingd", "ScaleIntensityRanged"]
    pre = Compose([
        LoadImaged("image", image_only=False), EnsureChannelFirstd("image"),
        Orientationd("image", axcodes=p["orientation"], labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd("image", pixdim=p["spacing"], mode=steps[1]["mode"], dtype=getattr(torch, steps[1]["dtype"])),  # stated, not MONAI's defaults
        ScaleIntensityRanged("image", a_min=p["hu_window"][0], a_max=p["hu_window"][1], b_min=p["intensity_range"][0],
                             b_max=p["intensity_range"][1], clip=p["clip"]),
        CropForegroundd("image", source_key=crop["source_key"], allow_smaller=crop["allow_smaller"]),
        EnsureTyped("image"),
    ])  # fmt: skip
    d = pre({"image": str(image)})
    inferer = SlidingWindowInferer(roi_size=meta["roi_size"], sw_batch_size=2, overlap=recipe["inferer"]["overlap"])
    with torch.no_grad():
        d["pred"] = inferer(d["image"][None], net.eval())[0]
    post = Compose([Activationsd("pred", softmax=True),
                    Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
                    AsDiscreted("pred", argmax=True)])  # fmt: skip
    return post(d)["pred"][0].numpy().astype(np.uint8)


def test_the_recipe_states_the_specs_resampling():
    """The metadata's preprocessing steps are the ones PreprocessingSpec.transforms builds for an image, in order,
    with its interpolation mode."""
    from medgmae.finetune.export import INFERENCE_RECIPE
    from medgmae.preprocessing import PreprocessingSpec

    built = PreprocessingSpec().transforms(("image",))
    steps = INFERENCE_RECIPE["preprocessing_steps"]
    assert [type(t).__name__ for t in built] == [step["transform"] for step in steps]
    spacing = built[1]
    assert str(spacing.mode[0]).lower().endswith(steps[1]["mode"])
    assert spacing.dtype[0] == getattr(torch, steps[1]["dtype"]) == torch.float32


def test_plain_monai_following_the_metadata_gives_the_bundles_labels(tmp_path):
    """The exported file is enough: plain MONAI, reading only model.ts's metadata, segments an oblique,
    anisotropic scan exactly as the bundle's ``inferring`` run does with best_model.pt."""
    _finetuned(tmp_path / "best_model.pt", out_channels=3)
    export_torchscript(tmp_path / "best_model.pt", tmp_path / "model.ts")
    rng = np.random.default_rng(0)
    hu = np.full((30, 26, 9), -1000.0, dtype=np.float32)  # air around a body: the foreground crop matters
    hu[4:26, 3:22, 1:8] = rng.normal(40.0, 150.0, size=(22, 19, 7))
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    affine = np.eye(4)
    affine[:3, :3] = np.array([[-c, s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([0.9, 1.2, 2.7])
    affine[:3, 3] = [30.0, -12.0, 80.0]
    image = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(hu, affine), str(image))
    bundle_in_this_process("inferring", "inference.json", output_dir=str(tmp_path), device="cpu", input_files=[str(image)])
    bundle = np.asarray(nib.load(str(tmp_path / "segmentations" / "ct_seg.nii.gz")).dataobj)
    plain = _plain_monai_segmentation(tmp_path / "model.ts", image)
    assert plain.shape == bundle.shape == hu.shape
    assert len(np.unique(bundle)) > 1  # not a trivial all-background answer
    np.testing.assert_array_equal(plain, bundle)


def test_bundle_export_refuses_a_folder_and_a_bad_metadata_file_as_settings(tmp_path):
    """An ``--export_path`` that is a folder, a missing ``--metadata_file``, one that is not JSON and a missing
    ``--checkpoint`` are refused as settings, each named, before anything is traced: the message alone, no traceback (they ended in MONAI's
    traceback), and nothing written."""
    _finetuned(tmp_path / "best_model.pt", out_channels=3)
    (tmp_path / "folder").mkdir()
    (tmp_path / "broken.json").write_text('{"name": ', encoding="utf-8")
    cases = {("--export_path", str(tmp_path / "folder")): f"--export_path: {tmp_path / 'folder'} is a folder; give the file to write",
             ("--metadata_file", str(tmp_path / "nope.json")): f"--metadata_file: {tmp_path / 'nope.json'}: the bundle's metadata.json was not found",
             ("--metadata_file", str(tmp_path / "broken.json")): f"--metadata_file: {tmp_path / 'broken.json'}: the bundle's metadata.json is not valid JSON",
             ("--checkpoint", str(tmp_path / "none.pt")): f"--checkpoint: {tmp_path / 'none.pt'}: no such file (the best_model.pt of a fine-tuning run)",
             # it said "model checkpoint . is a folder, not a file" (the current folder)
             ("--checkpoint", ""): "--checkpoint: expected the path of a fine-tuning run's best_model.pt, got an empty value",
             ("--export_path", ""): "--export_path: expected the file to write (e.g. model.ts), got an empty value",  # "is a folder"
             ("--metadata_file", str(tmp_path / "folder")): f"--metadata_file: {tmp_path / 'folder'} is a folder: give the "
                                                           "bundle's metadata.json"}  # fmt: skip
    for i, (flag, message) in enumerate(cases.items()):
        if i == 0:  # the command line prints the message alone
            proc = _run_export("--output_dir", str(tmp_path), *flag)
            assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
            printed = proc.stderr
            assert "error: BundleSettingError: 1 bad setting, nothing was written" in printed and message in printed, printed[-2000:]
            continue
        said = setting_error_in_process("exporting", "unetr_finetune/configs/export.json", "--output_dir", str(tmp_path), *flag)
        assert "1 bad setting, nothing was written" in said and message in said, said  # the others in this process
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_model.pt", "broken.json", "folder"] and not any((tmp_path / "folder").iterdir())


def test_evaluation_and_inference_refuse_a_missing_or_other_model_as_a_setting(tmp_path):
    """A wrong --output_dir (no best_model.pt: it ended in MONAI's traceback) or a pre-training run's best_model.pt
    given to evaluate.json / inference.json is a bad --checkpoint setting, named before anything is read; the
    message alone, no traceback, nothing written."""
    from medgmae.networks import MedGMAE

    pre = tmp_path / "pre"
    pre.mkdir()
    torch.save(MedGMAE(img_size=24, patch_size=12, model_size="tiny", num_gaussians=4).model_checkpoint(), pre / "best_model.pt")
    cases = {tmp_path / "none": f"--checkpoint: {tmp_path / 'none' / 'best_model.pt'}: no such file (the best_model.pt of a fine-tuning run)",
             pre: "--checkpoint: best_model.pt is a medgmae checkpoint (MedGMAE model); evaluation and inference need the "
                  "best_model.pt of a fine-tuning run"}  # fmt: skip
    for (run_id, config), (folder, message) in zip([("evaluating", "evaluate.json"), ("inferring", "inference.json")], cases.items()):
        cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(CONFIGS / config), "--output_dir",
               str(folder), "--device", "cpu"]  # fmt: skip
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=300)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr and message in proc.stderr, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pre"] and [p.name for p in pre.iterdir()] == ["best_model.pt"]
