"""Raw readings converted with a flat (or ``--i0``) brighter than their own open beam: every line integral is raised
by ``log(k)``, so no pixel reads the open beam. ``fbp`` and ``reconstruct`` name that in one warning (the floor,
measured here against ``log(k)``) and do not take the raised air at the detector's sides for truncation; right flats
with photon noise draw no such warning."""

import math
import re

import numpy as np
import pytest
from recon_cli_helpers import detector_patterns, few_gaussians_args as reconstruct_args

from recon.cli import main
from recon.flat_field import load_raw_projections

pytestmark = pytest.mark.usefixtures("one_thread")

WARNING = "no pixel reads the open beam"
TRUNCATION = "wider than the detector's field of view"


def _readings(p: np.ndarray, photons: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Photon counts of the line integrals ``p`` on a detector of patterned gain, with Poisson noise: ``(readings
    (views, rows, cols), three open-beam images (3, rows, cols), dark (rows, cols))``, all in float64."""
    rng = np.random.default_rng(seed)
    gain, dark = detector_patterns(*p.shape[1:], photons)
    counts = rng.poisson(gain * np.exp(-p)) + dark
    flats = rng.poisson(gain, size=(3, *gain.shape)) + dark
    return counts.astype(np.float64), flats.astype(np.float64), dark


def _floor_said(out: str) -> float:
    """The floor the one warning line names."""
    lines = [line for line in out.splitlines() if WARNING in line]
    assert len(lines) == 1, out
    return float(re.search(r"the lowest line integrals are about (-?[0-9.]+)", lines[0]).group(1))


@pytest.fixture(scope="module")
def scan(small_parallel_scan):
    """The scan folder and its noiseless line integrals (float64)."""
    folder = small_parallel_scan[0]
    return folder, np.load(folder / "projections.npy").astype(np.float64)


@pytest.mark.parametrize("k", [1.2, 2.0])
def test_fbp_names_a_brighter_flat_and_not_truncation(scan, tmp_path, capsys, k):
    """A flat taken at ``k`` times the projections' exposure (``(F - D) k + D``): one warning naming the flat file
    and a floor of about ``log(k)`` (less a few noise deviations), and no truncation note; the right flat draws
    neither."""
    folder, p = scan
    counts, flats, dark = _readings(p, 20000.0, seed=3)
    np.save(tmp_path / "counts.npy", counts)
    np.save(tmp_path / "dark.npy", dark)
    np.save(tmp_path / "flat.npy", flats)
    np.save(tmp_path / "bright.npy", (flats - dark) * k + dark)
    base = ["fbp", "--projections", str(tmp_path / "counts.npy"), "--dark", str(tmp_path / "dark.npy"),
            "--geometry", str(folder / "geometry.json"), "--out", str(tmp_path / "o.nii.gz"), "--device", "cpu"]  # fmt: skip
    assert main([*base, "--flat", str(tmp_path / "flat.npy")]) == 0
    said = capsys.readouterr()
    assert WARNING not in said.out + said.err and TRUNCATION not in said.out + said.err, said
    assert main([*base, "--flat", str(tmp_path / "bright.npy")]) == 0
    said = capsys.readouterr()
    out = said.out + said.err
    assert abs(_floor_said(out) - math.log(k)) < 0.05, out
    assert f"--flat {tmp_path / 'bright.npy'}" in next(line for line in out.splitlines() if WARNING in line)
    assert TRUNCATION not in out, out


def test_reconstruct_gives_the_same_warning(scan, tmp_path, capsys):
    """``reconstruct`` reads the scan as ``fbp`` does: the same one warning, and no truncation note."""
    folder, p = scan
    counts, flats, dark = _readings(p, 20000.0, seed=4)
    np.save(tmp_path / "counts.npy", counts)
    np.save(tmp_path / "bright.npy", (flats - dark) * 1.2 + dark)
    np.save(tmp_path / "dark.npy", dark)
    assert main(reconstruct_args(folder, tmp_path / "run", "--projections", str(tmp_path / "counts.npy"),
                                 "--flat", str(tmp_path / "bright.npy"), "--dark", str(tmp_path / "dark.npy"))) == 0  # fmt: skip
    said = capsys.readouterr()
    out = said.out + said.err
    assert abs(_floor_said(out) - math.log(1.2)) < 0.05 and TRUNCATION not in out, out


@pytest.mark.parametrize("photons", [300.0, 20000.0])
def test_right_flats_with_photon_noise_draw_no_warning(scan, tmp_path, capsys, photons):
    """Noise only takes the air's lowest line integrals below 0: no warning with the right flat, over seeds, at a
    few hundred photons (air noise of about 6 % in line integral) as at many."""
    _, p = scan
    for seed in range(5):
        counts, flats, dark = _readings(p, photons, seed)
        np.save(tmp_path / "counts.npy", counts)
        np.save(tmp_path / "flat.npy", flats)
        np.save(tmp_path / "dark.npy", dark)
        load_raw_projections(str(tmp_path / "counts.npy"), str(tmp_path / "flat.npy"), str(tmp_path / "dark.npy"))
        assert WARNING not in capsys.readouterr().out, seed


def test_an_i0_above_the_open_beam_is_named(scan, tmp_path, capsys):
    """A uniform beam of 1000 photons: ``--i0 1000`` draws no warning over seeds; ``--i0 1500`` one, naming it, with a
    floor of about log(1.5); ``fbp`` then gives no truncation note."""
    folder, p = scan
    for seed in range(3):
        np.save(tmp_path / "counts.npy", np.random.default_rng(seed).poisson(1000.0 * np.exp(-p)).astype(np.float64))
        load_raw_projections(str(tmp_path / "counts.npy"), i0=1000.0)
        assert WARNING not in capsys.readouterr().out, seed
    assert main(["fbp", "--projections", str(tmp_path / "counts.npy"), "--i0", "1500", "--geometry",
                 str(folder / "geometry.json"), "--out", str(tmp_path / "o.nii.gz"), "--device", "cpu"]) == 0  # fmt: skip
    said = capsys.readouterr()
    out = said.out + said.err
    assert abs(_floor_said(out) - math.log(1.5)) < 0.1 and "converted with --i0 1500" in out and TRUNCATION not in out, out


def test_an_object_covering_the_detector_is_named_as_a_possibility(scan, tmp_path, capsys):
    """Every ray through 2 more of attenuation (a tube around the sample, wider than the detector) with the right
    flat reads like a flat e^2 times too bright: the warning gives the floor (about 2) and names that possibility."""
    _, p = scan
    counts, flats, dark = _readings(p + 2.0, 20000.0, seed=5)
    np.save(tmp_path / "counts.npy", counts)
    np.save(tmp_path / "flat.npy", flats)
    np.save(tmp_path / "dark.npy", dark)
    _, record = load_raw_projections(str(tmp_path / "counts.npy"), str(tmp_path / "flat.npy"), str(tmp_path / "dark.npy"))
    out = capsys.readouterr().out
    assert abs(record["open_beam_floor"] - 2.0) < 0.1, record  # the floor fbp / reconstruct judge truncation above
    assert abs(_floor_said(out) - 2.0) < 0.1 and "Either the object covers the whole detector in every view" in out, out
