"""Published training costs, recomputed from their inputs: ``r1lite cost --reference NAME``.

Each reference quotes its inputs (GPU-hours by stage, the price the authors assumed), multiplies
them out, cross-checks with FLOPs where the inputs allow it, and lists what the published figure
leaves out. Nothing here is measured; the sources are named.
"""

from __future__ import annotations

from dataclasses import dataclass

from r1lite.errors import UsageError
from r1lite.meter.hardware import HARDWARE
from r1lite.meter.meter import human_flops, short_number, usd

DEEPSEEK_V3_GPU_HOURS = {"pre-training": 2_664_000, "context extension": 119_000, "post-training": 5_000}
"""H800 GPU-hours of DeepSeek-V3's final training run, quoted from the DeepSeek-V3 Technical Report
(arXiv:2412.19437, Table 1): 2.788M in all, $5.576M at $2 per GPU-hour."""

DEEPSEEK_R1_GPU_HOURS = {"R1-Zero RL": 101_000, "SFT data creation": 5_000, "R1 training": 41_000}
"""H800 GPU-hours of DeepSeek-R1 on top of V3-Base, quoted from the R1 paper v2 (Guo et al., Nature
2025, supplementary Table 7): 147K in all, $294K at $2 per GPU-hour ($202K + $10K + $82K)."""

H800_USD_PER_HOUR = 2.0
"""The rental price both DeepSeek papers assumed."""


@dataclass(frozen=True)
class FlopCheck:
    """The 6·N·D training FLOPs of a stage against the hours it took: the utilisation they imply."""

    active_params: float
    """Parameters each token passes through (a mixture of experts: the activated ones)."""
    tokens: float
    """Training tokens."""
    gpus: int
    """GPUs the stage ran on."""
    gpu_hours: float
    """GPU-hours the stage took."""
    peak_flops: float
    """Peak FLOP/s of one GPU the utilisation is measured against."""
    peak_note: str
    """Which peak that is, and what else it could be."""

    @property
    def flops(self) -> float:
        return 6 * self.active_params * self.tokens

    @property
    def utilization(self) -> float:
        return self.flops / (self.gpu_hours * 3600 * self.peak_flops)

    @property
    def days(self) -> float:
        return self.gpu_hours / self.gpus / 24


@dataclass(frozen=True)
class PublishedCost:
    """One published cost: its inputs by stage, its source, the checks and what it leaves out."""

    name: str
    title: str
    gpu_hours: dict[str, float]
    source: str
    flop_check: FlopCheck | None
    leaves_out: tuple[str, ...]

    @property
    def total_hours(self) -> float:
        return float(sum(self.gpu_hours.values()))

    @property
    def usd(self) -> float:
        return self.total_hours * H800_USD_PER_HOUR


_EXCLUDED = (
    "research and ablation runs before the final run (the V3 report says so itself)",
    "data: collecting, filtering and labelling it",
    "staff",
    "the hardware itself: SemiAnalysis put DeepSeek's GPU spending above $500M; $2/h is a rental rate",
    "power and facilities beyond what a rental price includes",
)

REFERENCES = {r.name: r for r in [
    PublishedCost(
        "deepseek-v3", "DeepSeek-V3, final training run", DEEPSEEK_V3_GPU_HOURS,
        "DeepSeek-V3 Technical Report (arXiv:2412.19437), Table 1; $2 per H800 GPU-hour as the report assumes",
        FlopCheck(active_params=37e9, tokens=14.8e12, gpus=2048, gpu_hours=DEEPSEEK_V3_GPU_HOURS["pre-training"],
                  peak_flops=HARDWARE["H800"].peak_flops,
                  peak_note="the H800's dense BF16 peak, as H100 SXM; V3 ran its matmuls in FP8, whose dense "
                            "peak is twice that: against it the utilisation is half"),
        _EXCLUDED,
    ),
    PublishedCost(
        "deepseek-r1", "DeepSeek-R1, training on top of DeepSeek-V3-Base", DEEPSEEK_R1_GPU_HOURS,
        "DeepSeek-R1 paper v2 (Guo et al., Nature 2025), supplementary Table 7; $2 per H800 GPU-hour",
        None,
        ("DeepSeek-V3-Base itself: the $5.576M above (r1lite cost --reference deepseek-v3)",) + _EXCLUDED,
    ),
]}
"""The references ``--reference`` knows."""


def find_reference(name: str) -> PublishedCost:
    """The reference named ``name`` (any case); an unknown name lists the known ones."""
    if name.lower() not in REFERENCES:
        raise UsageError(f"--reference {name}: unknown; use one of {', '.join(REFERENCES)}")
    return REFERENCES[name.lower()]


def reference_lines(ref: PublishedCost) -> list[str]:
    """The arithmetic as lines of text, inputs first.

    >>> print("\\n".join(reference_lines(REFERENCES["deepseek-r1"])[:6]))
    DeepSeek-R1, training on top of DeepSeek-V3-Base: 147K H800 GPU-hours x $2 = $294K
      R1-Zero RL               101,000 H800 GPU-hours x $2 = $202,000
      SFT data creation          5,000 H800 GPU-hours x $2 = $10,000
      R1 training               41,000 H800 GPU-hours x $2 = $82,000
      total                    147,000 H800 GPU-hours x $2 = $294,000
    source: DeepSeek-R1 paper v2 (Guo et al., Nature 2025), supplementary Table 7; $2 per H800 GPU-hour
    """
    rate = usd(H800_USD_PER_HOUR).removesuffix(".00")
    lines = [f"{ref.title}: {thousands(ref.total_hours)} H800 GPU-hours x {rate} = {compact_usd(ref.usd)}"]
    for stage, hours in [*ref.gpu_hours.items(), ("total", ref.total_hours)]:
        lines.append(f"  {stage:<22}{short_number(hours):>10} H800 GPU-hours x {rate} = {usd(hours * H800_USD_PER_HOUR)}")
    lines.append(f"source: {ref.source}")
    check = ref.flop_check
    if check is not None:
        lines += [
            f"FLOP cross-check: 6 x {check.active_params / 1e9:g}B activated parameters x {check.tokens / 1e12:g}T tokens"
            f" = {check.flops:.3g} FLOP ({human_flops(check.flops)})",
            f"  on {check.gpus:,} GPUs for {short_number(check.gpu_hours)} GPU-hours ({check.days:.0f} days):"
            f" {human_flops(check.flops / (check.gpu_hours * 3600))}/s per GPU",
            f"  = {100 * check.utilization:.1f}% of {human_flops(check.peak_flops)}/s ({check.peak_note})",
            "  6·N·D leaves out attention and the multi-token-prediction module, so the true utilisation is a little higher",
        ]
    lines.append("leaves out:")
    lines += [f"  - {item}" for item in ref.leaves_out]
    return lines


def thousands(hours: float) -> str:
    """GPU-hours in thousands, as the papers write them.

    >>> thousands(2_788_000), thousands(147_000)
    ('2,788K', '147K')
    """
    return f"{hours / 1000:,.0f}K"


def compact_usd(amount: float) -> str:
    """Dollars in millions or thousands, as the papers write them.

    >>> compact_usd(5_576_000), compact_usd(294_000)
    ('$5.576M', '$294K')
    """
    return f"${amount / 1e6:.3f}M" if amount >= 1e6 else f"${amount / 1000:,.0f}K"


def reference_json(ref: PublishedCost) -> dict:
    """The same arithmetic as a JSON-ready dict."""
    check = ref.flop_check
    return {
        "reference": ref.name, "title": ref.title, "gpu_hours": dict(ref.gpu_hours), "total_gpu_hours": ref.total_hours,
        "usd_per_gpu_hour": H800_USD_PER_HOUR, "usd": ref.usd, "source": ref.source,
        "flop_check": None if check is None else {
            "active_params": check.active_params, "tokens": check.tokens, "flops": check.flops, "gpus": check.gpus,
            "gpu_hours": check.gpu_hours, "days": check.days, "peak_flops_per_gpu": check.peak_flops,
            "peak": check.peak_note, "utilization": check.utilization},
        "leaves_out": list(ref.leaves_out),
    }
