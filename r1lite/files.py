"""Atomic file writes and JSONL, so a killed run never leaves half a file behind."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from r1lite.errors import UsageError


def atomic_write(path: Path | str, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it into place.

    The rename is atomic on POSIX, so readers see the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path | str, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def write_json(path: Path | str, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_jsonl(path: Path | str, rows: Iterable[dict]) -> Path:
    return write_text(path, "".join(json.dumps(r, default=str) + "\n" for r in rows))


def read_jsonl(path: Path | str, required: tuple[str, ...] = ()) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, row)`` for each non-blank line, with a one-line error naming the file
    and line for malformed JSON, a row that is not an object, or a missing required key."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such file")
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise UsageError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno}); fix or remove the line") from None
            if not isinstance(row, dict):
                raise UsageError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
            for key in required:
                if key not in row:
                    raise UsageError(f"{path}:{n}: missing key '{key}'; every row needs {', '.join(repr(k) for k in required)}")
            yield n, row
