"""agent/procfs.py and its readers: the same figures as reading the files through `open()`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from agent import cgroup, procfs, proctree, usage


def test_read_takes_a_file_longer_than_one_read_whole(tmp_path):
    data = bytes(range(256)) * (3 * procfs.CHUNK // 256 + 7)
    (tmp_path / "f").write_bytes(data)
    assert procfs.read(str(tmp_path / "f")) == data
    (tmp_path / "g").write_bytes(data[: procfs.CHUNK])  # exactly one read's worth: the next read ends it
    assert procfs.read(str(tmp_path / "g")) == data[: procfs.CHUNK]


def test_read_of_a_missing_file_raises_as_open_does(tmp_path):
    with pytest.raises(FileNotFoundError):
        procfs.read(str(tmp_path / "gone"))


@pytest.mark.skipif(not os.path.exists("/proc/vmstat"), reason="no /proc/vmstat (not Linux)")
def test_node_oom_kills_is_the_vmstat_count():
    with open("/proc/vmstat") as f:
        want = [int(line.split()[1]) for line in f if line.startswith("oom_kill ")]
    assert cgroup.node_oom_kills() == (want[0] if want else None)


@pytest.mark.skipif(not usage.have_children_lists(), reason="no /proc/PID/task/TID/children on this kernel")
def test_children_lists_name_a_new_child_until_it_is_reaped():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert child.pid in proctree.own_children()
        assert child.pid in usage.children(os.getpid())
        assert not usage.is_zombie(child.pid)
        assert usage.rss(child.pid) > 0
    finally:
        child.communicate(b"")
    assert child.pid not in proctree.own_children()
    assert child.pid not in usage.children(os.getpid())
