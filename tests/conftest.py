"""Test configuration: Triton kernels run in the interpreter on CPU-only machines."""

import os

import torch

if not torch.cuda.is_available():
    # must be set before triton is imported anywhere: the same kernel source then runs on the CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the marker, not a keyword (a folder may be named gpu)
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """Run a module single-threaded: small problems are fastest so, and far faster than two threads on a busy
    2-core machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def gsplat_cuda():
    """Skip (not fail) a GPU test where gsplat's CUDA extension cannot be built or loaded, e.g. no ``nvcc`` for
    its just-in-time build on the machine."""
    from medgmae.twod.gsplat_backend import _load_gsplat

    try:
        _load_gsplat()
    except (RuntimeError, ImportError, OSError) as e:
        pytest.skip(f"gsplat's CUDA extension is unavailable: {str(e).splitlines()[0] if str(e) else e!r}")
