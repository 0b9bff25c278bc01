"""Progress of a long phase: a rich bar with rate and ETA on a terminal, a plain line now and then
in a log (a file or a pipe, where a live bar would write escape codes)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

LOG_EVERY_SECONDS = 15.0
"""In a log, a progress line at most this often (and one when the phase ends)."""


@contextlib.contextmanager
def progress(console, label: str, total: int, unit: str = "", done: int = 0,
             log_every: float = LOG_EVERY_SECONDS) -> Iterator[Callable[..., None]]:
    """Yield ``update(done, note="", total=None)``: ``done`` of ``total`` units finished, ``note`` a
    short live figure (a step's reward, say), ``total`` a new total when the phase grows (another
    epoch). ``done`` starts where a resumed phase left off;
    ``log_every``: seconds between lines in a log (0 = a line per update)."""
    if console.is_terminal:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                   TextColumn("{task.speed:>6.1f}/s" if unit else ""), TimeElapsedColumn(), TextColumn("ETA"),
                   TimeRemainingColumn(), TextColumn("{task.fields[note]}"))
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(label, total=total, completed=done, note="")

            def update(now: int, note: str = "", total: int | None = None) -> None:
                bar.update(task, completed=now, note=note, **({"total": total} if total else {}))

            yield update
        return
    start, first, last, size = time.monotonic(), done, [time.monotonic()], [total]

    def update(now: int, note: str = "", total: int | None = None) -> None:
        size[0] = total or size[0]
        total = size[0]
        t = time.monotonic()
        if now < total and t - last[0] < log_every:
            return
        last[0] = t
        rate = (now - first) / max(t - start, 1e-9)
        # an ETA from the first few percent (a prefill, a warm-up) misleads: none before 10%
        eta = f", ETA {(total - now) / rate:.0f} s" if 0.1 * total <= now < total and rate > 0 else ""
        console.print(f"{label}: {now}/{total} {unit} ({rate:.1f}/s{eta})" + (f"  {note}" if note else ""), highlight=False)

    yield update
