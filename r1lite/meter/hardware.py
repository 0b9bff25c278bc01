"""The hardware table: each device kind's power, rental price and speed, with where the figures come from.

A run is priced from one row of :data:`HARDWARE` (``--hardware``, or ``auto``: the device the run
uses), with ``--watts`` and ``--usd-per-hour`` overriding the row. Names are case-insensitive
(``h100`` is ``H100``); a wrong one is an error that lists the known ones.

Speeds serve the datasheet estimate (:mod:`r1lite.cost.estimate`): ``peak_flops`` is the datasheet's
dense bf16 figure, and the throughputs an estimate assumes are a stated fraction of it (the
utilisation, ``train_flops_per_s / peak_flops``). A measured run's cost uses wall time alone, so a
wrong throughput only moves an estimate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from r1lite.errors import UsageError


@dataclass(frozen=True)
class Hardware:
    """One kind of device: its power, its rental price and how fast it is, with where that comes from."""

    name: str
    """Short name used by ``--hardware`` and in reports (``cpu``, ``H100``, …)."""
    watts: float
    """Average power draw of one device while busy, in watts (``--watts`` overrides)."""
    usd_per_hour: float
    """Rental price of one device for one hour, in US dollars (``--usd-per-hour`` overrides)."""
    peak_flops: float
    """Peak dense bf16 throughput of one device, FLOP/s (the datasheet number; used for MFU)."""
    train_flops_per_s: float
    """FLOP/s one device achieves on whole-sequence passes (training, prompt prefill, scoring)."""
    decode_flops_per_s: float
    """FLOP/s one device achieves sampling one token at a time: bound by memory and kernel
    launches, far below training."""
    decode_layer_seconds: float
    """Least time one decode step spends per layer however small the batch (kernel launches,
    framework overhead): the datasheet estimate's floor for decoding small models on big devices."""
    source: str
    """Where the figures come from, in a few words."""

    @property
    def train_utilization(self) -> float:
        """The fraction of peak the datasheet estimate assumes for whole-sequence passes."""
        return self.train_flops_per_s / self.peak_flops

    @property
    def decode_utilization(self) -> float:
        """The fraction of peak the datasheet estimate assumes for decoding."""
        return self.decode_flops_per_s / self.peak_flops


GPU_TRAIN_MFU = 0.25
"""Fraction of peak assumed for GPU training: 0.3-0.5 is good for billion-parameter models, small
models (135M) reach much less. Replace it with your run's ``achieved_flops_per_s`` (``--mfu``)."""
GPU_DECODE_MFU = 0.01
"""Fraction of peak assumed for GPU decoding: HF ``generate`` on a small model stays well under 1%,
vLLM with large batches reaches a few percent."""
GPU_DECODE_LAYER_SECONDS = 0.5e-3
"""HF ``generate`` in eager mode spends ~0.5 ms per layer per token on a GPU (~15 ms a token for a
30-layer model); vLLM with CUDA graphs is several times faster."""

H100_SXM_PEAK = 989e12
"""Dense bf16 FLOP/s of an H100 SXM (NVIDIA datasheet: 1,979 TFLOP/s is the figure with 2:4
sparsity). The H800 is the same chip with less interconnect bandwidth."""


def _gpu(name: str, watts: float, usd_per_hour: float, peak_flops: float, source: str) -> Hardware:
    return Hardware(name, watts, usd_per_hour, peak_flops, GPU_TRAIN_MFU * peak_flops,
                    GPU_DECODE_MFU * peak_flops, GPU_DECODE_LAYER_SECONDS, source)


_GPU_PRICE = "rounded 2025 on-demand GPU-cloud price (hyperscalers charge more)"

HARDWARE: dict[str, Hardware] = {
    h.name: h
    for h in [
        Hardware(
            "cpu", watts=30.0, usd_per_hour=0.08, peak_flops=0.77e12,
            # SmolLM2-135M on this project's 2-core AVX-512 BF16 machine: a bf16 train step over
            # 8x256 tokens takes ~4.6 s (1.7 TFLOP -> ~0.37 TFLOP/s); sampling 16 sequences at once
            # runs at 160-250 tokens/s (x 2 x 134.5M FLOP per token -> 0.04-0.07 TFLOP/s).
            train_flops_per_s=0.35e12, decode_flops_per_s=0.05e12, decode_layer_seconds=0.5e-3,
            source="2 busy cores at ~15 W each (laptop/VM; more cores: --watts 15 per core); "
            "priced like a 2-vCPU cloud VM (~$0.07-0.09/h); peak = 2 cores x 3 GHz x 128 bf16 FLOP/cycle; "
            "throughput measured on a 2-core AVX-512 BF16 laptop CPU",
        ),
        Hardware(
            "cpu-fp32", watts=30.0, usd_per_hour=0.08, peak_flops=0.19e12,
            # The same 2 cores with no fast bf16 (AVX2 only), running fp32: the demo measured
            # ~0.08 TFLOP/s in train steps and ~0.05 TFLOP/s sampling 64 rows at once.
            train_flops_per_s=0.08e12, decode_flops_per_s=0.05e12, decode_layer_seconds=0.5e-3,
            source="2 busy cores at ~15 W each; priced like a 2-vCPU cloud VM (~$0.07-0.09/h); peak = 2 cores "
            "x 3 GHz x 32 fp32 FLOP/cycle (AVX2: 2 FMA x 8 lanes); throughput measured on a 2-core AVX2 EPYC",
        ),
        _gpu("H800", 700, 2.00, H100_SXM_PEAK, "700 W SXM board power; $2/h is the rental price DeepSeek-V3's "
             "report assumed; peak as H100 SXM (dense bf16)"),
        _gpu("H100", 700, 2.50, H100_SXM_PEAK, f"700 W SXM board power; {_GPU_PRICE}"),
        _gpu("H200", 700, 3.50, H100_SXM_PEAK, f"700 W SXM board power; {_GPU_PRICE}"),
        _gpu("A100", 400, 1.50, 312e12, f"400 W SXM board power; {_GPU_PRICE}"),
        _gpu("L4", 72, 0.70, 121e12, f"72 W board power; {_GPU_PRICE}"),
        _gpu("RTX4090", 450, 0.40, 165e12, "450 W board power; rounded 2025 community-cloud price"),
    ]
}
"""The price and power table, one row per hardware kind. GPU watts are board power limits (TDP), an
upper bound for busy draw; GPU throughputs are ``GPU_TRAIN_MFU`` and ``GPU_DECODE_MFU`` of peak."""


def find_hardware(name: str, flag: str = "--hardware") -> Hardware:
    """The table row named ``name``, in any case; an unknown name lists the known ones.

    >>> find_hardware("h100").name, find_hardware("CPU").name
    ('H100', 'cpu')
    >>> find_hardware("TPU")
    Traceback (most recent call last):
    ...
    r1lite.errors.UsageError: --hardware TPU: unknown hardware; use auto or one of cpu, cpu-fp32, H800, H100, H200, A100, L4, RTX4090 (or the closest one with --watts and --usd-per-hour)
    """
    for row in HARDWARE.values():
        if row.name.lower() == name.lower():
            return row
    raise UsageError(f"{flag} {name}: unknown hardware; use auto or one of {', '.join(HARDWARE)} "
                     "(or the closest one with --watts and --usd-per-hour)")


def hardware_kind(device_name: str) -> str:
    """The table row for a device: ``cpu`` (bf16), ``cpu-fp32``, or the kind a CUDA device name
    names as a whole word.

    >>> hardware_kind("NVIDIA H100 80GB HBM3"), hardware_kind("NVIDIA GeForce RTX 4090"), hardware_kind("cpu")
    ('H100', 'RTX4090', 'cpu')
    """
    if device_name in ("cpu", "cpu-fp32"):
        return device_name
    words = re.findall(r"[A-Z0-9]+", device_name.upper())  # "L40S" must not read as "L4"
    words += [a + b for a, b in zip(words, words[1:])]  # "RTX 4090" -> "RTX4090"
    for name in HARDWARE:
        if not name.startswith("cpu") and name.upper() in words:
            return name
    raise UsageError(
        f"--hardware auto: no price or power figure for '{device_name}'; pass --hardware with the "
        f"closest of {', '.join(HARDWARE)} and set --watts and --usd-per-hour"
    )


@dataclass
class CostConfig:
    """How a run is priced. Keys mirror the ``--hardware``, ``--devices``, ``--watts``, … flags."""

    hardware: str = "auto"
    """A row of :data:`HARDWARE` (any case), or ``auto``: the kind of the device the run uses."""
    devices: int = 1
    """Number of devices the run holds (GPUs, or whole CPUs for ``cpu``)."""
    watts: float | None = None
    """Busy power per device in watts; None = the table's figure."""
    usd_per_hour: float | None = None
    """Rental price per device-hour in US dollars; None = the table's figure. 0 is allowed (own hardware)."""
    pue: float = 1.0
    """Power usage effectiveness: facility energy / device energy (cooling etc.); 1.0 = not counted."""
    train_flops_per_s: float | None = None
    """Whole-sequence throughput per device for estimates, FLOP/s; None = the table's figure."""
    decode_flops_per_s: float | None = None
    """Decoding throughput per device for estimates, FLOP/s; None = the table's figure."""

    def __post_init__(self) -> None:
        if self.hardware != "auto":
            self.hardware = find_hardware(self.hardware).name
        if self.devices < 1:
            raise UsageError(f"--devices {self.devices}: a run holds at least 1 device")
        check_price(self.usd_per_hour, self.watts)
        if self.pue < 1.0:
            raise UsageError(f"--pue {self.pue}: PUE is at least 1.0 (1.0 = no facility overhead)")
        for flag, value in (("--train-flops-per-s", self.train_flops_per_s),
                            ("--decode-flops-per-s", self.decode_flops_per_s)):
            if value is not None and value <= 0:
                raise UsageError(f"{flag} {value}: must be positive")

    def resolve(self, device_name: str) -> Hardware:
        """The table row for this run with the overrides applied.

        ``device_name`` is ``cpu``, ``cpu-fp32`` or ``torch.cuda.get_device_name()``; it is read
        only for ``auto``.

        >>> CostConfig(hardware="H800", usd_per_hour=1.5).resolve("cpu").usd_per_hour
        1.5
        """
        name = hardware_kind(device_name) if self.hardware == "auto" else self.hardware
        hw = HARDWARE[name]
        overrides = {
            key: value
            for key, value in (("watts", self.watts), ("usd_per_hour", self.usd_per_hour),
                               ("train_flops_per_s", self.train_flops_per_s),
                               ("decode_flops_per_s", self.decode_flops_per_s))
            if value is not None
        }
        if not overrides:
            return hw
        note = ", ".join(f"{k}={v:g}" for k, v in overrides.items())
        return replace(hw, **overrides, source=f"{hw.source}; overridden: {note}")


def check_price(usd_per_hour: float | None, watts: float | None) -> None:
    """Reject a negative price or a power that is not positive (None = the table's figure)."""
    if usd_per_hour is not None and usd_per_hour < 0:
        raise UsageError(f"--usd-per-hour {usd_per_hour:g}: a price cannot be negative (0 = own hardware)")
    if watts is not None and watts <= 0:
        raise UsageError(f"--watts {watts:g}: must be positive")
