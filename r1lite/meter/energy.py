"""Energy counters: what the machine says it used, where it says it.

- CPUs: Linux powercap/RAPL, ``/sys/class/powercap/intel-rapl:N/energy_uj`` (AMD's RAPL appears
  under the same name since Linux 5.8). The counter is the whole package's, so it counts every
  process on the machine, not only this run; it wraps at ``max_energy_range_uj``. Since 2020
  (CVE-2020-8694) the file is readable by root only on most distributions.
- NVIDIA GPUs: NVML's total energy since the driver loaded (``nvmlDeviceGetTotalEnergyConsumption``,
  Volta and newer), through ``pynvml`` where it is installed (it is not a dependency).

:func:`open_counter` returns a counter, or the reason there is none; the meter then charges busy
power × time and its report says which of the two it did.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

POWERCAP = Path("/sys/class/powercap")


@dataclass
class _Zone:
    path: Path
    max_range_uj: int
    last_uj: int
    total_uj: int = 0


class RaplCounter:
    """The CPU packages' energy since the counter opened, in joules, across counter wraparounds.

    ``root`` is the powercap directory (a fixture tree in tests). Only package zones
    (``intel-rapl:N`` named ``package-N``) are summed: their sub-zones (cores, uncore, DRAM) are
    parts of them, and a ``psys`` zone (the whole platform, some laptops) would count them twice.
    Call :meth:`joules` at least once per wrap period (the range is 2^32 µJ or more: over an hour
    at 1 kW) so no wrap is missed.
    """

    def __init__(self, root: Path = POWERCAP) -> None:
        self.zones = []
        for path in sorted(root.glob("intel-rapl:*")):
            if re.fullmatch(r"intel-rapl:\d+", path.name) and (path / "name").read_text().startswith("package"):
                self.zones.append(_Zone(path, int((path / "max_energy_range_uj").read_text()), self._read(path)))
        if not self.zones:
            raise OSError(f"no RAPL package zone under {root}")
        self.source = f"measured: RAPL ({', '.join(z.path.name for z in self.zones)}, the whole CPU package)"

    @staticmethod
    def _read(path: Path) -> int:
        return int((path / "energy_uj").read_text())

    def joules(self) -> float:
        for zone in self.zones:
            now = self._read(zone.path)
            zone.total_uj += now - zone.last_uj if now >= zone.last_uj else now + zone.max_range_uj - zone.last_uj
            zone.last_uj = now
        return sum(z.total_uj for z in self.zones) / 1e6


class NvmlCounter:
    """One NVIDIA GPU's energy since the counter opened, in joules (NVML, millijoule counter)."""

    def __init__(self, index: int) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self._start_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        self.source = f"measured: NVML (GPU {index} board energy)"

    def joules(self) -> float:
        return (self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) - self._start_mj) / 1000


Counter = RaplCounter | NvmlCounter


def open_counter(device_type: str, index: int = 0, root: Path = POWERCAP) -> tuple[Counter | None, str]:
    """A counter for a ``cpu`` or ``cuda`` device and a note, or None and why there is none."""
    if device_type == "cuda":
        import importlib.util

        if importlib.util.find_spec("pynvml") is None:
            return None, "no GPU energy counter: pynvml is not installed (pip install nvidia-ml-py)"
        import pynvml

        try:
            return NvmlCounter(index), ""
        except pynvml.NVMLError as e:  # no driver, or a GPU without the energy counter (before Volta)
            return None, f"no GPU energy counter: NVML said {e}"
    if not root.is_dir():
        return None, f"no CPU energy counter: {root} does not exist (not Linux, or a VM without RAPL)"
    try:
        return RaplCounter(root), ""
    except PermissionError:
        return None, f"no CPU energy counter: {root}/intel-rapl:*/energy_uj is readable by root only"
    except OSError as e:
        return None, f"no CPU energy counter: {e}"
