"""The cost meter: FLOPs, device-hours, energy and money for every run, and the cost block it reports.

:class:`CostMeter` runs alongside a run: code adds FLOPs by phase (counted as computed,
:mod:`r1lite.meter.flops`) and times phases with ``with meter.phase("rollout"):``. :func:`cost_report`
builds the JSON-ready cost block that ``summary.json`` keeps; :mod:`r1lite.cost.estimate` returns the
same block before a run starts (``"estimated": true``).

Money is device-hours × rental price, charging every wall-clock second of the run, in a phase or
not: a rented device costs the same while it waits on Python. Energy is measured where the machine
exposes a counter (:mod:`r1lite.meter.energy`: RAPL for CPUs, NVML for NVIDIA GPUs), else busy power ×
time; ``energy_source`` says which. What is *not* counted is listed in every block under
``leaves_out``. :func:`cost_per_point` divides each stage's cost by the held-out accuracy it gained.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable, Iterator

from r1lite.errors import UsageError
from r1lite.meter.energy import Counter
from r1lite.meter.hardware import Hardware
from r1lite.meter.memory import PeakMemory

LEAVES_OUT = [
    "failed runs, ablations and hyperparameter searches", "data preparation and teacher API calls",
    "idle time between runs", "staff time", "buying the hardware (the price is a rental rate)",
    "the rest of the machine's power (host CPU, memory, disks, network)",
]
"""What no cost report counts; :func:`cost_report` adds PUE and lost work where they apply."""


def price(device_hours: float, hardware: Hardware, usd_per_hour: float | None = None) -> float:
    """Dollars for ``device_hours`` at the table's rental price, or at ``usd_per_hour`` when given.

    >>> from r1lite.meter.hardware import HARDWARE
    >>> price(2_788_000, HARDWARE["H800"]), price(10, HARDWARE["H100"], usd_per_hour=0)
    (5576000.0, 0.0)
    """
    rate = hardware.usd_per_hour if usd_per_hour is None else usd_per_hour
    return float(device_hours * rate)


def cost_report(
    hardware: Hardware, devices: int, pue: float, wall_seconds: float,
    flops_by_phase: dict[str, float], seconds_by_phase: dict[str, float], *, estimated: bool, resumes: int = 0,
    device_seconds: float | None = None, kwh: float | None = None, energy_source: str = "",
    assumptions: list[str] | None = None, method: str = "", memory: dict | None = None,
) -> dict:
    """The JSON-ready cost block that :meth:`CostMeter.report` and the estimates return.

    ``device_seconds``: the devices' busy time summed, when it is not ``wall_seconds x devices``
    (a run resumed with another number of processes). ``kwh`` is the measured energy (before
    PUE), or None: busy power × device-hours, with ``energy_source`` saying why no counter was
    read. ``method`` says how the figures were obtained (``metered``, ``measured probe``,
    ``datasheet``); ``assumptions`` lists what an estimate rests on. ``memory``: the peak resident
    memory, whole and by phase (:meth:`r1lite.meter.memory.PeakMemory.report`, or an estimate's).
    """
    device_seconds = wall_seconds * devices if device_seconds is None else device_seconds
    device_hours = device_seconds / 3600
    total = sum(flops_by_phase.values())
    achieved = total / wall_seconds if wall_seconds > 0 else 0.0
    if kwh is None:
        energy = device_hours * hardware.watts * pue / 1000
        source = f"power x time: {hardware.watts:g} W per device x wall time" + (f" ({energy_source})" if energy_source else "")
    else:
        energy, source = kwh * pue, energy_source
    return {
        "estimated": estimated,
        "method": method or ("estimate" if estimated else "metered"),
        "hardware": hardware.name,
        "devices": devices,
        "watts_per_device": hardware.watts,
        "usd_per_hour_per_device": hardware.usd_per_hour,
        "pue": pue,
        "price_source": hardware.source,
        "wall_seconds": wall_seconds,
        "device_hours": device_hours,
        "kwh": energy,
        "energy_source": source,
        "usd": price(device_hours, hardware),
        "flops": {"total": total, "by_phase": dict(flops_by_phase)},
        "seconds_by_phase": dict(seconds_by_phase),
        "achieved_flops_per_s": achieved,
        "mfu": total / (hardware.peak_flops * device_seconds) if device_seconds > 0 else 0.0,
        **(memory or {}),
        "assumptions": list(assumptions or []),
        "leaves_out": LEAVES_OUT
        + (["cooling and facility overhead (PUE 1.0; set --pue)"] if pue == 1.0 else [])
        + ([f"work lost between the last checkpoint and each of {resumes} interruption(s)"] if resumes else []),
    }


def upgrade_block(block: dict) -> dict:
    """A cost block as this version writes it, from one an earlier r1lite wrote (those charged
    energy as busy power × time and listed no assumptions).

    >>> upgrade_block({"estimated": False})["energy_source"]
    'power x time (written before energy was measured)'
    """
    return {"method": "estimate" if block["estimated"] else "metered",
            "energy_source": "power x time (written before energy was measured)", "assumptions": [], **block}


# ---------------------------------------------------------------------------------------------
# The meter


class CostMeter:
    """Counts a run's FLOPs, wall time and energy by phase; :meth:`report` prices them.

    Wall time runs from construction (model loading and setup included). Phases do not nest: time
    outside any phase still counts in ``wall_seconds``, just not in ``seconds_by_phase``. Under
    ``torchrun`` every rank meters its own device (time, FLOPs, and energy where its counter
    reads); :func:`combine` sums them into the job's (rank 0's report and checkpoints hold that).
    ``clock`` is injectable so tests need not sleep; ``energy`` is an open counter
    (:func:`r1lite.meter.energy.open_counter`), or None with ``no_energy_reason`` saying why.
    """

    def __init__(self, hardware: Hardware, devices: int = 1, pue: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, energy: Counter | None = None,
                 no_energy_reason: str = "") -> None:
        self.hardware = hardware
        self.devices = devices
        self.pue = pue
        self.flops_by_phase: dict[str, float] = {}
        self.seconds_by_phase: dict[str, float] = {}
        self.resumes = 0
        self.energy = energy
        self.no_energy_reason = no_energy_reason
        self._clock = clock
        self._start = clock()
        self._earlier_seconds = 0.0  # wall time of the run before it was resumed
        self._earlier_device_seconds = 0.0  # and its devices' time (the number of devices may change on resume)
        self._earlier_kwh: float | None = 0.0  # energy measured before the resume; None = not measured
        self._open_phase: str | None = None
        self.memory = PeakMemory()

    def add_flops(self, phase: str, flops: float) -> None:
        if flops < 0:
            raise ValueError(f"add_flops({phase!r}, {flops}): FLOPs cannot be negative")
        self.flops_by_phase[phase] = self.flops_by_phase.get(phase, 0.0) + float(flops)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name`` (seconds add up over repeated blocks), and keep its peak
        resident memory."""
        if self._open_phase is not None:
            raise RuntimeError(f"phase {name!r} started inside phase {self._open_phase!r}; phases do not nest")
        self._open_phase = name
        self.memory.enter()
        start = self._clock()
        try:
            yield
        finally:
            self.seconds_by_phase[name] = self.seconds_by_phase.get(name, 0.0) + self._clock() - start
            self.memory.leave(name)
            self._open_phase = None

    def wall_seconds(self) -> float:
        return self._earlier_seconds + self._clock() - self._start

    def measured_kwh(self) -> float | None:
        """Energy this meter's counter saw since the run began, before PUE; None without a counter
        for the whole run."""
        if self.energy is None or self._earlier_kwh is None:
            return None
        return self._earlier_kwh + self.energy.joules() * self.devices / 3.6e6

    def report(self, ranks: list[dict] | None = None) -> dict:
        """The priced report of this meter, or of a job: ``ranks`` = every rank's
        :meth:`state_dict`, this meter's first (:func:`combine`)."""
        s = combine(ranks) if ranks is not None else self.state_dict()
        kwh = s.get("measured_kwh")
        if kwh is not None:
            source = self.energy.source + (f", summed over {s['devices']} devices" if s["devices"] > 1 else "")
        elif self.energy is not None:
            source = "a counter was read for part of the run only (a resume, or a rank without one), so none is used"
        else:
            source = self.no_energy_reason
        return cost_report(self.hardware, s["devices"], self.pue, s["wall_seconds"], s["flops_by_phase"],
                           s["seconds_by_phase"], estimated=False, resumes=s["resumes"], device_seconds=s["device_seconds"],
                           kwh=kwh, energy_source=source, memory=memory_report(s.get("memory")))

    def state_dict(self) -> dict:
        """What a checkpoint keeps so a resumed run counts on from here."""
        here = self._clock() - self._start  # this process's time, read once
        return {"hardware": self.hardware.name, "devices": self.devices, "wall_seconds": self._earlier_seconds + here,
                "device_seconds": self._earlier_device_seconds + here * self.devices, "flops_by_phase": dict(self.flops_by_phase),
                "seconds_by_phase": dict(self.seconds_by_phase), "resumes": self.resumes, "measured_kwh": self.measured_kwh(),
                "memory": self.memory.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue counting from a checkpoint's :meth:`state_dict`.

        Time between that checkpoint and the interruption is not in it and is not counted (the
        report's ``leaves_out`` says so). The hardware kind must match, or the device-hours would be
        priced as the wrong device; the price, the power and the number of devices may change.
        Under torchrun only rank 0 loads the job's state (the other ranks count from zero).
        """
        if self._open_phase is not None:
            raise RuntimeError("load_state_dict inside a phase; load the checkpoint before starting phases")
        if state["hardware"] != self.hardware.name:
            raise UsageError(
                f"resume: the checkpoint was metered on {state['hardware']}, this run is {self.hardware.name}; "
                f"pass --hardware {state['hardware']}, or start a new run"
            )
        self.flops_by_phase = dict(state["flops_by_phase"])
        self.seconds_by_phase = dict(state["seconds_by_phase"])
        self.resumes = state["resumes"] + 1
        self._earlier_seconds = state["wall_seconds"]  # this process's own setup time keeps counting
        # a checkpoint written before device time and energy were kept (one process throughout)
        self._earlier_device_seconds = state.get("device_seconds", state["wall_seconds"] * state["devices"])
        self._earlier_kwh = state.get("measured_kwh")  # None: written before energy was measured
        self.memory.load_state_dict(state.get("memory", {}))  # absent: written before memory was kept


def combine(ranks: list[dict]) -> dict:
    """One :meth:`CostMeter.state_dict` for a job from its ranks' (rank 0 first): FLOPs, devices and
    device time summed, measured energy summed (None unless every rank measured it); wall clock,
    phase times and resumes as rank 0 counted them.

    >>> one = {"hardware": "cpu", "devices": 1, "wall_seconds": 10.0, "device_seconds": 10.0,
    ...        "flops_by_phase": {"train": 2.0}, "seconds_by_phase": {"train": 8.0}, "resumes": 0}
    >>> job = combine([one, {**one, "wall_seconds": 9.0, "device_seconds": 9.0}])
    >>> job["devices"], job["device_seconds"], job["wall_seconds"], job["flops_by_phase"]
    (2, 19.0, 10.0, {'train': 4.0})
    """
    kinds = {s["hardware"] for s in ranks}
    if len(kinds) > 1:
        raise UsageError(f"the ranks run on different hardware ({', '.join(sorted(kinds))}); the cost meter prices one "
                         "kind: pass --hardware with one of them")
    flops: dict[str, float] = {}
    for s in ranks:
        for phase, value in s["flops_by_phase"].items():
            flops[phase] = flops.get(phase, 0.0) + value
    kwh = [s.get("measured_kwh") for s in ranks]
    memory = [s["memory"] for s in ranks if s.get("memory")]
    peaks = PeakMemory()
    for m in memory:  # each process's peak, the largest over the ranks (one process per device)
        peaks.load_state_dict(m)
    return {**ranks[0], "devices": sum(s["devices"] for s in ranks),
            "device_seconds": sum(s["device_seconds"] for s in ranks), "flops_by_phase": flops,
            "measured_kwh": None if None in kwh else sum(kwh), **({"memory": peaks.state_dict()} if memory else {})}


def memory_report(state: dict | None) -> dict:
    """The cost block's memory fields from a :class:`r1lite.meter.memory.PeakMemory` state (none
    for a state written before memory was kept)."""
    if not state or not state.get("by_phase"):
        return {}
    memory = PeakMemory()
    memory.load_state_dict(state)
    return memory.report()


# ---------------------------------------------------------------------------------------------
# Cost per accuracy point

STAGES = {"cold start": (("cold_start_sampling", "sft"), "eval_after_sft"), "GRPO": (("rollout", "train"), "eval_after")}
"""Each training stage: the phases it spends and the evaluation that measures it."""
BASE_EVALS = ("eval_before", "eval_base_plain")


def cost_per_point(summary: dict) -> list[dict]:
    """Each stage that ran: its phases' cost and the held-out accuracy points it gained.

    A stage is measured against the evaluation before it: the cold start against the base's best
    evaluation (its R1-format or best plain prompt), GRPO against the cold start's evaluation
    (else the base's best). Points are those of the shown, one-decimal percentages.
    ``usd_per_point`` is "n/a" when the gain is not positive. Evaluations and setup belong to no
    stage.

    >>> cost = {"seconds_by_phase": {"rollout": 1800, "train": 1800}, "devices": 1, "usd_per_hour_per_device": 2.0}
    >>> cost_per_point({"eval_before": {"pass@1": 0.1}, "eval_after": {"pass@1": 0.35}, "cost": cost})
    [{'stage': 'GRPO', 'phases': ['rollout', 'train'], 'seconds': 3600.0, 'usd': 2.0, 'from': 'eval_before', 'to': 'eval_after', 'points': 25.0, 'usd_per_point': 0.08}]
    """
    cost = summary["cost"]
    base = [k for k in BASE_EVALS if summary.get(k, {}).get("pass@1") is not None]
    before = max(base, key=lambda k: summary[k]["pass@1"]) if base else None
    rows = []
    for stage, (phases, after) in STAGES.items():
        if summary.get(after, {}).get("pass@1") is None or before is None:
            continue
        seconds = float(sum(cost["seconds_by_phase"].get(p, 0.0) for p in phases))
        if seconds:
            usd = seconds * cost["devices"] * cost["usd_per_hour_per_device"] / 3600
            points = round(round(100 * summary[after]["pass@1"], 1) - round(100 * summary[before]["pass@1"], 1), 1)
            rows.append({"stage": stage, "phases": list(phases), "seconds": seconds, "usd": usd, "from": before,
                         "to": after, "points": points, "usd_per_point": usd / points if points > 0 else "n/a"})
        before = after
    return rows


# ---------------------------------------------------------------------------------------------
# Formatting


def human_flops(flops: float) -> str:
    """FLOPs with an SI prefix, 2-3 significant digits.

    >>> human_flops(1.23e15), human_flops(950), human_flops(0)
    ('1.23 PFLOP', '950 FLOP', '0 FLOP')
    """
    prefixes = ["", "k", "M", "G", "T", "P", "E", "Z", "Y"]
    exponent = 0 if flops < 1000 else min(int(math.log10(flops) // 3), len(prefixes) - 1)
    return f"{flops / 1000 ** exponent:.3g} {prefixes[exponent]}FLOP"


def short_number(x: float) -> str:
    """Two significant digits below 10, whole numbers with thousands separators above.

    >>> short_number(0.05), short_number(0.00153), short_number(3.46), short_number(2_788_000), short_number(0)
    ('0.05', '0.0015', '3.5', '2,788,000', '0')
    """
    if x == 0 or x < 1e-4:
        return f"{x:.2g}"
    if x >= 10:
        return f"{x:,.0f}"
    decimals = max(0, 1 - math.floor(math.log10(x)))
    text = f"{x:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def human_seconds(seconds: float) -> str:
    """A duration in the largest unit that keeps the number readable.

    >>> human_seconds(42), human_seconds(210), human_seconds(7560), human_seconds(3 * 86400)
    ('42 s', '3.5 min', '2.1 h', '3 days')
    """
    for unit, size, above in (("days", 86400, 2 * 86400), ("h", 3600, 2 * 3600), ("min", 60, 100)):
        if seconds >= above:
            return f"{short_number(seconds / size)} {unit}"
    return f"{short_number(seconds)} s"


def usd(amount: float) -> str:
    """Dollars: whole dollars from $100, cents from $1, two significant digits below.

    >>> usd(5_576_000), usd(12.345), usd(0.5), usd(0.00421), usd(0.004), usd(0)
    ('$5,576,000', '$12.35', '$0.50', '$0.0042', '$0.004', '$0')
    """
    if amount >= 1:
        return f"${amount:,.0f}" if amount >= 100 else f"${amount:.2f}"
    text = short_number(amount)
    return f"${text}0" if re.fullmatch(r"0\.\d", text) else f"${text}"  # $0.5 -> $0.50


def per_point(row: dict) -> str:
    """A :func:`cost_per_point` row's figure for tables: dollars per point, or n/a.

    >>> per_point({"usd_per_point": 0.0021}), per_point({"usd_per_point": "n/a"})
    ('$0.0021', 'n/a')
    """
    return "n/a" if row["usd_per_point"] == "n/a" else usd(row["usd_per_point"])


def format_cost(report: dict) -> str:
    """The one-line cost summary printed at the end of a run (or of ``r1lite cost``).

    >>> from r1lite.meter.hardware import HARDWARE
    >>> clock = iter([0.0, 180.0]).__next__
    >>> meter = CostMeter(HARDWARE["cpu"], clock=clock)
    >>> meter.add_flops("train", 1.2e15)
    >>> print(format_cost(meter.report()))  # doctest: +ELLIPSIS
    cost: 1.2 PFLOP, 0.05 device-hours (cpu ×1, 3 min wall), 0.0015 kWh (power x time), $0.004 at $0.08/h — excludes ...
    """
    prefix = "estimated cost" if report["estimated"] else "cost"
    excludes = "; ".join(item.split(" (")[0] for item in report["leaves_out"])  # details in the report
    energy = report["energy_source"].split(":")[0]  # "measured" or "power x time"
    return (
        f"{prefix}: {human_flops(report['flops']['total'])}, {short_number(report['device_hours'])} device-hours "
        f"({report['hardware']} ×{report['devices']}, {human_seconds(report['wall_seconds'])} wall), "
        f"{short_number(report['kwh'])} kWh ({energy}), {usd(report['usd'])} at {usd(report['usd_per_hour_per_device'])}/h"
        f" — excludes {excludes}"
    )


TEACHER_PHASES = ("teacher_sampling", "teacher_scoring")
"""Cost-meter phases where a local teacher computes (distillation's sampling, on-policy scoring)."""


def teacher_cost(cost: dict, cold_start: dict, on_policy_teacher: str) -> dict | None:
    """The cost block's ``teacher`` entry, apart from the student's share: FLOPs a local teacher
    computed on this device (sampling traces, scoring tokens), and an endpoint teacher's tokens and
    price. None when the run had no teacher."""
    by_phase = cost["flops"]["by_phase"]
    flops = {p: by_phase[p] for p in TEACHER_PHASES if p in by_phase}
    distilled = cold_start.get("teacher")
    if not flops and distilled is None:
        return None
    return {"flops": sum(flops.values()), "flops_by_phase": flops, "student_flops": cost["flops"]["total"] - sum(flops.values()),
            "seconds": sum(cost["seconds_by_phase"].get(p, 0.0) for p in TEACHER_PHASES),
            "cold_start_teacher": distilled, "on_policy_teacher": on_policy_teacher or None,
            "usd": distilled["usd"] if distilled else None,
            "note": "a local teacher's FLOPs and time are in the run's totals too (same device); an endpoint teacher's "
                    "price is usd, from its tokens at --teacher-usd-per-mtok"}
