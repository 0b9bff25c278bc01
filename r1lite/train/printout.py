"""What a training run prints: a short header before it starts and the before/after table at the end.

The whole resolved config goes to ``config.yaml`` in the run directory, not to the screen.
"""

from __future__ import annotations

from pathlib import Path

from r1lite import report
from r1lite.meter import meter
from r1lite.train.config import GRPOConfig


def header(cfg: GRPOConfig, runtime, ranks: int, run_dir: Path, resumed: bool) -> str:
    """What runs, on what, and where it goes, in a few lines."""
    optim, cold = cfg.optim, cfg.cold_start
    processes = f", {ranks} processes" + (" (FSDP)" if cfg.launch.fsdp else "") if ranks > 1 else ""
    options = " " + " ".join(f"{k}={v}" for k, v in cfg.task_options.items()) if cfg.task_options else ""
    first = (f"cold start on {cold.items} items' own answers, then " if cold.items and not (cold.data or cold.teacher)
             else "cold start on a teacher's traces, then " if cold.data or cold.teacher else "")
    steps = "GRPO" if cfg.loss.objective == "grpo" else "on-policy distillation"
    return (f"[bold]r1lite train[/] → {run_dir}{' (resumed)' if resumed else ''}\n"
            f"  model {cfg.model}, task {cfg.task}{options}, format {cfg.format}, template {cfg.template}"
            f"{' (<think> pre-filled)' if cfg.prefill_think else ''}\n"
            f"  {runtime.describe()}{processes}\n"
            f"  {first}{optim.max_steps} {steps} steps of {optim.prompts_per_step} prompts x "
            f"{optim.group_size}, held-out eval on {cfg.eval.items} items\n"
            f"  the whole config: {run_dir / 'config.yaml'}")


def result(console, summary: dict, task_name: str, report_path: Path) -> None:
    """The before/after table, the headline, the cost and the cost per point gained."""
    from rich.table import Table

    table = Table(title=f"{task_name} · held-out, greedy")
    for h in report.TABLE_HEADER:
        table.add_column(h, justify="left" if not h else "right")
    for row in report.before_after_table(summary):
        table.add_row(*row)
    console.print(table)
    line = report.headline(summary)
    if line:
        console.print(line)
    console.print(meter.format_cost(summary["cost"]))
    for row in summary["cost_per_point"]:
        console.print(f"{row['stage']}: {row['points']:+.1f} points for {meter.usd(row['usd'])} "
                      f"({meter.per_point(row)} per point)")
    console.print(f"report: {report_path}")
