"""The one checkpoint format: every model kind round-trips, wrong kinds and corrupt files are named, and loading
never runs code from the file."""

from __future__ import annotations

import logging
import os
import zipfile

import pytest
import torch

from medgmae.checkpoint import CHECKPOINT_KINDS, load_checkpoint, make_checkpoint, model_file_kind
from medgmae.engine import CheckpointHandler
from medgmae.torch_files import load_torch_file
from medgmae.networks import MedGMAE, VoxelMAE
from medgmae.networks.vit import MaskedViTEncoder
from medgmae.preprocessing import PreprocessingSpec
from medgmae.twod.gmae import GMAE2D

SPEC = PreprocessingSpec(spacing=(0.8, 0.8, 2.5), hu_window=(-100.0, 300.0), input_size=16, patch_size=8)


def _models() -> dict:
    torch.manual_seed(0)
    tiny = dict(img_size=16, patch_size=8, model_size="tiny")
    models = {
        "medgmae": MedGMAE(**tiny, num_gaussians=4),
        "medgmae-star": MedGMAE(**tiny, num_gaussians=2, multi_level=True),
        "voxel-mae": VoxelMAE(**tiny),
        "gmae2d": GMAE2D(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4),
    }
    for kind in ("medgmae", "medgmae-star", "voxel-mae"):
        models[kind].preprocessing = SPEC
    return models


@pytest.mark.parametrize("kind", ["medgmae", "medgmae-star", "voxel-mae", "gmae2d"])
def test_every_model_kind_round_trips_with_its_spec(tmp_path, kind):
    model = _models()[kind]
    path = tmp_path / "model.pt"
    torch.save(model.model_checkpoint(), path)
    raw = torch.load(path, weights_only=True)  # plain data only
    assert raw["format"] == "medgmae" and raw["kind"] == kind
    back = type(model).from_checkpoint(path)
    assert back.config() == model.config() and back.kind == kind
    assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())
    assert back.preprocessing == (None if kind == "gmae2d" else SPEC)


def test_gvit_round_trips_with_class_names(tmp_path):
    from medgmae.twod.gvit import GViT

    m = GViT(1, 16, 3, num_gaussians=4, patch_size=4)
    m.save(tmp_path / "model.pt", class_names=["a", "b", "c"])
    assert torch.load(tmp_path / "model.pt", weights_only=True)["kind"] == "gvit"
    back = GViT.from_checkpoint(tmp_path / "model.pt")
    assert back.class_names == ["a", "b", "c"] and back.config() == m.config()
    assert all(torch.equal(back.state_dict()[k], v) for k, v in m.state_dict().items())


def test_encoder_file_carries_the_spec(tmp_path):
    model = _models()["medgmae"]
    torch.save(model.encoder_checkpoint(), tmp_path / "encoder.pt")
    ckpt = load_checkpoint(tmp_path / "encoder.pt", "medgmae-encoder")
    assert ckpt.preprocessing == SPEC and ckpt.extra["source"] == "medgmae"
    enc = MaskedViTEncoder(**ckpt.config)
    enc.load_state_dict(ckpt.state_dict)


def test_model_file_kind_tells_a_2d_encoder_from_a_3d_one(tmp_path):
    """:func:`model_file_kind` of each pre-training's files: a model file is its own kind, an ``encoder.pt`` names the
    pre-training by its dimensions (a 2D GMAE's "gmae2d", every 3D one's "medgmae"), as the bundles' folder checks
    read them; a missing file is None."""
    expected = {"medgmae": "medgmae", "medgmae-star": "medgmae", "voxel-mae": "medgmae", "gmae2d": "gmae2d"}
    for kind, model in _models().items():
        torch.save(model.model_checkpoint(), tmp_path / f"{kind}_model.pt")
        torch.save(model.encoder_checkpoint(), tmp_path / f"{kind}_encoder.pt")
        assert model_file_kind(tmp_path / f"{kind}_model.pt") == kind
        assert model_file_kind(tmp_path / f"{kind}_encoder.pt") == expected[kind], kind
    assert model_file_kind(tmp_path / "missing.pt") is None


def test_fine_tuned_unetr_round_trips(tmp_path):
    from types import SimpleNamespace

    from medgmae.finetune import BestCheckpointSaver, load_finetuned
    from medgmae.networks.unetr import MedGMAEUNETR

    net = MedGMAEUNETR(3, encoder=MaskedViTEncoder(img_size=16, patch_size=8, hidden_size=48, num_layers=1, num_heads=4), feature_size=4)
    saver = BestCheckpointSaver(tmp_path, net, preprocessing=SPEC)
    saver(SimpleNamespace(state=SimpleNamespace(metrics={"val_mean_dice": 0.5}, epoch=3)))
    back = load_finetuned(tmp_path / "best_model.pt")
    assert back.preprocessing == SPEC
    assert all(torch.equal(back.state_dict()[k], v) for k, v in net.state_dict().items())
    assert load_checkpoint(tmp_path / "best_model.pt").extra == {"epoch": 3, "metric_name": "val_mean_dice", "metric": 0.5}
    assert back.class_names == ["background", "class_1", "class_2"]  # a file recording none, no run datalist beside it
    named = BestCheckpointSaver(tmp_path / "named", net, preprocessing=SPEC, label_names=["background", "liver", "left kidney"])
    named(SimpleNamespace(state=SimpleNamespace(metrics={"val_mean_dice": 0.5}, epoch=3)))
    assert load_checkpoint(tmp_path / "named" / "best_model.pt").config["class_names"] == ["background", "liver", "left kidney"]
    assert load_finetuned(tmp_path / "named" / "best_model.pt").class_names == ["background", "liver", "left kidney"]
    with pytest.raises(ValueError, match="2 label_names for a network of 3 classes"):
        BestCheckpointSaver(tmp_path, net, label_names=["background", "liver"])


def test_wrong_kind_names_the_file_and_both_kinds(tmp_path):
    m = _models()
    torch.save(m["gmae2d"].model_checkpoint(), tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"x\.pt is a gmae2d checkpoint \(2D GMAE model\); --init medgmae needs a medgmae model\.pt"):
        load_checkpoint(tmp_path / "x.pt", ("medgmae", "medgmae-star"), "--init medgmae needs a medgmae model.pt")
    with pytest.raises(ValueError, match=r"x\.pt is a gmae2d checkpoint.*expected medgmae or medgmae-star"):
        MedGMAE.from_checkpoint(tmp_path / "x.pt")
    with pytest.raises(ValueError, match="unknown checkpoint kind"):
        make_checkpoint("resnet", {}, {})
    assert {"medgmae", "medgmae-star", "voxel-mae", "medgmae-encoder", "gmae2d", "gvit", "medgmae-unetr"} <= set(CHECKPOINT_KINDS)


def test_a_2d_model_file_given_to_the_3d_loaders_names_the_2d_one(tmp_path, monkeypatch):
    """``MaskedAutoencoder.from_checkpoint`` of a 2D GMAE file where ``medgmae.twod`` is not loaded (simulated: its
    class left out of the kinds the base class reads), and ``MedGMAE.from_checkpoint`` of one, refused it without
    saying what reads it; the refusal names ``GMAE2D.from_checkpoint``, which does. A 2D encoder, which that does
    not read, and a caller's own words are left as they were."""
    from medgmae.networks import MaskedAutoencoder, mae_base
    from medgmae.twod import GMAE2D

    m = _models()
    torch.save(m["gmae2d"].model_checkpoint(), tmp_path / "model.pt")
    torch.save(m["gmae2d"].encoder_checkpoint(), tmp_path / "encoder.pt")
    subclasses = mae_base._subclasses
    monkeypatch.setattr(mae_base, "_subclasses", lambda cls: [c for c in subclasses(cls) if c.__module__ != GMAE2D.__module__])
    named = r"; a 2D GMAE model file is read with medgmae.twod's GMAE2D.from_checkpoint \(from medgmae.twod import GMAE2D\)$"
    for loader, kinds in ((MaskedAutoencoder, "medgmae or medgmae-star or voxel-mae"), (MedGMAE, "medgmae or medgmae-star")):
        with pytest.raises(ValueError, match=rf"model\.pt is a gmae2d checkpoint \(2D GMAE model\); expected {kinds} \(file: .*\){named}"):
            loader.from_checkpoint(tmp_path / "model.pt")
        with pytest.raises(ValueError) as e:
            loader.from_checkpoint(tmp_path / "encoder.pt")
        assert "GMAE2D" not in str(e.value)
    with pytest.raises(ValueError) as e:
        MedGMAE.from_checkpoint(tmp_path / "model.pt", needed_for="--init medgmae needs a medgmae model.pt")
    assert str(e.value).endswith(f"--init medgmae needs a medgmae model.pt (file: {tmp_path / 'model.pt'})")
    assert isinstance(GMAE2D.from_checkpoint(tmp_path / "model.pt"), GMAE2D)  # the call named reads it


def test_a_file_of_no_kind_given_to_the_base_loader_is_refused_once(tmp_path, monkeypatch):
    """``MaskedAutoencoder.from_checkpoint`` of a dict with no ``kind``, where ``medgmae.twod`` is not loaded
    (simulated as above), read the file again inside its handling of the refusal, to tell a 2D file, and was refused
    there too: the error showed twice, one during the handling of the other. It is refused once, nothing chained."""
    from medgmae.networks import MaskedAutoencoder, mae_base
    from medgmae.twod import GMAE2D

    subclasses = mae_base._subclasses
    monkeypatch.setattr(mae_base, "_subclasses", lambda cls: [c for c in subclasses(cls) if c.__module__ != GMAE2D.__module__])
    torch.save({"state_dict": {}}, tmp_path / "plain.pt")
    with pytest.raises(ValueError) as refused:
        MaskedAutoencoder.from_checkpoint(tmp_path / "plain.pt")
    assert "plain.pt" in str(refused.value) and "GMAE2D" not in str(refused.value)
    assert refused.value.__context__ is None and refused.value.__cause__ is None, repr(refused.value.__context__)


@pytest.mark.parametrize("source, run", [("VoxelMAE", "voxel-mae"), ("voxel-mae", "voxel-mae"),
                                         ("MedGMAE", "medgmae or medgmae-star")])  # fmt: skip
def test_wrong_kind_names_the_run_an_old_encoder_came_from(tmp_path, source, run):
    """An encoder.pt written before 2026-12-04 records its source as the model class; the wrong-kind refusal names
    the run it came from as it does for a newer file's kind (an old MedGMAE source: either of the two it was written
    for)."""
    enc = MaskedViTEncoder(img_size=16, patch_size=8, hidden_size=48, num_layers=1, num_heads=4, mlp_ratio=2.0)
    torch.save(make_checkpoint("medgmae-encoder", enc.config(), enc.state_dict(), None, {"source": source}), tmp_path / "e.pt")
    with pytest.raises(ValueError) as refused:
        load_checkpoint(tmp_path / "e.pt", "medgmae", "--init medgmae needs a medgmae model.pt")
    assert f"e.pt is a medgmae-encoder checkpoint (pre-trained ViT encoder, from a {run} run); --init medgmae" in str(refused.value)


def test_a_file_of_a_newer_checkpoint_version_is_refused_and_older_ones_read(tmp_path):
    """A model file of a later checkpoint version (fields this release does not know) was read as if it were this
    one's; it is refused, naming the file, both versions and the fix. This version's files, and files that state
    no version, read."""
    ckpt = _models()["medgmae"].model_checkpoint()
    assert ckpt["version"] == 1
    torch.save({**ckpt, "version": 2}, tmp_path / "newer.pt")
    torch.save(ckpt, tmp_path / "this.pt")
    torch.save({k: v for k, v in ckpt.items() if k != "version"}, tmp_path / "none.pt")
    with pytest.raises(ValueError, match=r"newer\.pt: written by a newer release of the toolkit \(checkpoint version 2; "
                                         r"this one reads version 1\): update the toolkit to use it"):
        load_checkpoint(tmp_path / "newer.pt", "medgmae")
    assert load_checkpoint(tmp_path / "this.pt", "medgmae").kind == load_checkpoint(tmp_path / "none.pt").kind == "medgmae"


def test_corrupt_truncated_and_foreign_files_are_named(tmp_path):
    torch.save(_models()["medgmae"].model_checkpoint(), tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pt").write_text("hello")
    (tmp_path / "summary.json").write_text('{"best_epoch": 3}')
    (tmp_path / "noise.pt").write_bytes(bytes(range(7, 256)) * 4)
    torch.save({"weights": torch.zeros(2), "note": "another tool's"}, tmp_path / "foreign.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    torch.save({"objects": {"network": {"w": torch.zeros(1)}, "optimizer": {"state": {}}}}, tmp_path / "checkpoint_final.pt")
    for name, pattern in (("truncated.pt", "not a complete PyTorch file: truncated or damaged"), ("text.pt", "not a (readable )?PyTorch file"),
                          ("summary.json", "not a PyTorch file"), ("noise.pt", "not a PyTorch file"),
                          ("foreign.pt", "not a model checkpoint of this toolkit"), ("list.pt", "not a model checkpoint"),
                          ("checkpoint_final.pt", r"a training-state checkpoint .*fine-tuning: best_model\.pt")):  # fmt: skip
        with pytest.raises(ValueError, match=rf"{name}.*{pattern}|{pattern}.*{name}"):
            load_checkpoint(tmp_path / name)
    for name in ("summary.json", "text.pt"):  # memory-mapped (the settings checks read so): no torch internals
        with pytest.raises(ValueError, match=rf"{name}: not a PyTorch file") as refused:
            load_checkpoint(tmp_path / name, mmap=True)
        assert "mmap" not in str(refused.value)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    bad_spec = make_checkpoint("medgmae", {}, {}, {"spacing": [-1, 1, 1]})
    torch.save(bad_spec, tmp_path / "badspec.pt")
    with pytest.raises(ValueError, match="badspec.pt.*spacing"):
        load_checkpoint(tmp_path / "badspec.pt")


class _Payload:
    """Unpickling this runs ``os.system`` (what a crafted checkpoint would do)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("where", ["model_file", "training_state"])
def test_a_pickle_payload_is_refused_and_never_runs(tmp_path, where):
    marker = tmp_path / "pwned"
    payload = _models()["medgmae"].model_checkpoint()
    if where == "model_file":
        payload["extra"] = {"x": _Payload(marker)}
    else:
        payload = {"objects": {"model": payload["state_dict"], "config": _Payload(marker)}}
    path = tmp_path / "shared_model.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"shared_model\.pt: refused to load .* could run arbitrary code"):
        MedGMAE.from_checkpoint(path)
    with pytest.raises(ValueError, match="refused"):
        load_torch_file(path)
    assert not marker.exists()
    # the payload really is live: plain pickle would have run it
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith("data.pkl"))
        assert b"system" in z.read(name)


def test_training_checkpoints_are_plain_data(tmp_path):
    """CheckpointHandler's resume file (RNG states included) loads with weights_only=True."""
    from ignite.engine import Engine
    from monai.transforms import RandSpatialCropd

    model = _models()["medgmae"]
    handler = CheckpointHandler(tmp_path, {"model": model}, source=RandSpatialCropd(keys="x", roi_size=4))
    engine = Engine(lambda e, b: None)
    engine.state.epoch, engine.state.iteration = 1, 1
    path = handler.save(engine, "checkpoint_epoch=1.pt")
    state = torch.load(path, weights_only=True)
    assert set(state) == {"engine", "loader", "objects", "random_state", "scaler"}
    assert state["scaler"] is None  # an engine without amp's gradient scaler
    handler.rng.load_state_dict(state["random_state"])  # restorable


def test_a_resumed_runs_evaluator_keeps_the_best_so_far(tmp_path, caplog):
    """After a resume MONAI's new evaluator starts its best_metric afresh: the saver restores the run's best, so a
    worse epoch is neither logged as a new best nor reported as the run's best (and best_model.pt stays)."""
    from types import SimpleNamespace

    from ignite.metrics import Average
    from monai.engines import SupervisedEvaluator

    from medgmae.finetune import BestCheckpointSaver
    from medgmae.networks.unetr import MedGMAEUNETR

    net = MedGMAEUNETR(3, encoder=MaskedViTEncoder(img_size=16, patch_size=8, hidden_size=48, num_layers=1, num_heads=4), feature_size=4)
    BestCheckpointSaver(tmp_path, net, preprocessing=SPEC)(SimpleNamespace(state=SimpleNamespace(
        metrics={"val_mean_dice": 0.8}, epoch=4)))  # the best epoch, before the interruption
    written = (tmp_path / "best_model.pt").read_bytes()
    saver = BestCheckpointSaver(tmp_path, net, preprocessing=SPEC)
    saver.load_state_dict({"best": 0.8, "best_epoch": 4})  # as the resumed checkpoint holds it
    data = [{"image": torch.zeros(1, 1, 16, 16, 16), "label": torch.zeros(1, 1, 16, 16, 16)}]
    evaluator = SupervisedEvaluator(device=torch.device("cpu"), val_data_loader=data, network=net,
                                    key_val_metric={"val_mean_dice": Average(output_transform=lambda _: torch.tensor(0.3))},
                                    val_handlers=[saver])  # fmt: skip
    with caplog.at_level(logging.INFO):
        evaluator.run(global_epoch=5)
    assert evaluator.state.best_metric == 0.8 and evaluator.state.best_metric_epoch == 4
    assert "Got new best metric" not in caplog.text and (tmp_path / "best_model.pt").read_bytes() == written


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_that_is_not_here_is_named_not_the_file(tmp_path):
    """``map_location='cuda'`` on a machine without CUDA: the file is fine, the device is named."""
    from medgmae.torch_files import load_torch_file

    torch.save({"w": torch.ones(2)}, tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"model.pt: cannot load this checkpoint onto map_location='cuda': that device "
                                         r"is not available here \(use map_location='cpu'\)") as e:
        load_torch_file(tmp_path / "model.pt", "cuda")
    assert "not a readable" not in str(e.value)


def test_a_misspelt_kind_is_named_not_every_file_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown checkpoint kind \['medgmea'\]"):
        load_checkpoint(tmp_path / "model.pt", kinds="medgmea")


def test_a_file_whose_network_and_recorded_sizes_disagree_is_refused(tmp_path):
    """The recorded pre-processing is the contract consumers read (input and patch size), the config what the network
    was built with: a file where the two disagree names both and is refused; agreeing sizes load."""
    from medgmae.checkpoint import ENCODER_KIND, load_checkpoint, make_checkpoint
    from medgmae.preprocessing import PreprocessingSpec

    spec = PreprocessingSpec(input_size=48, patch_size=12)
    torch.save(make_checkpoint(ENCODER_KIND, {"img_size": [48, 48, 48], "patch_size": 12}, {}, spec), tmp_path / "ok.pt")
    assert load_checkpoint(tmp_path / "ok.pt").preprocessing == spec
    torch.save(make_checkpoint(ENCODER_KIND, {"img_size": 96, "patch_size": 12}, {}, spec), tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"bad\.pt: its network's img_size \[96, 96, 96\] differs from its recorded "
                                         r"pre-processing's input_size \[48, 48, 48\]"):  # fmt: skip
        load_checkpoint(tmp_path / "bad.pt")


def test_a_model_file_without_preprocessing_gets_the_one_its_training_used(tmp_path, caplog):
    """A file written before models recorded their pre-processing is read with the defaults and a warning that
    names how to record it; ``record_preprocessing`` writes a copy stating it (the network's sizes filled in), which
    loads with that spec and no warning, the weights unchanged; a 2D file is refused."""
    from medgmae.checkpoint import record_preprocessing
    from medgmae.preprocessing import model_preprocessing

    model = _models()["medgmae"]
    old = {**model.model_checkpoint(), "preprocessing": None}
    torch.save(old, tmp_path / "old.pt")
    with caplog.at_level(logging.WARNING, logger="medgmae"):
        model_preprocessing(MedGMAE.from_checkpoint(tmp_path / "old.pt"), str(tmp_path / "old.pt"))
    assert "record the pre-processing its training used with medgmae.checkpoint.record_preprocessing(path, out" in caplog.text
    out = record_preprocessing(tmp_path / "old.pt", tmp_path / "new.pt", "LPS", 2.0, (-500.0, 400.0))
    got = load_checkpoint(out, "medgmae")
    assert got.preprocessing == PreprocessingSpec("LPS", (2.0, 2.0, 2.0), (-500.0, 400.0), input_size=16, patch_size=8)
    assert all(torch.equal(got.state_dict[k], v) for k, v in old["state_dict"].items()) and got.extra == old["extra"]
    assert load_checkpoint(tmp_path / "old.pt").preprocessing is None  # the original kept
    # a file that records its pre-processing is not overwritten by accident (its consumers read it already), and no
    # value is taken from a default: the call names all three
    with pytest.raises(ValueError, match=r"new\.pt records its pre-processing already \(LPS, spacing \[2\.0, 2\.0, 2\.0\] mm, "
                                         r"HU window \[-500\.0, 400\.0\]\): pass replace=True"):
        record_preprocessing(out, tmp_path / "again.pt", "RAS", 1.5, (-175.0, 250.0))
    assert not (tmp_path / "again.pt").exists()
    with pytest.raises(TypeError):
        record_preprocessing(tmp_path / "old.pt", tmp_path / "again.pt", spacing=1.5)  # pylint: disable=no-value-for-parameter
    replaced = record_preprocessing(out, tmp_path / "again.pt", "RAS", 1.5, (-175.0, 250.0), replace=True)
    assert load_checkpoint(replaced).preprocessing.orientation == "RAS"
    # anisotropic spacing, in the order given (pre-training's pixdim), into an encoder file of the same model
    torch.save({**model.encoder_checkpoint(), "preprocessing": None}, tmp_path / "encoder_old.pt")
    out = record_preprocessing(tmp_path / "encoder_old.pt", tmp_path / "encoder.pt", "RAS", (0.8, 0.9, 2.5), (-175.0, 250.0))
    assert load_checkpoint(out, "medgmae-encoder").preprocessing == PreprocessingSpec(
        "RAS", (0.8, 0.9, 2.5), (-175.0, 250.0), input_size=16, patch_size=8)  # fmt: skip
    torch.save(_models()["gmae2d"].model_checkpoint(), tmp_path / "flat.pt")
    with pytest.raises(ValueError, match=r"flat\.pt: a gmae2d file, not a 3D model or encoder with an input size"):
        record_preprocessing(tmp_path / "flat.pt", tmp_path / "x.pt", "RAS", 1.5, (-175.0, 250.0))


def test_a_file_read_memory_mapped_is_read_again_once_it_changed_on_disk(tmp_path, monkeypatch):
    """An unchanged file is read once; rewritten in place (another size, or the same size at another modification
    time) or replaced by another file of the same size, it is read anew."""
    path, loads, real_load = tmp_path / "encoder.pt", [], torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: loads.append(f) or real_load(f, *a, **k))

    def written(source: str, value: float) -> bytes:  # the bytes torch.save writes as a file of this name
        (tmp_path / source).mkdir()
        torch.save(make_checkpoint("medgmae-encoder", {"n": 2}, {"w": torch.full((2,), value)}, None,
                                   {"source": source}), tmp_path / source / path.name)  # fmt: skip
        return (tmp_path / source / path.name).read_bytes()

    path.write_bytes(written("one", 1.0))
    assert load_checkpoint(path, mmap=True).extra["source"] == "one"
    assert load_checkpoint(path, mmap=True).state_dict["w"].tolist() == [1.0, 1.0] and len(loads) == 1
    path.write_bytes(written("three", 3.0))  # in place, another size
    assert load_checkpoint(path, mmap=True).extra["source"] == "three" and len(loads) == 2
    before = os.stat(path)
    written("seven", 7.0)
    os.replace(tmp_path / "seven" / path.name, path)  # replaced by another file (inode) of the same size
    got = load_checkpoint(path, mmap=True)
    assert os.stat(path).st_size == before.st_size and os.stat(path).st_ino != before.st_ino
    assert got.extra["source"] == "seven" and got.state_dict["w"].tolist() == [7.0, 7.0] and len(loads) == 3
    before = os.stat(path)
    path.write_bytes(written("eight", 8.0))  # in place, the same size: its times tell
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 1_000_000_000))
    assert os.stat(path).st_size == before.st_size and os.stat(path).st_ino == before.st_ino
    got = load_checkpoint(path, mmap=True)
    assert got.extra["source"] == "eight" and got.state_dict["w"].tolist() == [8.0, 8.0] and len(loads) == 4
    for _ in range(2):  # read to another device than the CPU (a GPU), nothing is kept: it would hold that memory
        assert load_checkpoint(str(path), mmap=True, map_location="meta").state_dict["w"].device.type == "meta"
    assert len(loads) == 6
    home = tmp_path / "home"
    (home / "m").mkdir(parents=True)
    (home / "m" / path.name).write_bytes(path.read_bytes())
    monkeypatch.setenv("HOME", str(home))
    assert load_checkpoint("~/m/encoder.pt", mmap=True).path == home / "m" / path.name
    assert load_checkpoint("~/m/encoder.pt", mmap=True).extra["source"] == "eight" and len(loads) == 7


def test_saving_anything_but_a_make_checkpoint_payload_is_refused_and_writes_nothing(tmp_path):
    """``save_checkpoint(path, model)`` failed with "'MedGMAE' object is not iterable"; a bare ``state_dict()`` was
    written, and load_checkpoint refused the file later."""
    from medgmae.checkpoint import save_checkpoint

    model = VoxelMAE(img_size=16, patch_size=8, model_size="tiny")
    path = tmp_path / "m.pt"
    with pytest.raises(TypeError, match=r"m\.pt: payload must be a make_checkpoint dict, got a VoxelMAE; use "
                                        r"model\.model_checkpoint\(\)"):  # fmt: skip
        save_checkpoint(path, model)
    with pytest.raises(ValueError, match=r"m\.pt: payload must be a make_checkpoint dict .*model\.model_checkpoint"):
        save_checkpoint(path, model.state_dict())
    assert list(tmp_path.iterdir()) == []
    save_checkpoint(path, model.model_checkpoint())
    assert load_checkpoint(path).kind == "voxel-mae"


def test_a_bare_state_dict_or_a_whole_model_is_refused_with_the_way_to_save_a_model_file(tmp_path):
    """``torch.save(model.state_dict())`` records no architecture: refused as a bare state_dict with its tensor count;
    ``torch.save(model)`` is refused without PyTorch's allowlisting advice (the toolkit's loaders take no allowlist);
    both name ``save_checkpoint(path, model.model_checkpoint())``, whose file then loads."""
    from medgmae.checkpoint import save_checkpoint

    model = _models()["medgmae"]
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    torch.save(model, tmp_path / "whole.pt")
    n = len(model.state_dict())
    with pytest.raises(ValueError, match=rf"weights\.pt: a bare state_dict of {n} tensors \(torch\.save\(model\.state_dict\(\)\)\): "
                                         r"it records no architecture or pre-processing.*save_checkpoint\(path, model\.model_checkpoint\(\)\)"):
        load_checkpoint(tmp_path / "weights.pt")
    with pytest.raises(ValueError, match=r"whole\.pt: .*save_checkpoint\(path, model\.model_checkpoint\(\)\)") as refused:
        MedGMAE.from_checkpoint(tmp_path / "whole.pt")
    assert "safe_globals" not in str(refused.value) and f"{type(model).__module__}.MedGMAE" in str(refused.value)
    save_checkpoint(tmp_path / "model.pt", model.model_checkpoint())  # the advice, followed
    assert load_checkpoint(tmp_path / "model.pt", "medgmae").kind == "medgmae"


def test_a_model_file_records_the_run_it_came_from_and_an_older_one_records_none(tmp_path):
    """``extra["run"]``: the seed and loader workers given, as plain data (``weights_only``), read back as
    ``Checkpoint.run``; a file written before (no such key) loads as before, ``run`` None; a malformed record is
    refused before anything is written."""
    weights = {"w": torch.zeros(2)}
    path = tmp_path / "model.pt"
    torch.save(make_checkpoint("gmae2d", {}, weights, extra={"data": {"flip": False}}, run={"seed": 7, "num_workers": 2}), path)
    raw = torch.load(path, weights_only=True)
    assert raw["extra"] == {"data": {"flip": False}, "run": {"seed": 7, "num_workers": 2}}
    assert load_checkpoint(path).run == {"seed": 7, "num_workers": 2}
    assert load_checkpoint(path, mmap=True).run == {"seed": 7, "num_workers": 2}
    torch.save(make_checkpoint("gmae2d", {}, weights, run={"seed": 0}), path)  # workers unknown: seed alone
    assert load_checkpoint(path).run == {"seed": 0}
    older = tmp_path / "older.pt"
    torch.save(make_checkpoint("gmae2d", {}, weights, extra={"data": {}}), older)  # as files were written before
    assert "run" not in torch.load(older, weights_only=True)["extra"]
    assert load_checkpoint(older).run is None and load_checkpoint(older).extra == {"data": {}}
    for bad in ({"seed": -1}, {"seed": 1.5}, {"num_workers": 2}, {"seed": 1, "threads": 4}, [1, 2]):
        with pytest.raises(ValueError, match="seed|num_workers|run record"):
            make_checkpoint("gmae2d", {}, weights, run=bad)


def test_the_2d_models_carry_their_run_record_through_their_files(tmp_path):
    """A 2D GMAE built with a run record writes it into model.pt and encoder.pt and reads it back; a GViT's save
    records the run it is given (or the one it was loaded with); files without one load with ``run_settings`` None."""
    from medgmae.twod.gvit import GViT

    gmae = GMAE2D(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4, run_settings={"seed": 5, "num_workers": 1})
    torch.save(gmae.model_checkpoint(), tmp_path / "model.pt")
    torch.save(gmae.encoder_checkpoint(), tmp_path / "encoder.pt")
    assert GMAE2D.from_checkpoint(tmp_path / "model.pt").run_settings == {"seed": 5, "num_workers": 1}
    assert load_checkpoint(tmp_path / "encoder.pt", "medgmae-encoder").run == {"seed": 5, "num_workers": 1}
    plain = GMAE2D(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4)
    torch.save(plain.model_checkpoint(), tmp_path / "plain.pt")
    assert "run" not in torch.load(tmp_path / "plain.pt", weights_only=True)["extra"]
    assert GMAE2D.from_checkpoint(tmp_path / "plain.pt").run_settings is None
    with pytest.raises(ValueError, match="seed"):
        GMAE2D(img_size=16, patch_size=8, model_size="tiny", num_gaussians=4, run_settings={"seed": -2})

    vit = GViT(1, 16, 2, num_gaussians=4, patch_size=4)
    vit.save(tmp_path / "gvit.pt", class_names=["a", "b"], run={"seed": 9, "num_workers": 0})
    back = GViT.from_checkpoint(tmp_path / "gvit.pt")
    assert back.run_settings == {"seed": 9, "num_workers": 0}
    back.save(tmp_path / "again.pt")  # a loaded model saved again keeps its record
    assert torch.load(tmp_path / "again.pt", weights_only=True)["extra"]["run"] == {"seed": 9, "num_workers": 0}
    vit.save(tmp_path / "bare.pt", class_names=["a", "b"])
    assert GViT.from_checkpoint(tmp_path / "bare.pt").run_settings is None
