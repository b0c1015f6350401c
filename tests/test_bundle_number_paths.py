"""Folders and files named by a bare number: MONAI's command line reads ``--output_dir 2024`` as the number 2024,
and every bundle takes it as the folder ``2024`` (it stopped with a ``TypeError`` in ``os.path.join``)."""

from __future__ import annotations

import json
import re

import pytest
from monai.bundle import ConfigParser

from tests.bundle_helpers import BUNDLES
from tests.pretrain_helpers import SMALL, TRAIN, bundle_process, succeeded

#: the path settings a bundle's command line may give, each set to a number below
PATH_KEYS = ("bundle_root", "output_dir", "tensorboard_dir", "cache_dir", "dataset_dir", "datalist", "model_path",
             "image", "checkpoint", "pretrained", "export_path", "eval_dir", "inference_dir", "seg_dir")  # fmt: skip
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


def test_pretraining_writes_into_a_folder_named_by_a_number(tmp_path):
    proc = succeeded(bundle_process("run", "training", "--config_file", TRAIN, *SMALL, "--max_epochs", "1",
                                    "--output_dir", "2024", cwd=tmp_path))  # fmt: skip
    assert (tmp_path / "2024" / "model.pt").is_file() and (tmp_path / "2024" / "encoder.pt").is_file()
    summary = json.loads((tmp_path / "2024" / "summary.json").read_text(encoding="utf-8"))
    assert "2024" in json.dumps(summary), proc.stdout[-2000:]
