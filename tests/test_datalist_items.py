"""Datalist items whose paths are not path strings, and paths that are not volume files."""

from __future__ import annotations

import json

import pytest

from medgmae.data import DatasetError, read_volume
from medgmae.data.datalist import read_datalist
from medgmae.data.sources import resolve_datalist
from medgmae.finetune.data import prepare_datalists

from bundle_helpers import run_bundle
from finetune_helpers import two_case_datalist

ENTRIES = '{"image", "label"}'


@pytest.mark.parametrize(
    "item, key, found",
    [({"image": None}, "image", "null"), ({"image": "a.nii.gz", "label": 3}, "label", "a number (3)"),
     ({"image": ["a.nii.gz"]}, "image", 'a list (["a.nii.gz"])'), ({"image": True}, "image", "true"),
     ({"image": {"path": "a.nii.gz"}}, "image", 'an object ({"path": "a.nii.gz"})')],
)  # fmt: skip
def test_a_datalist_item_whose_path_is_not_a_string_is_named(tmp_path, item, key, found):
    """``"image": null`` crashed with "unsupported operand type(s) for /: 'PosixPath' and 'NoneType'"; the message
    names the JSON the file holds (``null``, not Python's ``NoneType (None)``)."""
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"training": [{"image": "b.nii.gz"}, item]}))
    expected = f"datalist {path}: item 1 of 'training' has a '{key}' that is {found}, not a path string"
    with pytest.raises(DatasetError) as e:
        read_datalist(path)
    assert str(e.value) == expected
    with pytest.raises(DatasetError) as e:  # how pre-training and fine-tuning read their data source
        resolve_datalist("", tmp_path, datalist=path)
    assert str(e.value) == expected


def _refusal_everywhere(tmp_path, content: dict) -> str:
    """The one message reading ``content`` as a datalist gives, the same whichever list is read and whether
    pre-training or fine-tuning reads it; no file the datalist names exists, and nothing is written."""
    path = tmp_path / "dl.json"
    path.write_text(json.dumps(content))
    messages = set()
    for read in (lambda: read_datalist(path), lambda: read_datalist(path, "validation"),
                 lambda: resolve_datalist("", tmp_path, datalist=path),
                 lambda: prepare_datalists("", str(path), tmp_path / "run")):  # fmt: skip
        with pytest.raises(DatasetError) as e:
            read()
        messages.add(str(e.value))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl.json"]
    assert len(messages) == 1
    return messages.pop()


GOOD = {"training": [{"image": "a.nii.gz", "label": "a_seg.nii.gz"}], "validation": [{"image": "b.nii.gz"}]}


@pytest.mark.parametrize(
    "key, value, found",
    [("training", "imagesTr/case_0000.nii.gz", 'a string ("imagesTr/case_0000.nii.gz")'), ("training", 3, "a number (3)"),
     ("training", {"image": "a.nii.gz"}, 'an object ({"image": "a.nii.gz"})'), ("validation", "b.nii.gz", 'a string ("b.nii.gz")'),
     ("test", 0, "a number (0)")],
)  # fmt: skip
def test_a_datalist_list_that_is_not_a_list_is_refused_naming_the_file_and_the_list(tmp_path, key, value, found):
    """``"training": "imagesTr/case_0000.nii.gz"`` was read a character at a time: a warning of training images
    listed more than once ("/x/ph/0") and then 25 single-letter cases without a label."""
    message = _refusal_everywhere(tmp_path, {**GOOD, key: value})
    assert message == f"datalist {tmp_path / 'dl.json'}: '{key}' must be a list of {ENTRIES} entries, got {found}"


@pytest.mark.parametrize("item, found", [(7, "a number (7)"), (None, "null"), (["a.nii.gz"], 'a list (["a.nii.gz"])')])
def test_a_datalist_entry_that_is_neither_an_object_nor_a_path_is_refused(tmp_path, item, found):
    message = _refusal_everywhere(tmp_path, {**GOOD, "test": ["c.nii.gz", item]})
    assert message == (f"datalist {tmp_path / 'dl.json'}: item 1 of 'test' must be a {ENTRIES} object or an image "
                       f"path string, got {found}")  # fmt: skip


@pytest.mark.parametrize("image, found", [(5, "a number (5)"), (None, "null")])
def test_an_image_that_is_not_a_path_in_any_list_is_refused_before_a_file_is_read(tmp_path, image, found):
    message = _refusal_everywhere(tmp_path, {**GOOD, "test": [{"image": image}]})
    expected = f"datalist {tmp_path / 'dl.json'}: item 0 of 'test' has a 'image' that is {found}, not a path string"
    assert message == expected


def test_the_fine_tuning_bundle_refuses_a_training_list_given_as_a_string_in_one_line(tmp_path):
    path = two_case_datalist(tmp_path)
    content = json.loads(path.read_text())
    content["training"] = "c0_img.nii.gz"
    path.write_text(json.dumps(content))
    out = tmp_path / "run"
    proc = run_bundle("training", "unetr_finetune/configs/train.json", "--datalist", str(path), "--device", "cpu",
                      "--max_epochs", "1", "--output_dir", str(out))  # fmt: skip
    expected = (f"error: DatasetError: datalist {path}: 'training' must be a list of {ENTRIES} entries, got a string "
                '("c0_img.nii.gz")')  # fmt: skip
    assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1] == expected, proc.stderr[-3000:]
    assert "more than once" not in proc.stdout + proc.stderr and not out.exists()


def test_a_directory_named_like_a_volume_file_is_called_a_directory(tmp_path):
    """Not "cannot read the volume (ImageFileError: Could not read file: ...)"."""
    folder = tmp_path / "x.nii.gz"
    folder.mkdir()
    with pytest.raises(ValueError) as e:
        read_volume(folder)
    assert str(e.value).startswith(f"{folder}: is a directory, not a volume file")
    assert "Could not read" not in str(e.value)


def test_a_missing_dataset_folder_is_a_dataset_refusal(tmp_path):
    """Pre-training's ``--dataset_dir`` naming no folder is refused as fine-tuning refuses it (a ``DatasetError``,
    which a bundle prints alone), not with a ``FileNotFoundError`` under MONAI's traceback."""
    missing = tmp_path / "no_such_folder"
    with pytest.raises(DatasetError, match=f"dataset_dir does not exist: {missing}"):
        resolve_datalist(str(missing), tmp_path)


def test_a_datalist_written_on_windows_is_read_with_its_backslashes_as_folder_separators(tmp_path):
    """``imagesTr\\\\case_0.nii.gz`` (a datalist written on Windows) names ``imagesTr/case_0.nii.gz``: pre-training and
    fine-tuning found none of the files; a file whose own name holds a backslash is still taken as named."""
    for name in ("imagesTr/case_0.nii.gz", "labelsTr/case_0.nii.gz", "imagesTr/case_1.nii.gz", "odd\\name.nii.gz"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"training": [{"image": "imagesTr\\case_0.nii.gz", "label": ".\\labelsTr\\case_0.nii.gz"},
                                             {"image": "odd\\name.nii.gz"}],
                                "validation": [{"image": "imagesTr\\case_1.nii.gz"}]}))  # fmt: skip
    root = tmp_path.resolve()  # the paths resolve against the datalist's folder with its links followed
    expected = [{"image": f"{root}/imagesTr/case_0.nii.gz", "label": f"{root}/labelsTr/case_0.nii.gz"},
                {"image": f"{root}/odd\\name.nii.gz"}]
    assert read_datalist(path) == expected
    assert read_datalist(path, "validation") == [{"image": f"{root}/imagesTr/case_1.nii.gz"}]
    items, _ = resolve_datalist("", tmp_path / "work", datalist=path)  # how pre-training and fine-tuning read it
    assert [it["image"] for it in items] == [e["image"] for e in expected] + [f"{root}/imagesTr/case_1.nii.gz"]


def test_a_datalist_path_in_the_home_folder_is_read_there(tmp_path, monkeypatch):
    """``~/data/h.nii.gz`` in a datalist names the file in the user's home folder (as read_volume reads a path it is
    given), not ``<datalist folder>/~/data/h.nii.gz``."""
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    (home / "data").mkdir(parents=True)
    (home / "data" / "h.nii.gz").write_bytes(b"")
    lists = tmp_path / "lists"
    lists.mkdir()
    path = lists / "dataset.json"
    path.write_text(json.dumps({"training": [{"image": "~/data/h.nii.gz", "label": "~\\data\\h.nii.gz"}]}))
    assert read_datalist(path) == [{"image": f"{home}/data/h.nii.gz", "label": f"{home}/data/h.nii.gz"}]


def test_a_datalist_saved_with_a_byte_order_mark_is_read(tmp_path):
    """Windows Notepad saves UTF-8 with a byte-order mark, which json.loads refused ("Unexpected UTF-8 BOM")."""
    from medgmae.files import read_json

    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"training": [{"image": "ct_ü.nii.gz"}]}, ensure_ascii=False), encoding="utf-8-sig")
    assert path.read_bytes()[:3] == b"\xef\xbb\xbf"
    assert read_datalist(path) == [{"image": f"{tmp_path.resolve()}/ct_ü.nii.gz"}]
    assert read_json(path) == {"training": [{"image": "ct_ü.nii.gz"}]}  # the reader of other JSON files users edit


def test_a_long_windows_path_is_read_without_asking_the_file_system_for_its_one_long_name(tmp_path):
    """A backslash path longer than a file name may be (it is one name on Linux): Python 3.10 and 3.11's
    ``Path.exists`` raised ``OSError: File name too long`` on it; it is read with the backslashes as separators."""
    rel = "imagesTr\\" + "sub_folder_name\\" * 18 + "case_0001.nii.gz"
    assert len(rel.encode()) > 255
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"training": [{"image": rel}]}))
    assert read_datalist(path) == [{"image": f"{tmp_path.resolve()}/{rel.replace(chr(92), '/')}"}]


def test_readers_of_the_class_names_alone_do_not_judge_the_case_lists(tmp_path):
    """Whether a datalist names its classes is read from ``labels`` alone: a malformed ``test`` list is the case
    readers' to refuse, not a reason to answer "no class names"."""
    from medgmae.finetune.classes import names_classes
    from medgmae.mae_training.summary import _has_class_names

    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"0": "background", "1": "liver"}, "training": [], "test": "x.nii.gz"}))
    assert names_classes(path) and _has_class_names(str(path))


def test_class_names_are_read_from_a_datalist_whose_case_lists_another_reader_refuses(tmp_path):
    """``label_names`` (export and inference name their classes by it) and the summary's labelled-datalist check
    read their own fields; a malformed ``test`` list turned the names into ``class_1`` ... and the datalist into
    "not labelled"."""
    from medgmae.finetune.classes import label_names
    from medgmae.mae_training.summary import labelled_datalist

    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"labels": {"0": "background", "1": "liver"}, "test": 5,
                                "training": [{"image": "a.nii.gz", "label": "b.nii.gz"}]}))  # fmt: skip
    assert label_names(path) == ["background", "liver"]
    assert labelled_datalist(str(path)) == str(path)
