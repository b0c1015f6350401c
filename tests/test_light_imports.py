"""The console commands answer ``--help`` and refuse a bad flag before torch or MONAI is imported (seconds of CPU
each on every run), and the tools that only read JSON or headers, or the volume reader, never import them."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torch.distributed", "monai", "ignite")


def _loaded_after(code: str) -> list[str]:
    """Which of :data:`HEAVY` a fresh interpreter running ``code`` has imported when it ends (status ignored)."""
    report = f"\nimport sys\nprint('loaded:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code + report], capture_output=True, text=True, cwd=ROOT, env=env,
                         timeout=300)  # fmt: skip
    last = out.stdout.splitlines()[-1] if out.stdout else ""
    assert last.startswith("loaded:"), out.stdout + out.stderr
    return [m for m in last.removeprefix("loaded:").split(",") if m]


@pytest.mark.parametrize("entry, args", [
    ("datalist", ["--help"]),
    ("runs_table", ["--help"]),
    ("ellipsoids", ["--help"]),
    ("ellipsoids", ["g.ply", "--level", "9"]),
    ("info", ["--help"]),
    ("info", ["--bogus"]),
    ("recon", ["--help"]),
    ("recon", ["reconstruct", "--bogus"]),
    ("phantom", ["--help"]),
    ("twod", ["--help"]),
    ("twod", ["segment", "--help"]),
    ("twod", ["edges", "--checkpoint", "m.pt", "--image", "i.png", "--out", "o", "--bogus"]),
])  # fmt: skip
def test_help_and_a_refused_flag_import_no_torch_or_monai(entry, args):
    """The console script's own entry point (``medgmae.launch``), run as the script is: argparse answers and exits
    before the command imports torch (``torch.distributed`` came in through the rank question of the error
    handling) or MONAI (``medgmae.data``'s package imported its disk cache)."""
    code = (f"import sys\nfrom medgmae import launch\nsys.argv = ['x', *{args!r}]\n"
            f"try:\n    launch.{entry}()\nexcept SystemExit:\n    pass")  # fmt: skip
    assert _loaded_after(code) == []


@pytest.mark.parametrize("module", ["medgmae.data.reader", "medgmae.data.decathlon", "medgmae.finetune.runs_table",
                                    "medgmae.ellipsoids_cli"])
def test_light_modules_import_no_torch_or_monai(module):
    """Reading a volume (``medgmae-recon``'s inputs), the datalist tool and the runs table need neither."""
    assert _loaded_after(f"import {module}") == []


def test_the_device_choice_loads_torch_only():
    """``medgmae-2d`` and ``medgmae-recon`` ask ``medgmae.engine`` for ``resolve_device``: the package's handlers
    (ignite, MONAI's transforms) are not imported with it."""
    code = "from medgmae.engine import resolve_device\nassert resolve_device('cpu').type == 'cpu'"
    loaded = _loaded_after(code)
    assert "torch" in loaded and "monai" not in loaded and "ignite" not in loaded


def test_fbp_runs_without_monai(tmp_path):
    """``medgmae-recon fbp`` on a tiny parallel-beam scan (4 views of an 8 x 8 x 8 grid) writes its volume with torch
    only: MONAI and ignite came in through ``medgmae.engine``'s handlers, imported with ``resolve_device``."""
    import json

    import numpy as np

    angles = [i * np.pi / 4 for i in range(4)]
    geometry = {"kind": "parallel", "volume_shape": [8, 8, 8], "voxel_size": [1.0, 1.0, 1.0], "det_shape": [8, 12],
                "det_spacing": [1.0, 1.0], "angles": angles, "source_origin": None, "source_detector": None,
                "affine": np.eye(4).tolist()}  # fmt: skip
    (tmp_path / "geometry.json").write_text(json.dumps(geometry), encoding="utf-8")
    np.save(tmp_path / "projections.npy", np.random.default_rng(0).uniform(0.0, 2.0, (4, 8, 12)).astype(np.float32))
    args = ["fbp", "--projections", str(tmp_path / "projections.npy"), "--geometry", str(tmp_path / "geometry.json"),
            "--device", "cpu", "--out", str(tmp_path / "fbp.nii.gz")]  # fmt: skip
    code = (f"import sys\nfrom medgmae import launch\nsys.argv = ['x', *{args!r}]\n"
            "assert launch.run('medgmae-recon', 'recon.cli') == 0")
    loaded = _loaded_after(code)
    assert "torch" in loaded and "monai" not in loaded and "ignite" not in loaded
    assert (tmp_path / "fbp.nii.gz").is_file()


@pytest.mark.parametrize("package", ["medgmae.data", "medgmae.engine", "medgmae.finetune", "medgmae.twod", "recon"])
def test_every_public_name_of_a_lazy_package_is_there(package):
    """Each name of ``__all__`` is found, from the module that defines it, and another name is an AttributeError."""
    module = importlib.import_module(package)
    for name in module.__all__:
        value = getattr(module, name)
        home = getattr(value, "__module__", None)
        assert home is None or home.startswith(("medgmae", "recon", "monai")), (name, home)
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        getattr(module, "no_such_name")


def test_load_volumed_keeps_its_name_once_made_on_first_use():
    """``LoadVolumed`` is made when first asked for, under the name it had when defined at import: the disk cache's
    folder name hashes it (a new name would rebuild every cache in a new folder) and pickles find it by it."""
    import pickle

    from medgmae.data import LoadVolumed
    from medgmae.data.reader import LoadVolumed as again

    assert LoadVolumed is again
    assert (LoadVolumed.__module__, LoadVolumed.__qualname__) == ("medgmae.data.reader", "LoadVolumed")
    copy = pickle.loads(pickle.dumps(LoadVolumed(keys="image", label_keys="image")))
    assert type(copy) is LoadVolumed and copy.label_keys == {"image"}
