"""``medgmae-recon``: the unit check (a CT in HU where attenuation in 1/mm is expected, and the reverse), what the
commands print (files written, the projector build) and what ``--help`` shows (defaults, units, the PLY frame)."""

import json

import numpy as np
import pytest

from recon.cli import main
from recon.commands import CLIError
from recon.unit_checks import check_units

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def scan(small_parallel_scan):
    """A 10-view parallel-beam scan of a 16 x 16 x 12 phantom in HU, and the phantom's file."""
    return small_parallel_scan


@pytest.mark.parametrize("low, high, refused", [(-1000.0, 1500.0, True), (-101.0, 0.03, True), (-0.005, 10.5, True),
                                                (-0.005, 0.05, False), (-99.0, 9.9, False)])  # fmt: skip
def test_attenuation_bounds(low, high, refused):
    """Below -100 or above 10 is HU where 1/mm is expected; within them it is attenuation (an FBP's undershoot)."""
    vol = np.array([low, 0.0, high], np.float32)
    if refused:
        with pytest.raises(CLIError, match=r"--reference r.nii.gz looks like a CT in HU .*scan/reference.nii.gz"):
            check_units(vol, "r.nii.gz", "--reference", "attenuation")
    else:
        check_units(vol, "r.nii.gz", "--reference", "attenuation")


def test_hu_that_looks_like_attenuation():
    with pytest.raises(CLIError, match=r"--volume v.nii.gz looks like linear attenuation in 1/mm \(values 0 .. 0.031\)"):
        check_units(np.array([0.0, 0.0192, 0.031]), "v.nii.gz", "--volume", "hu")
    check_units(np.array([-1000.0, 40.0]), "v.nii.gz", "--volume", "hu")


def test_a_ct_in_hu_is_refused_where_attenuation_is_expected(scan, tmp_path, capsys):
    """evaluate's --reference / --recon, reconstruct's --reference and --fbp, and simulate's --volume (the reverse)
    refuse the other unit with exit 2, naming the file; nothing is written; --no-unit-check reads them as given."""
    sim, ct = scan
    fbp, ref = sim / "fbp.nii.gz", sim / "reference.nii.gz"
    for args, flag in ((["evaluate", "--recon", str(fbp), "--reference", str(ct)], f"--reference {ct}"),
                       (["evaluate", "--recon", str(ct), "--reference", str(ref)], f"--recon {ct}")):  # fmt: skip
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"{flag} looks like a CT in HU (values -1" in err and "e.g. scan/reference.nii.gz" in err
        assert main([*args, "--no-unit-check"]) == 0
    out = tmp_path / "rec"
    base = ["reconstruct", "--projections", str(sim / "projections.npy"), "--geometry", str(sim / "geometry.json"), "--out", str(out),
            "--no-progress", "--iterations", "1", "--num-gaussians", "50", "--device", "cpu"]  # fmt: skip
    for flag in ("--reference", "--fbp"):
        assert main([*base, flag, str(ct)]) == 2
        assert f"{flag} {ct} looks like a CT in HU" in capsys.readouterr().err and not out.exists()
    assert main(["simulate", "--volume", str(ref), "--geometry", "parallel", "--views", "4", "--out", str(out), "--device", "cpu"]) == 2
    assert f"--volume {ref} looks like linear attenuation in 1/mm" in capsys.readouterr().err and not out.exists()


def test_commands_print_what_they_wrote(scan, tmp_path, capsys):
    """simulate and fbp name the files written; reconstruct announces the projector build (and counts its time),
    the FBP and the initialisation."""
    sim, ct = scan
    capsys.readouterr()
    assert main(["simulate", "--volume", str(ct), "--geometry", "parallel", "--views", "4", "--out", str(tmp_path / "s"), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "4 views, noiseless" in text
    for name in ("projections.npy", "geometry.json", "reference.nii.gz", "fbp.nii.gz"):
        assert str(tmp_path / "s" / name) in text
    assert "reference.nii.gz  (the input as linear attenuation, 1/mm" in text
    f = tmp_path / "f.nii.gz"
    assert main(["fbp", "--projections", str(sim / "projections.npy"), "--geometry", str(sim / "geometry.json"), "--out", str(f), "--device", "cpu"]) == 0
    assert f"wrote {f} (FBP, hann filter, attenuation 1/mm, shape (I, J, K) = (16, 16, 12))" in capsys.readouterr().out
    assert main(["reconstruct", "--projections", str(sim / "projections.npy"), "--geometry", str(sim / "geometry.json"),
                 "--out", str(tmp_path / "r"), "--no-progress", "--iterations", "1", "--num-gaussians", "50", "--device", "cpu"]) == 0  # fmt: skip
    printed = capsys.readouterr()
    chosen = json.loads((tmp_path / "r" / "metrics.json").read_text(encoding="utf-8"))["projector"]  # what was built
    how = {"astra": "ASTRA 2D, slice by slice", "torch": "PyTorch ray marcher"}[chosen]  # parallel beam on the CPU
    assert f"building the projector (parallel beam, 10 views, {chosen} backend: {how}, chosen by --backend auto, cpu)..." in printed.out
    assert f" s setting up the {chosen} projector, " in printed.out
    # the minutes between the projector and the first iteration of a large scan are announced, in order
    lines = printed.out.splitlines()
    steps = ["building the projector", "computing the FBP of 10 views...", "initialising the Gaussians (--init fbp)..."]
    at = [next(i for i, line in enumerate(lines) if line.startswith(step)) for step in steps]
    assert at == sorted(at), printed.out


def _help(capsys, *argv: str) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


@pytest.mark.parametrize("argv, shown", [
    (("reconstruct",), ["optimisation iterations (at least 1; default 1000)", "(default: 50)", "(0: end only) (default: 500)",
                        "(default: all views)", "filter for the FBP when --fbp is absent (default: hann)"]),
    (("simulate",), ["(default: none, noiseless projections)", "CT volume in HU", "(default: hann)"]),
    (("fbp",), ["ramp filter window (default: hann)"]),
    (("evaluate",), ["--recon RECON reconstructed attenuation volume, 1/mm", "reference attenuation volume, 1/mm"]),
    ((), ["simulate reads a CT in HU and writes attenuation volumes in 1/mm", "in the NIfTI's (I, J, K) index order"]),
])  # fmt: skip
def test_help_shows_defaults_units_and_the_ply_frame(capsys, argv, shown):
    text = _help(capsys, *argv)
    for s in shown:
        assert s in text, s


def test_curve_labels_stay_clear_of_the_series(tmp_path):
    """curve.png: the panel's value labels (left) and iteration labels (bottom) are drawn where no marker or line
    of the series lands, even for the points at the extremes of the range."""
    from PIL import Image

    from recon.plot import draw_curve

    history = [{"iteration": i, "loss": 10.0 ** (-i / 10)} for i in range(10, 110, 10)]
    draw_curve(history, tmp_path / "curve.png")
    img = np.asarray(Image.open(tmp_path / "curve.png").convert("RGB")).astype(int)
    assert img.shape == (245, 640, 3)  # one panel: box (10, 10) - (630, 235)
    series = (np.abs(img - np.array([200, 40, 40])).sum(-1) == 0)  # the loss colour (the title above y = 26 too)
    label = (img[..., 0] == img[..., 1]) & (img[..., 1] == img[..., 2]) & (img[..., 0] < 200)  # grey text
    left, bottom = (slice(26, 234), slice(11, 69)), (slice(221, 234), slice(11, 629))
    assert series[26:234].any() and label[left].any() and label[bottom].any()
    assert not series[left].any() and not series[bottom].any()


def test_curve_draws_the_fbp_level_in_the_psnr_panel(tmp_path):
    """The PSNR panel's range takes in the FBP's PSNR and draws it as a dashed line: here above every point, so on
    the plotted area's top row (the panel's box starts at y = 10 + 235, its plotted area 18 px lower)."""
    from PIL import Image

    from recon.plot import draw_curve

    history = [{"iteration": i, "loss": 1.0 / i, "psnr": 20 + i / 20} for i in range(10, 110, 10)]
    rows = {}
    for fbp in (None, 30.0):
        draw_curve(history, tmp_path / "curve.png", fbp_psnr=fbp)
        img = np.asarray(Image.open(tmp_path / "curve.png").convert("RGB")).astype(int)
        dashes = (np.abs(img - np.array([120, 120, 120])).sum(-1) == 0)
        rows[fbp] = dashes[10 + 235 + 18, 10 + 64 : 630 - 10].mean()
    assert rows[None] == 0 and 0.4 < rows[30.0] < 0.8, rows


@pytest.mark.parametrize("argv, notes", [
    (("simulate",), {"units", "unit check"}),
    (("fbp",), {"units"}),
    (("reconstruct",), {"units", "unit check", "ply"}),
    (("evaluate",), {"units", "unit check"}),
    (("select",), set()),
    ((), {"units", "unit check", "ply"}),
])  # fmt: skip
def test_each_help_has_only_the_notes_that_concern_it(capsys, argv, notes):
    """The units note where a command reads or writes volumes, the unit check where it has --no-unit-check, the
    gaussians.ply frame only for reconstruct (and the top-level help); --views says when it is needed."""
    text = _help(capsys, *argv)
    marks = {"units": "units: simulate reads a CT in HU", "unit check": "--no-unit-check skips that check",
             "ply": "gaussians.ply (reconstruct): centres"}  # fmt: skip
    assert {n for n, m in marks.items() if m in text} == notes
    assert ("--no-unit-check" in text) == ("unit check" in notes)  # the check is described where the flag exists
    if argv == ("simulate",):
        assert "needed for --geometry parallel or cone (a geometry.json fixes its own)" in text
