"""The GRPO variants on one budget: grpo, dr_grpo, dapo, gspo and cispo on the demo recipe's RL stage.

Every run starts from one saved cold start (the demo recipe run once with ``max_steps: 0``), so only
the RL stage differs. Each takes its preset (``algorithm``: the loss, clipping, KL, dynamic sampling
its paper publishes), the same ``mu`` (> 1: with one update per batch the importance ratios are 1
and GSPO and CISPO reduce to GRPO's gradient) and the same compute: it stops at the first step whose
metered RL FLOPs reach ``--budget`` (``max_rl_flops``). Everything else is the demo's (batch, group,
temperature, learning rate, rewards) and the demo's 300 held-out items, evaluated greedily before,
every ``--eval-every`` steps and at the end. Three seeds each, one run after another (a second heavy
process halves each: run it on an idle machine), resumable: finished rows stay in the result file
and an interrupted run continues from its last checkpoint.

Result: ``benchmarks/results/algorithms-<cpu kind>.json`` (top-level ``commit``; each row its own
commit, CPU kind and curve of held-out accuracy against RL FLOPs); ``--table`` prints the markdown
table and draws ``docs/algorithms_accuracy_flops.png`` from it.

    python benchmarks/compare_algorithms.py                    # the campaign (hours on 2 cores)
    python benchmarks/compare_algorithms.py --only gspo cispo --seeds 0
    python benchmarks/compare_algorithms.py --table
    python benchmarks/compare_algorithms.py --smoke --work /tmp/cmp   # every step at a tiny size
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from benchmarks.common import (  # noqa: E402
    RESULTS,
    add_allow_dirty,
    commit_fields,
    drop_checkpoints,
    machine,
    train_run,
)
from r1lite.config import read_yaml  # noqa: E402
from r1lite.files import write_json  # noqa: E402
from r1lite.meter.meter import human_flops  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = ("grpo", "dr_grpo", "dapo", "gspo", "cispo")
# what the presets set: left out of the recipe so that each run's preset decides it
PRESET_KEYS = ("loss_type", "scale_rewards", "epsilon", "epsilon_high", "beta", "dynamic_sampling",
               "mask_truncated", "overlong_buffer", "importance_sampling_level", "surrogate", "mu")
SMOKE = {"model": "tiny", "task_options": {"digits": 1}, "cold_start_items": 0, "batch_size": 8, "group_size": 4,
         "micro_batch_size": 8, "rollout_batch_size": 8, "max_new_tokens": 8, "eval_items": 4, "eval_batch_size": 8,
         "eval_base_plain": False, "preflight": False, "save_every": 2}
"""Overrides of the demo recipe for --smoke: the tiny random model, no cold start (it solves nothing)."""
PLOT = ROOT / "docs" / "algorithms_accuracy_flops.png"


def cold_start(recipe: dict, work: Path) -> Path:
    """The demo recipe's cold start alone (``max_steps: 0``), run once: every RL run starts from it."""
    out = work / "cold-start"
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    if not summary.get("finished"):
        train_run({**recipe, "max_steps": 0}, out)
        drop_checkpoints(out)  # the runs start from its final/
    return out


def rl_recipe(recipe: dict, start: Path, algorithm: str, seed: int, args) -> dict:
    """The demo's RL stage from the saved cold start under ``algorithm``'s preset, on the budget."""
    rl = {k: v for k, v in recipe.items()
          if not k.startswith("cold_start_") and k not in PRESET_KEYS + ("eval_base_plain", "base_phrasings")}
    return {**rl, "model": str(start), "algorithm": algorithm, "mu": args.mu, "seed": seed,
            "max_steps": args.max_steps, "max_rl_flops": args.budget, "eval_every": args.eval_every}


def row_of(summary: dict, metrics: list[dict], algorithm: str, seed: int, info: dict, commit: str) -> dict:
    """One finished run as a result row: final accuracy and format, the curve, the end's entropy and length."""
    start, end = summary["eval_before"], summary["eval_after"]
    curve = [{"rl_flops": 0.0, "pass@1": start["pass@1"]}]
    curve += [{"rl_flops": p["rl_flops"], "pass@1": p["pass@1"]} for p in summary.get("eval_curve", [])]
    curve.append({"rl_flops": summary["rl_flops"], "pass@1": end["pass@1"]})
    cost = summary["cost"]
    return {"algorithm": algorithm, "seed": seed, "commit": commit,
            "cpu_kind": info["cpu_kind"], "steps": summary["steps"], "rl_flops": summary["rl_flops"],
            "accuracy_before": start["pass@1"], "accuracy": end["pass@1"], "format_rate": end["format_rate"],
            "completion_tokens_mean": end["completion_tokens_mean"],
            "entropy_end": metrics[-1].get("entropy") if metrics else None,
            "wall_seconds": cost["wall_seconds"], "usd": cost.get("usd"), "curve": curve}


def table(result: dict) -> str:
    """The markdown table: per algorithm the mean and range over its seeds."""
    lines = ["| algorithm | seeds | held-out accuracy, mean (range) | format | completion tokens | entropy at the end "
             "| RL FLOPs | wall per run | cost per run |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for algorithm in ALGORITHMS:
        rows = [r for r in result["rows"] if r["algorithm"] == algorithm]
        if not rows:
            continue
        acc = [100 * r["accuracy"] for r in rows]
        mean = statistics.mean

        def avg(key, rows=rows):
            values = [r[key] for r in rows if r.get(key) is not None]
            return mean(values) if values else float("nan")
        lines.append(f"| {algorithm} | {len(rows)} | {mean(acc):.1f}% ({min(acc):.1f}–{max(acc):.1f}) | "
                     f"{100 * avg('format_rate'):.1f}% | {avg('completion_tokens_mean'):.1f} | {avg('entropy_end'):.3f} | "
                     f"{human_flops(avg('rl_flops'))} | {avg('wall_seconds') / 60:.1f} min | ${avg('usd'):.3f} |")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Held-out accuracy against RL FLOPs: each seed a thin line, each algorithm one colour."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, algorithm in enumerate(ALGORITHMS):
        for j, row in enumerate(r for r in result["rows"] if r["algorithm"] == algorithm):
            xs = [p["rl_flops"] / 1e12 for p in row["curve"]]
            ax.plot(xs, [100 * p["pass@1"] for p in row["curve"]], color=f"C{i}", marker="o", markersize=3,
                    linewidth=1, label=algorithm if j == 0 else None)
    ax.set_xlabel("RL FLOPs (TFLOP, the cost meter's)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(f"GRPO variants on one budget, mu {result.get('mu')}, {result['machine']['cpu_kind']}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", choices=ALGORITHMS, help="algorithms to run (default: all five)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--mu", type=int, default=2, help="updates per batch, the same for every algorithm")
    parser.add_argument("--budget", type=float, default=8e13, help="RL FLOPs of every run (max_rl_flops): about 20 "
                        "demo steps at mu 2")
    parser.add_argument("--max-steps", type=int, default=80, help="a cap the budget should end first")
    parser.add_argument("--eval-every", type=int, default=8, help="held-out points between before and after")
    parser.add_argument("--recipe", default=str(ROOT / "recipes" / "demo.yaml"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "compare-algorithms"), help="the runs' directories")
    parser.add_argument("--table", action="store_true", help="print the table and draw the plot from the result file")
    parser.add_argument("--smoke", action="store_true", help="every step at a tiny size on the tiny random model "
                                                             "(a check that the script works, not a result)")
    parser.add_argument("--out", default="", help="result file (default: benchmarks/results/algorithms-<cpu kind>.json)")
    add_allow_dirty(parser)
    args = parser.parse_args()
    info = machine()
    path = Path(args.out) if args.out else RESULTS / f"algorithms-{info['cpu_kind']}.json"
    if args.table:
        result = json.loads(path.read_text())
        print(table(result))
        plot(result, PLOT)
        print(f"plot: {PLOT}")
        return
    recipe = read_yaml(Path(args.recipe))
    if args.smoke:
        recipe, args.budget, args.max_steps, args.eval_every = {**recipe, **SMOKE}, 2e9, 6, 2
    head = commit_fields("compare_algorithms.py", args.allow_dirty or args.smoke)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result = json.loads(path.read_text()) if path.exists() else {"rows": []}
    if result.get("budget", args.budget) != args.budget or result.get("mu", args.mu) != args.mu:
        raise SystemExit(f"{path} holds runs at budget {result['budget']:g}, mu {result['mu']}; pass those, or --out "
                         "another file")
    result.update({**head, "machine": info, "recipe": str(args.recipe), "budget": args.budget, "mu": args.mu,
                   "eval_every": args.eval_every})
    start = cold_start(recipe, work)
    for algorithm in args.only or ALGORITHMS:
        for seed in args.seeds:
            if any(r["algorithm"] == algorithm and r["seed"] == seed for r in result["rows"]):
                continue
            out = work / f"{algorithm}-s{seed}"
            summary = train_run(rl_recipe(recipe, start, algorithm, seed, args), out)
            metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            result["rows"].append(row_of(summary, metrics, algorithm, seed, info, head["commit"]))
            write_json(path, result)
            drop_checkpoints(out)
            row = result["rows"][-1]
            print(f"{algorithm} seed {seed}: {100 * row['accuracy_before']:.1f}% -> {100 * row['accuracy']:.1f}% in "
                  f"{row['steps']} steps, {human_flops(row['rl_flops'])}, {row['wall_seconds'] / 60:.1f} min", flush=True)
    print(table(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
