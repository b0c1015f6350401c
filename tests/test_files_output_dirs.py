"""The output-folder check: folders tried by writing (read-only mounts), paths too long, folder times kept."""

import pytest
from data_helpers import read_only_folder


def test_an_output_folder_the_permission_bits_call_writable_is_tried(tmp_path, monkeypatch):
    """os.access answers from permission bits (as root: yes for a read-only file system, /sys or /proc); the check
    creates and removes a file in the nearest existing folder, names the folder and the system's reason, and
    leaves nothing behind."""

    from medgmae.files import output_dir_problem

    assert output_dir_problem(tmp_path / "new" / "run") is None
    assert list(tmp_path.iterdir()) == []  # neither the folder nor the probe file is left
    read_only_folder(monkeypatch, tmp_path)
    assert output_dir_problem(tmp_path / "new" / "run") == f"cannot create files in {tmp_path} (Read-only file system)"


def test_a_read_only_mount_is_called_read_only_not_a_permission_problem(tmp_path, monkeypatch):
    """Where ``os.access`` says no (as it does for a read-only mount), the refusal said "no permission to write",
    sending users to chmod or sudo; the system's own reason is given (simulated: os.access refuses, creating a file
    fails with EROFS as on a read-only mount)."""
    import os

    from medgmae.files import output_dir_problem

    read_only_folder(monkeypatch, tmp_path)
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    problem = output_dir_problem(tmp_path / "run")
    assert problem == f"cannot create files in {tmp_path} (Read-only file system)" and "permission" not in problem


def test_a_path_too_long_to_create_is_named_without_a_traceback(tmp_path, monkeypatch):
    """A name longer than the file system takes (below an existing folder or a missing one), and a path longer than
    the system takes, are said so: the check raised the lookup's ``OSError: [Errno 36] File name too long`` (every
    entry point crashed with it). The reference is the system itself: creating the folder fails with ENAMETOOLONG."""
    import errno
    import os

    from medgmae.files import output_dir_problem, path_length_problem

    name = "x" * 300
    reference, tmp_path = tmp_path / "ref", tmp_path / "chk"  # names of one length: the same path lengths
    tmp_path.mkdir()
    long_paths = [tmp_path / name, tmp_path / "missing" / name / "run", tmp_path / name / "run"]
    too_deep = tmp_path.joinpath(*["y" * 200] * 30)  # every name fine, the whole path over PATH_MAX (4096 bytes)
    for path in long_paths + [too_deep]:
        with pytest.raises(OSError) as e:
            os.makedirs(reference / path.relative_to(tmp_path))
        assert e.value.errno == errno.ENAMETOOLONG
    for path in long_paths:
        assert output_dir_problem(path) == "a name in it is 300 bytes long, longer than the 255 the file system takes"
    monkeypatch.chdir(tmp_path)
    assert output_dir_problem(name) == "a name in it is 300 bytes long, longer than the 255 the file system takes"
    assert output_dir_problem(too_deep) == f"it is {len(os.fsencode(str(too_deep)))} bytes long, longer than the 4095 the system takes"
    assert path_length_problem(tmp_path / ("x" * 255)) is None and output_dir_problem(tmp_path / ("x" * 255)) is None
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_the_message_of_a_path_too_long_names_it_where_the_error_does():
    """The tools' line for ENAMETOOLONG: the path and its longest name, or, for an error naming no path, no ``None``."""
    import errno

    from medgmae.files import too_long_message

    long = "/tmp/" + "x" * 300
    assert too_long_message(OSError(errno.ENAMETOOLONG, "File name too long", long)) == (
        f"{long}: a name in it is 300 bytes long, longer than the 255 the file system takes (File name too long)")
    assert too_long_message(OSError(errno.ENAMETOOLONG, "File name too long")) == "a path given is too long (File name too long)"
    assert too_long_message(OSError(errno.EACCES, "Permission denied", long)) is None
    assert too_long_message(OSError(errno.ENAMETOOLONG, "File name too long", long.encode())).startswith(f"{long}: a name")  # bytes


def test_the_write_check_leaves_the_folders_times_as_they_were(tmp_path):
    """A refused run leaves its folders exactly as found: the probe file's creation and removal do not move the
    folder's modification time (which fingerprints of DICOM folders read)."""
    import os

    from medgmae.files import output_dir_problem

    os.utime(tmp_path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    assert output_dir_problem(tmp_path / "run") is None and output_dir_problem(tmp_path) is None
    assert os.stat(tmp_path).st_mtime_ns == 1_000_000_000_000_000_000
