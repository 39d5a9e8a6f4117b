import json
import os
import time

import pytest

from p2core.errors import Locked
from p2core.lock import FileLock


def write_lock(path, **holder):
    path.write_text(json.dumps({"since": "earlier", **holder}))


def test_lock_is_exclusive_and_released(tmp_path):
    path = tmp_path / ".lock"
    with FileLock(path) as held:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(Locked, match=f"in use by pid {os.getpid()} on {held.identity['host']}"):
            FileLock(path).__enter__()
    assert not path.exists()


def test_heartbeat_keeps_a_held_lock_fresh(tmp_path):
    path = tmp_path / ".lock"
    with FileLock(path, heartbeat_s=0.05):
        os.utime(path, (0, 0))
        time.sleep(0.3)
        assert time.time() - path.stat().st_mtime < 5


def test_stale_locks_are_taken_over_live_ones_are_not(tmp_path):
    path = tmp_path / ".lock"
    host = FileLock(path).identity["host"]
    write_lock(path, host=host, pid=2**22 + 12345)  # no such process on this host
    with FileLock(path):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    write_lock(path, host="node-elsewhere", pid=1)
    with pytest.raises(Locked, match="in use by pid 1 on node-elsewhere"):  # touched just now: alive over there
        FileLock(path, stale_after_s=60).__enter__()
    os.utime(path, (time.time() - 120, time.time() - 120))  # silent for two minutes: its node died
    with FileLock(path, stale_after_s=60):
        assert json.loads(path.read_text())["host"] == host
    assert not list(tmp_path.iterdir())
