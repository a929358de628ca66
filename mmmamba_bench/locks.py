"""One writer per output: an exclusive lock taken before a command writes to its output folder or file.

``output_lock(out)`` holds ``flock`` on ``<parent>/.<name>.lock`` for the duration of the command. A second run on the
same output is refused at once with :class:`OutputLocked`, naming the process that holds it; the lock goes away with
its holder, also when that process is killed (the kernel releases it), so a crashed run never blocks the rerun that
resumes it. POSIX only (fcntl).
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class OutputLocked(RuntimeError):
    """Another run is writing the same output."""


def lock_path(out: str | os.PathLike) -> Path:
    out = Path(out).resolve()
    return out.parent / f".{out.name}.lock"


@contextmanager
def output_lock(out: str | os.PathLike, command: str = "this command") -> Iterator[Path]:
    """Hold the lock of output ``out`` (a folder or a file, existing or not) while the block runs."""
    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise OutputLocked(f"{out} is being written by another run ({holder}); wait for it to finish or choose "
                               f"another output (lock: {path})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, {command}\n".encode(), 0)
        try:
            yield Path(out)
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
