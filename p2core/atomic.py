"""Atomic file writes: a temporary file in the target's folder, flushed and fsynced, then renamed over the target,
so an interrupted job never leaves a file that looks complete. A full disk or an exhausted quota is reported as
one :class:`~p2core.errors.DiskFull` line naming the file, and the previous version of the file stays intact."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import BinaryIO, Callable

from p2core.errors import DiskFull

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def disk_full(path: str | Path, error: BaseException | None) -> DiskFull | None:
    """A :class:`DiskFull` for ``path`` when ``error`` is an out-of-space ``OSError``, else ``None``."""
    if isinstance(error, OSError) and error.errno in NO_SPACE:
        return DiskFull(
            f"no space left writing {path} ({os.strerror(error.errno)}); free space or raise the quota, "
            "then rerun (earlier files are intact)"
        )
    return None


class _WriteRecorder:
    """A binary handle that remembers the ``OSError`` of a failed ``write``: libraries such as ``torch.save`` turn it
    into an unrelated ``RuntimeError`` ("unexpected pos ...")."""

    def __init__(self, handle: BinaryIO):
        self._handle = handle
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self._handle.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def __getattr__(self, name):
        return getattr(self._handle, name)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Create ``path`` (and its folder) by calling ``write`` on a binary handle to a temporary file, then renaming it.

    Raises :class:`DiskFull` (one line, the old ``path`` untouched) when the file system runs out of space.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    recorder = None
    try:
        with open(tmp, "wb") as handle:
            recorder = _WriteRecorder(handle)
            write(recorder)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except Exception as exc:
        full = disk_full(path, recorder.error if recorder and recorder.error else exc)
        if full is not None:
            raise full from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text (CSV, JSON, Markdown)."""
    return atomic_write(path, lambda handle: handle.write(text.encode()))
