"""Outputs are checked before the work starts, and have one writer at a time.

- :func:`check_output_dir` / :func:`check_output_file`: the place a command will write is usable (not a file where a
  folder is needed or the other way round, writable, on a file system that takes a file), said at once with the
  flag's name instead of after an hour of work.
- :func:`output_lock`: holds ``flock`` on ``<parent>/.<name>.lock`` for the duration of the command. A second run on
  the same output is refused at once with :class:`OutputLocked`, naming the process that holds it; the lock goes away
  with its holder, also when that process is killed (the kernel releases it), so a crashed run never blocks the rerun
  that resumes it. POSIX only (fcntl).
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class OutputLocked(RuntimeError):
    """Another run is writing the same output."""


class OutputError(ValueError):
    """An output path that cannot be written; the message names the flag and the path."""


def _probe_dir(folder: Path, flag: str) -> None:
    """``folder`` is, or can be created as, a writable folder. Nothing is created: the folder's nearest existing
    ancestor is probed with a temporary file (removed at once)."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{flag} {folder}: {existing} is a file in the way (an output folder is needed)")
    probe = existing / f".mmmamba-bench-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
    except OSError as exc:
        where = "not writable" if existing == folder else f"cannot be created in {existing}"
        raise OutputError(f"{flag} {folder}: {where} ({exc.strerror or exc})") from None
    finally:
        try:
            probe.unlink(missing_ok=True)
        except OSError:
            pass


def check_output_dir(path: str | os.PathLike, flag: str = "--output") -> Path:
    """``path`` is (or can become) a writable folder; else :class:`OutputError` naming ``flag``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path}: is a file, but an output folder is needed")
    _probe_dir(path, flag)
    return path


def check_output_target(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` names a folder a command will publish as a whole (renamed into place): no file in its place, and
    its parent folder writable. The folder itself is not created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path}: is a file, but an output folder is needed")
    _probe_dir(path.parent, flag)
    return path


def check_output_file(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` can be written as a file (its folder writable, no folder in its place); else :class:`OutputError`."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path}: is a folder, but an output file is needed")
    _probe_dir(path.parent, flag)
    return path


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
