"""The pre-trained encoder in fine-tuning: its checks, and the spacing, window and crop size it carries."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medgmae.checkpoint import make_checkpoint
from medgmae.networks.vit import MaskedViTEncoder
from medgmae.preprocessing import PreprocessingSpec

from finetune_helpers import two_case_datalist, bundle_process, encoder_file


def test_spacing_override_warns_naming_both(tmp_path, caplog):
    from medgmae.finetune import finetune_spec

    enc = MaskedViTEncoder(img_size=24, patch_size=12, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    spec = PreprocessingSpec(spacing=2.0, input_size=24, patch_size=12)
    torch.save(make_checkpoint("medgmae-encoder", enc.config(), enc.state_dict(), spec), tmp_path / "encoder.pt")
    with caplog.at_level("WARNING"):
        got = finetune_spec(tmp_path / "encoder.pt", pixdim=[1.5, 1.5, 2.0], roi_size=24)
    assert got.spacing == (1.5, 1.5, 2.0) and got.hu_window == spec.hu_window
    assert "spacing [1.5, 1.5, 2.0] differs from the spacing [2.0, 2.0, 2.0]" in caplog.text and "encoder.pt" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert finetune_spec(tmp_path / "encoder.pt", roi_size=24).spacing == (2.0, 2.0, 2.0)
        assert finetune_spec("", roi_size=24, patch_size=12).spacing == (1.5, 1.5, 2.0)  # no encoder: BTCV recipe
    assert "differs" not in caplog.text


def test_the_pretrained_encoders_patch_size_is_the_specs_whatever_the_caller_passes(tmp_path):
    """The spec records the patch size of the network it pre-processes for: a pre-trained encoder's own (12 here,
    also when a bundle passes its configured 16); without an encoder, the one given."""
    from medgmae.finetune import finetune_spec

    enc = MaskedViTEncoder(img_size=24, patch_size=12, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    torch.save(make_checkpoint("medgmae-encoder", enc.config(), enc.state_dict(),
                               PreprocessingSpec(spacing=2.0, input_size=24, patch_size=12)), tmp_path / "encoder.pt")  # fmt: skip
    assert finetune_spec(tmp_path / "encoder.pt", roi_size=24, patch_size=16).patch_size == (12, 12, 12)
    assert finetune_spec(tmp_path / "encoder.pt", roi_size=24).patch_size == (12, 12, 12)
    assert finetune_spec("", roi_size=32, patch_size=16).patch_size == (16, 16, 16)


def test_pretrained_check_names_the_file_and_the_problem(tmp_path):
    """The up-front check of ``--pretrained``: missing file, another kind of checkpoint, a ``roi_size`` other than
    the encoder's; ``""`` and a fitting encoder pass, and a bad ``roi_size`` is left to its own check."""
    from medgmae.finetune import pretrained_check

    encoder = encoder_file(tmp_path / "encoder.pt")
    pretrained_check([24, 24, 24])(str(encoder))
    pretrained_check(24)("")
    pretrained_check("abc")(str(encoder))  # --roi_size's own check names it
    with pytest.raises(ValueError, match="not found|does not exist|missing"):
        pretrained_check(24)(str(tmp_path / "encoderr.pt"))
    other = tmp_path / "best_model.pt"
    torch.save(make_checkpoint("medgmae-unetr", {"num_classes": 2}, {}, PreprocessingSpec()), other)
    with pytest.raises(ValueError, match=r"best_model\.pt is .*fine-tuning needs the encoder\.pt"):
        pretrained_check(24)(str(other))
    with pytest.raises(ValueError, match=r"--roi_size \(48, 48, 48\) differs from the img_size \(24, 24, 24\)"):
        pretrained_check(48)(str(encoder))
    # the 2D GMAE's encoder.pt has the same kind: named as 2D, whatever --roi_size says (an old file's source, the
    # class name GMAE2D, by its kind)
    flat = MaskedViTEncoder(img_size=24, patch_size=4, hidden_size=16, num_layers=1, num_heads=2, spatial_dims=2)
    for roi, source in ((24, "gmae2d"), ([24, 24], "gmae2d"), (24, "GMAE2D")):
        torch.save(make_checkpoint("medgmae-encoder", flat.config(), flat.state_dict(), None, {"source": source}),
                   tmp_path / "enc2d.pt")
        with pytest.raises(ValueError, match=r"enc2d\.pt is a 2D encoder \(spatial_dims 2, from gmae2d\); fine-tuning "
                                             r"needs the 3D encoder\.pt"):
            pretrained_check(roi)(str(tmp_path / "enc2d.pt"))


def test_a_wrong_pretrained_stops_the_bundle_before_the_data_are_read(tmp_path):
    """A wrong ``--pretrained`` is a bad setting: named by the settings check, before the pre-check reads every
    image, and nothing is written (it used to leave ``cache/precheck.json`` in a new output folder)."""
    dl = two_case_datalist(tmp_path / "data")
    encoder = encoder_file(tmp_path / "encoder.pt")
    for pretrained, roi, message in ((tmp_path / "encoderr.pt", "24", "encoderr.pt"),
                                     (encoder, "48", "--roi_size (48, 48, 48) differs from the img_size (24, 24, 24)")):  # fmt: skip
        out = tmp_path / f"out_{roi}"
        proc = bundle_process("training", "train.json", "--datalist", str(dl), "--pretrained", str(pretrained),
                              "--roi_size", roi, "--output_dir", str(out), "--device", "cpu", "--num_workers", "0")  # fmt: skip
        log = proc.stdout + proc.stderr
        assert proc.returncode != 0 and "1 bad setting, nothing was written" in log and message in log, log[-3000:]
        assert "--pretrained" in log.split("\nerror: ")[-1] and "pre-check" not in log
        assert not out.exists()


def test_the_spacing_and_window_used_are_logged(tmp_path, caplog):
    """One log line names the spacing and HU window a run uses and where they come from: with an encoder (and
    ``pixdim`` null) its recorded spacing, not the BTCV default the docs used to give."""
    from medgmae.finetune import finetune_spec

    encoder = encoder_file(tmp_path / "encoder.pt")
    with caplog.at_level("INFO", logger="medgmae.finetune.data"):
        finetune_spec(encoder, roi_size=24)
        finetune_spec("", pixdim=[1.0, 1.0, 1.0], roi_size=24, patch_size=12)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("pre-processing:")]
    assert lines == [f"pre-processing: orientation RAS (recorded in {encoder}), spacing [2.0, 2.0, 2.0] mm (recorded in "
                     f"{encoder}), HU window [-175.0, 250.0] (recorded in {encoder}), crop 24x24x24",
                     "pre-processing: orientation RAS (default), spacing [1.0, 1.0, 1.0] mm (given), HU window "
                     "[-175.0, 250.0] (default), crop 24x24x24"]  # fmt: skip


def test_an_override_is_warned_about_naming_the_training_that_recorded_the_spec(caplog):
    """A spacing other than the recorded one: the warning names the pre-training (an encoder) or the fine-tuning (a
    fine-tuned model) whose data were prepared otherwise."""
    from medgmae.preprocessing import DEFAULT_SPEC, spec_with_overrides

    with caplog.at_level("WARNING", logger="medgmae.preprocessing"):
        spec_with_overrides(DEFAULT_SPEC, [1.0, 1.0, 1.0], source="enc.pt")
        spec_with_overrides(DEFAULT_SPEC, [1.0, 1.0, 1.0], source="best_model.pt", trained_by="fine-tuning")
    said = [r.getMessage() for r in caplog.records]
    assert said[0].startswith("spacing [1.0, 1.0, 1.0] differs from the spacing") and said[0].endswith("from its pre-training")
    assert "recorded in best_model.pt" in said[1] and said[1].endswith("from its fine-tuning"), said


def test_roi_size_defaults_to_the_pretrained_encoders_img_size(tmp_path):
    """The crop must be the encoder's img_size, so that is the default; without an encoder, or with a file that is
    not one (its own check names it), the BTCV recipe's 96^3."""
    from medgmae.finetune import default_roi_size, pretrained_check

    enc = MaskedViTEncoder(img_size=24, patch_size=12, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    spec = PreprocessingSpec(input_size=24, patch_size=12)
    torch.save(make_checkpoint("medgmae-encoder", enc.config(), enc.state_dict(), spec), tmp_path / "encoder.pt")
    assert default_roi_size(tmp_path / "encoder.pt") == [24, 24, 24]
    pretrained_check(default_roi_size(tmp_path / "encoder.pt"))(str(tmp_path / "encoder.pt"))  # passes
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert default_roi_size("") == default_roi_size(tmp_path / "junk.pt") == default_roi_size(tmp_path / "no.pt") == [96, 96, 96]
    with pytest.raises(ValueError, match="junk.pt"):
        pretrained_check(default_roi_size(tmp_path / "junk.pt"))(str(tmp_path / "junk.pt"))


def test_a_pretraining_folder_given_as_pretrained_names_its_encoder(tmp_path):
    """--pretrained runs/medgmae_pretrain (the folder): the hint is its encoder.pt, not the model.pt that
    fine-tuning would then refuse."""
    from medgmae.finetune import read_encoder_file

    enc = MaskedViTEncoder(img_size=24, patch_size=12, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    run = tmp_path / "pretrain"
    run.mkdir()
    torch.save(make_checkpoint("medgmae-encoder", enc.config(), enc.state_dict(), PreprocessingSpec()), run / "encoder.pt")
    (run / "model.pt").write_bytes(b"a model file")
    with pytest.raises(ValueError, match=f"{run} is a folder; fine-tuning needs the encoder.pt of a pre-training run; "
                                         f"did you mean {run / 'encoder.pt'}\\?"):  # fmt: skip
        read_encoder_file(run)



def test_an_encoder_recording_no_preprocessing_gets_the_pretraining_defaults_with_a_warning(tmp_path, caplog):
    """An ``encoder.pt`` without a spec (an early file, or one saved by hand) was prepared for silently with
    fine-tuning's own BTCV spacing (1.5 x 1.5 x 2 mm), which no pre-training run uses; zero-shot inference and
    ``--init medgmae`` take the pre-training defaults with a warning, and so does fine-tuning now."""
    import json
    from pathlib import Path

    from medgmae.finetune import finetune_spec

    enc = MaskedViTEncoder(img_size=24, patch_size=12, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    path = tmp_path / "encoder.pt"
    torch.save(make_checkpoint("medgmae-encoder", enc.config(), enc.state_dict(), None), path)
    pretrain = json.loads((Path(__file__).resolve().parents[1] / "bundles/medgmae_pretrain/configs/train.json").read_text(encoding="utf-8"))
    with caplog.at_level("WARNING"):
        spec = finetune_spec(path, roi_size=24)
    assert spec.spacing == (float(pretrain["pixdim"]),) * 3 and spec.hu_window == (pretrain["a_min"], pretrain["a_max"])
    assert spec.input_size == (24, 24, 24) and spec.patch_size == (12, 12, 12)
    assert f"{path} records no pre-processing" in caplog.text and "--pixdim and --hu_range" in caplog.text
    # no flag gives the orientation: recording the spec in the file is said first (it alone can give LPS)
    assert "medgmae.checkpoint.record_preprocessing(path, out, orientation=" in caplog.text
    assert "which alone gives its orientation (no flag does: RAS here)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # both given: nothing is taken from the defaults, nothing to warn about
        spec = finetune_spec(path, pixdim=[2.0, 2.0, 3.0], hu_range=[-100, 200], roi_size=24)
    assert spec.spacing == (2.0, 2.0, 3.0) and spec.hu_window == (-100.0, 200.0) and caplog.text == ""


def test_a_finetuned_model_recording_no_preprocessing_is_said_to_and_keeps_its_own_window(tmp_path, caplog):
    """Evaluation and segmentation of a ``best_model.pt`` without a spec logged the default spacing and window as
    ``(recorded)`` and slid 96^3 windows over a network trained on 24^3 crops."""
    from medgmae.finetune.spec import finetuned_spec

    path = tmp_path / "best_model.pt"
    config = {"img_size": [24, 24, 24], "patch_size": [12, 12, 12], "out_channels": 3}
    torch.save(make_checkpoint("medgmae-unetr", config, {}, None), path)
    with caplog.at_level("INFO"):
        spec = finetuned_spec(path)
    assert spec.input_size == (24, 24, 24) and spec.patch_size == (12, 12, 12)
    assert f"{path} records no pre-processing" in caplog.text and "as it was fine-tuned with" in caplog.text
    assert "which alone gives its orientation (no flag does: RAS here)" in caplog.text
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("pre-processing of"))
    assert "(recorded)" not in line and "mm (default), HU window [-175.0, 250.0] (default), crop 24x24x24" in line, line


def test_a_finetuning_start_reads_the_pretrained_file_once(tmp_path, monkeypatch):
    """The default crop size, the settings check, the pre-processing, the run record and the network's weights each
    need the ``--pretrained`` file, as the bundle's start asks for them: it is read once, and the network holds the
    file's weights."""
    from medgmae.finetune import build_unetr, default_roi_size, finetune_spec, pretrained_check
    from medgmae.finetune.run_record import case_record, start_record

    encoder = str(encoder_file(tmp_path / "encoder.pt"))
    loads, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: loads.append(Path(f).name) or real_load(f, *a, **k))
    roi = default_roi_size(encoder)
    pretrained_check(roi)(encoder)
    spec = finetune_spec(encoder, roi_size=roi)
    record = start_record(case_record(0.1, 0, 10, []), encoder, 3)
    net = build_unetr(3, roi, pretrained=encoder, feature_size=4)
    assert loads == ["encoder.pt"]
    assert roi == [24, 24, 24] and spec.spacing == (2.0, 2.0, 2.0) and record["pretrained"]["kind"] == "medgmae-encoder"
    saved, loaded = real_load(encoder, weights_only=True)["state_dict"], net.vit.state_dict()
    assert sorted(saved) == sorted(loaded) and all(torch.equal(loaded[k], v) for k, v in saved.items())
