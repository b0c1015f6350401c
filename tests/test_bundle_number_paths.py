"""Folders and files named by a bare number: MONAI's command line reads ``--output_dir 2024`` as the number 2024 and
``--output_dir 2024_01`` as 202401, and every bundle takes the folder as typed, ``2024`` or ``2024_01`` (it stopped
with a ``TypeError`` in ``os.path.join``); a path setting given as ``null`` (an args file) stays ``None``."""

from __future__ import annotations

import json
import re

import pytest
from monai.bundle import ConfigParser

from tests.bundle_helpers import BUNDLES
from tests.pretrain_helpers import SMALL, TRAIN, bundle_process, succeeded

#: the path settings a bundle's command line may give, each set to a number below
PATH_KEYS = ("bundle_root", "output_dir", "tensorboard_dir", "cache_dir", "dataset_dir", "datalist", "model_path",
             "image", "image_dir", "checkpoint", "pretrained", "export_path", "eval_dir", "inference_dir", "seg_dir")  # fmt: skip
CONFIGS = sorted(p for p in BUNDLES.glob("*/configs/*.json") if p.name != "metadata.json")


def _derived_paths(config) -> dict[str, object]:
    """Every top-level path the config derives from other settings with ``os.path.join``, resolved with each path
    setting it is derived from given as a number."""
    files = [config] if "multi_gpu" not in config.name else [config.with_name("train.json"), config]
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    derived = [k for k, v in parser.get().items() if isinstance(v, str) and re.match(r"\$os\.path\.join\((str\()?@", v)]
    parser.update({k: 2024 + i for i, k in enumerate(PATH_KEYS) if parser.get(k) is not None and k not in derived})
    return {k: parser.get_parsed_content(k) for k in derived}


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: f"{p.parents[1].name}/{p.name}")
def test_paths_derived_from_a_number_are_folder_names(config):
    paths = _derived_paths(config)
    for key, value in paths.items():
        assert isinstance(value, str) and value.split("/")[0].isdigit(), (key, value)


def test_a_number_is_read_back_as_the_command_line_typed_it(monkeypatch):
    from medgmae.cli_types import as_path_text

    argv = ["/env/lib/monai/bundle/__main__.py", "run", "training", "--output_dir", "2024_01", "--dataset_dir=1e3"]
    monkeypatch.setattr("sys.argv", argv)
    assert as_path_text(202401, "output_dir") == "2024_01" and as_path_text(1000.0, "dataset_dir") == "1e3"
    assert as_path_text(7, "cache_dir") == "7"  # not on the command line (an args file): the number's text
    assert as_path_text(None, "datalist") is None and as_path_text("runs/a", "output_dir") == "runs/a"
    assert as_path_text(True, "seg_dir") is True and as_path_text(["a", 1], "images") == ["a", 1]  # not typed
    # Python's words typed as folder names: MONAI reads them as True and a list (a TypeError then); None stays None
    # (--cache_dir None: no disk cache)
    argv = argv[:3] + ["--output_dir", "True", "--cache_dir", "None", "--dataset_dir", "[a,b]"]
    monkeypatch.setattr("sys.argv", argv)
    assert as_path_text(True, "output_dir") == "True" and as_path_text(None, "cache_dir") is None
    assert as_path_text(["a", "b"], "dataset_dir") == "[a,b]"
    monkeypatch.setattr("sys.argv", ["pytest", "--output_dir", "2024_01"])  # not a bundle run: the flags are not its
    assert as_path_text(202401, "output_dir") == "202401"


def test_pretraining_writes_into_a_folder_named_by_a_number(tmp_path):
    proc = succeeded(bundle_process("run", "training", "--config_file", TRAIN, *SMALL, "--max_epochs", "1",
                                    "--output_dir", "2024_01", cwd=tmp_path))  # fmt: skip
    out = tmp_path / "2024_01"
    assert (out / "model.pt").is_file() and (out / "encoder.pt").is_file(), proc.stdout[-2000:]
    assert not (tmp_path / "202401").exists()
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert str(out) in json.dumps(summary), proc.stdout[-2000:]
