"""Paths with characters that MONAI or ``glob`` read as syntax: a ``#`` in a bundle path setting (MONAI's config
parser makes every ``#`` in a text ``::``, its reference separator), a folder named ``[1]`` in a file pattern (a glob
character class), and a printed command naming a folder with a space."""

from __future__ import annotations

import json
import shlex

import pytest

from medgmae.data.datalist import DatasetError
from tests.bundle_helpers import BUNDLES, run_bundle, setting_error_text

MAIN = "/env/lib/python3.11/site-packages/monai/bundle/__main__.py"
GVIT_INFERENCE = BUNDLES / "gvit_classification" / "configs" / "inference.json"


def _command_line(monkeypatch, *flags: str) -> None:
    monkeypatch.setattr("sys.argv", [MAIN, "run", "--config_file", str(GVIT_INFERENCE), *flags])


def test_a_hash_typed_on_the_command_line_is_read_back(monkeypatch):
    from medgmae.cli_types import as_given, as_path_text

    _command_line(monkeypatch, "--output_dir", "/d/run#2", "--input_files=['/d/#h/a.nii.gz', '/d/b::c.nii.gz']",
                  "--dataset_dir", "/d/a::b#c")  # fmt: skip
    # what the config holds once MONAI's parser has read the values
    assert as_path_text("/d/run::2", "output_dir") == "/d/run#2"
    assert as_given(["/d/::h/a.nii.gz", "/d/b::c.nii.gz"], "input_files") == ["/d/#h/a.nii.gz", "/d/b::c.nii.gz"]
    assert as_path_text("/d/a::b::c", "dataset_dir") == "/d/a::b#c"  # a typed :: stays
    assert as_path_text("/d/x::y", "output_dir") == "/d/x::y"  # not what was typed: left alone
    assert as_path_text("/d/x::y", "datalist") == "/d/x::y"  # a config default with a :: of its own
    assert as_given(["/d/::h/a.nii.gz"], "input_files") == ["/d/::h/a.nii.gz"]  # another list: left alone


def test_a_hash_of_an_args_file_or_a_config_file_is_read_back(monkeypatch, tmp_path):
    from medgmae.cli_types import as_given, as_path_text

    args = tmp_path / "args.json"
    args.write_text(json.dumps({"images": ["/d/#h/a.png"], "image_dir": "/d/#h"}))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**json.loads(GVIT_INFERENCE.read_text()), "model_path": "/d/#h/model.pt"}))
    monkeypatch.setattr("sys.argv", [MAIN, "run", "--config_file", str(config), "--args_file", str(args)])
    assert as_given(["/d/::h/a.png"], "images") == ["/d/#h/a.png"]
    assert as_path_text("/d/::h", "image_dir") == "/d/#h"
    assert as_path_text("/d/::h/model.pt", "model_path") == "/d/#h/model.pt"


def test_a_bundle_names_the_folder_with_a_hash_as_typed(tmp_path):
    model = tmp_path / "run#2" / "model.pt"
    proc = run_bundle("run", "gvit_classification/configs/inference.json", "--model_path", str(model),
                      "--images", f"['{tmp_path / '#h' / 'a.png'}']")  # fmt: skip
    text = setting_error_text(proc.stdout + proc.stderr)
    assert f"--model_path: {model}: no such file" in text and "::" not in text, text


def test_a_bundle_run_from_python_names_the_folder_with_a_hash_as_given(tmp_path):
    from monai.bundle import run

    from medgmae.bundle_checks import BundleSettingError
    from medgmae.bundle_errors import exception_chain

    model = tmp_path / "run#2" / "model.pt"
    with pytest.raises(RuntimeError) as e:  # MONAI's, around the bundle's refusal
        run("run", config_file=str(GVIT_INFERENCE), model_path=str(model), images=[str(tmp_path / "a.png")])
    text = next(str(x) for x in exception_chain(e.value) if isinstance(x, BundleSettingError))
    assert f"--model_path: {model}: no such file" in text and "::" not in text, text


def test_a_bundle_run_from_python_reads_a_hash_back_while_it_runs_and_finalises(tmp_path, capsys):
    """``monai.bundle.run`` runs the workflow after ``create_workflow`` (where its keyword arguments are) has
    returned: the run and the finalize steps got ``run::2`` back."""
    from monai.bundle import run

    config = tmp_path / "config.json"
    show = "as_path_text(@output_dir, 'output_dir')"
    config.write_text(json.dumps({"imports": ["$from medgmae.cli_types import as_path_text"],
                                  "output_dir": str(tmp_path / "default"), "later": f"${show}",
                                  **{step: [f"$print('>> {step}:', {show}, @later)"]
                                     for step in ("initialize", "run", "finalize")}}))  # fmt: skip
    folder = str(tmp_path / "run#2")
    run("run", config_file=str(config), output_dir=folder)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith(">> ")]
    assert printed == [f">> {step}: {folder} {folder}" for step in ("initialize", "run", "finalize")]


def test_a_bundle_trained_from_python_writes_into_the_folder_with_a_hash(tmp_path):
    """The real training bundle from Python: the lock was taken on ``gv#1`` and the checkpoints went to ``gv::1``."""
    from tests.gvit_helpers import TINY, run_gvit_bundle

    run_gvit_bundle("train.json", output_dir=str(tmp_path / "gv#1"), **TINY)
    assert (tmp_path / "gv#1" / "model.pt").is_file() and any((tmp_path / "gv#1" / "checkpoints").iterdir())
    assert not [p for p in tmp_path.rglob("*") if "::" in p.name]


def _cases(folder):
    (folder / "imagesTr").mkdir(parents=True)
    for i in range(3):
        (folder / "imagesTr" / f"case_000{i}.nii.gz").write_bytes(b"")


def test_a_folder_named_with_brackets_is_that_folder(tmp_path):
    from medgmae.file_patterns import expand_input_patterns

    _cases(tmp_path / "[1]")
    _cases(tmp_path / "1")  # what [1] matches as a glob character class
    got = expand_input_patterns([f"{tmp_path}/[1]/imagesTr/case_000[01].nii.gz"])
    assert got == [f"{tmp_path}/[1]/imagesTr/case_0000.nii.gz", f"{tmp_path}/[1]/imagesTr/case_0001.nii.gz"]
    # a real pattern keeps its meaning: [1] past the folders that exist still matches 1
    assert expand_input_patterns([f"{tmp_path}/[1]/imagesTr/case_000[2]*"]) == [f"{tmp_path}/[1]/imagesTr/case_0002.nii.gz"]
    assert len(expand_input_patterns([f"{tmp_path}/*/imagesTr/*.nii.gz"])) == 6


def test_a_pattern_with_brackets_matching_nothing_says_how_to_escape_them(tmp_path):
    from medgmae.file_patterns import expand_input_patterns

    with pytest.raises(DatasetError, match=r"no file matches .*\[2\].*glob character class: write \[\[\] for a literal \["):
        expand_input_patterns([f"{tmp_path}/[2]/*.nii.gz"], "--images")
    with pytest.raises(DatasetError) as e:
        expand_input_patterns([f"{tmp_path}/x/*.nii.gz"])
    assert "character class" not in str(e.value)


def test_the_datalist_command_for_a_folder_with_a_space_is_quoted(tmp_path):
    from medgmae.finetune.run_record import folder_datalist_file

    folder = tmp_path / "My Data" / "raw scans"
    folder.mkdir(parents=True)
    with pytest.raises(DatasetError) as e:
        folder_datalist_file(folder)
    command = str(e.value).split("`")[1]
    assert shlex.split(command) == ["medgmae-datalist", str(folder)]
