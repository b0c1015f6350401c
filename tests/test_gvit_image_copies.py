"""Copies of one image in a GViT dataset: under two classes, or in training and validation, are warned about."""

import logging
import shutil

import numpy as np
from PIL import Image

from medgmae.twod.classification_data import resolve_classification_data
from medgmae.twod.image_copies import same_content_groups


def _png(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (16, 16), dtype=np.uint8)).save(path)


def _resolve(root, caplog):
    with caplog.at_level(logging.WARNING, logger="medgmae.gvit"):
        return resolve_classification_data(root, root / "unused", image_size=16, val_fraction=0.25)


def test_a_file_copied_into_two_class_folders_is_named(tmp_path, caplog):
    root = tmp_path / "classes"
    for k in range(4):
        _png(root / "left" / f"l{k}.png", k)
        _png(root / "right" / f"r{k}.png", 10 + k)
    shutil.copy(root / "left" / "l2.png", root / "right" / "copy_of_l2.png")
    _resolve(root, caplog)
    [line] = [r.getMessage() for r in caplog.records if "different classes" in r.getMessage()]
    assert "1 image is stored more than once" in line
    assert "left/l2.png (left, " in line and "right/copy_of_l2.png (right, " in line
    assert "r0.png" not in line and "l1.png" not in line


def test_a_copy_in_training_and_validation_is_named(tmp_path, caplog):
    root = tmp_path / "split"
    for k in range(3):
        _png(root / "train" / "a" / f"a{k}.png", k)
        _png(root / "train" / "b" / f"b{k}.png", 10 + k)
    _png(root / "val" / "a" / "new.png", 20)
    _png(root / "val" / "b" / "new.png", 21)
    shutil.copy(root / "train" / "b" / "b1.png", root / "val" / "b" / "b1_again.png")
    _resolve(root, caplog)
    [line] = [r.getMessage() for r in caplog.records if "training and in validation" in r.getMessage()]
    assert "1 image is stored both in training and in validation" in line
    assert "b1.png (b, train)" in line and "b1_again.png (b, val)" in line
    assert "different classes" not in caplog.text


def test_a_dataset_without_copies_is_not_warned_about(tmp_path, caplog):
    root = tmp_path / "classes"
    for k in range(4):
        _png(root / "left" / f"l{k}.png", k)
        _png(root / "right" / f"r{k}.png", 10 + k)
    _resolve(root, caplog)
    assert "byte-identical" not in caplog.text


def test_copies_are_grouped_by_their_bytes_not_their_size(tmp_path):
    for name, seed in (("a.png", 0), ("b.png", 1), ("c.png", 0), ("d.png", 2)):
        _png(tmp_path / name, seed)
    (tmp_path / "e.bin").write_bytes(b"x" * (tmp_path / "a.png").stat().st_size)  # same size, other bytes
    paths = sorted(str(p) for p in tmp_path.iterdir())
    assert same_content_groups(paths) == [[str(tmp_path / "a.png"), str(tmp_path / "c.png")]]


def test_only_files_that_share_their_size_and_ends_are_read_whole(tmp_path, monkeypatch):
    """Twelve files of one size (as uncompressed DICOM slices are) that differ near their start are told apart by
    their ends alone; two that differ only in the middle are read whole and told apart; two copies are grouped."""
    import medgmae.twod.image_copies as copies

    size, whole = 3 * (1 << 16), []
    digest = copies.file_sha256
    monkeypatch.setattr(copies, "file_sha256", lambda p: whole.append(p) or digest(p))
    files = []
    for k in range(12):  # a header that differs, then the same body
        files.append(tmp_path / f"slice{k:02d}.dcm")
        files[-1].write_bytes(bytes([k]) * 100 + b"\0" * (size - 100))
    middle = bytearray(b"\1" * size)
    (tmp_path / "m1.raw").write_bytes(bytes(middle))
    middle[size // 2] = 7
    (tmp_path / "m2.raw").write_bytes(bytes(middle))
    shutil.copy(files[3], tmp_path / "copy.dcm")
    groups = same_content_groups([*files, tmp_path / "m1.raw", tmp_path / "m2.raw", tmp_path / "copy.dcm"])
    assert groups == [[str(files[3]), str(tmp_path / "copy.dcm")]]
    assert sorted(whole) == sorted([str(files[3]), str(tmp_path / "copy.dcm"), str(tmp_path / "m1.raw"), str(tmp_path / "m2.raw")])
