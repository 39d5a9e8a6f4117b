"""One writer per run folder or sample shard: an exclusive lock file that works on shared cluster file systems.

The lock is a small JSON file created with ``O_CREAT | O_EXCL`` (atomic on local disks and on NFS v3+, Lustre,
GPFS) holding the holder's host, pid and process start time. While held, a background thread touches it every
``heartbeat_s`` seconds. A lock is *stale*, and taken over, when its holder is gone:

* same host: the pid no longer runs, or runs a different process (its start time differs);
* another host: the file has not been touched for ``stale_after_s`` seconds (the holder's node died).

Anything else makes :class:`FileLock` raise :class:`~p2core.errors.Locked` naming the holder, so a duplicated
SLURM requeue or a second ``p2core train`` on the same folder exits with one line instead of interleaving writes.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from p2core.errors import Locked


def _process_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), ``None`` where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return start is None or _process_start(pid) in (None, start)


class FileLock:
    """``with FileLock(path): ...`` holds ``path`` exclusively; raises :class:`Locked` if a live process holds it."""

    def __init__(self, path: str | Path, heartbeat_s: float = 30.0, stale_after_s: float = 300.0):
        self.path = Path(path)
        self.heartbeat_s = heartbeat_s
        self.stale_after_s = stale_after_s
        self.identity = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start": _process_start(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if self._create():
                self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.path}", daemon=True)
                self._thread.start()
                return self
            holder = self.live_holder()
            if holder is not None:
                raise Locked(
                    f"{self.path.parent} is in use by pid {holder.get('pid')} on {holder.get('host')} "
                    f"since {holder.get('since')} (lock {self.path}); wait for it, or delete the lock file "
                    "if that process is gone"
                )
            self._take_over()
        raise Locked(f"could not take the lock {self.path}: other processes keep taking it over")

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._holder() == self.identity:
            self.path.unlink(missing_ok=True)

    def live_holder(self) -> dict | None:
        """Who holds the lock now (host, pid, since), or ``None`` when it is free or its holder is gone."""
        holder = self._holder()
        return holder if holder is not None and not self._stale(holder) else None

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump(self.identity, handle)
        return True

    def _holder(self) -> dict | None:
        """The lock's content; ``{}`` for a file being written or garbled, ``None`` once it is gone."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def _stale(self, holder: dict) -> bool:
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        if holder.get("host") == self.identity["host"] and "pid" in holder:
            return not _alive(int(holder["pid"]), holder.get("start"))
        return age > self.stale_after_s

    def _take_over(self) -> None:
        """Move a stale lock aside (atomic rename: of two contenders only one succeeds) so it can be created anew."""
        try:
            os.rename(self.path, self.path.with_name(f"{self.path.name}.stale-{self.identity['host']}-{os.getpid()}"))
        except FileNotFoundError:
            return
        for old in self.path.parent.glob(f"{self.path.name}.stale-*"):
            old.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                pass  # a transient file-system error must not kill the job; staleness is judged by others
