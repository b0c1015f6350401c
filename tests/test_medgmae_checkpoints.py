"""MedGMAE, MedGMAE* and voxel-MAE checkpoints: round trips, wrong kinds and files, resumes of older records."""

from __future__ import annotations

import pytest
import torch

from medgmae.networks import MaskedViTEncoder, MedGMAE, VoxelMAE

from medgmae_model_helpers import (  # noqa: F401 - fixtures
    IMG,
    K,
    PATCH,
    models,
    random_volume as _volume,
    seeded_generator as _gen,
    small_medgmae as _gmae,
    small_voxel_mae as _vmae,
)


def test_star_checkpoint_from_before_the_intensity_rule_loads_as_clamp(tmp_path):
    """A MedGMAE* config saved without ``level_intensity`` rebuilds with the rule it was trained with."""
    model = _gmae(multi_level=True, level_intensity="clamp")
    cfg = {k: v for k, v in model.config().items() if k != "level_intensity"}
    assert MedGMAE.upgrade_config(cfg)["level_intensity"] == "clamp"
    assert MedGMAE(**MedGMAE.upgrade_config(cfg)).levels[0].intensity_residual == "clamp"
    assert MedGMAE.upgrade_config({**cfg, "multi_level": False})["level_intensity"] == "logit"  # no levels: no rule
    assert _gmae(multi_level=True).config()["level_intensity"] == "logit"
    with pytest.raises(ValueError, match="level_intensity"):
        _gmae(multi_level=True, level_intensity="relu")


def test_resuming_a_star_training_from_before_the_intensity_rule_keeps_or_names_it():
    """A training checkpoint's model record from before ``level_intensity``: a run built with the clamp rule it was
    trained with resumes; one built with today's default (logit) is refused, naming the field and both values."""
    from medgmae.mae_training import ModelConfigRecord

    old = ModelConfigRecord(_gmae(multi_level=True, level_intensity="clamp")).state_dict()
    old["config"] = {k: v for k, v in old["config"].items() if k != "level_intensity"}
    ModelConfigRecord(_gmae(multi_level=True, level_intensity="clamp")).load_state_dict(old)
    with pytest.raises(ValueError, match=r"level_intensity: saved 'clamp', now 'logit'") as e:
        ModelConfigRecord(_gmae(multi_level=True)).load_state_dict(old)
    assert "num_gaussians" not in str(e.value)  # only the fields that differ
    assert "--network_def#level_intensity clamp" in str(e.value)  # the override that restores the saved rule
    with pytest.raises(ValueError, match=r"level_intensity: saved 'logit', now 'clamp'") as e:  # and the other way
        ModelConfigRecord(_gmae(multi_level=True, level_intensity="clamp")).load_state_dict(
            ModelConfigRecord(_gmae(multi_level=True)).state_dict())
    assert "--network_def#level_intensity logit" in str(e.value) and "level_intensity clamp)" not in str(e.value)
    with pytest.raises(ValueError, match=r"configuration \(num_gaussians: saved 16, now 8\)\. Resume"):
        ModelConfigRecord(MedGMAE(img_size=IMG, patch_size=PATCH, model_size="tiny", num_gaussians=8)).load_state_dict(
            ModelConfigRecord(MedGMAE(img_size=IMG, patch_size=PATCH, model_size="tiny", num_gaussians=16)).state_dict())


def test_resuming_a_plain_medgmae_training_from_before_the_intensity_rule_resumes():
    """A plain MedGMAE run's model record as releases before ``level_intensity`` existed wrote it (pre-training
    bundle 0.1.0 before f9dccec: no ``level_intensity`` key) was refused with "level_intensity: saved (not recorded), now
    'logit'" and no flag helped, though the rule does nothing without levels; it resumes as built today."""
    from medgmae.mae_training import ModelConfigRecord

    old = ModelConfigRecord(_gmae()).state_dict()
    old["config"] = {k: v for k, v in old["config"].items() if k != "level_intensity"}
    ModelConfigRecord(_gmae()).load_state_dict(old)
    with pytest.raises(ValueError, match=r"configuration \(num_gaussians: saved 12, now 8\)\. Resume"):
        ModelConfigRecord(MedGMAE(img_size=IMG, patch_size=PATCH, model_size="tiny", num_gaussians=8)).load_state_dict(old)


def test_a_resume_as_another_model_kind_names_the_kind_and_its_flag_not_an_override_of_a_field():
    """A MedGMAE* run resumed as a voxel-MAE was refused listing ten fields each "saved X, now (not set)" and the
    advice to resume with --network_def#level_intensity logit, which cannot help; it names the kind and
    --model_kind."""
    from medgmae.mae_training import ModelConfigRecord

    star = ModelConfigRecord(_gmae(multi_level=True)).state_dict()
    with pytest.raises(ValueError) as e:
        ModelConfigRecord(_vmae()).load_state_dict(star)
    said = str(e.value)
    assert "kind: saved 'medgmae-star', now 'voxel-mae'" in said and "(here --model_kind medgmae-star)" in said, said
    assert "level_intensity" not in said and "num_gaussians" not in said


def test_a_resume_into_another_model_configuration_is_a_resume_refusal():
    """``--resume true`` with another ``--num_gaussians`` (3D pre-training, 2D GMAE) is a refusal of the settings
    given: a ``ResumeRefused``, alone or beside another refusal of the checkpoint, so that the bundle prints its
    message alone (README, "When it stops"), not under MONAI's traceback as an unexpected ``ValueError``."""
    from pathlib import Path

    from medgmae.engine.restore import ResumeRefused, refusal, restore_states
    from medgmae.mae_training import ModelConfigRecord

    saved = ModelConfigRecord(MedGMAE(img_size=IMG, patch_size=PATCH, model_size="tiny", num_gaussians=16)).state_dict()
    now = ModelConfigRecord(MedGMAE(img_size=IMG, patch_size=PATCH, model_size="tiny", num_gaussians=8))
    with pytest.raises(ResumeRefused, match=r"num_gaussians: saved 16, now 8"):
        now.load_state_dict(saved)
    with pytest.raises(ResumeRefused, match=r"\('config'\): the checkpoint was written by a different model") as e:
        restore_states(Path("run/checkpoint_epoch=3.pt"), [("config", now)], {"config": saved})
    epochs = ResumeRefused("checkpoint run/checkpoint_epoch=3.pt has already trained 3 epochs = --max_epochs 3")
    assert type(refusal("both", [epochs, e.value])) is ResumeRefused


@pytest.mark.parametrize(
    "cls,kw,kind", [(MedGMAE, {}, "medgmae"), (MedGMAE, {"multi_level": True}, "medgmae-star"), (VoxelMAE, {}, "voxel-mae")]
)
def test_checkpoint_round_trip(tmp_path, cls, kw, kind):
    torch.manual_seed(3)
    model = cls(img_size=IMG, patch_size=PATCH, model_size="tiny", **({"num_gaussians": K} if cls is MedGMAE else {}), **kw)
    x = _volume(1)
    ref = model(x, generator=_gen()).pred
    torch.save(model.model_checkpoint(), tmp_path / "model.pt")
    record = {"kind": model.kind, "config": model.config(), "preprocessing": None}  # CheckpointHandler's layout
    torch.save({"objects": {"model": model.state_dict(), "config": record}}, tmp_path / "train.pt")
    for name in ("model.pt", "train.pt"):
        loaded = cls.from_checkpoint(tmp_path / name)
        assert loaded.config() == model.config() and loaded.kind == model.kind
        assert torch.equal(loaded(x, generator=_gen()).pred, ref)
    enc = model.encoder_checkpoint()
    assert enc["kind"] == "medgmae-encoder" and enc["extra"]["source"] == kind  # tells MedGMAE* from MedGMAE
    encoder = MaskedViTEncoder(**enc["config"])
    encoder.load_state_dict(enc["state_dict"])
    assert torch.equal(encoder(x)[0], model.encoder(x)[0])


def test_from_checkpoint_wrong_kind_and_bad_files(tmp_path, models):
    torch.save(models["voxel"].model_checkpoint(), tmp_path / "voxel.pt")
    torch.save(models["medgmae"].encoder_checkpoint(), tmp_path / "encoder.pt")
    torch.save(models["medgmae"].model_checkpoint(), tmp_path / "gmae.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"voxel\.pt is a voxel-mae checkpoint.*expected medgmae or medgmae-star"):
        MedGMAE.from_checkpoint(tmp_path / "voxel.pt")
    with pytest.raises(ValueError, match=r"encoder\.pt is a medgmae-encoder checkpoint.*expected voxel-mae"):
        VoxelMAE.from_checkpoint(tmp_path / "encoder.pt")
    with pytest.raises(ValueError, match=r"gmae\.pt is a medgmae checkpoint"):
        VoxelMAE.from_checkpoint(tmp_path / "gmae.pt")
    with pytest.raises(ValueError, match=r"junk\.pt"):
        MedGMAE.from_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        MedGMAE.from_checkpoint(tmp_path / "missing.pt")
