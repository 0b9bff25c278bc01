"""Peak resident memory by phase: what a run's process held at its highest in each phase.

Linux keeps a process's peak resident set (``VmHWM`` in ``/proc/self/status``) and resets it to the
current resident set when ``5`` is written to ``/proc/self/clear_refs``. :class:`PeakMemory` resets
it as a phase begins and reads it as the phase ends, so each phase gets its own peak, and the time
outside phases (loading, setup) gets one too. Some kernels refuse the write and some sandboxes take it
and reset nothing, so a reset counts only when the peak reads back at the current resident set. Where
it does not, a phase's figure is the peak since the process began, and ``resettable`` says so; off
Linux there is no reading at all (empty figures).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
OUTSIDE = "setup"
"""The name the time outside every phase is kept under (model loading, building the engine, writing)."""


def status_mib(field: str) -> float | None:
    """A ``Vm*`` line of ``/proc/self/status`` in MiB (None where there is no such file)."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


SLACK_MIB = 8.0
"""How far the peak may read above the resident set just after a reset (the kernel's counters are
synchronised per thread in batches)."""


def release_free() -> bool:
    """Hand the heap memory glibc holds free back to the OS (``malloc_trim(0)``); False where there
    is no glibc. A freed tensor below glibc's mmap threshold stays in its free lists, and the
    threshold rises to the largest block freed (up to 32 MiB), so without this a run's resident
    memory kept what its earlier phases had freed (docs/demo.md has the figures). A fixed threshold
    (``MALLOC_MMAP_THRESHOLD_``) returned as much but slowed the train step: every large tensor
    became fresh pages."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


def reset_peak() -> bool:
    """Set the peak resident set to the current one; False where the kernel refuses or ignores it."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    peak, now = status_mib("VmHWM"), status_mib("VmRSS")
    return peak is not None and now is not None and peak <= now + SLACK_MIB


def peak_resets() -> bool:
    """Whether this kernel really resets the peak: a freed 64 MiB block leaves the peak above the
    resident set, and only a working reset brings it back down."""
    block = bytearray(64 * 2**20)  # zero-filled, so touched: resident
    del block
    return reset_peak()


class PeakMemory:
    """Peak resident MiB per phase, each the largest over the phase's repeats (and over resumes,
    through :meth:`state_dict`)."""

    def __init__(self) -> None:
        self.by_phase: dict[str, float] = {}
        self.resettable = True

    def _keep(self, name: str) -> None:
        peak = status_mib("VmHWM")
        if peak is not None:
            self.by_phase[name] = max(self.by_phase.get(name, 0.0), peak)

    def enter(self) -> None:
        """A phase begins: what came before it counts as setup; the peak starts again here."""
        self.leave(OUTSIDE)

    def leave(self, name: str) -> None:
        """Phase ``name`` ends: its peak is kept, the heap's free memory goes back to the OS
        (:func:`release_free`), and the peak starts again for what follows."""
        self._keep(name)
        release_free()
        self.resettable = reset_peak() and self.resettable

    def report(self) -> dict:
        """``peak_rss_mib`` (the whole run's) and ``peak_rss_mib_by_phase``, setup included."""
        self._keep(OUTSIDE)
        return {"peak_rss_mib": max(self.by_phase.values(), default=None), "peak_rss_mib_by_phase": dict(self.by_phase),
                **({} if self.resettable else {"peak_rss_note": "the kernel refused to reset the peak: each phase's "
                                                                "figure is the peak since the process began"})}

    def state_dict(self) -> dict:
        return {"by_phase": dict(self.by_phase), "resettable": self.resettable}

    def load_state_dict(self, state: dict) -> None:
        self.by_phase = {k: max(v, self.by_phase.get(k, 0.0)) for k, v in state.get("by_phase", {}).items()}
        self.resettable = self.resettable and state.get("resettable", True)
