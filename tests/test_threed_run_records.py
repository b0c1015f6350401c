"""The 3D model files record the seed and data loader workers of the training session that wrote them
(``extra["run"]``): pre-training's ``model.pt``, ``best_model.pt`` and ``encoder.pt`` (MedGMAE, MedGMAE* and the
voxel-MAE alike), fine-tuning's ``best_model.pt`` and the ``model.ts`` exported from it (its metadata's ``run``);
files of earlier versions record none and load as before."""

from __future__ import annotations

import json

import pytest
import torch
from finetune_helpers import CONFIGS as FINETUNE_CONFIGS
from finetune_helpers import bundle_process as finetune_process
from monai.bundle import verify_metadata
from pretrain_helpers import SMALL, TRAIN, bundle_process, succeeded

from medgmae.checkpoint import load_checkpoint
from medgmae.finetune import load_finetuned
from medgmae.finetune.export import export_torchscript, load_exported
from medgmae.mae_training import build_model
from medgmae.mae_training.validation import save_best_model
from medgmae.networks import MedGMAE
from medgmae.networks.mae_base import MaskedAutoencoder


@pytest.mark.parametrize("kind", ["medgmae", "medgmae-star", "voxel-mae"])
def test_a_built_model_writes_its_run_into_every_file_and_reads_it_back(kind, tmp_path):
    """``build_model(run_settings=...)`` records the run in model.pt, encoder.pt and best_model.pt, read back as
    ``run_settings``; a model built without one, or a file from before, records none (``None``); a malformed
    record is refused when the model is built."""
    model = build_model(kind, img_size=16, patch_size=8, num_gaussians=2, run_settings={"seed": 5, "num_workers": 3})
    torch.save(model.model_checkpoint(), tmp_path / "model.pt")
    torch.save(model.encoder_checkpoint(), tmp_path / "encoder.pt")
    save_best_model(model, tmp_path, epoch=2, psnr=20.0)
    for name in ("model.pt", "encoder.pt", "best_model.pt"):
        assert torch.load(tmp_path / name, weights_only=True)["extra"]["run"] == {"seed": 5, "num_workers": 3}, name
    assert torch.load(tmp_path / "best_model.pt", weights_only=True)["extra"]["best"] == {"epoch": 2, "val_psnr": 20.0}
    back = MaskedAutoencoder.from_checkpoint(tmp_path / "model.pt")
    assert back.kind == kind and back.run_settings == {"seed": 5, "num_workers": 3}
    assert load_checkpoint(tmp_path / "encoder.pt", "medgmae-encoder").run == {"seed": 5, "num_workers": 3}
    assert "run_settings" not in back.config()  # not an argument of the model

    older = torch.load(tmp_path / "model.pt", weights_only=True)
    del older["extra"]["run"]
    torch.save(older, tmp_path / "older.pt")
    assert MaskedAutoencoder.from_checkpoint(tmp_path / "older.pt").run_settings is None
    plain = build_model(kind, img_size=16, patch_size=8, num_gaussians=2)
    assert plain.run_settings is None and "run" not in plain.model_checkpoint()["extra"]
    with pytest.raises(ValueError, match="seed"):
        build_model(kind, img_size=16, patch_size=8, num_gaussians=2, run_settings={"seed": -1})


def test_a_pretraining_run_records_the_seed_and_workers_of_the_session_that_wrote_each_file(tmp_path):
    """model.pt, best_model.pt and encoder.pt say the run's seed and loader workers, as its summary.json does; a
    resume with other workers writes its own into the files it writes; a model.pt without the record loads."""
    out = tmp_path / "run"
    base = [*SMALL, "--output_dir", str(out), "--seed", "4"]
    succeeded(bundle_process("run", "training", "--config_file", TRAIN, *base, "--max_epochs", "1", "--num_workers", "0", cwd=tmp_path))
    training = json.loads((out / "summary.json").read_text(encoding="utf-8"))["settings"]["training"]
    assert (training["seed"], training["num_workers"]) == (4, 0)
    for name in ("model.pt", "best_model.pt", "encoder.pt"):
        assert torch.load(out / name, weights_only=True)["extra"]["run"] == {"seed": 4, "num_workers": 0}, name
    assert MedGMAE.from_checkpoint(out / "model.pt").run_settings == {"seed": 4, "num_workers": 0}

    succeeded(bundle_process("run", "training", "--config_file", TRAIN, *base, "--max_epochs", "2", "--num_workers", "1",
                             "--resume", "true", cwd=tmp_path))  # fmt: skip
    resumes = json.loads((out / "summary.json").read_text(encoding="utf-8"))["resumes"]
    assert [r["num_workers"] for r in resumes] == [1]
    for name in ("model.pt", "encoder.pt"):
        assert torch.load(out / name, weights_only=True)["extra"]["run"] == {"seed": 4, "num_workers": 1}, name

    older = torch.load(out / "model.pt", weights_only=True)
    del older["extra"]["run"]
    torch.save(older, tmp_path / "older.pt")
    model = MedGMAE.from_checkpoint(tmp_path / "older.pt").eval()
    assert model.run_settings is None and model.preprocessing.spacing == (3.0, 3.0, 3.0)


def test_a_fine_tuning_run_records_them_in_its_best_model_and_the_export(tmp_path):
    """best_model.pt records the run's seed and loader workers (as training_cases.json records the seed), which
    ``load_finetuned`` and the export's metadata carry on; a best_model.pt without the record loads, and its export
    states none (not even one its metadata template holds)."""
    out = tmp_path / "run"
    proc = finetune_process("training", "train.json", "--output_dir", str(out), "--device", "cpu", "--feature_size", "4",
                            "--phantom_shape", "[32, 32, 24]", "--phantom_cases", "3", "--num_samples", "1",
                            "--roi_size", "[24, 24, 24]", "--progress_bar", "false", "--max_epochs", "1", "--seed", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "training_cases.json").read_text(encoding="utf-8"))["training_seed"] == 2
    assert torch.load(out / "best_model.pt", weights_only=True)["extra"]["run"] == {"seed": 2, "num_workers": 0}
    assert load_finetuned(out / "best_model.pt").run_settings == {"seed": 2, "num_workers": 0}
    template = tmp_path / "metadata.json"  # the bundle's, holding a stale record of another run
    bundle_meta = json.loads((FINETUNE_CONFIGS / "metadata.json").read_text(encoding="utf-8"))
    template.write_text(json.dumps({**bundle_meta, "run": {"seed": 99}}), encoding="utf-8")
    meta = load_exported(export_torchscript(out / "best_model.pt", tmp_path / "model.ts", template))[2]
    assert meta["run"] == {"seed": 2, "num_workers": 0}
    (tmp_path / "meta.json").write_text(json.dumps(meta), encoding="utf-8")  # still MONAI's metadata
    verify_metadata(meta_file=str(tmp_path / "meta.json"), filepath=str(FINETUNE_CONFIGS.parents[1] / "schema" / "meta_schema.json"))

    older = torch.load(out / "best_model.pt", weights_only=True)
    del older["extra"]["run"]
    torch.save(older, tmp_path / "best_model.pt")
    assert load_finetuned(tmp_path / "best_model.pt").run_settings is None
    meta = load_exported(export_torchscript(tmp_path / "best_model.pt", tmp_path / "older.ts", template))[2]
    assert "run" not in meta and meta["eval_metrics"]["best_epoch"] == 1
