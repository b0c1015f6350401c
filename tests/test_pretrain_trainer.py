"""The pre-training trainer and bundle settings: gradient clipping, NaN input, bf16 autocast, strict flags, the
metadata schema, handlers disabled the MONAI way, and inference refusals."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medgmae.networks import VoxelMAE
from medgmae.mae_training import MaskedAutoencoderTrainer, build_model

from pretrain_helpers import REPO, CONFIGS, TRAIN, SMALL, bundle_process, succeeded


def test_inference_rejects_voxel_mae_model_and_missing_image(tmp_path):
    from medgmae.mae_training import GaussianInference

    vm = VoxelMAE(img_size=32, patch_size=8, model_size="tiny")
    torch.save(vm.model_checkpoint(), tmp_path / "voxel.pt")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), str(tmp_path / "v.nii.gz"))
    with pytest.raises(ValueError, match="voxel.pt"):
        GaussianInference(tmp_path / "voxel.pt", tmp_path / "v.nii.gz", tmp_path / "out", device="cpu").run()
    with pytest.raises(FileNotFoundError, match="nothing.nii.gz"):
        GaussianInference(tmp_path / "voxel.pt", tmp_path / "nothing.nii.gz", tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _loader(x: torch.Tensor, n: int = 2) -> list[dict]:
    return [{"image": x.clone()} for _ in range(n)]


def test_trainer_clips_gradients_to_one():
    """Clipping (engine.GradientClipHandler, attached by the trainer) brings the norm the optimiser sees to 1; the
    same step without it sees the large raw norm."""
    from monai.engines.utils import IterationEvents

    def step_norms(grad_clip: float) -> tuple[list, dict]:
        torch.manual_seed(0)
        model = build_model("medgmae", "tiny", img_size=32, patch_size=8, num_gaussians=8)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1)) * 50
        trainer = MaskedAutoencoderTrainer("cpu", 1, _loader(x, 1), model, opt, grad_clip=grad_clip)
        norms: list = []
        grads = lambda: [p.grad for p in model.parameters() if p.grad is not None]  # noqa: E731
        trainer.add_event_handler(IterationEvents.MODEL_COMPLETED,
                                  lambda e: norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads()])))))  # fmt: skip
        trainer.run()
        return norms, trainer.state.output

    raw, _ = step_norms(0.0)
    clipped, output = step_norms(1.0)
    assert min(raw) > 1.0  # a large target makes large gradients ...
    assert max(clipped) == pytest.approx(1.0, rel=1e-4)  # ... clipped to norm 1
    assert set(output) == {"loss", "psnr_masked"}


def test_trainer_stops_on_nan_input_naming_it():
    """A NaN voxel that reaches the model (past the data pre-check, e.g. from an augmentation) stops the step naming
    the input, not as a non-finite loss (tests/test_engine.py covers that handler)."""
    from medgmae.engine import NonFiniteLossHandler

    model = build_model("voxel-mae", "tiny", img_size=32, patch_size=8)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(1, 1, 32, 32, 32)
    x[..., 3, 3, 3] = float("nan")
    trainer = MaskedAutoencoderTrainer("cpu", 1, _loader(x), model, opt, train_handlers=[NonFiniteLossHandler()])
    with pytest.raises(ValueError, match="the input holds NaN or infinite values"):
        trainer.run()
    assert trainer.state.iteration == 1


@pytest.mark.gpu
def test_trainer_bf16_autocast_on_cuda():
    torch.manual_seed(0)
    model = build_model("medgmae", "tiny", img_size=32, patch_size=8, num_gaussians=16).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    seen = []
    model.encoder.blocks[0].mlp.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer = MaskedAutoencoderTrainer("cuda", 1, _loader(torch.rand(1, 1, 32, 32, 32)), model, opt, amp=True)
    trainer.run()
    assert seen and all(d == torch.bfloat16 for d in seen)
    assert torch.isfinite(trainer.state.output["loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_metadata_passes_the_shipped_schema(tmp_path):
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(REPO / "bundles" / "schema" / "meta_schema.json"))
    broken = json.loads((CONFIGS / "metadata.json").read_text(encoding="utf-8"))
    del broken["network_data_format"]
    (tmp_path / "metadata.json").write_text(json.dumps(broken))
    with pytest.raises(Exception, match="network_data_format"):
        verify_metadata(meta_file=str(tmp_path / "metadata.json"), filepath=str(REPO / "bundles" / "schema" / "meta_schema.json"))


def test_command_line_flags_are_parsed_strictly():
    from medgmae.cli_types import as_bool

    assert [as_bool(v) for v in (True, "true", "False", "1", 0, "off")] == [True, True, False, True, False, False]
    with pytest.raises(ValueError, match="resume must be true or false, got 'maybe'"):
        as_bool("maybe", "resume")
    with pytest.raises(ValueError, match="model kind"):
        build_model("gaussian-vae")


def test_a_handler_disabled_the_monai_way_is_left_out(tmp_path):
    """``--val#pictures#_disabled_ true`` (MONAI's way to switch a component off) made the referenced handler None in
    the trainer's list, and the run failed with AttributeError after writing its phantoms; it now runs without it."""
    out = tmp_path / "run"
    proc = succeeded(bundle_process("run", "training", "--config_file", TRAIN, *SMALL, "--output_dir", str(out), "--max_epochs", "1",
                       "--val#pictures#_disabled_", "true", cwd=tmp_path))  # fmt: skip
    assert (out / "model.pt").is_file() and not list(out.glob("pictures/*.png"))  # trained, without the pictures
    assert "AttributeError" not in proc.stderr
