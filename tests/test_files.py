"""medgmae.files.staged_outputs (outputs move in only when all were written), read_json; torch files cut short."""

from pathlib import Path

import pytest

from medgmae.files import save_json_atomic, staged_outputs


def _hidden(folder: Path) -> list[str]:
    """Hidden entries (staging folders, temporary files) anywhere below ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


def _earlier_run(target: Path) -> None:
    target.mkdir(parents=True)
    (target / "keep.pt").write_bytes(b"saved state")
    (target / "out.txt").write_text("old")
    (target / "pictures").mkdir()
    (target / "pictures" / "old.png").write_bytes(b"old picture")


def test_outputs_appear_together_in_a_new_folder(tmp_path):
    target = tmp_path / "runs" / "out"  # its parent does not exist yet either
    with staged_outputs(target) as stage:
        assert stage.parent == target.parent and stage.name.startswith(".out.staging-") and stage.is_dir()
        (stage / "a.txt").write_text("a")
        save_json_atomic({"b": 1}, stage / "sub" / "b.json")
        assert not target.exists()  # nothing moves in before the block ends
    assert (target / "a.txt").read_text(encoding="utf-8") == "a" and (target / "sub" / "b.json").read_text(encoding="utf-8").startswith("{")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["out"] and not _hidden(tmp_path)


def test_outputs_are_merged_into_an_existing_folder(tmp_path, folder_state):
    """Without remove_stale the run's files replace their namesakes and every other file stays as it was."""
    target = tmp_path / "out"
    _earlier_run(target)
    kept = {k: v for k, v in folder_state(target).items() if k in ("keep.pt", "pictures/old.png")}
    with staged_outputs(target) as stage:
        (stage / "out.txt").write_text("new")
        (stage / "pictures").mkdir()
        (stage / "pictures" / "new.png").write_bytes(b"new picture")
    assert (target / "out.txt").read_text(encoding="utf-8") == "new" and (target / "pictures" / "new.png").read_bytes() == b"new picture"
    assert {k: v for k, v in folder_state(target).items() if k in kept} == kept
    assert not _hidden(tmp_path)


def test_remove_stale_leaves_exactly_the_new_outputs(tmp_path):
    target = tmp_path / "out"
    _earlier_run(target)
    (target / "was_a_folder").mkdir()
    (target / "was_a_folder" / "x").write_text("x")
    with staged_outputs(target, remove_stale=True) as stage:
        (stage / "out.txt").write_text("new")
        (stage / "was_a_folder").write_text("now a file")
        (stage / "pictures").mkdir()
        (stage / "pictures" / "new.png").write_bytes(b"new picture")
    found = sorted(str(p.relative_to(target)) for p in target.rglob("*"))
    assert found == ["out.txt", "pictures", "pictures/new.png", "was_a_folder"]
    assert (target / "out.txt").read_text(encoding="utf-8") == "new" and (target / "was_a_folder").read_text(encoding="utf-8") == "now a file"
    assert not _hidden(tmp_path)


def test_remove_stale_with_nothing_written_empties_the_folder(tmp_path):
    target = tmp_path / "out"
    _earlier_run(target)
    with staged_outputs(target, remove_stale=True):
        pass
    assert target.is_dir() and list(target.iterdir()) == []


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
@pytest.mark.parametrize("remove_stale", [False, True])
def test_a_failure_in_the_block_leaves_the_folder_untouched(tmp_path, folder_state, error, remove_stale):
    target = tmp_path / "out"
    _earlier_run(target)
    before = folder_state(tmp_path)
    with pytest.raises(type(error)):
        with staged_outputs(target, remove_stale=remove_stale) as stage:
            (stage / "out.txt").write_text("half")
            (stage / "more.txt").write_text("more")
            raise error
    assert folder_state(tmp_path) == before  # no file replaced, none removed, no staging folder left
    assert not _hidden(tmp_path)


def test_a_failure_creates_no_folder(tmp_path):
    with pytest.raises(ValueError):
        with staged_outputs(tmp_path / "out") as stage:
            (stage / "a.txt").write_text("a")
            raise ValueError("bad input")
    assert list(tmp_path.iterdir()) == []


def test_read_json_names_the_file_and_the_problem(tmp_path):
    from medgmae.files import read_json

    good = tmp_path / "m.json"
    good.write_text('{"a": [1, 2.5]}')
    assert read_json(good) == {"a": [1, 2.5]}
    with pytest.raises(FileNotFoundError, match=r"missing\.json: the metrics file was not found"):
        read_json(tmp_path / "missing.json", "metrics file")
    (tmp_path / "bad.json").write_text('{"a": 1,}')
    with pytest.raises(ValueError, match=r"bad\.json: the metadata is not valid JSON \(.*line 1 column 9"):
        read_json(tmp_path / "bad.json", "metadata")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match=r"bin\.json: the JSON file is not UTF-8 text"):
        read_json(tmp_path / "bin.json")


@pytest.mark.parametrize("mmap", [False, True])
def test_a_truncated_torch_file_is_called_truncated_wherever_it_was_cut(tmp_path, mmap):
    """Torch's errors for a cut-short file depend on where it was cut (a zip "central directory" error, or
    ``OSError: [Errno 22] Invalid argument`` when memory-mapped): every cut gets the one message naming the file."""
    import torch

    from medgmae.torch_files import load_torch_file

    torch.save({"kind": "recon-gaussians", "params": torch.zeros(1000)}, tmp_path / "whole.pt")
    data = (tmp_path / "whole.pt").read_bytes()
    cut = tmp_path / "cut.pt"
    for n in (10, len(data) // 3, len(data) // 2, len(data) - 300, len(data) - 40, len(data) - 1):
        cut.write_bytes(data[:n])
        with pytest.raises(ValueError) as refused:
            load_torch_file(cut, what="reconstruction state", mmap=mmap)
        assert str(refused.value).startswith(f"{cut}: not a complete PyTorch file: truncated or damaged"), (n, refused.value)
        assert "write or copy the reconstruction state again" in str(refused.value) and "Errno" not in str(refused.value)
    # a damaged central directory behind an intact end record: Python's zipfile refuses it (BadZipFile, no
    # ValueError: it escaped the tools' handlers as a traceback), torch too; the same one message
    damaged = bytearray(data)
    damaged[data.rindex(b"PK\x01\x02") : data.rindex(b"PK\x01\x02") + 4] = b"XXXX"
    cut.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"not a complete PyTorch file: truncated or damaged"):
        load_torch_file(cut, what="reconstruction state", mmap=mmap)


def test_a_torchscript_file_is_named_as_one_without_advice_to_load_unsafely(tmp_path, recwarn):
    """An exported ``model.ts`` given where a checkpoint is read: torch.load's own refusal advises re-running with
    ``weights_only=False`` (which would run code) and warns; the message says what the file is instead."""
    import torch

    from medgmae.torch_files import load_torch_file

    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 3), torch.zeros(1, 2)), tmp_path / "model.ts")
    with pytest.raises(ValueError) as refused:
        load_torch_file(tmp_path / "model.ts", what="model checkpoint")
    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'model.ts'}: a TorchScript file") and "not a model checkpoint" in message
    assert "weights_only" not in message and not [w for w in recwarn if "TorchScript" in str(w.message)]
    torch.save({"a": torch.zeros(2)}, tmp_path / "plain.pt")  # a torch.save archive is not taken for one
    assert load_torch_file(tmp_path / "plain.pt")["a"].shape == (2,)


def test_the_files_named_last_move_in_after_the_others_in_their_order(tmp_path, monkeypatch):
    """``last``: the record and what is drawn from the rest move in after every other file (name order), in the
    order given; a file in a sub-folder keeps the name order of its folder."""
    import os

    moved, replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: moved.append(os.path.relpath(dst, tmp_path)) or replace(src, dst))
    with staged_outputs(tmp_path / "out", last=("z.json", "b.vtk")) as stage:
        for name in ("z.json", "b.vtk", "a.ply", "c.png", "sub/b.vtk", "sub/a.txt"):
            (stage / name).parent.mkdir(exist_ok=True)
            (stage / name).write_text(name)
    assert moved == ["out/a.ply", "out/c.png", "out/sub/a.txt", "out/sub/b.vtk", "out/z.json", "out/b.vtk"]
    assert all((tmp_path / m).read_text() == m[len("out/"):] for m in moved)
