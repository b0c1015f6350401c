"""Test configuration: Triton kernels run in the interpreter on CPU-only machines."""

import os

import torch

if not torch.cuda.is_available():
    # must be set before triton is imported anywhere: the same kernel source then runs on the CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

import functools  # noqa: E402
import locale  # noqa: E402
import hashlib  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# the helper modules hold assertions too (a fixture's, a shared check's): rewritten as the test modules' are, so that a
# failure there shows the values compared, not a bare AssertionError
pytest.register_assert_rewrite(*sorted(p.stem for p in Path(__file__).parent.glob("*_helpers.py")))


@functools.lru_cache(maxsize=None)
def triton_interpreter_problem() -> str | None:
    """Why Triton's interpreter cannot run the renderer's kernels on this machine, or ``None`` (also where the
    kernels are compiled rather than interpreted).

    The interpreters of Triton 3.6 and older (PyTorch 2.11 and older) turn a loop bound loaded from memory into a
    Python int with ``int()`` of a one-element array, which NumPy 2.4 and later refuse; later Triton releases
    extract the element first. A tiny kernel with such a loop tells, whatever the versions. Where Triton is not
    installed (it is Linux-only: macOS, Windows), those tests skip saying so.
    """
    try:
        import numpy as np
        import triton
        import triton.language as tl
    except ImportError:
        return "Triton is not installed (Linux-only); the renderer uses its PyTorch backend here"
    if os.environ.get("TRITON_INTERPRET") != "1":
        return None

    @triton.jit
    def _loaded_bound_loop(n_ptr, out_ptr):
        acc = 0
        for _ in range(0, tl.load(n_ptr), 2):
            acc += 1
        tl.store(out_ptr, acc)

    n, out = torch.tensor([5], dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    try:
        _loaded_bound_loop[(1,)](n, out)
    except Exception as e:  # noqa: BLE001 - any failure of the interpreter is the reason to skip
        why = str(e).splitlines()[0] if str(e) else repr(e)
        return (
            f"Triton {triton.__version__}'s interpreter cannot run a loop with a loaded bound under NumPy "
            f"{np.__version__} ({why}); the compiled kernels are unaffected (bench/triton_aot.py)"
        )
    return None if int(out) == 3 else f"Triton {triton.__version__}'s interpreter miscounts a loop (3 != {int(out)})"


def astra_problem() -> str | None:
    """Why the tests that call astra-toolbox itself cannot run here, or ``None`` (the toolkit runs without it)."""
    from recon.projectors.astra_proj import astra_installed

    if not astra_installed():
        return "astra-toolbox is not installed; medgmae-recon's 'auto' projector uses PyTorch without it"
    return None


def pytest_collection_modifyitems(config, items):
    interpreter_problem, no_astra = triton_interpreter_problem(), astra_problem()
    for item in items:
        if interpreter_problem and item.get_closest_marker("triton_interpreter") is not None:
            item.add_marker(pytest.mark.skip(reason=interpreter_problem))
        if no_astra and item.get_closest_marker("astra") is not None:
            item.add_marker(pytest.mark.skip(reason=no_astra))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # the marker, not a keyword (a folder may be named gpu)
            item.add_marker(skip)


#: The process locale the run started with (its default text encoding).
_RUN_LOCALE = locale.setlocale(locale.LC_ALL)


def _restore_locale() -> None:
    if locale.setlocale(locale.LC_ALL) != _RUN_LOCALE:
        locale.setlocale(locale.LC_ALL, _RUN_LOCALE)


@pytest.fixture(autouse=True)
def _keep_the_locale():
    """The run's process locale for each test, before it (a module fixture may have written DICOM) and after it:
    GDCM (SimpleITK's DICOM writer, which tests use to make series) sets the locale to "C", and a later test in the
    same worker would then read and write text as ASCII by default (the toolkit names UTF-8 itself, and only reads
    DICOM, which leaves the locale as it is)."""
    _restore_locale()
    yield
    _restore_locale()


@pytest.fixture(scope="module")
def one_thread():
    """Run a module single-threaded: small problems are fastest so, and far faster than two threads on a busy
    2-core machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def small_parallel_scan(tmp_path_factory):
    """``medgmae-recon simulate`` of a 16 x 16 x 12 phantom at 12 x 12 x 16 mm in HU, 10 parallel-beam views:
    ``(scan folder, the phantom's NIfTI)``."""
    import nibabel as nib
    import numpy as np

    from medgmae.data.phantom import generate_phantom
    from recon.cli import main

    d = tmp_path_factory.mktemp("scan")
    ph = generate_phantom(1, shape=(16, 16, 12), spacing=(12.0, 12.0, 16.0), noise=False)
    nib.save(nib.Nifti1Image(ph.image.astype(np.float32), ph.affine), str(d / "ct.nii.gz"))
    assert main(["simulate", "--volume", str(d / "ct.nii.gz"), "--geometry", "parallel", "--views", "10",
                 "--out", str(d / "scan"), "--device", "cpu"]) == 0  # fmt: skip
    return d / "scan", d / "ct.nii.gz"


@pytest.fixture
def gsplat_cuda():
    """Skip (not fail) a GPU test where gsplat's CUDA extension cannot be built or loaded, e.g. no ``nvcc`` for
    its just-in-time build on the machine."""
    from medgmae.twod.gsplat_backend import _load_gsplat

    try:
        _load_gsplat()
    except (RuntimeError, ImportError, OSError) as e:
        pytest.skip(f"gsplat's CUDA extension is unavailable: {str(e).splitlines()[0] if str(e) else e!r}")


def _folder_state(root: Path) -> dict[str, tuple]:
    """Every entry below ``root``: ``relative path -> (size, mtime_ns, sha256)`` for files, ``(None, mtime_ns,
    None)`` for folders (a folder's mtime changes when an entry is created, renamed or removed in it)."""
    state = {}
    for p in sorted(Path(root).rglob("*")):
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
        state[str(p.relative_to(root))] = (st.st_size if p.is_file() else None, st.st_mtime_ns, digest)
    return state


@pytest.fixture
def folder_state():
    """A function ``state(root)``: names, sizes, mtimes and hashes of everything below ``root``, to assert that a
    refused command left a folder byte for byte as it was."""
    return _folder_state


def _stop_while_validating(train_json: Path, folder: Path, epoch: int) -> Path:
    """A config file to list after a bundle's ``train.json``: a step added to its checkpoint handler's validation,
    after the first validation handler, that sends the run SIGTERM (as a batch system's time limit does) while it
    validates epoch ``epoch``. Under a process group every rank stops at once, after all have reached the step:
    a rank stopping alone (ranks other than 0 validate nothing) made torchrun stop rank 0 before it had kept the
    epoch's state. Returns the file's path (in ``folder``)."""
    import json

    config = json.loads(Path(train_json).read_text(encoding="utf-8"))
    index, handler = next((i, h) for i, h in enumerate(config["train"]["handlers"])
                          if isinstance(h, dict) and h["_target_"].endswith("CheckpointHandler"))  # fmt: skip
    validation = list(handler["validation"])
    dist = "__import__('torch.distributed', fromlist=['barrier'])"
    stop = ("$type('StopWhileValidating', (), {"
            "'attach': lambda self, engine: engine.add_event_handler(__import__('ignite.engine', fromlist=['Events'])"
            ".Events.EPOCH_COMPLETED, self), "
            f"'__call__': lambda self, engine: ({dist}.barrier() if {dist}.is_initialized() else None, "
            "__import__('os').kill(__import__('os').getpid(), "
            f"__import__('signal').SIGTERM)) if engine.state.epoch == {int(epoch)} else None}})()")  # fmt: skip
    path = Path(folder) / f"stop_while_validating_epoch_{int(epoch)}.json"
    path.write_text(json.dumps({"stop_while_validating": stop,
                                f"train#handlers#{index}#validation": validation[:1] + ["@stop_while_validating"] + validation[1:]}))  # fmt: skip
    return path


@pytest.fixture
def stop_while_validating():
    """A function ``config(train_json, folder, epoch)``: the config file that stops a bundle's training run with
    SIGTERM while it validates epoch ``epoch`` (:func:`_stop_while_validating`)."""
    return _stop_while_validating


@pytest.fixture(scope="session")
def pretrain_runs(tmp_path_factory) -> dict:
    """The medgmae_pretrain bundle's runs (pretrain_helpers.pretraining_runs), run once for the two modules that read
    them: test_pretrain_bundle.py and test_pretrain_bundle_resume_checks.py."""
    from pretrain_helpers import pretraining_runs

    return pretraining_runs(tmp_path_factory.mktemp("pretrain_bundle"))


@pytest.fixture(scope="session")
def _finetune_first_epoch_pristine(tmp_path_factory) -> tuple[Path, Path]:
    """The unetr_finetune bundle's one-epoch run (finetune_helpers.first_epoch_run), trained once per test process for
    the resume tests that start from it (test_finetune_resume.py, test_threed_resume_flags.py)."""
    from finetune_helpers import first_epoch_run

    return first_epoch_run(tmp_path_factory.mktemp("finetune_first_epoch"))


@pytest.fixture
def finetune_first_epoch(_finetune_first_epoch_pristine) -> Path:
    """The folder of a one-epoch unetr_finetune run (finetune_helpers.FIRST_EPOCH), as its training left it, for a
    test to resume, damage or refuse: restored before each test that asks for it."""
    from finetune_helpers import restored_run

    return restored_run(*_finetune_first_epoch_pristine)


@pytest.fixture
def dead_pid() -> int:
    """The id of a process that has ended (a child run and waited for)."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(autouse=True)
def _sigterm_left_as_found():
    """A test that runs a bundle's settings check with MONAI's runner in ``sys.argv`` installs the bundles' SIGTERM
    handler in this process: put the disposition back, so that no later test (nor pytest's end) depends on order."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    yield
    if signal.getsignal(signal.SIGTERM) is not before:
        signal.signal(signal.SIGTERM, before)


def _loggers() -> list:
    """The loggers a bundle's ``logging.conf`` configures: the root and the toolkit's."""
    import logging

    named = logging.Logger.manager.loggerDict.items()
    return [logging.getLogger()] + [lg for n, lg in named if isinstance(lg, logging.Logger) and n.split(".")[0] == "medgmae"]


@pytest.fixture(autouse=True)
def _logging_left_as_found():
    """A bundle run in this process configures logging from its ``logging.conf``: a root handler writing to the
    test's captured stdout, which every later test's log records then hit once it is closed ("--- Logging error
    ---" on stderr). Each test leaves the root's and the toolkit's loggers (those the files configure) with the
    handlers, levels and flags it found (pytest's own capture handlers are the logging plugin's to manage)."""
    before = {id(lg): (lg, lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in _loggers()}
    yield
    for lg in _loggers():
        kept = before.get(id(lg), (lg, [], None, None, None))
        for handler in lg.handlers[:]:
            if handler not in kept[1] and not type(handler).__module__.startswith("_pytest"):
                lg.removeHandler(handler)
        if kept[2] is not None:
            lg.setLevel(kept[2])
            lg.propagate, lg.disabled = kept[3], kept[4]
