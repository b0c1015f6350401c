"""Pre-training data: dataset folders and datalists, the distributed sampler, and the warnings about volumes
(repeated by the sampler, alone, in attenuation units, smaller than the crop)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medgmae.mae_training import MaskedAutoencoderTrainer, build_model

from pretrain_helpers import TRAIN, SMALL, bundle_process


def test_distributed_sampler_is_reseeded_every_epoch():
    from monai.data import DataLoader, DistributedSampler

    data = [{"image": torch.full((1, 16, 16, 16), float(i) / 8)} for i in range(8)]
    sampler = DistributedSampler(data, num_replicas=2, rank=0, shuffle=True)
    seen = []
    model = build_model("voxel-mae", "tiny", img_size=16, patch_size=8)
    loader = DataLoader(data, batch_size=1, sampler=sampler)
    trainer = MaskedAutoencoderTrainer("cpu", 3, loader, model, torch.optim.SGD(model.parameters(), lr=0.0))
    from ignite.engine import Events

    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(round(float(e.state.batch["image"][0, 0, 0, 0, 0]) * 8)))
    trainer.run()
    orders = [seen[i * 4 : (i + 1) * 4] for i in range(3)]
    # the order of each epoch is torch's DistributedSampler permutation for that epoch (seed 0 + epoch)
    expected = []
    for epoch in (1, 2, 3):
        ref = torch.utils.data.DistributedSampler(data, num_replicas=2, rank=0, shuffle=True, seed=0)
        ref.set_epoch(epoch)
        expected.append(list(ref))
    assert orders == expected and len({tuple(o) for o in orders}) > 1


def test_bad_dataset_dir_fails_naming_the_path(tmp_path):
    missing = tmp_path / "no_such_data"
    proc = bundle_process("run", "training", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(missing),
                   "--output_dir", str(tmp_path / "out"), "--max_epochs", "1", cwd=tmp_path)  # fmt: skip
    assert proc.returncode != 0 and str(missing) in proc.stderr
    bad = tmp_path / "bad"
    (bad / "imagesTr").mkdir(parents=True)
    for name in ("good.nii.gz", "cut.nii.gz"):
        nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(0, 100, (48, 48, 40)).astype(np.float32), np.eye(4)),
                 str(bad / "imagesTr" / name))  # fmt: skip
    cut = bad / "imagesTr" / "cut.nii.gz"
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    listed = [{"image": f"imagesTr/{n}"} for n in ("good.nii.gz", "gone.nii.gz", "cut.nii.gz")]
    (bad / "dataset.json").write_text(json.dumps({"training": listed}))
    proc = bundle_process("run", "training", "--config_file", TRAIN, *SMALL, "--dataset_dir", str(bad),
                   "--output_dir", str(tmp_path / "out"), "--max_epochs", "1", cwd=tmp_path)  # fmt: skip
    # one message names both unusable files, before any data loading (no EOFError from inside a dataset)
    # (the error closes the log, repeated after the traceback)
    summary = proc.stderr.split("\nerror: ")[-1]
    problems = [line for line in summary.splitlines() if line.startswith("  - ")]
    assert proc.returncode != 0 and "2 problems in the data of" in summary and len(problems) == 2
    assert "gone.nii.gz" in problems[0] and "cut.nii.gz: cannot read the volume" in problems[1]
    assert "applying transform" not in proc.stderr  # stopped before any data loading
    assert not (tmp_path / "out").exists()  # nothing written


def test_training_volumes_the_sampler_repeats_are_warned(tmp_path, monkeypatch, caplog):
    """Under torchrun the sampler pads each epoch to a multiple of the processes, repeating volumes: whenever the
    count is not a multiple (3 volumes on 2 processes as on 4), rank 0 says so once, with the number torch's
    DistributedSampler repeats."""
    from torch.utils.data import DistributedSampler

    from medgmae.mae_training import pretrain_split

    folder = tmp_path / "vols"
    folder.mkdir()
    for name in ("a.nii.gz", "b.nii.gz", "c.nii.gz"):
        (folder / name).write_bytes(b"x")
    for size, rank, warned in (("3", "0", False), ("2", "0", True), ("4", "0", True), ("2", "1", False), ("4", "1", False)):
        monkeypatch.setenv("WORLD_SIZE", size)
        monkeypatch.setenv("RANK", rank)
        caplog.clear()
        with caplog.at_level("WARNING"):
            pretrain_split(str(folder), tmp_path, validate=False, val_fraction=0.0)
        said = [r.getMessage() for r in caplog.records if "processes" in r.getMessage()]
        drawn = [i for r in range(int(size)) for i in DistributedSampler(range(3), num_replicas=int(size), rank=r, shuffle=False)]
        per, extra = len(drawn) // int(size), len(drawn) - 3
        twice = sum(drawn.count(i) > 1 for i in range(3))  # counted from torch's sampler
        assert said == ([f"3 training volumes for {size} processes: the distributed sampler gives every process {per}, "
                         f"padding each epoch with {extra} repeated draw{'s' if extra > 1 else ''}, so {twice} "
                         f"volume{'s are' if twice > 1 else ' is'} trained more than once in that epoch; a multiple of "
                         f"{size} volumes avoids it"] if warned else []), (size, rank, said)  # fmt: skip


def test_a_single_volume_is_warned_about_by_rank_0_alone(tmp_path, monkeypatch, caplog):
    """One volume leaves nothing to hold out: every torchrun process validates on it, and rank 0 alone says so."""
    from medgmae.mae_training import pretrain_split

    folder = tmp_path / "vols"
    folder.mkdir()
    (folder / "a.nii.gz").write_bytes(b"x")
    for rank, warned in (("0", True), ("1", False)):
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", rank)
        caplog.clear()
        with caplog.at_level("WARNING"):
            pretrain_split(str(folder), tmp_path, validate=False, val_fraction=0.1)
        said = [r.getMessage() for r in caplog.records if "a single volume, nothing to hold out" in r.getMessage()]
        assert len(said) == (1 if warned else 0), said


def test_datalist_sources_and_errors(tmp_path):
    from medgmae.mae_training import pretrain_split

    folder = tmp_path / "vols"
    folder.mkdir()
    for name in ("b.nii.gz", "a.nrrd", "notes.txt"):
        (folder / name).write_bytes(b"x")
    split = pretrain_split(str(folder), tmp_path, validate=False, val_fraction=0.0)
    assert [Path(i["image"]).name for i in split["training"]] == ["a.nrrd", "b.nii.gz"]
    (tmp_path / "empty.json").write_text(json.dumps({"training": []}))
    with pytest.raises(ValueError, match="empty"):
        pretrain_split(str(tmp_path / "empty.json"), tmp_path)
    (tmp_path / "lab.json").write_text(json.dumps({"training": [{"image": "vols/b.nii.gz", "label": "vols/none.nii.gz"}]}))
    with pytest.raises(ValueError, match=r"lab\.json(.|\n)*label volume not found: .*none\.nii\.gz"):
        pretrain_split(str(tmp_path / "lab.json"), tmp_path)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json"):
        pretrain_split(str(tmp_path / "broken.json"), tmp_path)


def test_a_damaged_phantom_is_named_with_the_way_on(tmp_path):
    """A generated phantom cut short: a resume was refused as "trained on other data" (the file's size changed),
    and a fresh run's pre-check said "fix or remove these files"; the resume names the damaged file and says that
    deleting it generates it again (and, deleted, it is: the same bytes), the pre-check adds the same."""
    from medgmae.data.datalist import DatasetError
    from medgmae.engine.restore import ResumeRefused
    from medgmae.mae_training import check_pretrain_split, pretrain_split

    settings = {"num_phantoms": 2, "num_val_phantoms": 1, "phantom_shape": (16, 16, 12), "phantom_spacing": 8.0,
                "validate": False}  # fmt: skip
    pretrain_split("", tmp_path, **settings)
    (tmp_path / "checkpoint_epoch=1.pt").write_bytes(b"a checkpoint")  # a resume's (not read here)
    cut = tmp_path / "phantom" / "imagesTr" / "case_0001.nii.gz"
    whole = cut.read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ResumeRefused) as refused:
        pretrain_split("", tmp_path, resume=True, **settings)
    said = str(refused.value)
    assert f"{cut}: EOFError" in said and "Delete it and resume again: the run generates it again" in said, said
    split = pretrain_split("", tmp_path, resume=False, **settings)  # a fresh run: the pre-check finds it
    with pytest.raises(DatasetError, match="fix or remove these files") as refused:
        check_pretrain_split(split)
    said = str(refused.value)
    assert str(cut) in said and "These are generated phantoms" in said, said
    assert "delete a damaged one and the next run generates it again" in said, said
    cut.unlink()
    pretrain_split("", tmp_path, resume=True, **settings)
    assert cut.read_bytes() == whole


def _tiny_decathlon(root: Path) -> Path:
    """Three small CT volumes under ``root/imagesTr`` and a ``dataset_0.json`` listing two for training, one for
    validation (paths relative to ``root``)."""
    (root / "imagesTr").mkdir(parents=True)
    for i in range(3):
        data = np.random.default_rng(i).normal(0, 100, (24, 24, 20)).astype(np.float32)
        nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 3.0, 1.0])), str(root / "imagesTr" / f"c{i}.nii.gz"))
    dl = root / "dataset_0.json"
    dl.write_text(json.dumps({"training": [{"image": "imagesTr/c0.nii.gz"}, {"image": "imagesTr/c1.nii.gz"}],
                              "validation": [{"image": "imagesTr/c2.nii.gz"}]}))  # fmt: skip
    return dl


def test_datalist_names_the_data_as_for_fine_tuning(tmp_path):
    """``datalist`` is fine-tuning's key: a Decathlon JSON whose paths resolve against ``dataset_dir`` when given,
    else against the JSON's folder; its lists are the split, and no phantoms are written."""
    from medgmae.data import DatasetError
    from medgmae.mae_training import pretrain_split

    dl = _tiny_decathlon(tmp_path / "data")
    split = pretrain_split("", tmp_path / "run", datalist=str(dl), validate=False)
    assert [Path(i["image"]).name for i in split["training"]] == ["c0.nii.gz", "c1.nii.gz"]
    assert [i["image"] for i in split["validation"]] == [str(tmp_path / "data" / "imagesTr" / "c2.nii.gz")]
    moved = tmp_path / "lists" / "dataset_0.json"
    moved.parent.mkdir()
    moved.write_text(dl.read_text(encoding="utf-8"))
    split = pretrain_split(str(tmp_path / "data"), tmp_path / "run", datalist=str(moved), validate=False)
    assert split["validation"][0]["image"] == str(tmp_path / "data" / "imagesTr" / "c2.nii.gz")
    assert not (tmp_path / "run").exists()
    with pytest.raises(DatasetError, match=r"dataset_dir .*dataset_0\.json is a file: with a datalist"):
        pretrain_split(str(dl), tmp_path / "run", datalist=str(moved), validate=False)
    with pytest.raises(DatasetError, match="datalist not found"):
        pretrain_split("", tmp_path / "run", datalist=str(tmp_path / "nope.json"), validate=False)


def test_the_bundle_trains_on_a_datalist(tmp_path):
    """``--datalist`` is a setting of the bundle (it used to replace the internal list of training cases and fail
    with a TypeError after writing phantoms); the cases come from it."""
    from monai.bundle import ConfigParser

    dl = _tiny_decathlon(tmp_path / "data")
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"datalist": str(dl), "output_dir": str(tmp_path / "run"), "device": "cpu"})
    train, val = parser.get_parsed_content("train_cases"), parser.get_parsed_content("val_cases")
    assert [Path(i["image"]).name for i in train] == ["c0.nii.gz", "c1.nii.gz"] and len(val) == 1
    assert parser.get_parsed_content("num_workers") == min(4, len(os.sched_getaffinity(0)))  # real data, not phantoms
    assert not (tmp_path / "run" / "phantom").exists()


def test_pre_training_warns_about_a_volume_in_attenuation_units(tmp_path, caplog):
    """A volume of linear attenuation (1/mm) among CT volumes in HU would be trained on as an almost constant crop:
    the bundle's loading warns, naming the file, as zero-shot inference and segmentation do; a CT in HU passes."""
    import logging

    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from medgmae.data import LoadVolumed, WarnIfNotHUd

    hu = np.full((20, 20, 20), -1000.0, np.float32)
    hu[5:15, 5:15, 5:15] = 40.0
    nib.save(nib.Nifti1Image(hu, np.diag([1.5, 1.5, 2.0, 1.0])), str(tmp_path / "ct.nii.gz"))
    mu = np.clip(0.0192 * (1 + hu / 1000), 0, None)
    nib.save(nib.Nifti1Image(mu, np.diag([1.5, 1.5, 2.0, 1.0])), str(tmp_path / "mu.nii.gz"))
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"output_dir": str(tmp_path / "run"), "device": "cpu", "roi_size": 24})
    steps = parser.get_parsed_content("train#deterministic_transforms")  # the bundle's loading (training, validation)
    warn = next(t for t in steps if isinstance(t, WarnIfNotHUd))
    assert steps.index(warn) == 1 and isinstance(steps[0], LoadVolumed)  # on the volume as read, before the window
    load = Compose([LoadVolumed(keys="image"), warn])
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        load({"image": str(tmp_path / "ct.nii.gz")})
        assert "linear attenuation" not in caplog.text
        load({"image": str(tmp_path / "mu.nii.gz")})
    assert f"{tmp_path / 'mu.nii.gz'} looks like linear attenuation in 1/mm" in caplog.text


def test_pre_training_and_fine_tuning_warn_about_a_volume_smaller_than_the_crop(tmp_path, caplog):
    """A volume whose body is smaller than roi_size after resampling is padded with air in every crop: both training
    pipelines warn before their SpatialPadd, naming the file and its size, once per file; a large volume passes."""
    import logging
    import re

    from monai.bundle import ConfigParser
    from monai.transforms import Compose, SpatialPadd

    from medgmae.data import WarnIfPaddedd
    from medgmae.finetune.transforms import train_transforms
    from medgmae.preprocessing import PreprocessingSpec

    def ct(name, n, body):  # n^3 voxels of 1 mm, a body of body^3 voxels at 40 HU in air
        a = np.full((n, n, n), -1000.0, np.float32)
        lo = (n - body) // 2
        a[lo:lo + body, lo:lo + body, lo:lo + body] = 40.0
        nib.save(nib.Nifti1Image(a, np.diag([-1.0, -1.0, 1.0, 1.0])), str(tmp_path / name))
        return str(tmp_path / name)

    # 20^3 voxels at 1.5 mm (about half of a 24^3 crop padding); 36^3; 22 x 36 x 36 (8 % padding: not warned)
    small, large, slim = ct("small.nii.gz", 40, 30), ct("large.nii.gz", 60, 54), ct("slim.nii.gz", 60, 54)
    a = nib.load(slim).get_fdata()
    a[:, :, :] = -1000.0
    a[16:49, 3:57, 3:57] = 40.0
    nib.save(nib.Nifti1Image(a.astype(np.float32), nib.load(slim).affine), slim)
    parser = ConfigParser()
    parser.read_config(TRAIN)
    parser.update({"output_dir": str(tmp_path / "run"), "device": "cpu", "roi_size": 24})
    steps = parser.get_parsed_content("train#deterministic_transforms")
    warn = next(t for t in steps if isinstance(t, WarnIfPaddedd))
    assert isinstance(steps[steps.index(warn) + 1], SpatialPadd)
    spec = PreprocessingSpec(input_size=(24, 24, 24), patch_size=(12, 12, 12))
    fine = train_transforms(spec, num_samples=1)
    assert any(isinstance(t, WarnIfPaddedd) for t in fine.transforms)
    # the fine-tuning demonstration's small phantoms (a size the user did not choose) are not warned about
    assert not any(isinstance(t, WarnIfPaddedd) for t in train_transforms(spec, 1, warn_padding=False).transforms)
    pre = Compose(steps[: steps.index(warn) + 1])
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        pre({"image": large, "label": _label_like(large)})
        fine({"image": large, "label": _label_like(large)})
        pre({"image": slim, "label": _label_like(slim)})
        assert "smaller than the" not in caplog.text
        pre({"image": small, "label": _label_like(small)})
        pre({"image": small, "label": _label_like(small)})
    assert caplog.text.count(f"{small} is ") == 1
    size, share = re.search(r"is (\d+)x\1x\1 voxels.*24x24x24 crop: (\d+) % of it is padding", caplog.text).groups()
    assert int(size) in (19, 20) and int(share) == round(100 * (1 - (int(size) / 24) ** 3))
    assert " at 1.5x1.5x1.5 mm" in caplog.text
    # segmentation's inference said nothing of a scan mostly padding in its sliding window
    from medgmae.finetune.transforms import inference_transforms

    scan = ct("scan.nii.gz", 40, 30)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        inference_transforms(spec)({"image": large})
        assert "smaller than the" not in caplog.text
        inference_transforms(spec)({"image": scan})
    assert re.search(rf"{re.escape(scan)} is (\d+)x\1x\1 voxels.*24x24x24 sliding window: (\d+) % of it is padding.*expect a poorer result", caplog.text)
    assert " at 1.5x1.5x1.5 mm" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medgmae"):  # the run's own cases (phantoms): not warned about
        inference_transforms(spec, warn_padding=False)({"image": ct("own.nii.gz", 40, 30)})
    assert "smaller than the" not in caplog.text
    # a CT shifted down by 1024 HU (intercept applied twice) has nothing above the window's floor: its foreground crop
    # is empty, which was called "0x0x0 voxels ... check its field of view"; now the floor and the likely cause
    twice = ct("twice.nii.gz", 40, 30)
    nib.save(nib.Nifti1Image(nib.load(twice).get_fdata().astype(np.float32) - 1024, nib.load(twice).affine), twice)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        inference_transforms(spec)({"image": twice})
    assert f"{twice} looks like a CT shifted down by 1024 HU" in caplog.text
    assert f"{twice} has no voxel above the intensity window's floor (-175 in the image's values)" in caplog.text
    assert "0x0x0" not in caplog.text and "field of view" not in caplog.text


def _label_like(path: str) -> str:
    """A label map (0/1) on the grid of the volume at ``path``, written beside it."""
    img = nib.load(path)
    out = path.replace(".nii.gz", "_label.nii.gz")
    nib.save(nib.Nifti1Image((np.asarray(img.dataobj) > -500).astype(np.uint8), img.affine), out)
    return out
