"""CT geometry: construction, validation, JSON round trip, and ASTRA's own vector conversion as the reference."""

import json
import math

import numpy as np
import pytest

from recon.geometry import CTGeometry


def test_parallel_defaults_cover_volume_and_angles():
    g = CTGeometry.parallel((4, 10, 12), (2.0, 1.0, 1.0), num_angles=6, arc_deg=180)
    assert g.det_shape[0] * g.det_spacing[0] >= 8.0
    assert g.det_shape[1] * g.det_spacing[1] >= math.hypot(10, 12) - 1e-9
    np.testing.assert_allclose(g.angles, np.deg2rad(np.arange(6) * 30.0))
    assert g.proj_shape == (6, *g.det_shape)


def test_json_round_trip(tmp_path):
    g = CTGeometry.cone((6, 8, 10), (1.5, 1.0, 1.0), num_angles=7, arc_deg=200, affine=np.diag([1.0, 1.0, 1.5, 1.0]))
    path = tmp_path / "g.json"
    g.save(path)
    h = CTGeometry.load(path)
    assert h == g
    np.testing.assert_allclose(h.vectors(), g.vectors())
    np.testing.assert_allclose(h.default_affine(), np.diag([1.0, 1.0, 1.5, 1.0]))


def test_explicit_angle_list():
    g = CTGeometry.parallel((2, 8, 8), 1.0, angles=[0.1, 0.5, 2.0])
    assert g.angles == (0.1, 0.5, 2.0) and g.num_views == 3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kind="parallel", volume_shape=(0, 8, 8), voxel_size=1, det_shape=(1, 12), det_spacing=1, angles=[0.0]), "volume_shape"),
        (dict(kind="parallel", volume_shape=(1, 8, 8), voxel_size=-1, det_shape=(1, 12), det_spacing=1, angles=[0.0]), "voxel_size"),
        (dict(kind="parallel", volume_shape=(1, 8, 8), voxel_size=1, det_shape=(1, 12), det_spacing=0, angles=[0.0]), "det_spacing"),
        (dict(kind="parallel", volume_shape=(1, 8, 8), voxel_size=1, det_shape=(1, 4), det_spacing=1, angles=[0.0]), "detector too small"),
        (dict(kind="parallel", volume_shape=(1, 8, 8), voxel_size=1, det_shape=(1, 12), det_spacing=1, angles=[0.0, float("nan")]), "NaN"),
        (dict(kind="parallel", volume_shape=(1, 8, 8), voxel_size=1, det_shape=(1, 12), det_spacing=1, angles=[]), "empty"),
        (dict(kind="fan", volume_shape=(1, 8, 8), voxel_size=1, det_shape=(1, 12), det_spacing=1, angles=[0.0]), "kind"),
        (dict(kind="cone", volume_shape=(1, 8, 8), voxel_size=1, det_shape=(4, 40), det_spacing=1, angles=[0.0]), "source_origin"),
        (dict(kind="cone", volume_shape=(1, 8, 8), voxel_size=1, det_shape=(4, 40), det_spacing=1, angles=[0.0], source_origin=3, source_detector=9), "outside the volume"),
        (dict(kind="cone", volume_shape=(1, 8, 8), voxel_size=1, det_shape=(4, 40), det_spacing=1, angles=[0.0], source_origin=30, source_detector=20), "at least"),
    ],
)
def test_validation_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CTGeometry(**kwargs)


def test_load_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        CTGeometry.load(bad)
    missing = tmp_path / "missing.json"
    with pytest.raises(ValueError, match="missing.json"):
        CTGeometry.load(missing)
    partial = tmp_path / "partial.json"
    partial.write_text('{"kind": "parallel"}')
    with pytest.raises(ValueError, match="missing fields"):
        CTGeometry.load(partial)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("volume_shape", [1.7, 8, 8], "volume_shape must be whole numbers, got [1.7, 8, 8]"),
        ("det_shape", [1.5, 12], "det_shape must be whole numbers, got [1.5, 12]"),
        ("angles", None, "angles is null"),
        ("angles", "abc", "angles must be a list of numbers"),
        ("voxel_size", "abc", "voxel_size must hold numbers, got 'abc'"),
        ("det_spacing", [1, "x"], "det_spacing must hold numbers, got [1, 'x']"),
        ("source_origin", "far", "source_origin must hold numbers, got 'far'"),
        ("det_shape", [12], "det_shape must have 2 entries (rows, cols), got [12]"),
        ("volume_shape", 8, "volume_shape must have 3 entries (z, y, x), got 8"),
    ],
)
def test_load_names_the_field_of_a_non_number_or_fraction(tmp_path, field, value, message):
    """A fraction where a count is due is refused (not truncated); null and text values name their field; a shape
    of one number is refused (it was repeated: det_shape [29] against a 29 x 49 detector ran as a square one and
    failed on the detector's width, or ran to the end where the stack happened to be square), while a voxel size
    or detector pitch of one number is isotropic, as documented."""
    good = dict(kind="parallel", volume_shape=[1, 8, 8], voxel_size=1, det_shape=[1, 12], det_spacing=1, angles=[0.0])
    if field == "source_origin":
        good.update(kind="cone", det_shape=[4, 40], source_origin=60.0, source_detector=90.0)
    path = tmp_path / "g.json"
    path.write_text(json.dumps({**good, field: value}))
    with pytest.raises(ValueError) as error:
        CTGeometry.load(path)
    assert str(error.value).startswith(f"geometry file {path}: {message}"), str(error.value)
    path.write_text(json.dumps({**good, "volume_shape": [1.0, 8, 8]}))  # a whole number written as a float is fine
    assert CTGeometry.load(path).volume_shape == (1, 8, 8)
    path.write_text(json.dumps({**good, "voxel_size": [0.5], "det_spacing": 0.7}))
    assert CTGeometry.load(path).voxel_size == (0.5,) * 3 and CTGeometry.load(path).det_spacing == (0.7, 0.7)


def test_a_made_geometry_cannot_be_changed_but_replace_checks_a_new_one():
    """A field set after construction skipped every check (a new volume_shape no longer matching the affine's
    spacing went through); setting one is refused naming dataclasses.replace, which re-checks."""
    import dataclasses

    affine = np.diag([1.5, 1.0, 2.0, 1.0])  # (x, y, z) steps = voxel_size reversed
    geom = CTGeometry.parallel((6, 8, 10), (2.0, 1.0, 1.5), num_angles=12, affine=affine)
    with pytest.raises(AttributeError, match=r"CTGeometry.voxel_size cannot be set.*dataclasses.replace"):
        geom.voxel_size = (1.0, 1.0, 1.0)
    assert geom.voxel_size == (2.0, 1.0, 1.5)  # unchanged
    with pytest.raises(ValueError, match="affine"):  # the same change through replace is checked
        dataclasses.replace(geom, voxel_size=(1.0, 1.0, 1.0))
    fewer = dataclasses.replace(geom, angles=geom.angles[:6])
    assert fewer.num_views == 6 and geom.num_views == 12
    with pytest.raises(AttributeError):  # nor in place: an appended view skipped the per-view checks
        geom.angles.append(0.5)
    with pytest.raises(TypeError):
        geom.affine[0][0] = 3.0
    assert geom.num_views == 12 and geom.affine[0][0] == 1.5


def test_check_projections():
    g = CTGeometry.parallel((2, 8, 8), 1.0, num_angles=5)
    g.check_projections((5, *g.det_shape))
    with pytest.raises(ValueError, match="expects"):
        g.check_projections((4, *g.det_shape))


@pytest.mark.astra
@pytest.mark.parametrize("kind", ["parallel", "cone"])
def test_vectors_match_astra_conversion(kind):
    """ASTRA's geom_2vec of its circular geometries is the definition our vectors follow."""
    from astra import create_proj_geom
    from astra.functions import geom_2vec

    angles = np.array([0.0, 0.3, 1.2, 4.0])
    if kind == "parallel":
        g = CTGeometry("parallel", (4, 6, 6), 1.0, (5, 11), (2.0, 1.5), angles)
        ref = geom_2vec(create_proj_geom("parallel3d", 1.5, 2.0, 5, 11, angles))["Vectors"]
    else:
        g = CTGeometry("cone", (4, 6, 6), 1.0, (9, 19), (2.0, 1.5), angles, 100.0, 150.0)
        ref = geom_2vec(create_proj_geom("cone", 1.5, 2.0, 9, 19, angles, 100.0, 50.0))["Vectors"]
    np.testing.assert_allclose(g.vectors(), ref, atol=1e-9)


def test_select_views_keeps_the_scan_and_checks_indices():
    g = CTGeometry.cone((8, 10, 12), (2.0, 1.0, 1.5), num_angles=12)
    sub = g.select_views([1, 5, 11])
    assert sub.angles == (g.angles[1], g.angles[5], g.angles[11]) and sub.num_views == 3
    assert (sub.kind, sub.volume_shape, sub.voxel_size, sub.det_shape, sub.source_origin) == (
        g.kind, g.volume_shape, g.voxel_size, g.det_shape, g.source_origin)
    assert g.num_views == 12  # the original is unchanged
    for bad in ([], [12], [-1]):
        with pytest.raises(ValueError, match="indices below 12"):
            g.select_views(bad)


@pytest.mark.parametrize("kind", ["parallel", "cone"])
def test_angles_that_look_like_degrees_are_refused(kind):
    """Angles in degrees (0..345 every 15) read as radians go round 55 times: refused, saying so; radians going
    round many times (20 whole turns, golden-angle steps over 38 turns) pass."""
    cone = dict(source_origin=100.0, source_detector=150.0) if kind == "cone" else {}
    make = getattr(CTGeometry, kind)
    with pytest.raises(ValueError) as e:
        make((6, 20, 20), 1.0, angles=np.arange(0.0, 360.0, 15.0).tolist(), **cone)
    assert str(e.value) == ("angles run from 0 to 345 (24 views): as radians, which angles are, that is 55 turns; they "
                            "look like degrees: give them in radians (numpy.deg2rad(angles))")
    assert make((6, 20, 20), 1.0, num_angles=720, arc_deg=20 * 360, **cone).num_views == 720
    assert make((6, 20, 20), 1.0, angles=(np.arange(100) * math.pi * (3 - math.sqrt(5))).tolist(), **cone).num_views == 100
    assert make((6, 20, 20), 1.0, angles=[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0], **cone).num_views == 7  # radians, one turn


@pytest.mark.parametrize("angles, question", [(np.round(np.linspace(0, 6 * np.pi, 600), 2), True),
                                              (np.arange(1300) * 0.01, True),
                                              (np.round(np.mod(np.arange(200) * np.pi * (3 - np.sqrt(5)), 2 * np.pi), 2), False),
                                              (np.arange(200) * np.pi * (3 - np.sqrt(5)), False)])
def test_radians_saved_to_two_decimals_pass(angles, question):
    """Radians that only may be degrees (three turns, and 13 radians every 0.01, written to two decimals) pass,
    with a question in the arc note; golden-angle scans (wrapped and written to two decimals, or not) pass."""
    from recon.fbp import arc_weighting_note

    g = CTGeometry.parallel((6, 20, 20), 1.0, angles=angles.tolist())
    assert g.num_views == len(angles)
    assert ("are they degrees? (convert them with numpy.deg2rad)" in (arc_weighting_note(g) or "")) == question


@pytest.mark.parametrize("angles", [np.arange(0.0, 355.0, 6.0), np.arange(0.0, 180.0, 1.0), np.arange(0.0, 361.0, 1.0),
                                    np.arange(0.0, 120.0, 0.5)])
def test_angles_that_clearly_are_degrees_are_refused(angles):
    """Degrees over a full turn (0..354 every 6; 0..360 every 1), a half turn (0..179) or an arc of 120 degrees (over
    10 turns as radians) are refused."""
    with pytest.raises(ValueError, match="they look like degrees: give them in radians"):
        CTGeometry.parallel((6, 20, 20), 1.0, angles=angles.tolist())


def test_angles_near_but_not_on_hundredths_pass():
    """Angles 150.001..249.001 are not multiples of 0.01 (a relative tolerance took them for such) and span no half
    or full turn in degrees: they pass with no question."""
    from recon.fbp import arc_weighting_note

    g = CTGeometry.parallel((6, 20, 20), 1.0, angles=(150.001 + np.arange(100.0)).tolist())
    assert "degrees?" not in (arc_weighting_note(g) or "")


@pytest.mark.parametrize("angles", [np.linspace(0.0, 360.0, 72), 0.123 + 5.0 * np.arange(72),
                                    (5.0 * np.arange(72) + 0.37).astype(np.float32), 150.001 + np.arange(180.0),
                                    np.linspace(10.0, 190.0, 8)])
def test_degrees_off_hundredths_over_a_turn_are_refused(angles):
    """Degrees whose span (plus a step) is a full or half turn are refused whatever their decimals: 72 views over
    0..360 (steps of 5.07), a start at 0.123, float32 values (5.37 stored as 5.369999886), 180 views from 150.001,
    8 views over 10..190."""
    with pytest.raises(ValueError, match="they look like degrees: give them in radians"):
        CTGeometry.cone((6, 20, 20), 1.0, angles=[float(a) for a in angles], source_origin=100.0, source_detector=150.0)


def test_few_views_or_float32_hundredths():
    """Seven views spanning 180 "radians" with other decimals are not refused (a few views may span anything);
    float32 degrees over 40 (an arc of 40 degrees, 6 turns as radians) only may be degrees: a question, not a
    refusal."""
    from recon.fbp import arc_weighting_note

    CTGeometry.parallel((6, 20, 20), 1.0, angles=(0.5 + np.linspace(0.0, 180.0, 7) + 0.003).tolist())
    short = (np.arange(0.0, 40.25, 0.25) + 0.37).astype(np.float32)
    g = CTGeometry.parallel((6, 20, 20), 1.0, angles=[float(a) for a in short])
    assert "are they degrees?" in (arc_weighting_note(g) or "")


def _refusals(scan, geom, out, capsys):
    """``fbp`` and ``reconstruct`` of ``scan`` with the geometry file ``geom``: each exits 2 writing nothing into
    ``out``; yields each one's error output."""
    from recon.cli import main

    common = ["--projections", str(scan / "projections.npy"), "--geometry", str(geom)]
    for args in (["fbp", *common, "--out", str(out / "f.nii.gz")], ["reconstruct", *common, "--out", str(out), "--device", "cpu"]):
        capsys.readouterr()
        assert main(args) == 2
        yield capsys.readouterr().err
        assert not out.exists()


def test_fbp_and_reconstruct_refuse_a_geometry_file_in_degrees(small_parallel_scan, tmp_path, capsys):
    """``fbp`` / ``reconstruct`` with a ``geometry.json`` whose angles are degrees: exit 2 naming the file and
    the problem, nothing written (it wrote a meaningless FBP with a warning)."""
    scan = small_parallel_scan[0]
    g = json.loads((scan / "geometry.json").read_text(encoding="utf-8"))
    geom = tmp_path / "deg.json"
    geom.write_text(json.dumps({**g, "angles": np.rad2deg(g["angles"]).round(2).tolist()}))
    for err in _refusals(scan, geom, tmp_path / "out", capsys):
        assert f"error: geometry file {geom}: angles run from 0 to 162 (10 views)" in err and "look like degrees" in err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["deg.json"]


@pytest.mark.parametrize("angles", [[0.0] * 10, [1.5] * 10, [0.0, 2 * np.pi] * 5, [0.0, np.pi] * 5])
def test_a_geometry_file_whose_views_all_point_one_way_is_refused(small_parallel_scan, tmp_path, capsys, angles):
    """``fbp`` / ``reconstruct`` with a ``geometry.json`` whose angles give one direction (left as zeros, or every
    view at the same angle modulo a turn, or half a turn for this parallel beam): exit 2 naming the file, nothing written (fbp wrote an FBP with a warning
    that 0 degrees were covered). One view alone, and two directions, still load."""
    scan = small_parallel_scan[0]
    g = json.loads((scan / "geometry.json").read_text(encoding="utf-8"))
    geom = tmp_path / "one_way.json"
    geom.write_text(json.dumps({**g, "angles": angles}))
    for err in _refusals(scan, geom, tmp_path / "out", capsys):
        assert f"error: geometry file {geom}: the 10 angles all give one direction" in err, err
    for fine in ([0.3], [0.0, 0.0, 0.0, 1.0]):
        geom.write_text(json.dumps({**g, "angles": fine}))
        assert list(CTGeometry.load(geom).angles) == fine
    from recon.angle_checks import check_directions

    check_directions([0.0, np.pi] * 5, "cone")  # a cone beam's opposite views are two directions (a parallel's one)


def test_a_geometry_file_saved_with_a_byte_order_mark_is_read(tmp_path):
    """A hand-written geometry.json saved by Windows Notepad starts with a UTF-8 byte-order mark: it was refused as
    'not valid JSON: Unexpected UTF-8 BOM'."""
    geom = CTGeometry.parallel((6, 8, 8), 1.0, num_angles=12)
    (tmp_path / "g.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(geom.to_dict()).encode("utf-8"))
    assert CTGeometry.load(tmp_path / "g.json") == geom


def test_a_fan_beam_kind_is_told_how_to_write_it_as_a_cone_beam():
    """No fan-beam kind: the refusal of "fan" / "fanflat" (ASTRA's name) says it is a cone beam of one detector row
    over one slice, which reconstructs: the FDK of such a scan of a disc with an off-centre insert finds the insert's
    value (an analytic answer: its attenuation)."""
    import torch

    from recon.fbp import fbp
    from recon.projectors import make_projector

    d = CTGeometry.cone((1, 48, 48), 1.0, 150.0, 300.0, det_shape=(1, 96), det_spacing=(2.0, 1.5), num_angles=90).to_dict()
    for kind in ("fan", "fanflat"):
        with pytest.raises(ValueError, match=r"got '%s' \(a fan beam is a cone beam of one detector row over a volume of one slice\)" % kind):
            CTGeometry.from_dict({**d, "kind": kind})
    with pytest.raises(ValueError) as other:
        CTGeometry.from_dict({**d, "kind": "helical"})
    assert "fan beam" not in str(other.value)
    geom = CTGeometry.from_dict(d)
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    vol = (((yy - 24) ** 2 + (xx - 24) ** 2) < 15**2).float()[None] * 0.02
    vol[0][((yy - 18) ** 2 + (xx - 30) ** 2) < 4**2] = 0.04
    rec = fbp(make_projector(geom, "torch", torch.device("cpu")).forward(vol), geom, "ram-lak")
    assert abs(float(rec[0, 18, 30]) - 0.04) < 0.004 and abs(float(rec[0, 24, 12]) - 0.02) < 0.003
