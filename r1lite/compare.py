"""``r1lite report``: one run's report re-rendered, or several runs on one page
(``r1lite report RUN_DIR RUN_DIR … --out PAGE.html``).

The page overlays each run's curves on shared axes (reward, rollout accuracy, format rate,
completion length, KL, step time, cumulative GRPO cost), tabulates the final held-out metrics and
the cost of each run, and lists the config keys whose values differ. Plots go to
``<page>_plots/`` beside the page, referenced relatively. Built from what
:mod:`r1lite.report` reads in a run directory; each run needs its ``metrics.jsonl``.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

import yaml
from matplotlib.figure import Figure

from r1lite.config import opt
from r1lite.errors import UsageError
from r1lite.files import write_bytes
from r1lite.meter.meter import (
    cost_per_point,
    human_flops,
    human_seconds,
    per_point,
    short_number,
    usd,
)
from r1lite.report import (
    CSS,
    EVAL_BLOCKS,
    html_table,
    moving_average,
    read_metrics,
    read_summary,
    series,
    write_report,
)


@dataclass(frozen=True)
class ComparedRun:
    """One run directory as the page shows it."""

    name: str
    """The label in legends and tables (the directory's name, its parent's too when two clash)."""
    config: dict
    """``config.yaml`` (empty when missing)."""
    rows: list[dict]
    """``metrics.jsonl``."""
    summary: dict
    """``summary.json`` (empty when missing)."""


def check_run_dir(path: Path) -> None:
    """A directory ``r1lite train`` wrote, with at least one logged step; else a one-line error."""
    if not path.is_dir():
        raise UsageError(f"{path}: no such directory; pass run directories (r1lite train --out)")
    if not (path / "metrics.jsonl").exists():
        raise UsageError(f"{path}: no metrics.jsonl (not a training run, or it stopped before its first step); "
                         "pass a directory r1lite train wrote")


def load_run(path: Path, name: str) -> ComparedRun:
    config_path = path / "config.yaml"
    config = yaml.safe_load(config_path.read_text()) if config_path.exists() else {}
    rows, _ = read_metrics(path / "metrics.jsonl")
    if not rows:
        raise UsageError(f"{path / 'metrics.jsonl'}: no complete row; the run logged no step yet")
    return ComparedRun(name, config if isinstance(config, dict) else {}, rows, read_summary(path / "summary.json"))


def run_names(paths: list[Path]) -> list[str]:
    """Directory names, with the parent's prepended where two runs share a name.

    >>> run_names([Path("a/s0"), Path("b/s0"), Path("b/s1")])
    ['a/s0', 'b/s0', 's1']
    """
    names = [p.resolve().name for p in paths]
    return [f"{p.resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names)]


# ---------------------------------------------------------------------------------------------
# Plots


@dataclass(frozen=True)
class Curve:
    """One overlaid plot: a metric per run."""

    file: str
    title: str
    key: str
    """``metrics.jsonl`` key, or ``cumulative_usd`` (:func:`cumulative_cost`)."""
    ylabel: str


CURVES = (
    Curve("reward.png", "Reward (mean of each step's completions)", "reward_mean", "reward"),
    Curve("accuracy.png", "Rollout accuracy", "accuracy", "fraction correct"),
    Curve("format_rate.png", "Format rate", "format_rate", "fraction of completions"),
    Curve("completion_length.png", "Completion length (mean)", "completion_len_mean", "tokens"),
    Curve("kl.png", "KL to the reference model", "kl", "nats per token"),
    Curve("step_time.png", "Step time", "step_seconds", "seconds per step"),
    Curve("cumulative_cost.png", "Cumulative cost of the GRPO steps", "cumulative_usd", "US dollars"),
)


def cumulative_cost(run: ComparedRun) -> tuple[list[float], list[float]]:
    """(steps, dollars spent on GRPO steps so far) at the run's price; empty without a cost block."""
    if "cost" not in run.summary:
        return [], []
    cost = run.summary["cost"]
    rate = cost["devices"] * cost["usd_per_hour_per_device"] / 3600
    steps, seconds = series(run.rows, "step_seconds")
    total, out = 0.0, []
    for s in seconds:
        total += s * rate
        out.append(total)
    return steps, out


def draw_curve(curve: Curve, runs: list[ComparedRun]) -> bytes | None:
    """The PNG of one metric for every run that has it (raw values faint, moving average bold)."""
    from r1lite.report import finish_figure

    figure = Figure(figsize=(6.4, 3.4), dpi=110)
    axes = figure.add_subplot()
    drawn = 0
    for i, run in enumerate(runs):
        steps, values = cumulative_cost(run) if curve.key == "cumulative_usd" else series(run.rows, curve.key)
        if not steps:
            continue
        smooth = values if curve.key == "cumulative_usd" else moving_average(values, min(50, max(1, len(values) // 10)))
        axes.plot(steps, values, color=f"C{i}", alpha=0.25, linewidth=1, marker="o" if len(values) == 1 else None)
        axes.plot(steps, smooth, color=f"C{i}", linewidth=2.2, label=run.name)
        drawn += 1
    if not drawn:
        return None
    return finish_figure(figure, axes, curve.title, curve.ylabel, legend=True)


# ---------------------------------------------------------------------------------------------
# Tables


def _pct(summary: dict, key: str, field: str = "pass@1") -> str:
    value = summary.get(key, {}).get(field)
    return "—" if value is None else f"{100 * value:.1f}%"


def final_table(runs: list[ComparedRun]) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """Header and one row per run: held-out accuracy by evaluation, final format rate and length,
    steps, wall time, device-hours, money, FLOPs, and each stage's cost per point."""
    evals = [k for k in EVAL_BLOCKS if any(k in r.summary for r in runs)]
    header = ("run", *(f"{EVAL_BLOCKS[k]}" for k in evals), "format (final)", "tokens (final)", "steps", "wall time",
              "device-hours", "money", "FLOPs", "per point: cold start", "per point: GRPO")
    rows = []
    for run in runs:
        s, cost = run.summary, run.summary.get("cost")
        final = next((k for k in ("eval_after", "eval_after_sft") if k in s), None)
        tokens = s.get(final, {}).get("completion_tokens_mean") if final else None
        stages = {r["stage"]: r for r in cost_per_point(s)} if cost else {}
        rows.append((
            run.name, *(_pct(s, k) for k in evals), _pct(s, final, "format_rate") if final else "—",
            "—" if tokens is None else f"{tokens:.0f}", str(len(run.rows)),
            human_seconds(cost["wall_seconds"]) if cost else "—", short_number(cost["device_hours"]) if cost else "—",
            usd(cost["usd"]) if cost else "—", human_flops(cost["flops"]["total"]) if cost else "—",
            *(per_point(stages[stage]) if stage in stages else "—" for stage in ("cold start", "GRPO"))))
    return header, rows


def config_differences(runs: list[ComparedRun]) -> list[tuple[str, ...]]:
    """Rows of (key, each run's value) for the config keys whose values differ (``out`` left out).

    >>> a, b = ComparedRun("a", {"lr": 1e-5, "seed": 0, "out": "x"}, [], {}), ComparedRun("b", {"lr": 2e-5, "seed": 0, "out": "y"}, [], {})
    >>> config_differences([a, b])
    [('lr', '1.0e-05', '2.0e-05')]
    """
    keys = sorted({k for r in runs for k in r.config} - {"out"})
    missing = object()
    rows = []
    for key in keys:
        values = [r.config.get(key, missing) for r in runs]
        if any(v != values[0] for v in values[1:]):
            rows.append((key, *("—" if v is missing else yaml.safe_dump(v, default_flow_style=True).strip()
                                .removesuffix("...").strip() for v in values)))
    return rows


# ---------------------------------------------------------------------------------------------
# The page


def render_comparison(runs: list[ComparedRun], plots: list[tuple[Curve, str]]) -> str:
    """The comparison page as one HTML string; ``plots`` are (curve, relative image path)."""
    header, rows = final_table(runs)
    diffs = config_differences(runs)
    missing = [c.title for c in CURVES if c.title not in {p.title for p, _ in plots}]
    parts = [
        f"<h1>{len(runs)} runs compared</h1>",
        f"<p class='sub'>{html.escape(' · '.join(r.name for r in runs))}</p>",
        "<h2>Final metrics and cost</h2>",
        "<p class='muted'>Held-out accuracy (pass@1, greedy) at each evaluation; money at each run's own price.</p>",
        f"<div class='card wide-table'>{html_table(header, rows)}</div>",
        "<h2>Config keys that differ</h2>",
        f"<div class='card'>{html_table(('key', *(r.name for r in runs)), diffs)}</div>" if diffs
        else "<p class='muted'>The configs are the same (out aside).</p>",
        "<h2>Training curves</h2>",
        "<div class='grid'>" + "".join(f"<img src='{html.escape(src)}' alt='{html.escape(c.title)}'>" for c, src in plots)
        + "</div>",
    ]
    if missing:
        parts.append(f"<p class='muted'>No run logged: {html.escape(', '.join(missing))}.</p>")
    css = CSS + ".wide-table { overflow-x: auto; } .wide-table table { font-size: 13px; }\n"
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{len(runs)} runs · r1lite comparison</title><style>{css}</style></head>\n"
            f"<body><main>\n" + "\n".join(parts) + "\n</main></body></html>\n")


def write_comparison(paths: list[Path], out: Path) -> Path:
    """Write the page and its plots (``<out stem>_plots/``); return the page's path."""
    for path in paths:
        check_run_dir(path)
    runs = [load_run(p, n) for p, n in zip(paths, run_names(paths))]
    plots_dir = out.parent / f"{out.stem}_plots"
    plots = []
    for curve in CURVES:
        png = draw_curve(curve, runs)
        if png is not None:
            write_bytes(plots_dir / curve.file, png)
            plots.append((curve, f"{plots_dir.name}/{curve.file}"))
    write_bytes(out, render_comparison(runs, plots).encode())
    return out


@dataclass
class ReportConfig:
    """``r1lite report``: the run directories (positional on the command line) and the page."""

    runs: list = opt([], "run directories (r1lite train --out)")
    out: str = opt("", "the page to write (\"\" = RUN_DIR/report.html for one run, compare.html for several)")

    def __post_init__(self):
        if not self.runs:
            raise UsageError("report needs a RUN_DIR (r1lite train --out), or several to compare")
        for run in self.runs:
            check_run_dir(Path(run))


def run(cfg: ReportConfig) -> int:
    """``r1lite report``: one run directory's plots and report.html, or one page comparing several."""
    runs = [Path(r) for r in cfg.runs]
    if len(runs) == 1 and not cfg.out:
        path = write_report(runs[0])
    else:
        path = write_comparison(runs, Path(cfg.out or "compare.html"))
    print(f"report: {path}")
    return 0
