"""Atomic writes' temporary names say who writes them: host and process, read back whatever the host is called."""

import os
import socket
import time

import pytest

from medgmae.temp_names import HOST_CHARS, TEMP_NAME, host_tag, process_alive, remove_dead_writers_files, temp_name


@pytest.mark.parametrize("host", ["gpu-node-7", "gpu_node7.cluster.example.org", "nœud 3", "", "x" * 300])
def test_a_temporary_name_is_read_back_whatever_the_host_is_called(monkeypatch, host):
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    name = temp_name("projector_matrix-0123456789abcdef.pt")
    found = TEMP_NAME.match(name)
    assert found and found["host"] == host_tag() and int(found["pid"]) == os.getpid()
    assert found["name"] == "projector_matrix-0123456789abcdef.pt" and len(host_tag()) <= HOST_CHARS
    assert len(temp_name("x" * 190)) <= 255  # a long final name still fits the file system's limit (63-char hosts: 165)


def test_long_host_names_sharing_their_start_get_different_tags(monkeypatch):
    """Cut to HOST_CHARS, two hosts would look alike and each take the other's writers for dead ones of its own."""
    tags = set()
    for host in ("compute-node-of-a-very-large-cluster-0001.example.org", "compute-node-of-a-very-large-cluster-0002.example.org"):
        monkeypatch.setattr(socket, "gethostname", lambda h=host: h)
        tags.add(host_tag())
    assert len(tags) == 2 and all(len(t) == HOST_CHARS and TEMP_NAME.match(f".tmp-{t}.1-0123456789ab-a.pt") for t in tags)


def test_a_file_this_process_may_not_remove_is_left_and_the_run_goes_on(tmp_path, dead_pid, monkeypatch):
    """A killed writer's file that another user owns in a shared sticky folder (or a read-only cache): unlink
    fails with PermissionError; the clean-up skips it instead of stopping the run."""
    from pathlib import Path

    stale = tmp_path / f".tmp-{host_tag()}.{dead_pid}-0123456789ab-a.pt"
    stale.write_bytes(b"partial")
    os.utime(stale, (0, 0))

    def refuse(self, *args, **kwargs):
        raise PermissionError(1, "Operation not permitted", str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    assert remove_dead_writers_files(tmp_path) == []
    monkeypatch.undo()
    assert stale.exists() and remove_dead_writers_files(tmp_path) == [stale] and not stale.exists()


def test_only_a_dead_writers_file_is_removed(tmp_path):
    """This process is alive (its file, an hour old, stays); a folder that does not exist has nothing to remove."""
    assert process_alive(os.getpid()) and not process_alive(2**62)
    mine = tmp_path / temp_name("a.pt")
    mine.write_bytes(b"partial")
    an_hour_ago = time.time() - 3600
    os.utime(mine, (an_hour_ago, an_hour_ago))
    assert remove_dead_writers_files(tmp_path) == [] and mine.exists()
    assert remove_dead_writers_files(tmp_path / "none") == []


@pytest.mark.parametrize("writer", ["another-host.4242", "this-host.1"])
def test_a_day_old_file_is_removed_whoever_wrote_it(tmp_path, writer):
    """A container's writer is never told dead by its name: its main process is pid 1 (alive in every PID
    namespace), and Docker gives each container a host name of its own. Its file, unchanged for 25 hours, is
    removed; one an hour old is left (it may be another host's live writer)."""
    writer = writer.replace("this-host", host_tag())
    hour = 3600
    old, recent = tmp_path / f".tmp-{writer}-0123456789ab-a.pt", tmp_path / f".tmp-{writer}-ba9876543210-b.pt"
    for path, hours in ((old, 25), (recent, 1)):
        path.write_bytes(b"partial")
        os.utime(path, (time.time() - hours * hour, time.time() - hours * hour))
    assert TEMP_NAME.match(old.name) and process_alive(1)  # pid 1 is alive in every PID namespace
    assert remove_dead_writers_files(tmp_path, "*.pt") == [old] and not old.exists() and recent.exists()


def test_a_staging_folder_names_its_writer_and_a_live_writers_stays(tmp_path, dead_pid):
    """A staging folder (:func:`medgmae.files.staged_outputs`) carried no writer, so what a killed run left could not
    be told from what a live one was filling; now it carries host and process as temporary files do. A dead
    writer's is removed with its content; this process's stays, as does a dead writer's still being changed."""
    from medgmae.files import staged_outputs
    from medgmae.temp_names import STAGING_NAME

    with staged_outputs(tmp_path / "scan") as stage:
        found = STAGING_NAME.match(stage.name)
        assert found and found["name"] == "scan" and found["host"] == host_tag() and int(found["pid"]) == os.getpid()
    live, dead, busy = (tmp_path / f".scan.staging-{host_tag()}.{pid}-{tail}" for pid, tail in
                        ((os.getpid(), "live_123"), (dead_pid, "abcd_123"), (dead_pid, "efgh_456")))
    then = time.time() - 3600
    for folder in (live, dead, busy):
        (folder / "sub").mkdir(parents=True)
        for p in (folder, folder / "sub"):
            os.utime(p, (then, then))
    (busy / "sub" / "fbp.nii.gz").write_bytes(b"being written")  # changed just now
    assert remove_dead_writers_files(tmp_path, "scan") == [dead] and live.exists() and busy.exists()
