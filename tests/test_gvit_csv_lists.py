"""GViT's CSV lists of images: a file in another encoding than UTF-8 is refused naming its line and asking for
UTF-8; rows written with Windows backslashes find their images."""

import numpy as np
import pytest
from PIL import Image

from medgmae.data.datalist import DatasetError
from medgmae.twod.classification_csv import read_csv_list


def _images(root, names=("normal", "tumour"), per_class=2):
    rng = np.random.default_rng(0)
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray((rng.random((8, 8)) * 255).astype(np.uint8)).save(root / name / f"im{i}.png")
    return root


def test_a_latin1_csv_is_refused_naming_its_line_and_asking_for_utf8(tmp_path):
    """``Bäck`` saved as Latin-1 on line 4: the message names line 4 and byte 0xe4, not a position in a chunk."""
    _images(tmp_path)
    rows = ["path,label", "normal/im0.png,normal", "normal/im1.png,normal", "tumour/im0.png,Bäck", "tumour/im1.png,Bäck"]
    (tmp_path / "list.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode("latin-1"))
    with pytest.raises(DatasetError) as e:
        read_csv_list(tmp_path / "list.csv")
    message = str(e.value)
    assert message == (f"CSV file {tmp_path / 'list.csv'}, line 4: byte 0xe4 is not UTF-8 text (the file is in another "
                       "encoding, Latin-1 or Windows-1252, say): save it as UTF-8")  # fmt: skip
    assert "\n" not in message and "codec" not in message


def test_a_utf8_csv_with_a_byte_order_mark_and_crlf_lines_still_reads(tmp_path):
    _images(tmp_path)
    rows = ["path,label", "normal/im0.png,normal", "normal/im1.png,normal", "tumour/im0.png,Bäck", "tumour/im1.png,Bäck"]
    (tmp_path / "list.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode("utf-8-sig"))
    items, classes = read_csv_list(tmp_path / "list.csv")
    assert classes == ["Bäck", "normal"] and [it["label"] for it in items] == [1, 1, 0, 0]


def test_rows_with_windows_backslashes_find_their_images(tmp_path):
    """``normal\\im0.png`` (a list written on Windows) reads as ``normal/im0.png``: the same items as the list
    written with forward slashes, not 'image not found' for every row."""
    _images(tmp_path / "data")
    rows = [("normal", 0), ("normal", 1), ("tumour", 0), ("tumour", 1)]
    (tmp_path / "windows.csv").write_text("".join(f"data\\{c}\\im{i}.png,{c}\n" for c, i in rows), encoding="utf-8")
    (tmp_path / "posix.csv").write_text("".join(f"data/{c}/im{i}.png,{c}\n" for c, i in rows), encoding="utf-8")
    assert read_csv_list(tmp_path / "windows.csv") == read_csv_list(tmp_path / "posix.csv")
    assert read_csv_list(tmp_path / "windows.csv")[0][0]["image"] == str(tmp_path / "data" / "normal" / "im0.png")


def test_a_file_named_with_a_backslash_is_read_as_named(tmp_path):
    """Where a file is named with the backslash itself (allowed on Linux), that file is the one listed."""
    _images(tmp_path)
    for c in ("normal", "tumour"):
        (tmp_path / c / "im0.png").rename(tmp_path / f"{c}\\im0.png")
    (tmp_path / "list.csv").write_text("normal\\im0.png,normal\ntumour\\im0.png,tumour\n", encoding="utf-8")
    items, _ = read_csv_list(tmp_path / "list.csv")
    assert [it["image"] for it in items] == [str(tmp_path / "normal\\im0.png"), str(tmp_path / "tumour\\im0.png")]
