"""Every bundle's metadata.json passes MONAI's verify_metadata offline against the shipped schema."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "bundles" / "schema" / "meta_schema.json"
BUNDLES = sorted(p.parent.parent for p in (ROOT / "bundles").glob("*/configs/metadata.json"))


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_verify_metadata_offline(bundle):
    meta = bundle / "configs" / "metadata.json"
    run = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(meta), "--filepath", str(SCHEMA)],
        capture_output=True, encoding="utf-8", errors="replace", timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "metadata is verified with no error" in (run.stdout + run.stderr)


def test_schema_rejects_incomplete_metadata(tmp_path):
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps({"schema": "x", "version": "0.1.0"}))
    run = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "verify_metadata", "--meta_file", str(meta), "--filepath", str(SCHEMA)],
        capture_output=True, encoding="utf-8", errors="replace", timeout=120,
    )
    assert run.returncode != 0 and "required property" in (run.stdout + run.stderr)


def test_every_bundle_has_the_standard_files():
    assert BUNDLES, "no bundles found"
    for b in BUNDLES:
        for rel in ("configs/metadata.json", "configs/logging.conf", "docs/README.md", "docs/data_license.txt", "LICENSE"):
            assert (b / rel).is_file(), f"{b.name} lacks {rel}"


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_metadata_reads_without_renaming(bundle):
    """MONAI 1.6 renames a deprecated ``optional_packages_version`` to ``required_packages_version`` when it reads
    the metadata, with a warning on every run, replacing what the latter held (here: the toolkit itself). Every
    bundle lists its packages under the current name, the toolkit at the version this checkout installs."""
    import tomllib
    import warnings

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parser.read_meta(str(bundle / "configs" / "metadata.json"))
    required = parser.get("_meta_")["required_packages_version"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert required["medgmae"] == project["version"]
    assert set(required) >= {"medgmae", "pytorch-ignite"}


# What each bundle's network needs that its training config reads from the data (documented in its README).
VERIFY_OVERRIDES = {
    "gvit_classification": {"network_def#num_classes": 3, "network_def#in_channels": 1},
    "unetr_finetune": {"network_def#num_classes": 14},
}


@pytest.mark.parametrize("bundle", BUNDLES, ids=[b.name for b in BUNDLES])
def test_verify_net_in_out(bundle, tmp_path, monkeypatch):
    """MONAI's ``verify_net_in_out`` (the model zoo's check) builds each bundle's ``network_def`` from
    ``train.json`` and runs it on data shaped as ``metadata.json`` says, with the command in the bundle's README;
    it writes nothing (no phantoms, no run folder). A wrong spatial shape in the metadata fails it."""
    from monai.bundle import verify_net_in_out

    monkeypatch.chdir(tmp_path)
    configs = bundle / "configs"
    overrides = VERIFY_OVERRIDES.get(bundle.name, {})
    readme = (bundle / "docs" / "README.md").read_text(encoding="utf-8")
    assert "verify_net_in_out network_def" in readme and all(f"--{k} {v}" in readme for k, v in overrides.items())
    kwargs = dict(net_id="network_def", meta_file=str(configs / "metadata.json"),
                  config_file=str(configs / "train.json"), device="cpu", **overrides)
    verify_net_in_out(**kwargs)
    assert not any(tmp_path.iterdir()), sorted(p.name for p in tmp_path.iterdir())
    dims = len(json.loads((configs / "metadata.json").read_text(encoding="utf-8"))["network_data_format"]["inputs"]["image"]["spatial_shape"])
    with pytest.raises((ValueError, RuntimeError)):  # the check can fail: metadata saying another input size
        verify_net_in_out(**kwargs, **{"_meta_#network_data_format#inputs#image#spatial_shape": [24] * dims})
