"""``medgmae-info``: the text and the JSON say the same; each backend it reports is the one the pipeline dispatches
to (observed by recording which implementation ran); missing optional packages and a (faked) GPU are reported with
what runs instead."""

from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path
import shutil
import sys
import types

import numpy as np
import pytest
import torch

import medgmae.render as render3d
import medgmae.twod.render as render2d
import recon.projectors as projectors
from medgmae import info_cli
from medgmae.environment import EXAMPLE_VIEWS, environment_report, example_geometry
from medgmae.twod import gsplat_backend
from recon.projectors import make_projector, simulation_backend

FREE = 123_456_789_000  # the free room every disk_usage reports here


@pytest.fixture(autouse=True)
def fixed_free_room(monkeypatch):
    """``shutil.disk_usage`` reporting :data:`FREE` bytes free (the two runs of a test then see the same room)."""
    monkeypatch.setattr(shutil, "disk_usage", lambda where: shutil._ntuple_diskusage(10 * FREE, 9 * FREE, FREE))


def _run(capsys, *args: str) -> str:
    assert info_cli.main(list(args)) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return out


def _lines(text: str) -> dict[str, str]:
    """The text's ``label: value`` lines as a dict (labels end at the first colon followed by spaces)."""
    found = {}
    for line in text.splitlines():
        label, _, value = line.partition(": ")
        assert label not in found, f"{label} printed twice"
        found[label.rstrip(":")] = value.strip()
    return found


def _fake_gpu(monkeypatch, triton: bool = True) -> None:
    """One CUDA device as far as torch's queries go (an H100), gsplat's extension not loading, ASTRA with CUDA, and
    triton importable or not."""
    props = types.SimpleNamespace(name="NVIDIA H100 80GB HBM3", total_memory=80 * 2**30, major=9, minor=0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setitem(gsplat_backend._GSPLAT_PROBE, "error", "no CUDA compiler (nvcc) was found")
    monkeypatch.setattr(projectors, "astra_cuda_available", lambda: True)
    if not triton:
        _hide_modules(monkeypatch, "triton")


def _hide_modules(monkeypatch, *names: str) -> None:
    """``importlib.util.find_spec`` finding none of ``names``; ``astra`` not importable when named."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in names else real(name, *a))
    if "astra" in names:
        monkeypatch.setitem(sys.modules, "astra", None)


def test_the_text_and_the_json_say_the_same(capsys, tmp_path):
    report = json.loads(_run(capsys, "--json", "--path", str(tmp_path / "new")))
    lines = _lines(_run(capsys, "--path", str(tmp_path / "new")))
    assert report["toolkit"]["version"] in lines["toolkit"]
    t = report["torch"]
    assert lines["torch"].startswith(f"{t['version']}, ") and lines["torch"].endswith(f"{t['threads']} threads")
    for name, version in report["packages"].items():
        assert f"{name} {version or 'not installed'}" in lines["packages"]
    assert lines["CPUs"].startswith(str(report["cpus"]["count"]))
    if not report["gpus"]:
        assert lines["GPUs"] == "none"
    for gpu in report["gpus"]:
        assert lines[f"GPU {gpu['index']}"].startswith(f"{gpu['name']}, ")
        assert lines[f"GPU {gpu['index']}"].endswith(f"compute capability {gpu['capability']}")
    assert lines["--device auto"] == f"{report['device']['chosen']}: {report['device']['why']}"
    assert lines["3D renderer"].startswith(report["renderers"]["3d"]["chosen"] + ": ")
    assert lines["2D renderer"].startswith(report["renderers"]["2d"]["chosen"] + ": ")
    assert len(report["projectors"]) == 4
    for name, choice in report["projectors"].items():
        assert lines[f"{name} projector"] == f"{choice['chosen']} ({choice['how']}): {choice['why']}"
    assert report["disk"] == {"path": str(tmp_path / "new"), "measured": str(tmp_path), "free": FREE}
    assert lines["free room"] == f"{tmp_path / 'new'}: 123 GB free (measured at {tmp_path})"
    assert {label for label in lines if label.endswith(" missing")} == {f"{name} missing" for name in report["missing"]}
    assert all(lines[f"{name} missing"] == why for name, why in report["missing"].items())


def test_the_reported_renderers_are_the_ones_that_render(monkeypatch):
    """A small render with backend ``auto`` on this machine's ``--device auto``: the implementation that ran (3D and
    2D) is the one the report names."""
    ran = []

    def recording(name, real):
        return lambda *a, **k: ran.append(name) or real(*a, **k)

    monkeypatch.setattr(render3d, "render_torch", recording("torch", render3d.render_torch))
    triton_impl = types.ModuleType("medgmae.render._triton_impl")
    triton_impl.render_triton = lambda m, *a: ran.append("triton") or torch.zeros(1, 4, 4, 4, device=m.device)
    monkeypatch.setitem(sys.modules, "medgmae.render._triton_impl", triton_impl)
    monkeypatch.setattr(render2d, "render_torch", recording("torch", render2d.render_torch))
    monkeypatch.setattr(render2d, "render_gsplat", recording("gsplat", render2d.render_gsplat))
    report = environment_report()
    device = torch.device(report["device"]["chosen"])
    g = torch.Generator().manual_seed(0)
    means, scales = torch.rand(1, 5, 3, generator=g) * 3, torch.rand(1, 5, 3, generator=g) + 0.5
    quats, values = torch.randn(1, 5, 4, generator=g), torch.rand(1, 5, generator=g)
    render3d.render_volume(*(t.to(device) for t in (means, scales, quats, values)), (4, 4, 4), backend="auto")
    render2d.render_gaussians_2d(*(t.to(device) for t in (means - 1.5, scales / 4, quats, values[..., None], values)),
                                 (6, 5), backend="auto")  # fmt: skip
    assert ran == [report["renderers"]["3d"]["chosen"], report["renderers"]["2d"]["chosen"]]


def test_the_reported_projectors_are_the_ones_built(monkeypatch):
    """``reconstruct``'s projector (``make_projector(geometry, "auto", device)``) and ``simulate``'s
    (``make_projector(geometry, simulation_backend(...), device)``) for the example scans: the class built is the
    one the report names (constructors recorded, nothing built)."""
    built = []
    for cls in ("AstraProjector", "RayMatrixProjector", "TorchProjector"):
        name = getattr(projectors, cls).name
        monkeypatch.setattr(projectors, cls, lambda geometry, name=name, **k: built.append(name))
    report = environment_report()
    device = report["device"]["chosen"]
    for kind in EXAMPLE_VIEWS:
        geometry = example_geometry(kind)
        make_projector(geometry, "auto", device)
        make_projector(geometry, simulation_backend(geometry, device), device)
        assert built[-2:] == [report["projectors"][f"reconstruct {kind}"]["chosen"],
                              report["projectors"][f"simulate {kind}"]["chosen"]]  # fmt: skip


def test_a_geometry_file_gets_the_projectors_built_for_its_scan(monkeypatch, capsys, tmp_path):
    """``--geometry``: the projectors ``reconstruct`` and ``simulate`` build for that scan (a parallel scan ASTRA's 2D
    projectors take, a cone scan whose sparse matrix is over the CPU budget), said in the text with the scan; a file
    that is no geometry is refused in one line naming it, status 2."""
    from recon.geometry import CTGeometry

    built = []
    for cls in ("AstraProjector", "RayMatrixProjector", "TorchProjector"):
        name = getattr(projectors, cls).name
        monkeypatch.setattr(projectors, cls, lambda geometry, name=name, **k: built.append(name))
    scans = {"parallel": CTGeometry.parallel((40, 50, 60), (2.0, 0.7, 0.7), num_angles=90),
             "cone": CTGeometry.cone((80, 256, 256), (2.0, 1.5, 1.5), num_angles=120)}  # fmt: skip
    for kind, geometry in scans.items():
        geometry.save(tmp_path / f"{kind}.json")
        report = json.loads(_run(capsys, "--json", "--geometry", str(tmp_path / f"{kind}.json")))
        assert report["scan"] == {"file": str(tmp_path / f"{kind}.json"), "kind": kind,
                                  "shape": list(geometry.volume_shape), "voxel_mm": list(geometry.voxel_size),
                                  "views": len(geometry.angles)}  # fmt: skip
        assert sorted(report["projectors"]) == ["reconstruct scan", "simulate scan"] and "example_scan" not in report
        make_projector(geometry, "auto", report["device"]["chosen"])
        make_projector(geometry, simulation_backend(geometry, report["device"]["chosen"]), report["device"]["chosen"])
        assert built[-2:] == [report["projectors"]["reconstruct scan"]["chosen"], report["projectors"]["simulate scan"]["chosen"]]
        lines = _lines(_run(capsys, "--geometry", str(tmp_path / f"{kind}.json")))
        assert lines["scan"].startswith(f"{tmp_path / f'{kind}.json'}: {kind} beam, ") and "example scan" not in lines
    assert "is over the" in report["projectors"]["reconstruct scan"]["why"]  # the cone scan's matrix: 53 GiB
    (tmp_path / "bad.json").write_text("{")
    assert info_cli.main(["--geometry", str(tmp_path / "bad.json")]) == 2
    assert capsys.readouterr().err == f"medgmae-info: error: geometry file {tmp_path / 'bad.json'} is not valid JSON: " \
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)\n"
    real = Path.read_text  # a file that cannot be read (permission refused): one line too, not a traceback

    def refused(self, *args, **kwargs):
        if self.name == "parallel.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refused)
    assert info_cli.main(["--geometry", str(tmp_path / "parallel.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medgmae-info: error: ") and str(tmp_path / "parallel.json") in err and err.count("\n") == 1


def test_simulate_projects_cone_beam_on_the_cpu_with_the_ray_marcher(monkeypatch):
    cone, parallel = example_geometry("cone"), example_geometry("parallel")
    assert simulation_backend(cone, "cpu") == "torch" and simulation_backend(parallel, "cpu") == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert simulation_backend(cone, "cuda") == "auto"


def test_missing_optional_packages_are_reported_with_what_runs_instead(monkeypatch, capsys):
    _hide_modules(monkeypatch, "triton", "gsplat", "astra")
    report = json.loads(_run(capsys, "--json"))
    assert sorted(report["missing"]) == ["astra-toolbox", "gsplat", "triton"]
    lines = _lines(_run(capsys))
    assert all(lines[f"{name} missing"] == why for name, why in report["missing"].items())
    assert "PyTorch compositor" in report["missing"]["gsplat"] and "ray marcher" in report["missing"]["astra-toolbox"]
    parallel = report["projectors"]["reconstruct parallel"]  # ASTRA's 2D projectors took it with astra installed
    assert parallel == {"chosen": "torch", "how": "PyTorch ray marcher", "why": "astra-toolbox is not installed"}
    assert report["renderers"]["3d"]["chosen"] == "torch"  # the CPU: no Triton needed


def test_a_gpu_is_listed_and_triton_chosen_where_triton_imports(monkeypatch, capsys):
    _fake_gpu(monkeypatch)
    report = json.loads(_run(capsys, "--json"))
    lines = _lines(_run(capsys))
    assert report["gpus"] == [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory": 80 * 2**30, "capability": "9.0"}]
    assert lines["GPU 0"] == "NVIDIA H100 80GB HBM3, 80.0 GiB, compute capability 9.0" and "GPUs" not in lines
    assert report["device"]["chosen"] == "cuda" and lines["--device auto"].startswith("cuda: ")
    triton = importlib.util.find_spec("triton") is not None
    assert report["renderers"]["3d"]["chosen"] == "triton"
    assert ("Triton's kernels" if triton else "not installed") in report["renderers"]["3d"]["why"]
    assert report["renderers"]["2d"] == {"chosen": "torch", "why": "gsplat is unavailable (no CUDA compiler (nvcc) "
                                                                   "was found): the PyTorch compositor"}  # fmt: skip
    assert {c["chosen"] for c in report["projectors"].values()} == {"astra"}  # ASTRA's CUDA 3D, simulate included


def test_a_gpu_without_triton_renders_with_pytorch_and_says_so(monkeypatch, caplog):
    """auto picked Triton on any CUDA device, and a render failed where triton was not installed: it now takes the
    PyTorch renderer there, with one warning, and the report says so."""
    import logging

    from medgmae.render import resolve_backend

    _fake_gpu(monkeypatch, triton=False)
    report = environment_report()
    assert report["renderers"]["3d"] == {"chosen": "torch", "why": "triton is not installed: the PyTorch renderer on "
                                                                   "the CUDA device (slower)"}  # fmt: skip
    assert "triton" in report["missing"] and "PyTorch, also on a GPU" in report["missing"]["triton"]
    caplog.set_level(logging.WARNING, logger="medgmae.render")
    monkeypatch.setattr("medgmae.render._note_once", functools.lru_cache(maxsize=None)(
        lambda message: logging.getLogger("medgmae.render").warning("%s", message)))  # a fresh "once"
    caplog.clear()  # the report's own resolution warned once already
    assert [resolve_backend("auto", "cuda:0") for _ in range(3)] == ["torch"] * 3
    assert [r.getMessage() for r in caplog.records].count(
        "triton is not installed; rendering 3D Gaussians with the PyTorch renderer on the GPU instead (slower: "
        "install triton, which torch's Linux CUDA wheels bring, for its kernels)") == 1
    assert resolve_backend("triton", "cuda:0") == "triton" and resolve_backend("auto", "cpu") == "torch"


def test_the_free_room_is_of_the_nearest_existing_folder(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(shutil, "disk_usage", lambda where: asked.append(where) or shutil._ntuple_diskusage(3, 2, 1))
    assert environment_report(tmp_path / "a" / "b")["disk"] == {"path": str(tmp_path / "a" / "b"),
                                                                "measured": str(tmp_path), "free": 1}  # fmt: skip
    assert asked == [tmp_path]


def test_an_unknown_flag_is_refused(capsys):
    with pytest.raises(SystemExit) as stop:
        info_cli.main(["--jsn"])
    assert stop.value.code == 2 and "--jsn" in capsys.readouterr().err


def test_the_example_scans_are_what_the_report_says():
    report = environment_report()
    for kind, views in EXAMPLE_VIEWS.items():
        geometry = example_geometry(kind)
        assert geometry.kind == kind and geometry.num_views == views
        assert list(geometry.volume_shape) == report["example_scan"]["shape"]
        assert np.allclose(geometry.voxel_size, report["example_scan"]["voxel_mm"])


def test_a_volume_is_described_as_the_reader_reads_it(capsys, tmp_path):
    """``--volume``: an NRRD SimpleITK writes in LPS with a 20-degree turn about z, 0.7 x 0.9 x 3 mm voxels and an
    origin of LPS (10, 20, 30) is reported as the analytic answer: the first index runs along LPS
    ``(cos 20, sin 20, 0)``, mostly towards the left (``L``), the second mostly towards posterior (``P``), the third
    up (``S``); 20 degrees oblique; RAS origin (-10, -20, 30); the values' range, percentiles (numpy's of the same
    values) and one NaN; a label map and raw stored values (HU + 1024) are named; a missing file is one error line."""
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    values = rng.normal(-300.0, 400.0, (12, 10, 8)).astype(np.float32)  # (K, J, I): SimpleITK's array order
    values[0, 0, 0] = np.nan
    img = sitk.GetImageFromArray(values)
    c, s = np.cos(np.radians(20.0)), np.sin(np.radians(20.0))
    img.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    img.SetSpacing((0.7, 0.9, 3.0))
    img.SetOrigin((10.0, 20.0, 30.0))
    sitk.WriteImage(img, str(tmp_path / "ct.nrrd"))
    facts = json.loads(_run(capsys, "--json", "--volume", str(tmp_path / "ct.nrrd")))["volume"]
    assert facts["shape"] == [8, 10, 12] and facts["voxel_mm"] == pytest.approx([0.7, 0.9, 3.0])
    assert facts["axis_codes"] == ["L", "P", "S"] and facts["oblique_degrees"] == pytest.approx(20.0, abs=1e-3)
    assert facts["origin_mm"] == pytest.approx([-10.0, -20.0, 30.0])
    finite = values[np.isfinite(values)]
    assert facts["non_finite"] == 1 and facts["min"] == float(finite.min()) and facts["max"] == float(finite.max())
    assert facts["percentiles"]["50"] == pytest.approx(float(np.percentile(finite, 50.0)), abs=1e-3)
    assert facts["looks_like"] == "CT in HU"
    lines = _lines(_run(capsys, "--volume", str(tmp_path / "ct.nrrd")))
    assert lines["  grid"].startswith("8 x 10 x 12 voxels (I, J, K) of 0.7 x 0.9 x 3 mm, axis codes LPS (oblique")
    assert lines["  non-finite"].startswith("1 voxel (NaN or infinite)")

    labels = rng.integers(0, 4, (6, 6, 6)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(tmp_path / "labels.nrrd"))
    assert "a label map (" in _lines(_run(capsys, "--volume", str(tmp_path / "labels.nrrd")))["  values"]
    raw = np.clip(values[np.isfinite(values)], -1000, None).reshape(-1)[:200].reshape(5, 5, 8) + 1024.0
    sitk.WriteImage(sitk.GetImageFromArray(raw.astype(np.float32)), str(tmp_path / "raw.nrrd"))
    assert "shifted up" in _lines(_run(capsys, "--volume", str(tmp_path / "raw.nrrd")))["  values"]
    twice = np.clip(values[np.isfinite(values)], -1000, 700).reshape(-1)[:200].reshape(5, 5, 8) - 1024.0
    sitk.WriteImage(sitk.GetImageFromArray(twice.astype(np.float32)), str(tmp_path / "twice.nrrd"))  # intercept twice
    assert "HU shifted down by 1024" in _lines(_run(capsys, "--volume", str(tmp_path / "twice.nrrd")))["  values"]
    assert info_cli.main(["--volume", str(tmp_path / "none.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "none.nii.gz") in err
