"""``fbp`` / ``reconstruct`` with ``--flat`` / ``--dark`` / ``--i0``: raw detector readings converted to line
integrals ``-log((I - D) / (F - D))``, checked against readings made in the test from known line integrals."""

import hashlib
import json

import numpy as np
import pytest
from recon_cli_helpers import (  # noqa: F401 - fixtures
    expect_refusal,
    fbp_volume as _fbp,
    few_gaussians_args as reconstruct_args,
    raw,
)

from recon.cli import main
from recon.flat_field import load_raw_projections

pytestmark = pytest.mark.usefixtures("one_thread")


def test_readings_with_flat_and_dark_give_the_line_integrals(raw, tmp_path, capsys):
    """(a) The readings with their flat and dark, the flat as one image, as a stack of three whose mean it is, or as
    a single-page TIFF, give the line integrals they were made from (float32 rounding); the note names the files."""
    import tifffile

    _, d, p, flat, dark = raw
    np.save(tmp_path / "flats.npy", np.stack([0.9 * flat, flat, 1.1 * flat]))
    tifffile.imwrite(tmp_path / "flat.tif", flat.astype(np.float32))
    for f in (d / "flat.npy", tmp_path / "flats.npy", tmp_path / "flat.tif"):
        got, record = load_raw_projections(str(d / "counts.npy"), str(f), str(d / "dark.npy"))
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, p, rtol=1e-6, atol=2e-6 if f.suffix == ".tif" else 1e-6)
        assert {k: record[k] for k in ("flat", "dark", "i0")} == {"flat": str(f.resolve()), "dark": str((d / "dark.npy").resolve()), "i0": None}
    said = capsys.readouterr().out
    assert f"F = --flat {tmp_path / 'flats.npy'} (the mean of 3 images)" in said and f"D = --dark {d / 'dark.npy'}" in said
    assert "warning" not in said


def test_fbp_of_the_readings_is_the_fbp_of_the_line_integrals(raw, tmp_path):
    """(b) ``fbp --flat --dark`` of the readings reconstructs what ``fbp`` of the line integrals does."""
    scan, d, *_ = raw
    direct = _fbp(scan, scan / "projections.npy", tmp_path / "direct.nii.gz")
    converted = _fbp(scan, d / "counts.npy", tmp_path / "raw.nii.gz", "--flat", str(d / "flat.npy"), "--dark", str(d / "dark.npy"))
    np.testing.assert_allclose(converted, direct, rtol=0, atol=1e-5 * np.abs(direct).max())


def test_i0_is_a_uniform_flat(raw, tmp_path):
    """(c) ``--i0`` alone (``I = I0 exp(-p)``) and with ``--dark`` (``I = D + (I0 - D) exp(-p)``)."""
    _, d, p, _, dark = raw
    np.save(tmp_path / "plain.npy", 5e4 * np.exp(-p))
    np.save(tmp_path / "offset.npy", dark + (5e4 - dark) * np.exp(-p))
    np.testing.assert_allclose(load_raw_projections(str(tmp_path / "plain.npy"), i0=5e4)[0], p, rtol=1e-6, atol=1e-6)
    got, record = load_raw_projections(str(tmp_path / "offset.npy"), dark=str(d / "dark.npy"), i0=5e4)
    np.testing.assert_allclose(got, p, rtol=1e-6, atol=1e-6)
    assert record["i0"] == 5e4 and record["flat"] is None


def test_bad_flats_and_darks_are_refused_naming_the_files(raw, tmp_path, capsys):
    """(d) A flat of other (rows, cols), flat and dark swapped, NaN in a flat or dark, ``--flat`` with ``--i0``, a
    missing file and ``--dark`` alone: exit 2 naming the files, for fbp and reconstruct, nothing written."""
    scan, d, _, flat, dark = raw
    counts, f, k = str(d / "counts.npy"), str(d / "flat.npy"), str(d / "dark.npy")
    np.save(tmp_path / "narrow.npy", flat[:, :-1])
    nan = flat.copy()
    nan[2, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "inf_dark.npy", np.where(dark > 120, np.inf, dark))
    rows, cols = flat.shape
    cases = {
        "shape": (["--flat", str(tmp_path / "narrow.npy")], [f"--flat {tmp_path / 'narrow.npy'}", f"(rows, cols) = ({rows}, {cols - 1})",
                                                             f"projections {counts} have (rows, cols) = ({rows}, {cols})"]),
        "swapped": (["--flat", k, "--dark", f], [f"--flat {k} is above the dark (--dark {f}) in only 0%", "swapped"]),
        "nan flat": (["--flat", str(tmp_path / "nan.npy")], [f"--flat {tmp_path / 'nan.npy'} contains 1 NaN or Inf value",
                                                            "row 2, column 3"]),
        "inf dark": (["--flat", f, "--dark", str(tmp_path / "inf_dark.npy")], [f"--dark {tmp_path / 'inf_dark.npy'} contain"]),
        "flat and i0": (["--flat", f, "--i0", "1000"], [f"--flat {f} and --i0 1000 both give the open-beam intensity"]),
        "missing": (["--flat", str(tmp_path / "none.npy")], [f"--flat file {tmp_path / 'none.npy'} does not exist"]),
        "dark alone": (["--dark", k], [f"--dark {k} needs --flat or --i0"]),
    }  # fmt: skip
    for name, (flags, messages) in cases.items():
        out = tmp_path / "out"
        fbp = ["fbp", "--projections", counts, "--geometry", str(scan / "geometry.json"), "--out", str(out / "f.nii.gz"), *flags]
        for args in (fbp, reconstruct_args(scan, out, "--projections", counts, *flags)):
            expect_refusal(capsys, args, *messages)
            assert not out.exists(), name


def test_readings_saved_views_last_are_named_not_the_flat(raw, tmp_path, capsys):
    """Readings saved (rows, cols, views) beside a right flat and dark: the refusal says the projections hold the
    flat's (rows, cols) on their first two axes and gives the transpose, whose result converts to the line integrals
    the readings were made from; a flat that fits no axes of the stack still gets the advice to give another flat."""
    scan, d, p, flat, dark = raw
    views_last = np.ascontiguousarray(np.load(d / "counts.npy").transpose(1, 2, 0))
    np.save(tmp_path / "last.npy", views_last)
    base = ["fbp", "--projections", str(tmp_path / "last.npy"), "--geometry", str(scan / "geometry.json"), "--out",
            str(tmp_path / "o.nii.gz"), "--flat", str(d / "flat.npy"), "--dark", str(d / "dark.npy")]  # fmt: skip
    err = expect_refusal(capsys, base, f"the projections, of shape {views_last.shape}, hold these (rows, cols) on their "
                         "axes 0 and 1: save them as (views, rows, cols), numpy.transpose(stack, (2, 0, 1))")  # fmt: skip
    assert "give the flat image" not in err and not (tmp_path / "o.nii.gz").exists()
    np.save(tmp_path / "fixed.npy", np.transpose(views_last, (2, 0, 1)))
    got, _ = load_raw_projections(str(tmp_path / "fixed.npy"), str(d / "flat.npy"), str(d / "dark.npy"))
    np.testing.assert_allclose(got, p, rtol=1e-6, atol=1e-6)
    np.save(tmp_path / "narrow.npy", flat[:, :-1])
    expect_refusal(capsys, [*base[:-4], "--flat", str(tmp_path / "narrow.npy")], "give the flat image of this detector")
    # right readings beside a flat saved transposed: the flat is named, not the readings (their views are first)
    np.save(tmp_path / "flat_t.npy", np.ascontiguousarray(flat.T))
    right = ["fbp", "--projections", str(d / "counts.npy"), *base[3:-4], "--flat", str(tmp_path / "flat_t.npy")]
    err = expect_refusal(capsys, right, "its images are the detector's transposed: save them as (rows, cols)")
    assert "numpy.transpose(stack" not in err and not (tmp_path / "o.nii.gz").exists()


def test_counts_without_a_flat_point_at_the_flags(raw, tmp_path, capsys):
    """Integer readings given as line integrals are refused with a message naming --flat, --dark and --i0; a flat
    of another scan (far below the readings) is caught by the line-integral check after the conversion."""
    scan, d, p, flat, _ = raw
    np.save(tmp_path / "counts16.npy", np.round(flat * np.exp(-p)).astype(np.uint16))
    np.save(tmp_path / "dim.npy", flat / 1000.0)
    base = ["fbp", "--geometry", str(scan / "geometry.json"), "--out", str(tmp_path / "f.nii.gz")]
    expect_refusal(capsys, [*base, "--projections", str(tmp_path / "counts16.npy")], "raw detector counts", "--flat", "--dark", "--i0")
    expect_refusal(capsys, [*base, "--projections", str(tmp_path / "counts16.npy"), "--flat", str(tmp_path / "dim.npy")],
                   f"projections {tmp_path / 'counts16.npy'} converted with --flat {tmp_path / 'dim.npy'} have no positive value", "open-beam reading of this scan")  # fmt: skip
    assert main([*base, "--projections", str(tmp_path / "counts16.npy"), "--flat", str(d / "flat.npy")]) == 0


def test_resume_with_another_flat_is_refused(raw, tmp_path, capsys):
    """(f) metrics.json records the flat and dark (paths, SHA-256 of the files); ``--resume`` with another flat is
    refused naming --flat, with the same flat copied elsewhere it resumes."""
    scan, d, _, flat, _ = raw
    out = tmp_path / "rec"
    flags = ["--projections", str(d / "counts.npy"), "--flat", str(d / "flat.npy"), "--dark", str(d / "dark.npy")]
    assert main(reconstruct_args(scan, out, *flags, "--iterations", "2")) == 0
    recorded = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["scan"]
    assert recorded["flat"] == str((d / "flat.npy").resolve()) and recorded["i0"] is None
    assert recorded["flat_sha256"] == hashlib.sha256((d / "flat.npy").read_bytes()).hexdigest()
    assert recorded["dark_sha256"] == hashlib.sha256((d / "dark.npy").read_bytes()).hexdigest()
    np.save(tmp_path / "other_flat.npy", flat * 1.01)
    other = [*flags[:2], "--flat", str(tmp_path / "other_flat.npy"), *flags[4:]]
    expect_refusal(capsys, reconstruct_args(scan, out, *other, "--iterations", "3", "--resume"),
                   f"--resume: {out / 'recon_state.pt'}", "--flat (sha256 of the file): saved",
                   f"converted the raw images with --flat {(d / 'flat.npy').resolve()}, --dark {(d / 'dark.npy').resolve()}",
                   "give the same --flat/--dark as the interrupted run")  # fmt: skip
    expect_refusal(capsys, reconstruct_args(scan, out, *flags[:2], "--i0", "20000", "--iterations", "3", "--resume"),
                   "--flat (sha256 of the file): saved", "--i0: saved None, now 20000.0")  # fmt: skip
    (tmp_path / "moved.npy").write_bytes((d / "flat.npy").read_bytes())
    moved = [*flags[:2], "--flat", str(tmp_path / "moved.npy"), *flags[4:]]
    assert main(reconstruct_args(scan, out, *moved, "--iterations", "3", "--resume")) == 0


def test_converted_readings_given_with_a_flat_are_refused(raw, tmp_path, capsys):
    """Line integrals, or a normalised transmission ``exp(-p)``, given with ``--flat`` (and ``--dark``) are refused
    as converted already (all below the floor, or a median far below that of ``F - D``), naming what to give;
    nothing written."""
    scan, d, p, *_ = raw
    np.save(tmp_path / "p.npy", p)
    np.save(tmp_path / "t.npy", np.exp(-p))
    out = tmp_path / "f.nii.gz"
    for name, extra in (("p.npy", ["--dark", str(d / "dark.npy")]), ("t.npy", []), ("t.npy", ["--dark", str(d / "dark.npy")])):
        args = ["fbp", "--projections", str(tmp_path / name), "--geometry", str(scan / "geometry.json"), "--out", str(out),
                "--flat", str(d / "flat.npy"), *extra]  # fmt: skip
        expect_refusal(capsys, args, f"projections {tmp_path / name}", "look like line integrals or normalised "
                       "transmission already", "without --flat", "--i0 1")  # fmt: skip
        assert not out.exists()
    assert main(["fbp", "--projections", str(tmp_path / "t.npy"), "--geometry", str(scan / "geometry.json"),
                 "--out", str(out), "--i0", "1"]) == 0  # fmt: skip


def test_transmission_without_a_flat_is_refused_and_faint_line_integrals_pass(raw, tmp_path, capsys):
    """A normalised transmission ``exp(-p)`` (1 in the air columns), noiseless or with noise taking air above 1,
    given as line integrals is refused naming --i0 1; line integrals of a faint object (all below 1, 0 in air) and
    of a wide one (no air columns, the middle thickest) pass."""
    scan, _, p, *_ = raw
    assert np.median(p[..., [0, -1]]) == 0 and p.max() > 1  # air at the edges, as every case below relies on
    noisy = np.exp(-p) * (1 + 0.02 * np.random.default_rng(0).standard_normal(p.shape))
    faint = p * (0.9 / p.max())
    cols = p.shape[-1]
    wide = (p + 0.3 * np.sin(np.pi * (np.arange(cols) + 0.5) / cols) + 0.1) * (0.9 / (p.max() + 0.4))  # no air
    assert faint.max() < 1 and wide.min() > 0.03 and wide.max() < 1  # integrals that stay within [0, 1]
    base = ["fbp", "--geometry", str(scan / "geometry.json"), "--out", str(tmp_path / "f.nii.gz")]
    for name, values in (("t.npy", np.exp(-p)), ("noisy.npy", noisy)):
        np.save(tmp_path / name, values)
        expect_refusal(capsys, [*base, "--projections", str(tmp_path / name)], f"projections {tmp_path / name}",
                       "these look like transmission I / I0 in [0, 1]: give --i0 1")  # fmt: skip
        assert not (tmp_path / "f.nii.gz").exists()
    for name, values in (("faint.npy", faint), ("wide.npy", wide)):
        np.save(tmp_path / name, values)
        assert main([*base, "--projections", str(tmp_path / name)]) == 0, name


def test_float_readings_without_a_flat_are_refused_and_wide_line_integrals_pass(raw, tmp_path, capsys):
    """Float readings (no reading near 0, all above any CT line integral) given as line integrals are refused
    pointing at --flat, --dark and --i0; line integrals of a wide object with no air column (all above 0) pass."""
    scan, d, p, flat, dark = raw
    np.save(tmp_path / "f32.npy", np.load(d / "counts.npy").astype(np.float32))
    base = ["fbp", "--geometry", str(scan / "geometry.json"), "--out", str(tmp_path / "f.nii.gz")]
    expect_refusal(capsys, [*base, "--projections", str(tmp_path / "f32.npy")], f"projections {tmp_path / 'f32.npy'}",
                   "are all above 50", "raw detector readings", "--flat", "--dark", "--i0")  # fmt: skip
    assert not (tmp_path / "f.nii.gz").exists()
    np.save(tmp_path / "offset.npy", p + 2.0)  # a truncated scan: every ray crosses the object
    assert main([*base, "--projections", str(tmp_path / "offset.npy")]) == 0


@pytest.mark.filterwarnings("ignore:.*stored as RGB:DeprecationWarning")  # the layout this test reads
def test_tiff_stacks_written_by_tifffile_are_read_as_stacks(raw, tmp_path, capfd):
    """A (3, rows, cols) stack written by ``tifffile.imwrite`` (one planar-RGB page) is three images, as
    ``tifffile.imread`` gives them: three flats averaged, readings converted as from ``.npy``, with no ITK warning
    on stderr."""
    import tifffile

    _, d, p, flat, dark = raw
    tifffile.imwrite(tmp_path / "flats.tif", np.stack([0.9 * flat, flat, 1.1 * flat]).astype(np.float32))
    tifffile.imwrite(tmp_path / "counts.tif", np.load(d / "counts.npy").astype(np.float32))
    got, _ = load_raw_projections(str(tmp_path / "counts.tif"), str(tmp_path / "flats.tif"), str(d / "dark.npy"))
    np.testing.assert_allclose(got, p, rtol=1e-5, atol=2e-5)
    assert "F = --flat " + str(tmp_path / "flats.tif") + " (the mean of 3 images)" in capfd.readouterr().out
    assert "WARNING" not in capfd.readouterr().err


def test_a_refused_header_comes_before_the_conversion_note(raw, tmp_path, capsys):
    """Raw readings in a MetaImage whose header states another detector pitch are refused before any conversion:
    no 'converted' note is printed, nothing written."""
    import SimpleITK as sitk

    scan, d, *_ = raw
    pitch = json.loads((scan / "geometry.json").read_text(encoding="utf-8"))["det_spacing"]
    image = sitk.GetImageFromArray(np.load(d / "counts.npy").astype(np.float32))
    image.SetSpacing((2.0 * pitch[1], 2.0 * pitch[0], 1.0))
    sitk.WriteImage(image, str(tmp_path / "counts.mha"))
    out = tmp_path / "f.nii.gz"
    args = ["fbp", "--projections", str(tmp_path / "counts.mha"), "--geometry", str(scan / "geometry.json"),
            "--out", str(out), "--flat", str(d / "flat.npy"), "--dark", str(d / "dark.npy")]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 2
    said = capsys.readouterr()
    assert "detector pixel spacing" in said.err and "converted" not in said.out and not out.exists(), said
