"""``fbp`` and ``reconstruct`` warn alike about a scan: the warnings of reading it (:func:`recon.commands.load_scan`)
and of checking it (:func:`recon.commands.warn_about_scan`) come from both commands word for word, and a clean scan
gets none from either."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from recon.cli import main
from recon_cli_helpers import few_gaussians_args

pytestmark = pytest.mark.usefixtures("one_thread")


def _simulated(ct: Path, out: Path, *extra: str) -> Path:
    """``simulate`` of ``ct``: 10 parallel-beam views, ``extra`` flags added."""
    assert main(["simulate", "--volume", str(ct), "--geometry", "parallel", "--views", "10", "--out", str(out),
                 "--device", "cpu", *extra]) == 0  # fmt: skip
    return out


@pytest.fixture(scope="module")
def scans(small_parallel_scan, tmp_path_factory) -> dict[str, tuple[list[str], list[str]]]:
    """Scans that each trigger one warning, and a clean one: name -> (the flags that give it, what its warning says,
    written out by hand; none for the clean scan)."""
    scan, ct = small_parallel_scan
    d = tmp_path_factory.mktemp("warned")
    proj = np.load(scan / "projections.npy")  # (10, 12, 23)
    geometry = json.loads((scan / "geometry.json").read_text(encoding="utf-8"))
    flags = lambda p, g: ["--projections", str(p), "--geometry", str(g)]  # noqa: E731
    cases = {"clean": (flags(scan / "projections.npy", scan / "geometry.json"), [])}
    short = _simulated(ct, d / "short", "--arc", "120")
    cases["short arc"] = (flags(short / "projections.npy", short / "geometry.json"),
                          ["the 10 views cover about 120 degrees, less than the 180 a parallel-beam scan needs"])
    (d / "degrees.json").write_text(json.dumps({**geometry, "angles": [5.0 * i for i in range(10)]}))
    cases["degrees"] = (flags(scan / "projections.npy", d / "degrees.json"),
                        ["the 10 angles run from 0 to 45: as radians, which geometry.json's angles are, 7.2 turns; "
                         "are they degrees?"])  # fmt: skip
    cut = proj.copy()
    cut[:, :, 0] = cut[:, :, -1] = proj.max()  # the object reaches both outer columns in every view
    np.save(d / "truncated.npy", cut)
    cases["truncated"] = (flags(d / "truncated.npy", scan / "geometry.json"),
                          ["the projections at the detector's outer columns reach 100 % of the largest line integral",
                           "so the projections are truncated and FBP values are biased"])  # fmt: skip
    du = geometry["det_spacing"][1]
    shifted = _simulated(ct, d / "shifted", "--det-offset", str(2 * du), "0")  # 27 columns: the axis at column 11
    stated = json.loads((shifted / "geometry.json").read_text(encoding="utf-8"))
    (d / "no_offset.json").write_text(json.dumps({k: v for k, v in stated.items() if k != "det_offset"}))
    cases["axis"] = (flags(shifted / "projections.npy", d / "no_offset.json"),
                     ["the projections put the rotation axis at column 11.00 (of 0..26)",
                      "geometry.json's det_offset u = +0.00 mm puts it at column 13.00"])  # fmt: skip
    np.save(d / "scaled.npy", 100 * proj)
    cases["intensities"] = (flags(d / "scaled.npy", scan / "geometry.json"),
                            [f"projections {d / 'scaled.npy'} reach", "so these look like intensities"])
    raw = (1000 * np.exp(-proj)).astype(np.float32)
    raw[0, 0, :3] = 0  # three readings without photons
    np.save(d / "raw.npy", raw)
    cases["floor"] = ([*flags(d / "raw.npy", scan / "geometry.json"), "--i0", "1000"],
                      [f"projections {d / 'raw.npy'}: 3 of 2760 readings of I - D (0.109%) were below the floor 0.001"])
    return cases


def _warnings(capsys, args: list[str]) -> list[str]:
    """The warning lines of ``main(args)``, which succeeds."""
    capsys.readouterr()
    assert main(args) == 0, args
    said = capsys.readouterr()
    return [line for line in (said.out + said.err).splitlines() if line.startswith("warning:")]


@pytest.mark.parametrize("case", ["clean", "short arc", "degrees", "truncated", "axis", "intensities", "floor"])
def test_fbp_warns_about_a_scan_as_reconstruct_does(scans, case, tmp_path, capsys):
    """Each scan's warning, in the words expected, comes from ``fbp`` and from ``reconstruct`` alike (the same lines,
    no other); the clean scan gets no warning from either."""
    flags, expected = scans[case]
    fbp = _warnings(capsys, ["fbp", *flags, "--out", str(tmp_path / "fbp.nii.gz"), "--device", "cpu"])
    reconstruct = _warnings(capsys, few_gaussians_args(tmp_path, tmp_path / "rec", *flags))
    assert fbp == reconstruct, (fbp, reconstruct)
    assert len(fbp) == (1 if expected else 0), fbp
    assert all(text in fbp[0] for text in expected), (expected, fbp)


def test_reconstruct_given_an_fbp_still_asks_whether_the_angles_are_degrees(scans, tmp_path, capsys):
    """``reconstruct --fbp`` computes no FBP, so it leaves out the notes on FBP's bias (a short arc), but angles that
    may be degrees mislead the fit as much: it asks so, in ``fbp``'s words."""
    for case, said in (("degrees", 1), ("short arc", 0)):
        flags, expected = scans[case]
        fbp = _warnings(capsys, ["fbp", *flags, "--out", str(tmp_path / f"{case}.nii.gz"), "--device", "cpu"])
        given = few_gaussians_args(tmp_path, tmp_path / case, *flags, "--fbp", str(tmp_path / f"{case}.nii.gz"))
        reconstruct = _warnings(capsys, given)
        assert len(fbp) == 1 and reconstruct == fbp[:said], (case, fbp, reconstruct)
        assert all(text in fbp[0] for text in expected), (expected, fbp)
