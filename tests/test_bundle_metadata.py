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
        for rel in ("configs/metadata.json", "configs/logging.conf", "docs/README.md", "LICENSE"):
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
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert required["medgmae"] == project["version"]
    assert set(required) >= {"medgmae", "pytorch-ignite"}
