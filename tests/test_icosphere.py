"""The unit icosphere (medgmae.icosphere): level 1 is the icosahedron and its edges' midpoints on the sphere, the
arrays are float64 unit vectors and int64 indices as documented, read-only and computed once a level, and a NumPy
whole number is a level."""

from __future__ import annotations

import numpy as np
import pytest

from medgmae.icosphere import icosphere


def test_level_1_is_the_icosahedron_and_its_edge_midpoints():
    """Level 1 holds the 12 vertices of level 0 and the 30 midpoints of its edges pushed out onto the unit sphere,
    nothing else: 42 points, 80 triangles."""
    v0, f0 = icosphere(0)
    edges = {tuple(sorted(e)) for t in f0.tolist() for e in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))}
    mids = np.array([(v0[a] + v0[b]) / np.linalg.norm(v0[a] + v0[b]) for a, b in sorted(edges)])
    expected = np.concatenate([v0, mids])
    v1, f1 = icosphere(1)
    assert len(edges) == 30 and v1.shape == (42, 3) and f1.shape == (80, 3)
    distance = np.linalg.norm(v1[:, None] - expected[None], axis=-1)
    assert (distance.min(1) < 1e-12).all() and (distance.min(0) < 1e-12).all()


@pytest.mark.parametrize("level", [1, 2, 3])
def test_the_arrays_are_float64_unit_vectors_and_int64_indices(level):
    """As documented: ``(V, 3)`` float64 of length 1 to float64 precision (float32 holds it to about 1e-7 only)
    and ``(F, 3)`` int64."""
    vertices, triangles = icosphere(level)
    assert vertices.dtype == np.float64 and triangles.dtype == np.int64
    assert vertices.shape == (10 * 4**level + 2, 3) and triangles.shape == (20 * 4**level, 3)
    np.testing.assert_allclose(np.linalg.norm(vertices, axis=1), 1.0, rtol=0, atol=1e-15)


def test_the_arrays_are_read_only_and_computed_once_a_level():
    """The cached arrays cannot be changed by a caller (which would change every later mesh); asked again, the
    same arrays come back."""
    vertices, triangles = icosphere(2)
    with pytest.raises(ValueError, match="read-only"):
        vertices[0, 0] = 2.0
    with pytest.raises(ValueError, match="read-only"):
        triangles[0, 0] = 5
    again = icosphere(2)
    assert again[0] is vertices and again[1] is triangles


def test_a_numpy_whole_number_is_a_level():
    """``np.int64(1)`` (a level read from an array) gives the icosphere of level 1."""
    vertices, triangles = icosphere(np.int64(1))
    assert vertices.shape == (42, 3) and triangles.shape == (80, 3)
    np.testing.assert_array_equal(vertices, icosphere(1)[0])


@pytest.mark.parametrize("level", [-1, 7, 1.0, True, "1", None])
def test_a_level_that_is_no_whole_number_from_0_to_6_is_refused(level):
    with pytest.raises(ValueError, match=r"^level must be a whole number from 0 to 6 .*, got "):
        icosphere(level)
