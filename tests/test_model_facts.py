"""``medgmae-info --model FILE``: what a model file is, the network it builds, the pre-processing it records (or what
consumers fall back to) and the commands that take it, checked against tiny models saved by the toolkit's own
``model_checkpoint()`` / ``encoder_checkpoint()`` and against the consumers' own loaders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medgmae import info_cli
from medgmae.checkpoint import save_checkpoint
from medgmae.model_facts import consumers, model_facts
from medgmae.preprocessing import RECORD_ADVICE, PreprocessingSpec

from finetune_helpers import fake_best_model
from gmae2d_helpers import tiny_gmae2d
from medgmae_model_helpers import IMG, K, PATCH, small_medgmae

#: What the MedGMAE* file below records: a pre-processing unlike the default, and a run.
SPEC = PreprocessingSpec(orientation="LPS", spacing=(0.8, 0.7, 2.5), hu_window=(-1000.0, 400.0),
                         input_size=(IMG,) * 3, patch_size=(PATCH,) * 3)  # fmt: skip
RUN = {"seed": 11, "num_workers": 3}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A MedGMAE* model.pt and its encoder.pt recording SPEC and RUN, a MedGMAE model.pt recording nothing, a 2D GMAE
    model.pt, and each model's own parameter count (summed over its state_dict in memory)."""
    folder = tmp_path_factory.mktemp("models")
    star = small_medgmae(multi_level=True)
    star.preprocessing, star.run_settings = SPEC, RUN
    plain, flat = small_medgmae(), tiny_gmae2d()
    save_checkpoint(folder / "star.pt", star.model_checkpoint())
    save_checkpoint(folder / "encoder.pt", star.encoder_checkpoint())
    save_checkpoint(folder / "plain.pt", plain.model_checkpoint())
    save_checkpoint(folder / "flat.pt", flat.model_checkpoint())
    count = {name: sum(t.numel() for t in sd.values())
             for name, sd in (("star", star.state_dict()), ("encoder", star.encoder.state_dict()),
                              ("plain", plain.state_dict()), ("flat", flat.state_dict()))}  # fmt: skip
    return folder, count


def _lines(text: str) -> dict[str, str]:
    """The ``label: value`` lines from ``model:`` on, as a dict."""
    text = text[text.index("\nmodel:") + 1:]
    return {label.rstrip(":"): value.strip() for label, _, value in (line.partition(": ") for line in text.splitlines())}


def test_a_model_with_its_preprocessing_and_run_is_described(files, capsys):
    folder, count = files
    assert info_cli.main(["--json", "--model", str(folder / "star.pt")]) == 0
    facts = json.loads(capsys.readouterr().out)["model"]
    assert facts["kind"] == "medgmae-star" and facts["version"] == 1 and not facts["training_state"]
    net = facts["network"]
    assert net["img_size"] == [IMG] * 3 and net["patch_size"] == [PATCH] * 3 and net["num_gaussians"] == K
    assert (net["hidden_size"], net["num_layers"], net["num_heads"]) == (96, 2, 4)  # the tiny ViT: 96 wide, 2 x 4 heads
    assert net["multi_level"] is True and net["level_multipliers"] == [1, 2, 4]
    assert facts["parameters"] == count["star"]
    pre = facts["preprocessing"]
    assert pre["recorded"] and pre["orientation"] == "LPS" and pre["spacing"] == [0.8, 0.7, 2.5]
    assert pre["hu_window"] == [-1000.0, 400.0] and pre["input_size"] == [IMG] * 3
    assert facts["run"] == RUN
    assert info_cli.main(["--model", str(folder / "star.pt")]) == 0
    lines = _lines(capsys.readouterr().out)
    assert lines["model"] == str(folder / "star.pt")
    assert lines["  kind"].startswith("medgmae-star (MedGMAE* model)")
    assert f"num_gaussians {K}" in lines["  network"] and "img_size 32x32x32" in lines["  network"]
    assert lines["  parameters"] == f"{count['star']:,}"
    assert lines["  pre-processing"] == ("orientation LPS, 0.8 x 0.7 x 2.5 mm voxels, HU window [-1000, 400], "
                                         "input size 32x32x32, patch size 8x8x8")  # fmt: skip
    assert lines["  run"] == "seed 11, 3 data loader workers"
    assert "--init medgmae" in lines["  taken by"] and "fine-tuning --pretrained" in lines["  taken by"]


def test_an_encoder_names_its_pretraining_and_only_fine_tuning_takes_it(files):
    folder, count = files
    facts = model_facts(folder / "encoder.pt")
    assert facts["kind"] == "medgmae-encoder" and facts["source"] == "medgmae-star"
    assert facts["parameters"] == count["encoder"] and facts["network"]["hidden_size"] == 96
    assert facts["preprocessing"]["orientation"] == "LPS" and facts["run"] == RUN
    assert [name.split(" ")[0] for name in facts["consumers"]] == ["fine-tuning"]


def test_a_model_recording_no_preprocessing_says_what_consumers_fall_back_to(files, capsys):
    folder, count = files
    facts = model_facts(folder / "plain.pt")
    pre = facts["preprocessing"]
    assert pre["recorded"] is False and pre["advice"] == RECORD_ADVICE
    fallback = pre["fallback"]  # the default spacing and window, at the network's own window and patch
    assert fallback["input_size"] == [IMG] * 3 and fallback["patch_size"] == [PATCH] * 3
    assert fallback["orientation"] == "RAS" and fallback["spacing"] == [1.5] * 3 and fallback["hu_window"] == [-175.0, 250.0]
    assert facts["run"] is None and facts["parameters"] == count["plain"]
    assert "level_multipliers" not in facts["network"]  # a one-level model's levels are not used
    assert info_cli.main(["--model", str(folder / "plain.pt")]) == 0
    lines = _lines(capsys.readouterr().out)
    assert lines["  pre-processing"].startswith("none recorded: consumers fall back to the default, orientation RAS, "
                                                "1.5 x 1.5 x 1.5 mm voxels, HU window [-175, 250], input size 32x32x32")  # fmt: skip
    assert RECORD_ADVICE in lines["  pre-processing"] and lines["  run"] == "not recorded"


def test_a_2d_gmae_model_is_taken_by_medgmae_2d_alone(files, capsys):
    folder, count = files
    facts = model_facts(folder / "flat.pt")
    assert facts["kind"] == "gmae2d" and facts["network"]["img_size"] == [32, 32] and facts["network"]["num_gaussians"] == 32
    assert facts["parameters"] == count["flat"]
    assert facts["preprocessing"] == {"recorded": False, "fallback": None, "advice": None}
    assert [name.split(" ")[0] for name in facts["consumers"]] == ["medgmae-2d"]
    assert info_cli.main(["--model", str(folder / "flat.pt")]) == 0
    assert "record_preprocessing" not in capsys.readouterr().out  # which refuses a 2D model


def _accepts(load, path) -> bool:
    """Whether the consumer's loader ``load`` takes ``path`` (a refusal is a ValueError naming the file)."""
    try:
        load(path)
    except ValueError as e:
        assert str(path.name) in str(e)
        return False
    return True


def test_each_consumer_takes_the_kinds_it_is_said_to(files, tmp_path):
    """Every consumer's own loader, given a MedGMAE, a MedGMAE* encoder, a 2D GMAE and a fine-tuned file, accepts
    exactly the files whose facts name it."""
    from medgmae.finetune.spec import finetuned_spec
    from medgmae.finetune.weights import read_encoder_file
    from medgmae.mae_training.inference import _model_window
    from medgmae.networks import MedGMAE
    from medgmae.twod import GMAE2D
    from medgmae.twod.gvit import GViT

    loaders = {"zero-shot inference": _model_window, "medgmae-recon reconstruct": MedGMAE.from_checkpoint,
               "fine-tuning": read_encoder_file, "evaluation and segmentation": finetuned_spec, "medgmae-2d layers": GMAE2D.from_checkpoint,
               "GViT": GViT.from_checkpoint}  # fmt: skip
    assert all(any(name.startswith(start) for start in loaders) for name in consumers())
    folder, _ = files
    finetuned = fake_best_model(tmp_path, 0.5, 3, SPEC.to_dict())
    for path in (folder / "plain.pt", folder / "encoder.pt", folder / "flat.pt", finetuned):
        said = model_facts(path)["consumers"]
        for start, load in loaders.items():
            assert _accepts(load, path) == any(name.startswith(start) for name in said), (path.name, start)


def test_what_is_not_a_model_file_is_refused_naming_it(files, tmp_path, capsys):
    import nibabel as nib

    folder, _ = files
    cut = tmp_path / "cut.pt"
    cut.write_bytes((folder / "star.pt").read_bytes()[:200])
    torch.save({"learning_rate": 0.1, "note": "not a model"}, tmp_path / "dict.pt")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), tmp_path / "ct.nii.gz")
    for path in (cut, tmp_path / "dict.pt", tmp_path / "ct.nii.gz", tmp_path / "none.pt"):
        assert info_cli.main(["--model", str(path)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and "Traceback" not in err
        assert err.startswith("medgmae-info: error: ") and str(path) in err and len(err.splitlines()) == 1
