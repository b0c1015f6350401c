"""Atomic writes' temporary names say who writes them: host and process, read back whatever the host is called."""

import os
import socket

import pytest

from medgmae.temp_names import TEMP_NAME, host_tag, process_alive, remove_dead_writers_files, temp_name


@pytest.mark.parametrize("host", ["gpu-node-7", "gpu_node7.cluster.example.org", "nœud 3", "", "x" * 300])
def test_a_temporary_name_is_read_back_whatever_the_host_is_called(monkeypatch, host):
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    name = temp_name("projector_matrix-0123456789abcdef.pt")
    found = TEMP_NAME.match(name)
    assert found and found["host"] == host_tag() and int(found["pid"]) == os.getpid()
    assert found["name"] == "projector_matrix-0123456789abcdef.pt" and len(host_tag()) <= 63 and len(name) < 255


def test_only_a_dead_writers_file_is_removed(tmp_path):
    """This process is alive (its file stays); a folder that does not exist has nothing to remove."""
    assert process_alive(os.getpid()) and not process_alive(2**62)
    mine = tmp_path / temp_name("a.pt")
    mine.write_bytes(b"partial")
    os.utime(mine, (0, 0))
    assert remove_dead_writers_files(tmp_path) == [] and mine.exists()
    assert remove_dead_writers_files(tmp_path / "none") == []
