"""Atomic file writes and the one JSONL reader, so a killed run never leaves half a file behind.

Every write goes to a temporary name beside its target, is flushed to disk (``fsync``), and is
renamed into place; the directory is then fsynced too, so after a power cut the target is the old
version or the new one, never an empty or torn file (a rename alone can reach the disk before the
data it names).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from r1lite.errors import UsageError


def fsync_path(path: Path | str) -> None:
    """Flush a file, or a directory's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


DISK_FULL_BYTES = 16 << 20
"""Below this much free space, a failed write is taken for a full disk: torch and safetensors
report one as their own ``RuntimeError``, not as ``OSError(ENOSPC)``."""


class DiskFull(UsageError):
    """A write failed because its disk is full; what was written before is intact."""


def disk_full(path: Path, error: BaseException) -> DiskFull | None:
    """The one-line error for a write into ``path`` that failed because its disk is full (called
    before the partial file is removed, while the space it took is still taken); None otherwise."""
    if isinstance(error, UsageError) or not isinstance(error, Exception):  # ours, or an interrupt
        return None
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return None
    enospc = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    if not enospc and free >= DISK_FULL_BYTES:
        return None
    return DiskFull(f"{path}: the disk is full ({free / 2**20:.0f} MiB free in {path.parent}), so it was not written; "
                    "what was written before is intact. Free some space, or give --out on another disk")


def writable(path: Path | str, flag: str = "--out", directory: bool = False) -> None:
    """Refuse, before any work starts, an output that cannot be written: under a file, read-only, not
    ours, or a directory where a file is wanted (``directory=False``) or the reverse."""
    path = Path(path)
    if path.exists() and path.is_dir() != directory:
        want = "a directory" if directory else "a file name"
        raise UsageError(f"{flag} {path} is an existing {'file' if directory else 'directory'}; give {want}")
    folder = path if directory else path.parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"{flag} {path}: {existing} is a file, so nothing can be written under it; choose another {flag}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write to {path} ({existing} is read-only or not ours); choose another {flag}")


def decode_utf8(data: bytes, path: Path) -> str:
    """``data`` as UTF-8 text, or a one-line error naming the file and line of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise UsageError(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as UTF-8") from None


def atomic_write(path: Path | str, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, fsync it, then rename it into place.

    The rename is atomic on POSIX, so readers see the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; these files are for reading
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        full = disk_full(path, e)
        Path(tmp).unlink(missing_ok=True)
        if full:
            raise full from e
        raise
    fsync_path(path.parent)
    return path


@contextlib.contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Fill a temporary directory beside ``path`` inside the block; on success fsync every file in
    it and rename it to ``path`` (replacing a directory already there). On an exception the
    temporary directory is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        for item in tmp.rglob("*"):
            if item.is_file():
                os.chmod(item, 0o644)  # safetensors writes weights owner-only; these files are for reading
                fsync_path(item)
        fsync_path(tmp)
        os.chmod(tmp, 0o755)
        if path.exists():  # rename the old one aside first: a rename cannot replace a non-empty directory
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        full = disk_full(path, e)
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise full from e
        raise
    fsync_path(path.parent)


def remove_stale_temps(path: Path | str) -> list[Path]:
    """Remove what an atomic write of ``path`` left beside it when its process was killed: the
    temporary file or directory :func:`atomic_write` and :func:`atomic_dir` name ``.NAME.*.tmp``
    (``.NAME.*.old``: a replaced directory not yet deleted). Returns what was removed; any other
    file, hidden or not, stays."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.") and p.name.endswith((".tmp", ".old"))]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return stale


def write_bytes(path: Path | str, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_text(path: Path | str, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path | str, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_jsonl(path: Path | str, rows: Iterable[dict]) -> Path:
    return write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def append_jsonl(path: Path | str, row: dict) -> None:
    """Append one row and flush it to disk. A kill mid-write can leave a cut-off last line, which
    :func:`read_jsonl` with ``notes`` drops."""
    try:
        with open(path, "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        full = disk_full(Path(path), e)
        if full:
            raise full from e
        raise


def read_jsonl(path: Path | str, required: tuple[str, ...] = (), notes: list[str] | None = None) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, row)`` for each non-blank line, with a one-line error naming the file
    and line for malformed JSON, a row that is not an object, or a missing required key.

    With ``notes`` (a file this program appends to, such as ``metrics.jsonl``), a last line that
    is cut off — no newline at its end and not valid JSON, as a kill mid-append leaves it — is
    dropped and a note saying so is appended to ``notes``; anywhere else it is an error.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    lines = decode_utf8(path.read_bytes(), path).split("\n")
    torn_tail = lines[-1] != ""  # the file does not end with a newline
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if notes is not None and torn_tail and n == len(lines):
                notes.append(f"{path.name}:{n} is cut off (the run stopped while writing it); left out")
                return
            raise UsageError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); fix or remove the line") from None
        except RecursionError:
            raise UsageError(f"{path}:{n}: the JSON value is nested too deeply to read; flatten it") from None
        if not isinstance(row, dict):
            raise UsageError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
        for key in required:
            if key not in row:
                raise UsageError(f"{path}:{n}: missing key '{key}'; every row needs {', '.join(repr(k) for k in required)}")
        yield n, row


def read_json(path: Path | str, what: str) -> dict:
    """A JSON object from a file this program wrote, with a one-line error when it is not one."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not JSON ({e.msg} at line {e.lineno}); {what}") from None
    if not isinstance(obj, dict):
        raise UsageError(f"{path}: expected a JSON object; {what}")
    return obj


class ProcessLock:
    """One process at a time on what ``path`` guards: an ``flock`` on ``path``, which names its
    holder while held and is left empty when released. The lock goes with the process, so one left
    by a killed process is taken over (with a note through ``warn``)."""

    def __init__(self, path: Path, guarded: Path, warn: Callable[[str], Any] = print):
        self.path, self.guarded, self.warn = Path(path), guarded, warn
        self.fd: int | None = None

    def holder(self) -> str:
        try:
            return self.path.read_text().strip()
        except OSError:
            return ""

    def __enter__(self) -> ProcessLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise disk_full(self.path, e) or UsageError(f"{self.path}: cannot create the lock file ({e.strerror}); "
                                                        "choose an output location you can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UsageError(f"{self.guarded} is in use by another r1lite process ({self.holder()}); wait for it to "
                             "end, or stop it first") from None
        before = self.holder()
        if before:
            self.warn(f"note: {self.path} was left by {before}, which is no longer running; taking it over")
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        except OSError as e:  # a full disk: the lock holds without its note
            if disk_full(self.path, e) is None:
                os.close(fd)
                raise
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)  # an empty lock file: released cleanly
            os.close(self.fd)
            self.fd = None
