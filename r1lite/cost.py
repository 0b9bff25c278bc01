"""The cost meter: FLOPs, device-hours, energy and money for every run, measured or estimated.

One arithmetic, two uses: :class:`CostMeter` runs alongside a run (code adds FLOPs by phase and
times phases with ``with meter.phase("rollout"):``), and :func:`estimate` predicts the same report
before a run starts from the model's shape, a :class:`RunPlan` and the hardware's throughputs.

Money is device-hours × rental price. Energy is device-hours × busy power × PUE. Both charge every
wall-clock second of the run, in a phase or not, at the busy figure: a rented device costs the same
while it waits on Python, and power is not measured. What is *not* counted is listed in every
report under ``leaves_out``.

FLOPs per token of a forward pass::

    2·N                               each matmul weight does one multiply-add per token
  + 4·n_layers·context·d_model        attention scores QKᵀ and the weighted sum AV: each is
                                      context·d_model multiply-adds per layer (2 FLOPs each)

``N`` is the number of *matmul parameters* (:func:`matmul_params`): all but the input embedding
table (a lookup), with the LM head counted once even when tied to it. Kaplan et al.'s 6N rule uses
non-embedding parameters; for small models with big vocabularies that undercounts badly
(SmolLM2-135M's LM head is 28M of its 134.5M parameters, 21% of its matmul work). ``context`` is the
average number of positions a token attends to: about T/2 for a causal pass over T tokens (flash
attention skips the masked half). Backward ≈ 2× forward, so training is 3× forward: 6N plus
attention. Not counted: norms, softmax, activations, rotary embeddings and the optimizer step (a few
percent), and LoRA's saving (frozen weights need no weight gradients: ~2× forward, not 3×).
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

from r1lite.errors import UsageError

# ---------------------------------------------------------------------------------------------
# The price and power table


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
    launches, far below training. Both throughputs are :func:`estimate`'s defaults."""
    decode_layer_seconds: float
    """Least time one decode step spends per layer however small the batch (kernel launches,
    framework overhead): :func:`estimate`'s floor for decoding small models on big devices."""
    source: str
    """Where the figures come from, in a few words."""


_GPU_TRAIN_MFU = 0.25
"""Fraction of peak assumed for GPU training: 0.3-0.5 is good for billion-parameter models, small
models (135M) reach much less. Replace it with your run's ``achieved_flops_per_s``."""
_GPU_DECODE_MFU = 0.01
"""Fraction of peak assumed for GPU decoding: HF ``generate`` on a small model stays well under 1%,
vLLM with large batches reaches a few percent."""
_GPU_DECODE_LAYER_SECONDS = 0.5e-3
"""HF ``generate`` in eager mode spends ~0.5 ms per layer per token on a GPU (~15 ms a token for a
30-layer model); vLLM with CUDA graphs is several times faster."""


def _gpu(name: str, watts: float, usd_per_hour: float, peak_flops: float, source: str) -> Hardware:
    return Hardware(name, watts, usd_per_hour, peak_flops, _GPU_TRAIN_MFU * peak_flops,
                    _GPU_DECODE_MFU * peak_flops, _GPU_DECODE_LAYER_SECONDS, source)


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
            "priced like a 2-vCPU cloud VM (~$0.07-0.09/h); peak = 2 cores x 3 GHz x 128 bf16 FLOP/cycle; throughput measured "
            "on a 2-core AVX-512 BF16 laptop CPU",
        ),
        Hardware(
            "cpu-fp32", watts=30.0, usd_per_hour=0.08, peak_flops=0.19e12,
            # The same 2 cores with no fast bf16 (AVX2 only), running fp32: the demo measured
            # ~0.08 TFLOP/s in train steps and ~0.05 TFLOP/s sampling 64 rows at once.
            train_flops_per_s=0.08e12, decode_flops_per_s=0.05e12, decode_layer_seconds=0.5e-3,
            source="2 busy cores at ~15 W each; priced like a 2-vCPU cloud VM (~$0.07-0.09/h); peak = 2 cores "
            "x 3 GHz x 32 fp32 FLOP/cycle (AVX2: 2 FMA x 8 lanes); throughput measured on a 2-core AVX2 EPYC",
        ),
        _gpu("H800", 700, 2.00, 989e12, "700 W SXM board power; $2/h is the rental price DeepSeek-V3's "
             "report assumed; peak as H100 SXM"),
        _gpu("H100", 700, 2.50, 989e12, f"700 W SXM board power; {_GPU_PRICE}"),
        _gpu("H200", 700, 3.50, 989e12, f"700 W SXM board power; {_GPU_PRICE}"),
        _gpu("A100", 400, 1.50, 312e12, f"400 W SXM board power; {_GPU_PRICE}"),
        _gpu("L4", 72, 0.70, 121e12, f"72 W board power; {_GPU_PRICE}"),
        _gpu("RTX4090", 450, 0.40, 165e12, "450 W board power; rounded 2025 community-cloud price"),
    ]
}
"""The price and power table, one row per hardware kind. GPU watts are board power limits (TDP), an
upper bound for busy draw; GPU throughputs are ``_GPU_TRAIN_MFU`` and ``_GPU_DECODE_MFU`` of peak.
A wrong throughput only moves an estimate; a measured run's cost uses wall time alone."""


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
    """A row of :data:`HARDWARE`, or ``auto``: the kind of the device the run uses."""
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
        if self.hardware != "auto" and self.hardware not in HARDWARE:
            raise UsageError(f"--hardware {self.hardware}: use auto or one of {', '.join(HARDWARE)}")
        if self.devices < 1:
            raise UsageError(f"--devices {self.devices}: a run holds at least 1 device")
        if self.usd_per_hour is not None and self.usd_per_hour < 0:
            raise UsageError(f"--usd-per-hour {self.usd_per_hour}: a price cannot be negative (0 = own hardware)")
        if self.pue < 1.0:
            raise UsageError(f"--pue {self.pue}: PUE is at least 1.0 (1.0 = no facility overhead)")
        for flag, value in (("--watts", self.watts), ("--train-flops-per-s", self.train_flops_per_s),
                            ("--decode-flops-per-s", self.decode_flops_per_s)):
            if value is not None and value <= 0:
                raise UsageError(f"{flag} {value}: must be positive")

    def resolve(self, device_name: str) -> Hardware:
        """The table row for this run with the overrides applied.

        ``device_name`` is ``cpu`` or ``torch.cuda.get_device_name()``; it is read only for ``auto``.

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


# ---------------------------------------------------------------------------------------------
# Reference points


DEEPSEEK_V3_GPU_HOURS = {"pre-training": 2_664_000, "context extension": 119_000, "post-training": 5_000}
"""H800 GPU-hours of DeepSeek-V3's final training run, quoted from the DeepSeek-V3 Technical Report
(arXiv:2412.19437, Table 1): 2.788M in all, $5.576M at $2 per GPU-hour. The report itself says this
excludes prior research and ablation experiments."""

DEEPSEEK_R1_GPU_HOURS = {"R1-Zero RL": 101_000, "SFT data creation": 5_000, "R1 training": 41_000}
"""H800 GPU-hours of DeepSeek-R1 on top of V3-Base, quoted from the R1 paper in Nature (Guo et al.,
2025, supplementary training-cost table): 147K in all, $294K at $2 per GPU-hour ($202K + $10K + $82K).
The "about $294K for R1's RL" figure is this total: R1-Zero's RL, making the cold-start SFT data, and
R1's SFT+RL; V3-Base itself is the $5.576M above."""


def price(device_hours: float, hardware: Hardware, usd_per_hour: float | None = None) -> float:
    """Dollars for ``device_hours`` at the table's rental price, or at ``usd_per_hour`` when given.

    DeepSeek-V3's final run, and R1's training cost, both at the $2/h H800 price they quoted:

    >>> h800 = HARDWARE["H800"]
    >>> sum(DEEPSEEK_V3_GPU_HOURS.values()), price(sum(DEEPSEEK_V3_GPU_HOURS.values()), h800)
    (2788000, 5576000.0)
    >>> sum(DEEPSEEK_R1_GPU_HOURS.values()), price(sum(DEEPSEEK_R1_GPU_HOURS.values()), h800)
    (147000, 294000.0)
    >>> price(10, HARDWARE["H100"], usd_per_hour=0)
    0.0
    """
    rate = hardware.usd_per_hour if usd_per_hour is None else usd_per_hour
    return float(device_hours * rate)


# ---------------------------------------------------------------------------------------------
# FLOP counting


def matmul_params(total_params: int, vocab_size: int, d_model: int, tied_embeddings: bool) -> int:
    """N for the FLOP formulas: all parameters but the input embedding lookup, the LM head counted once.

    SmolLM2-135M (tied embeddings, 49152 x 576 vocabulary table) does matmuls with all of its weights:

    >>> matmul_params(134_515_008, 49_152, 576, tied_embeddings=True)
    134515008
    >>> matmul_params(134_515_008 + 49_152 * 576, 49_152, 576, tied_embeddings=False)
    134515008
    """
    return total_params if tied_embeddings else total_params - vocab_size * d_model


def forward_flops(n_params: int, tokens: float, n_layers: int, d_model: int, context: float) -> float:
    """FLOPs of a forward pass over ``tokens`` tokens that each attend to ``context`` positions on average.

    ``2·N·tokens`` for the matmul weights plus ``4·n_layers·context·d_model·tokens`` for attention
    (QKᵀ and AV). ``n_params`` is :func:`matmul_params`.

    >>> forward_flops(n_params=100, tokens=10, n_layers=2, d_model=4, context=8)
    4560.0
    """
    return float(2 * n_params * tokens + 4 * n_layers * context * d_model * tokens)


def train_flops(n_params: int, tokens: float, n_layers: int, d_model: int, context: float) -> float:
    """FLOPs of a forward and backward pass: 3× :func:`forward_flops` (the 6N rule plus attention).

    >>> train_flops(100, 10, 2, 4, 8)
    13680.0
    """
    return 3 * forward_flops(n_params, tokens, n_layers, d_model, context)


def generate_flops(
    n_params: int, n_layers: int, d_model: int, prompt_tokens: float, completion_tokens: float,
    sequences: int = 1,
) -> float:
    """FLOPs of sampling ``completion_tokens`` after ``prompt_tokens``, for each of ``sequences``.

    With a KV cache: a prefill over the prompt (each prompt token attends to ``prompt/2`` positions
    on average) and one forward per sampled token (attending to ``prompt + completion/2`` on
    average). Token counts may be means. A prompt shared by a group of samples is counted once per
    sample, as a batched ``generate`` does it.

    >>> generate_flops(100, 2, 4, prompt_tokens=4, completion_tokens=6)  # prefill 1056 + decode 2544
    3600.0
    """
    prefill = forward_flops(n_params, prompt_tokens, n_layers, d_model, prompt_tokens / 2)
    decode = forward_flops(n_params, completion_tokens, n_layers, d_model, prompt_tokens + completion_tokens / 2)
    return sequences * (prefill + decode)


# ---------------------------------------------------------------------------------------------
# The report dict, shared by the meter and the estimate


LEAVES_OUT = [
    "failed runs, ablations and hyperparameter searches", "data preparation and teacher API calls",
    "idle time between runs", "staff time", "buying the hardware (the price is a rental rate)",
    "the rest of the machine's power (host CPU, memory, disks, network)",
]
"""What no cost report counts; :func:`cost_report` adds PUE and lost work where they apply."""


def cost_report(
    hardware: Hardware, devices: int, pue: float, wall_seconds: float,
    flops_by_phase: dict[str, float], seconds_by_phase: dict[str, float], *, estimated: bool, resumes: int = 0,
    device_seconds: float | None = None,
) -> dict:
    """The JSON-ready cost dict that :meth:`CostMeter.report` and :func:`estimate` both return.

    ``device_seconds``: the devices' busy time summed, when it is not ``wall_seconds x devices``
    (a run resumed with another number of processes)."""
    device_seconds = wall_seconds * devices if device_seconds is None else device_seconds
    device_hours = device_seconds / 3600
    total = sum(flops_by_phase.values())
    achieved = total / wall_seconds if wall_seconds > 0 else 0.0
    return {
        "estimated": estimated,
        "hardware": hardware.name,
        "devices": devices,
        "watts_per_device": hardware.watts,
        "usd_per_hour_per_device": hardware.usd_per_hour,
        "pue": pue,
        "price_source": hardware.source,
        "wall_seconds": wall_seconds,
        "device_hours": device_hours,
        "kwh": device_hours * hardware.watts * pue / 1000,
        "usd": price(device_hours, hardware),
        "flops": {"total": total, "by_phase": dict(flops_by_phase)},
        "seconds_by_phase": dict(seconds_by_phase),
        "achieved_flops_per_s": achieved,
        "mfu": total / (hardware.peak_flops * device_seconds) if device_seconds > 0 else 0.0,
        "leaves_out": LEAVES_OUT
        + (["cooling and facility overhead (PUE 1.0; set --pue)"] if pue == 1.0 else [])
        + ([f"work lost between the last checkpoint and each of {resumes} interruption(s)"] if resumes else []),
    }


# ---------------------------------------------------------------------------------------------
# The meter


class CostMeter:
    """Counts a run's FLOPs and wall time by phase; :meth:`report` prices them.

    Wall time runs from construction (model loading and setup included). Phases do not nest: time
    outside any phase still counts in ``wall_seconds``, just not in ``seconds_by_phase``. Under
    ``torchrun`` every rank meters its own device; :func:`combine` sums their FLOPs and device time
    into the job's (rank 0's report and checkpoints hold that). ``clock`` is injectable so tests
    need not sleep.
    """

    def __init__(self, hardware: Hardware, devices: int = 1, pue: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.hardware = hardware
        self.devices = devices
        self.pue = pue
        self.flops_by_phase: dict[str, float] = {}
        self.seconds_by_phase: dict[str, float] = {}
        self.resumes = 0
        self._clock = clock
        self._start = clock()
        self._earlier_seconds = 0.0  # wall time of the run before it was resumed
        self._earlier_device_seconds = 0.0  # and its devices' time (the number of devices may change on resume)
        self._open_phase: str | None = None

    def add_flops(self, phase: str, flops: float) -> None:
        if flops < 0:
            raise ValueError(f"add_flops({phase!r}, {flops}): FLOPs cannot be negative")
        self.flops_by_phase[phase] = self.flops_by_phase.get(phase, 0.0) + float(flops)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as phase ``name`` (seconds add up over repeated blocks)."""
        if self._open_phase is not None:
            raise RuntimeError(f"phase {name!r} started inside phase {self._open_phase!r}; phases do not nest")
        self._open_phase = name
        start = self._clock()
        try:
            yield
        finally:
            self.seconds_by_phase[name] = self.seconds_by_phase.get(name, 0.0) + self._clock() - start
            self._open_phase = None

    def wall_seconds(self) -> float:
        return self._earlier_seconds + self._clock() - self._start

    def report(self, ranks: list[dict] | None = None) -> dict:
        """The priced report of this meter, or of a job: ``ranks`` = every rank's
        :meth:`state_dict`, this meter's first (:func:`combine`)."""
        s = combine(ranks) if ranks is not None else self.state_dict()
        return cost_report(self.hardware, s["devices"], self.pue, s["wall_seconds"], s["flops_by_phase"],
                           s["seconds_by_phase"], estimated=False, resumes=s["resumes"], device_seconds=s["device_seconds"])

    def state_dict(self) -> dict:
        """What a checkpoint keeps so a resumed run counts on from here."""
        here = self._clock() - self._start  # this process's time, read once
        return {"hardware": self.hardware.name, "devices": self.devices, "wall_seconds": self._earlier_seconds + here,
                "device_seconds": self._earlier_device_seconds + here * self.devices, "flops_by_phase": dict(self.flops_by_phase),
                "seconds_by_phase": dict(self.seconds_by_phase), "resumes": self.resumes}

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
        self._earlier_device_seconds = state["device_seconds"]


def combine(ranks: list[dict]) -> dict:
    """One :meth:`CostMeter.state_dict` for a job from its ranks' (rank 0 first): FLOPs, devices and
    device time summed; wall clock, phase times and resumes as rank 0 counted them.

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
    return {**ranks[0], "devices": sum(s["devices"] for s in ranks),
            "device_seconds": sum(s["device_seconds"] for s in ranks), "flops_by_phase": flops}


# ---------------------------------------------------------------------------------------------
# Estimates


@dataclass
class RunPlan:
    """What a run will do, for :func:`estimate`. Token counts are per sequence and may be means."""

    n_params: int
    """Matmul parameters N (:func:`matmul_params`)."""
    n_layers: int
    """Transformer layers."""
    d_model: int
    """Hidden size (the attention width n_heads x head_dim where that differs)."""
    steps: int
    """GRPO steps; 0 = no RL (an SFT- or eval-only plan)."""
    prompts_per_step: int = 1
    """Prompts sampled per step."""
    samples_per_prompt: int = 1
    """Completions sampled per prompt (the group size G)."""
    prompt_tokens: float = 0
    """Mean prompt length in tokens (chat template included)."""
    completion_tokens: float = 0
    """Mean completion length in tokens; the generation limit gives an upper bound."""
    inner_updates: int = 1
    """Forward+backward passes over each step's rollouts (GRPO's μ)."""
    scoring_passes: int = 0
    """No-grad forward passes over each step's rollouts besides training: 1 for the reference model
    when KL is on, 1 for old-policy log-probs when ``inner_updates`` > 1."""
    eval_items: int = 0
    """Items per evaluation."""
    eval_samples: int = 1
    """Completions sampled per eval item (k of pass@k / maj@k)."""
    evals: int = 0
    """How many evaluations the run does (before and after = 2)."""
    sft_tokens: int = 0
    """Tokens trained on by supervised fine-tuning (examples x epochs x tokens per example)."""

    def __post_init__(self) -> None:
        for key, value in vars(self).items():
            least = 1 if key in ("n_params", "n_layers", "d_model", "prompts_per_step", "samples_per_prompt",
                                 "inner_updates", "eval_samples") else 0
            if value < least:
                raise UsageError(f"--{key.replace('_', '-')} {value}: must be at least {least}")


@dataclass(frozen=True)
class PhaseWork:
    """The work one phase of a plan does, as :func:`estimate` times it."""

    dense_flops: float
    """FLOPs of whole-sequence passes: training, prompt prefill, scoring."""
    decode_flops: float = 0.0
    """FLOPs of token-by-token decoding."""
    decode_steps: float = 0.0
    """Sequential decode steps (one per generated token per batch): the latency floor counts these."""


def plan_work(plan: RunPlan) -> dict[str, PhaseWork]:
    """The work a plan does by phase (``rollout``, ``train``, ``eval``, ``sft``); idle phases omitted.

    A step's rollouts are sampled as one batch; evaluation runs in batches of the same size.

    >>> plan = RunPlan(n_params=100, n_layers=2, d_model=4, steps=1, prompt_tokens=4, completion_tokens=6)
    >>> plan_work(plan)["rollout"]
    PhaseWork(dense_flops=1056.0, decode_flops=2544.0, decode_steps=6.0)
    """
    n, layers, width = plan.n_params, plan.n_layers, plan.d_model
    prompt, completion = plan.prompt_tokens, plan.completion_tokens
    seq_len = prompt + completion
    batch = plan.prompts_per_step * plan.samples_per_prompt

    def sampling(runs: int, sequences: int) -> PhaseWork:
        prefill = sequences * forward_flops(n, prompt, layers, width, prompt / 2)
        decode = generate_flops(n, layers, width, prompt, completion, sequences) - prefill
        return PhaseWork(runs * prefill, runs * decode, float(runs * math.ceil(sequences / batch) * completion))

    step_tokens = batch * seq_len  # training passes cover the prompt too; the loss only the completion
    train_step = (plan.inner_updates * train_flops(n, step_tokens, layers, width, seq_len / 2)
                  + plan.scoring_passes * forward_flops(n, step_tokens, layers, width, seq_len / 2))
    by_phase = {
        "rollout": sampling(plan.steps, batch),
        "train": PhaseWork(plan.steps * train_step),
        "eval": sampling(plan.evals, plan.eval_items * plan.eval_samples),
        "sft": PhaseWork(train_flops(n, plan.sft_tokens, layers, width, seq_len / 2)),
    }
    return {phase: work for phase, work in by_phase.items() if work.dense_flops + work.decode_flops > 0}


def estimate(plan: RunPlan, hardware: Hardware, devices: int = 1, pue: float = 1.0) -> dict:
    """Predict a run's cost report before it starts (``"estimated": True``).

    Whole-sequence passes run at ``hardware.train_flops_per_s`` and decoding at
    ``hardware.decode_flops_per_s``, per device, scaling linearly with ``devices``; decoding takes at
    least ``decode_steps x n_layers x hardware.decode_layer_seconds``, however many devices. Setup
    time (loading the model) is not predicted.

    >>> plan = RunPlan(n_params=134_515_008, n_layers=30, d_model=576, steps=100, prompts_per_step=2,
    ...                samples_per_prompt=8, prompt_tokens=100, completion_tokens=64, evals=2, eval_items=48)
    >>> r = estimate(plan, HARDWARE["cpu"])
    >>> r["estimated"], sorted(r["flops"]["by_phase"]), round(r["wall_seconds"] / 60)
    (True, ['eval', 'rollout', 'train'], 23)
    >>> round(estimate(plan, HARDWARE["H100"], devices=8)["wall_seconds"])  # decoding latency dominates
    102
    """
    seconds_by_phase = {
        phase: work.dense_flops / (devices * hardware.train_flops_per_s)
        + max(work.decode_flops / (devices * hardware.decode_flops_per_s),
              work.decode_steps * plan.n_layers * hardware.decode_layer_seconds)
        for phase, work in plan_work(plan).items()
    }
    flops_by_phase = {phase: work.dense_flops + work.decode_flops for phase, work in plan_work(plan).items()}
    return cost_report(hardware, devices, pue, sum(seconds_by_phase.values()), flops_by_phase, seconds_by_phase,
                       estimated=True)


# ---------------------------------------------------------------------------------------------
# Formatting


def human_flops(flops: float) -> str:
    """FLOPs with an SI prefix, 2-3 significant digits.

    >>> human_flops(1.23e15), human_flops(950), human_flops(0)
    ('1.23 PFLOP', '950 FLOP', '0 FLOP')
    """
    prefixes = ["", "k", "M", "G", "T", "P", "E", "Z"]
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


def format_cost(report: dict) -> str:
    """The one-line cost summary printed at the end of a run (or of ``r1lite cost``).

    >>> clock = iter([0.0, 180.0]).__next__
    >>> meter = CostMeter(HARDWARE["cpu"], clock=clock)
    >>> meter.add_flops("train", 1.2e15)
    >>> print(format_cost(meter.report()))  # doctest: +ELLIPSIS
    cost: 1.2 PFLOP, 0.05 device-hours (cpu ×1, 3 min wall), 0.0015 kWh, $0.004 at $0.08/h — excludes ...
    """
    prefix = "estimated cost" if report["estimated"] else "cost"
    excludes = "; ".join(item.split(" (")[0] for item in report["leaves_out"])  # details in the report
    return (
        f"{prefix}: {human_flops(report['flops']['total'])}, {short_number(report['device_hours'])} device-hours "
        f"({report['hardware']} ×{report['devices']}, {human_seconds(report['wall_seconds'])} wall), "
        f"{short_number(report['kwh'])} kWh, {usd(report['usd'])} at {usd(report['usd_per_hour_per_device'])}/h"
        f" — excludes {excludes}"
    )
