"""Raw readings' bad pixels: readings below the floor, dead and stuck pixels repaired, saturation warned about."""

from pathlib import Path

import numpy as np
import pytest
from recon_cli_helpers import expect_refusal, fbp_volume as _fbp, raw  # noqa: F401 - fixtures

from recon.flat_field import FLOOR_SHARE, load_raw_projections

pytestmark = pytest.mark.usefixtures("one_thread")


def test_readings_below_the_floor_are_counted_in_one_warning(raw, tmp_path, capsys):
    """(e) Readings at or below the dark are raised to the floor, 1e-6 of the median of F - D, and counted in one
    warning line; a dead flat pixel (flat = dark) is repaired (its own line, not counted in the first); the others
    convert exactly."""
    _, d, p, flat, dark = raw
    counts = dark + (flat - dark) * np.exp(-p)
    counts[0, 0, :3] = dark[0, :3] - 5.0  # below the dark (dark noise)
    counts[4, 1, 2] = dark[1, 2]  # exactly the dark: no photon
    dead = flat.copy()
    dead[3, 3] = dark[3, 3]
    np.save(tmp_path / "counts.npy", counts)
    np.save(tmp_path / "dead.npy", dead)
    got, _ = load_raw_projections(str(tmp_path / "counts.npy"), str(tmp_path / "dead.npy"), str(d / "dark.npy"))
    open_beam = dead - dark
    floor = FLOOR_SHARE * np.median(open_beam[open_beam > 0])
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning")]
    assert len(warnings) == 2 and f"4 of {p.size} readings of I - D ({4 / p.size:.3%})" in warnings[0], warnings
    assert "pixels of F - D" not in warnings[0] and f"floor {floor:.4g}" in warnings[0]
    assert "median open-beam signal" in warnings[0] and "1 dead detector pixel " in warnings[1]
    np.testing.assert_allclose(got[0, 0, :3], -np.log(floor / open_beam[0, :3]), rtol=1e-6)
    keep = np.ones(p.shape, bool)
    keep[0, 0, :3] = keep[4, 1, 2] = False
    keep[:, 3, 3] = False
    np.testing.assert_allclose(got[keep], p[keep], rtol=1e-6, atol=1e-6)


def _psnr(x: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10((ref.max() - ref.min()) ** 2 / np.mean((x - ref) ** 2)))


def test_dead_pixels_are_repaired_from_their_neighbours(raw, tmp_path, capsys):
    """Two dead pixels (a flat pixel at the dark; a pixel reading the dark in every view) get, in every view, the
    median of their eight neighbours' line integrals, and the reconstruction stays close to the clean one where
    the floored readings drew rings; four dead pixels (over 1 % of this 12 x 23 detector) are refused naming them."""
    scan, d, p, flat, dark = raw
    counts = dark + (flat - dark) * np.exp(-p)
    bad_flat = flat.copy()
    bad_flat[5, 9] = dark[5, 9]
    counts[:, 7, 12] = dark[7, 12]
    np.save(tmp_path / "counts.npy", counts)
    np.save(tmp_path / "flat.npy", bad_flat)
    proj, dark_file = str(tmp_path / "counts.npy"), str(d / "dark.npy")
    got, _ = load_raw_projections(proj, str(tmp_path / "flat.npy"), dark_file)
    assert "2 dead detector pixels" in capsys.readouterr().out
    for r, c in ((5, 9), (7, 12)):
        for v in range(p.shape[0]):
            around = [p[v, r + i, c + j] for i in (-1, 0, 1) for j in (-1, 0, 1) if (i, j) != (0, 0)]
            assert abs(got[v, r, c] - np.median(around)) < 1e-5
    clean = _fbp(scan, scan / "projections.npy", tmp_path / "clean.nii.gz")
    repaired = _fbp(scan, Path(proj), tmp_path / "repaired.nii.gz", "--flat", str(tmp_path / "flat.npy"), "--dark", dark_file)
    floored = p.copy()
    floored[:, 5, 9] = -np.log((counts[:, 5, 9] - dark[5, 9]) / (FLOOR_SHARE * np.median(flat - dark)))
    floored[:, 7, 12] = -np.log(FLOOR_SHARE * np.median(flat - dark) / (flat[7, 12] - dark[7, 12]))
    np.save(tmp_path / "floored.npy", floored)
    rings = _fbp(scan, tmp_path / "floored.npy", tmp_path / "rings.nii.gz")
    assert _psnr(repaired, clean) > _psnr(rings, clean) + 10, (_psnr(repaired, clean), _psnr(rings, clean))
    for r, c in ((2, 2), (9, 18)):
        bad_flat[r, c] = dark[r, c]
    np.save(tmp_path / "flat4.npy", bad_flat)
    out = tmp_path / "f.nii.gz"
    expect_refusal(capsys, ["fbp", "--projections", proj, "--geometry", str(scan / "geometry.json"), "--out", str(out),
                            "--flat", str(tmp_path / "flat4.npy"), "--dark", dark_file],
                   f"projections {proj}: 4 of {flat.size} detector pixels", "are dead")  # fmt: skip
    assert not out.exists()


def test_saturated_readings_are_counted_in_one_warning(raw, tmp_path, capsys):
    """uint16 readings at 65535 and readings well above the flat are counted in one warning line (how many, in how
    many views); the other line integrals convert as before."""
    _, _, p, flat, _ = raw
    counts = np.round(0.5 * flat * np.exp(-p)).astype(np.uint16)
    counts[1, 2, :4] = 65535  # at the dtype's maximum
    counts[6, 3, 5] = int(0.5 * flat[3, 5] * 1.3)  # 30 % above the open beam
    np.save(tmp_path / "counts.npy", counts)
    np.save(tmp_path / "half_flat.npy", 0.5 * flat)
    got, _ = load_raw_projections(str(tmp_path / "counts.npy"), str(tmp_path / "half_flat.npy"))
    lines = [line for line in capsys.readouterr().out.splitlines() if "look saturated" in line]
    assert len(lines) == 1 and f"5 of {p.size} readings" in lines[0] and "in 2 of 10 views (20%)" in lines[0], lines
    assert "uint16 maximum 65535" in lines[0]
    np.testing.assert_allclose(got[0], -np.log(counts[0] / (0.5 * flat)), rtol=1e-5, atol=1e-5)
    poisson = np.random.default_rng(1).poisson(1000 * np.exp(-p))  # photon noise only: air up to ~10 % above I0
    assert (poisson > 1050).any()
    np.save(tmp_path / "poisson.npy", poisson.astype(np.uint16))
    load_raw_projections(str(tmp_path / "poisson.npy"), i0=1000.0)
    assert "look saturated" not in capsys.readouterr().out


def test_a_pixel_stuck_at_the_maximum_is_repaired_and_a_saturated_flat_is_named(raw, tmp_path, capsys):
    """A detector pixel at 65535 in every view was kept (a ring), counted as readings "in 10 of 10 views (100%)" that
    looked as if the whole scan saturated; it is repaired as a dead one is, the median of its eight neighbours.
    A flat with pixels at its type's maximum passed unnoticed (the damage was blamed on truncation): one warning
    line names how many and where."""
    _, _, p, flat, _ = raw
    counts = np.round(0.5 * flat * np.exp(-p)).astype(np.uint16)
    counts[:, 4, 10] = 65535
    np.save(tmp_path / "counts.npy", counts)
    np.save(tmp_path / "half_flat.npy", 0.5 * flat)
    got, _ = load_raw_projections(str(tmp_path / "counts.npy"), str(tmp_path / "half_flat.npy"))
    out = capsys.readouterr().out
    assert "1 dead detector pixel " in out and "stuck at its type's maximum in every view" in out and "look saturated" not in out
    for v in range(p.shape[0]):
        around = [got[v, 4 + i, 10 + j] for i in (-1, 0, 1) for j in (-1, 0, 1) if (i, j) != (0, 0)]
        assert abs(got[v, 4, 10] - np.median(around)) < 1e-5
    from recon.flat_field import _isolated

    stuck = np.zeros((30, 40), bool)  # which groups stuck in every view are defects: by construction
    stuck[5, 6] = True  # one pixel
    stuck[10:12, 20:22] = True  # a 2 x 2 cluster
    stuck[:, 30] = True  # a dead line of the panel, away from its sides
    stuck[:, :2] = stuck[:, -1:] = True  # margins at both sides: over-exposed air, not defects
    expected = stuck.copy()
    expected[:, :2] = expected[:, -1:] = False
    np.testing.assert_array_equal(_isolated(stuck), expected)
    margin = np.round(0.5 * flat * np.exp(-p)).astype(np.uint16)
    margin[:, :, :2] = 65535  # an over-exposed air margin: saturated in every view, but no defect to repair
    np.save(tmp_path / "margin.npy", margin)
    load_raw_projections(str(tmp_path / "margin.npy"), str(tmp_path / "half_flat.npy"))
    out = capsys.readouterr().out
    assert "dead detector pixel" not in out and f"{2 * margin.shape[0] * margin.shape[1]} of {margin.size} readings" in out
    assert "look saturated" in out
    saturated = np.round(0.5 * flat).astype(np.uint16)
    saturated[:, -2:] = 65535
    np.save(tmp_path / "saturated_flat.npy", saturated)
    np.save(tmp_path / "fine.npy", np.round(0.5 * flat * np.exp(-p)).astype(np.uint16))
    load_raw_projections(str(tmp_path / "fine.npy"), str(tmp_path / "saturated_flat.npy"))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning: --flat")]
    rows, cols = flat.shape
    assert lines == [f"warning: --flat {tmp_path / 'saturated_flat.npy'}: {2 * rows} of {rows * cols} pixels "
                     f"({2 * rows / (rows * cols):.2%}; rows 0-{rows - 1}, columns {cols - 2}-{cols - 1}) read the uint16 "
                     "maximum 65535: saturated, so F - D there is too low and their line integrals too high; shorten "
                     "its exposure, or leave those pixels out"], lines


@pytest.mark.parametrize("dark_noise", [0.13, 1.6, -0.7])
def test_a_dead_pixel_reading_dark_noise_in_the_flat_is_repaired(raw, tmp_path, capsys, dark_noise):
    """A dead pixel reads the dark in the flat and in every view, plus dark noise of either sign: F - D of a few
    counts against about 2e4 elsewhere. It is found dead (not only where F - D is at or below the floor) and its line
    integrals repaired to the median of its eight neighbours', computed here; no saturation or floor warning."""
    _, d, p, flat, dark = raw
    counts = dark + (flat - dark) * np.exp(-p)
    bad_flat = flat.copy()
    bad_flat[6, 10] = dark[6, 10] + dark_noise
    counts[:, 6, 10] = dark[6, 10] + dark_noise * np.linspace(-1.0, 1.0, counts.shape[0])
    np.save(tmp_path / "counts.npy", counts)
    np.save(tmp_path / "flat.npy", bad_flat)
    got, _ = load_raw_projections(str(tmp_path / "counts.npy"), str(tmp_path / "flat.npy"), str(d / "dark.npy"))
    out = capsys.readouterr().out
    assert "1 dead detector pixel " in out and "saturated" not in out and "raised to it" not in out, out
    neighbours = np.delete(p[:, 5:8, 9:12].reshape(p.shape[0], 9), 4, axis=1)
    np.testing.assert_allclose(got[:, 6, 10], np.median(neighbours, axis=1), rtol=1e-5, atol=1e-5)


def test_an_i0_below_the_open_beam_is_named(raw, tmp_path, capsys):
    """Readings made with an open beam of 1000 but converted with ``--i0 800``: those of the air and thin parts lie above
    it (beyond noise), and the saturation line says --i0 looks below the open beam, with the brightest reading's
    ratio to it computed here; the right --i0 draws no such line."""
    _, d, p, _, _ = raw
    counts = 1000.0 * np.exp(-p)
    np.save(tmp_path / "counts.npy", counts)
    load_raw_projections(str(tmp_path / "counts.npy"), i0=1000.0)
    assert "--i0 looks below" not in capsys.readouterr().out
    load_raw_projections(str(tmp_path / "counts.npy"), i0=800.0)
    out = capsys.readouterr().out
    assert "--i0 looks below the open-beam reading" in out and f"the brightest {counts.max() / 800.0:.3g} times it" in out, out
