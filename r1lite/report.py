"""The one-page run report: training curves as PNGs and ``report.html``, built from a run directory.

Reads what a run leaves behind, every part optional:

- ``config.yaml``: the resolved config, shown collapsed;
- ``metrics.jsonl``: one JSON object per training step; any key may be missing or null in a row, and
  a plot whose keys have no data is skipped;
- ``summary.json``: evaluation blocks (``eval_base_plain``, ``eval_before``, ``eval_after_sft``,
  ``eval_after``), the ``cost`` block of :mod:`r1lite.meter.meter` and ``world_size`` (processes).

Writes ``plots/*.png`` and ``report.html`` (images referenced relatively, CSS inline), each file
atomically. :func:`before_after_table` gives the rows that both the report and the CLI's final table
print, so the two never disagree.
"""

from __future__ import annotations

import html
import io
import math
from dataclasses import dataclass
from pathlib import Path

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from r1lite.errors import UsageError
from r1lite.files import read_json, read_jsonl, write_bytes
from r1lite.meter.hardware import HARDWARE
from r1lite.meter.meter import (
    cost_per_point,
    format_cost,
    human_flops,
    human_seconds,
    per_point,
    price,
    short_number,
    upgrade_block,
    usd,
)
from r1lite.meter.published import DEEPSEEK_R1_GPU_HOURS, DEEPSEEK_V3_GPU_HOURS

# ---------------------------------------------------------------------------------------------
# The before/after table

EVAL_BLOCKS = {
    "eval_base_plain": "base model, plain prompt",
    "eval_before": "base model, R1 format",
    "eval_after_sft": "after cold-start SFT",
    "eval_after": "after GRPO",
}
"""Evaluation blocks of ``summary.json`` in table order, with their row labels."""

TABLE_HEADER = ("", "accuracy", "format rate", "mean completion tokens", "items")


def _percent(block: dict, key: str) -> str:
    value = block.get(key)
    return "—" if value is None else f"{100 * value:.1f}%"


def before_after_table(summary: dict) -> list[tuple[str, str, str, str, str]]:
    """Rows of the before/after table, one per evaluation block present, formatted for printing.

    Accuracy is ``pass@1``. A missing number prints as ``—``.

    >>> before_after_table({"eval_before": {"pass@1": 0.1, "format_rate": 0.125, "completion_tokens_mean": 87.4,
    ...                                      "n_items": 48},
    ...                     "eval_after": {"pass@1": 0.4375, "n_items": 48}})
    [('base model, R1 format', '10.0%', '12.5%', '87', '48'), ('after GRPO', '43.8%', '—', '—', '48')]
    """
    rows = []
    for key, label in EVAL_BLOCKS.items():
        if key not in summary:
            continue
        block = summary[key]
        tokens, items = block.get("completion_tokens_mean"), block.get("n_items")
        rows.append((label, _percent(block, "pass@1"), _percent(block, "format_rate"),
                     "—" if tokens is None else f"{tokens:.0f}", "—" if items is None else str(items)))
    return rows


def headline(summary: dict) -> str | None:
    """The change in accuracy from the base model to the trained one, in points; None without both.

    The base is the R1-format evaluation (else the plain prompt); the result is after GRPO (else SFT).

    >>> headline({"eval_before": {"pass@1": 0.1}, "eval_after": {"pass@1": 0.4375}})
    'accuracy 10.0% → 43.8% (+33.8 points), base model, R1 format → after GRPO'
    """
    before = next((k for k in ("eval_before", "eval_base_plain") if summary.get(k, {}).get("pass@1") is not None), None)
    after = next((k for k in ("eval_after", "eval_after_sft") if summary.get(k, {}).get("pass@1") is not None), None)
    if before is None or after is None:
        return None
    a, b = (round(100 * summary[k]["pass@1"], 1) for k in (before, after))  # points match the shown figures
    return (f"accuracy {a:.1f}% → {b:.1f}% ({b - a:+.1f} points), "
            f"{EVAL_BLOCKS[before]} → {EVAL_BLOCKS[after]}")


# ---------------------------------------------------------------------------------------------
# Reading a run directory


def read_metrics(path: Path) -> tuple[list[dict], list[str]]:
    """The rows of ``metrics.jsonl`` and notes for the report.

    A cut-off last line (a run interrupted mid-write) is left out with a note; a bad line elsewhere
    is an error.
    """
    if not path.exists():
        return [], []
    notes: list[str] = []
    rows = [row for _, row in read_jsonl(path, notes=notes)]
    return rows, notes


def read_summary(path: Path) -> dict:
    """``summary.json``, its cost block in this version's shape (:func:`r1lite.meter.meter.upgrade_block`)."""
    if not path.exists():
        return {}
    summary = read_json(path, "rerun the evaluation to rewrite it")
    if "cost" in summary:
        summary["cost"] = upgrade_block(summary["cost"])
    return summary


def task_name(summary: dict, config_text: str, config_path: Path) -> str:
    """The task named by the evaluation blocks, else by the config's top-level ``task`` key."""
    for key in EVAL_BLOCKS:
        if summary.get(key, {}).get("task"):
            return str(summary[key]["task"])
    if not config_text:
        return "—"
    try:
        config = yaml.safe_load(config_text)
    except yaml.YAMLError as e:
        raise UsageError(f"{config_path}: not valid YAML ({str(e).splitlines()[0]})") from None
    task = config.get("task") if isinstance(config, dict) else None
    return task if isinstance(task, str) else "—"


# ---------------------------------------------------------------------------------------------
# Plots


@dataclass(frozen=True)
class Plot:
    """One figure: which ``metrics.jsonl`` keys it draws, with their legend labels."""

    file: str
    """File name under ``plots/``."""
    title: str
    """Title above the axes."""
    lines: tuple[tuple[str, str], ...]
    """(metric key, legend label) per line."""
    ylabel: str
    """The y axis's quantity and unit."""


PLOTS = (
    Plot("reward_accuracy.png", "Reward and accuracy", (("reward_mean", "reward (mean)"), ("accuracy", "accuracy")),
         "reward / fraction correct"),
    Plot("format_rate.png", "Format rate", (("format_rate", "format rate"),), "fraction of completions"),
    Plot("completion_length.png", "Completion length",
         (("completion_len_mean", "mean"), ("completion_len_max", "max")), "tokens"),
    Plot("thinking.png", "Thinking (the <think> block's text)", (("think_chars_mean", "mean characters"),),
         "characters"),
    Plot("empty_think.png", "Empty <think> blocks", (("empty_think_frac", "fraction"),),
         "fraction of closed <think> blocks"),
    Plot("truncated.png", "Completions cut off at the length limit", (("truncated_frac", "fraction"),),
         "fraction of completions"),
    Plot("kl.png", "KL to the reference model", (("kl", "KL"),), "nats per token"),
    Plot("entropy.png", "Policy entropy", (("entropy", "entropy"),), "nats per token"),
    Plot("clip_frac.png", "Clipped tokens", (("clip_frac", "fraction"),), "fraction of tokens"),
    Plot("grad_norm.png", "Gradient norm", (("grad_norm", "grad norm"),), "L2 norm"),
    Plot("step_time.png", "Step time", (("step_seconds", "seconds"),), "seconds per step"),
    Plot("tokens_per_s.png", "Rollout throughput", (("tokens_per_s", "tokens/s"),), "sampled tokens per second"),
)
"""The fixed plots, in report order; :func:`plots_for` adds one for the per-function rewards."""


def plots_for(rows: list[dict]) -> list[Plot]:
    """:data:`PLOTS` plus ``rewards_by_function.png`` when rows carry ``rewards/<name>_mean`` keys."""
    names = sorted({k for row in rows for k in row if k.startswith("rewards/") and k.endswith("_mean")})
    by_function = Plot("rewards_by_function.png", "Reward by function (mean)",
                       tuple((k, k.removeprefix("rewards/").removesuffix("_mean")) for k in names), "reward (unweighted)")
    return [PLOTS[0], by_function, *PLOTS[1:]] if names else list(PLOTS)


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one metric, skipping rows where it is missing, null or not a finite number.

    A row without ``step`` is placed at its line number.

    >>> series([{"step": 1, "kl": 0.5}, {"step": 2}, {"step": 3, "kl": None}, {"kl": 0.25}], "kl")
    ([1.0, 4.0], [0.5, 0.25])
    """
    steps, values = [], []
    for number, row in enumerate(rows, start=1):
        value = row.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        step = row.get("step")
        steps.append(float(step if isinstance(step, (int, float)) else number))
        values.append(float(value))
    return steps, values


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over ``window`` values (fewer at the start).

    >>> moving_average([1.0, 3.0, 5.0, 7.0], 2)
    [1.0, 2.0, 4.0, 6.0]
    """
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def draw(plot: Plot, rows: list[dict]) -> bytes | None:
    """The PNG of one plot (raw values faint, moving average bold), or None when it has no data."""
    lines = [(label, *series(rows, key)) for key, label in plot.lines]
    lines = [line for line in lines if line[1]]
    if not lines:
        return None
    figure = Figure(figsize=(6.4, 3.4), dpi=110)  # no pyplot: no global state, no GUI backend
    axes = figure.add_subplot()
    for i, (label, steps, values) in enumerate(lines):
        window = min(50, max(1, len(values) // 10))
        marker = "o" if len(values) == 1 else None
        axes.plot(steps, values, color=f"C{i}", alpha=0.3, linewidth=1, marker=marker)
        axes.plot(steps, moving_average(values, window), color=f"C{i}", linewidth=2.2, label=label)
    return finish_figure(figure, axes, plot.title, plot.ylabel, legend=len(lines) > 1)


def finish_figure(figure: Figure, axes, title: str, ylabel: str, legend: bool) -> bytes:
    """Title, step axis (whole steps only), y label with its unit, grid, legend; the PNG bytes."""
    axes.set_title(title, loc="left", fontsize=11)
    axes.set_xlabel("GRPO step")
    axes.set_ylabel(ylabel)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.spines[["top", "right"]].set_visible(False)
    if legend:
        axes.legend(frameon=False)
    figure.tight_layout()
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def write_plots(rows: list[dict], plots_dir: Path) -> list[Plot]:
    """Write every plot that has data into ``plots_dir``; return those written, in report order."""
    written = []
    for plot in plots_for(rows):
        png = draw(plot, rows)
        if png is not None:
            plots_dir.mkdir(parents=True, exist_ok=True)
            write_bytes(plots_dir / plot.file, png)
            written.append(plot)
    return written


# ---------------------------------------------------------------------------------------------
# HTML

CSS = """
body { font: 15px/1.5 system-ui, -apple-system, Segoe UI, sans-serif; color: #1d2430; background: #f6f7f9;
       margin: 0; }
main { max-width: 1080px; margin: 0 auto; padding: 28px 24px 60px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 18px; margin: 32px 0 10px; }
.sub { color: #5b6575; margin: 0 0 18px; }
.headline { font-size: 20px; font-weight: 600; background: #fff; border-left: 5px solid #2e7d32;
            padding: 12px 16px; border-radius: 6px; }
.card { background: #fff; border-radius: 8px; padding: 14px 18px; box-shadow: 0 1px 3px rgba(0,0,0,.08); }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 6px 10px; text-align: right; border-bottom: 1px solid #e6e8ec; }
th:first-child, td:first-child { text-align: left; }
th { font-weight: 600; color: #5b6575; font-size: 13px; }
tr.used td { background: #eef6ee; font-weight: 600; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(460px, 1fr)); gap: 14px; }
img { width: 100%; background: #fff; border-radius: 8px; box-shadow: 0 1px 3px rgba(0,0,0,.08); }
.wide img { max-width: 760px; }
.mono, pre { font: 13px/1.45 ui-monospace, SFMono-Regular, Menlo, monospace; }
pre { background: #fff; padding: 12px; border-radius: 8px; overflow-x: auto; }
.muted { color: #5b6575; font-size: 13px; }
summary { cursor: pointer; font-weight: 600; }
"""


def html_table(header: tuple[str, ...] | None, rows: list[tuple[str, ...]], used_row: int | None = None) -> str:
    def cells(tag: str, row: tuple[str, ...]) -> str:
        return "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in row)

    head = "" if header is None else f"<thead><tr>{cells('th', header)}</tr></thead>"
    body = "".join(f"<tr class='used'>{cells('td', row)}</tr>" if i == used_row else f"<tr>{cells('td', row)}</tr>"
                   for i, row in enumerate(rows))
    return f"<table>{head}<tbody>{body}</tbody></table>"


def teacher_section(teacher: dict | None) -> str:
    """The teacher's share of the cost, apart from the student's (distillation runs)."""
    if teacher is None:
        return ""
    rows = [("student FLOPs", human_flops(teacher["student_flops"])),
            ("teacher FLOPs on this device", human_flops(teacher["flops"])),
            ("teacher time", human_seconds(teacher["seconds"]))]
    distilled = teacher["cold_start_teacher"]
    if distilled is not None:
        rows += [("cold-start teacher", f"{distilled['model']} ({distilled['kind']})"),
                 ("teacher tokens", f"{distilled['tokens']['prompt']:,} in, {distilled['tokens']['completion']:,} out"),
                 ("teacher price", usd(distilled["usd"]) if distilled["usd"] is not None else "no prices given"),
                 ("teacher terms", distilled["terms"] or "not recorded")]
    if teacher["on_policy_teacher"]:
        rows.append(("on-policy teacher", teacher["on_policy_teacher"]))
    return f"<h3>Teacher</h3>\n{html_table(None, rows)}\n<p class='muted'>{html.escape(teacher['note'])}.</p>"


def cost_section(cost: dict, stages: list[dict]) -> str:
    """The cost block: the one-line summary, the figures, the phases, the cost per accuracy point of
    each stage (:func:`r1lite.meter.meter.cost_per_point`), what is left out, the price table."""
    kind = "Estimated before the run" if cost["estimated"] else "Measured"
    figures = [
        ("hardware", f"{cost['hardware']} ×{cost['devices']}"),
        ("busy power per device", f"{short_number(cost['watts_per_device'])} W"),
        ("price per device-hour", usd(cost["usd_per_hour_per_device"])),
        ("PUE", f"{cost['pue']:g}"),
        ("wall time", human_seconds(cost["wall_seconds"])),
        ("device-hours", short_number(cost["device_hours"])),
        ("energy", f"{short_number(cost['kwh'])} kWh ({cost['energy_source']})"),
        ("money", usd(cost["usd"])),
        ("compute", human_flops(cost["flops"]["total"])),
        ("achieved", f"{human_flops(cost['achieved_flops_per_s'])}/s ({100 * cost['mfu']:.1f}% of peak)"),
    ]
    peaks = cost.get("peak_rss_mib_by_phase", {})  # absent in blocks from before memory was kept, and in estimates
    if peaks:
        figures.append(("peak resident memory", f"{max(peaks.values()):,.0f} MiB (the process, by phase below)"))

    def peak(p: str) -> str:
        return f"{peaks[p]:,.0f} MiB" if p in peaks else "—"

    phases = sorted(set(cost["flops"]["by_phase"]) | set(cost["seconds_by_phase"]))
    phase_rows = [(p, human_flops(cost["flops"]["by_phase"].get(p, 0.0)),
                   human_seconds(cost["seconds_by_phase"][p]) if p in cost["seconds_by_phase"] else "—", peak(p))
                  for p in phases]
    outside = cost["wall_seconds"] - sum(cost["seconds_by_phase"].values())
    if outside > 0:
        phase_rows.append(("outside phases (setup, checkpoints, logging)", "—", human_seconds(outside), peak("setup")))
    names = list(HARDWARE)
    price_rows = [(h.name, f"{h.watts:g} W", usd(h.usd_per_hour), h.source) for h in HARDWARE.values()]
    v3, r1 = sum(DEEPSEEK_V3_GPU_HOURS.values()), sum(DEEPSEEK_R1_GPU_HOURS.values())
    h800 = HARDWARE["H800"]
    leaves = "".join(f"<li>{html.escape(item)}</li>" for item in cost["leaves_out"])
    assumptions = "".join(f"<li>{html.escape(item)}</li>" for item in cost["assumptions"])
    per_point_rows = [(r["stage"], f"{r['points']:+.1f}", usd(r["usd"]), per_point(r)) for r in stages]
    return f"""
<h2>Cost</h2>
<div class="card">
<p class="mono">{html.escape(format_cost(cost))}</p>
<p class="muted">{kind}. Money = device-hours × price; energy measured where the machine has a counter, else
device-hours × busy power, × PUE. Figures: {html.escape(cost['price_source'])}.</p>
{html_table(None, figures)}
<h3>By phase</h3>
{html_table(("phase", "FLOPs", "time", "peak resident memory"), phase_rows)}
<h3>Cost per held-out accuracy point</h3>
{html_table(("stage", "points gained", "cost of its phases", "per point"), per_point_rows) if per_point_rows
 else "<p class='muted'>No stage with an evaluation before and after it.</p>"}
<p class="muted">Each stage against the evaluation before it (the cold start against the base's best prompt);
n/a where it gained nothing. Evaluations and setup belong to no stage.</p>
{f"<h3>Assumptions</h3><ul>{assumptions}</ul>" if assumptions else ""}
{teacher_section(cost.get("teacher"))}
<h3>Not counted</h3>
<ul>{leaves}</ul>
<details><summary>Price and power table</summary>
{html_table(("hardware", "busy power", "per device-hour", "source"), price_rows,
        names.index(cost['hardware']) if cost['hardware'] in names else None)}
</details>
<p class="muted">For scale, at $2 per H800 GPU-hour: DeepSeek-V3's final training run,
{short_number(v3)} GPU-hours = {usd(price(v3, h800))} (DeepSeek-V3 report); DeepSeek-R1 on top of it,
{short_number(r1)} GPU-hours = {usd(price(r1, h800))} (R1 paper, Nature 2025).</p>
</div>"""


def samples_section(rows: list[dict]) -> str:
    """The first completion of the run's first, middle and last logged steps, as sampled."""
    sampled = [r for r in rows if isinstance(r.get("sample"), str)]
    if not sampled:
        return ""
    picks = dict.fromkeys([0, len(sampled) // 2, len(sampled) - 1])
    return ("<h2>Sampled completions</h2><p class='muted'>The first completion of a step, at the start, middle "
            "and end of the run.</p>" + "".join(
                f"<h3>step {sampled[i].get('step')}</h3><pre>{html.escape(sampled[i]['sample'])}</pre>" for i in picks))


def render_html(run_name: str, task: str, summary: dict, rows: list[dict], plots: list[Plot],
                config_text: str, notes: list[str]) -> str:
    """The report page as one HTML string."""
    steps = series(rows, "step")[1]
    facts = [f"task: {task}", f"{len(rows)} logged steps" + (f" (last: {steps[-1]:g})" if steps else "")]
    if "cost" in summary:
        facts.append(f"{usd(summary['cost']['usd'])}, {human_seconds(summary['cost']['wall_seconds'])}")
    if "world_size" in summary:
        facts.append(f"world size {summary['world_size']}")
    table = before_after_table(summary)
    change = headline(summary)
    parts = [
        f"<h1>{html.escape(run_name)}</h1>",
        f"<p class='sub'>{html.escape(' · '.join(facts))}</p>",
        f"<p class='headline'>{html.escape(change)}</p>" if change else "",
        "<h2>Before and after</h2>",
        f"<div class='card'>{html_table(TABLE_HEADER, table)}</div>" if table
        else "<p class='muted'>No evaluation in summary.json.</p>",
        "<h2>Training curves</h2>",
    ]
    if plots:
        first, rest = plots[0], plots[1:]
        parts.append(f"<div class='wide'><img src='plots/{first.file}' alt='{html.escape(first.title)}'></div>")
        parts.append("<div class='grid'>" + "".join(
            f"<img src='plots/{p.file}' alt='{html.escape(p.title)}'>" for p in rest) + "</div>")
    else:
        parts.append("<p class='muted'>No training metrics in metrics.jsonl.</p>")
    parts.append(samples_section(rows))
    parts.append(cost_section(summary["cost"], cost_per_point(summary)) if "cost" in summary
                 else "<h2>Cost</h2><p class='muted'>No cost block in summary.json.</p>")
    if config_text:
        parts.append(f"<h2>Config</h2><details><summary>Resolved config (config.yaml)</summary>"
                     f"<pre>{html.escape(config_text)}</pre></details>")
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    body = "\n".join(p for p in parts if p)
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(run_name)} · r1lite report</title><style>{CSS}</style></head>\n"
            f"<body><main>\n{body}\n</main></body></html>\n")


# ---------------------------------------------------------------------------------------------
# Entry point


def write_report(run_dir: Path) -> Path:
    """Write ``run_dir/plots/*.png`` and ``run_dir/report.html``; return the HTML's path."""
    run_dir = Path(run_dir)
    config_path, metrics_path, summary_path = (run_dir / n for n in ("config.yaml", "metrics.jsonl", "summary.json"))
    if not any(p.exists() for p in (config_path, metrics_path, summary_path)):
        raise UsageError(f"{run_dir}: no config.yaml, metrics.jsonl or summary.json; pass a run directory")
    config_text = config_path.read_text() if config_path.exists() else ""
    rows, notes = read_metrics(metrics_path)
    summary = read_summary(summary_path)
    plots = write_plots(rows, run_dir / "plots")
    page = render_html(run_dir.resolve().name, task_name(summary, config_text, config_path), summary, rows, plots,
                       config_text, notes)
    target = run_dir / "report.html"
    write_bytes(target, page.encode())
    return target
