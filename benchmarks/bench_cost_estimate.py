"""The cost estimate against real runs: ``r1lite cost``'s measured and datasheet estimates for a
recipe, next to the metered wall time, money and FLOPs of runs of it (their median and spread).

    python benchmarks/bench_cost_estimate.py \\
        --case demo recipes/demo.yaml runs/demo-s0 runs/demo-s1 runs/demo-s2 \\
        --case lora recipes/lora.yaml runs/lora-s0 runs/lora-s1

Run it on an idle machine, on the machine the runs ran on: the probe times this machine; or give
``--estimates DIR`` with ``NAME.json`` from ``r1lite cost --json`` made before the runs (or its
repeats ``NAME.1.json``, ``NAME.2.json``, ...: the median probe is compared, each repeat listed). Writes
``results/cost_estimate-<cpu kind>.json`` with every estimate and every run's raw figures, and a
replay: the estimator's FLOPs for the work the first run actually did (its own lengths and skipped
groups), which shows how much of an estimate's error is in its assumptions and how much in its
formulas. ``NAME.like.json`` beside ``NAME.json`` adds the estimate ``r1lite cost --like EARLIER_RUN``
made from an earlier run of the recipe (not one of those compared).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import RESULTS, add_allow_dirty, commit_fields, machine

from r1lite.config import build, read_yaml
from r1lite.cost.estimate import estimate_recipe
from r1lite.cost.workload import Overrides, run_workload
from r1lite.meter.hardware import CostConfig
from r1lite.train.config import GRPOConfig, preset


def actual(run: Path) -> dict:
    """The metered figures of one finished run."""
    summary = json.loads((run / "summary.json").read_text())
    if not summary.get("finished"):
        raise SystemExit(f"{run}: the run has not finished")
    cost = summary["cost"]
    return {"run": str(run), "wall_seconds": cost["wall_seconds"], "usd": cost["usd"], "flops": cost["flops"]["total"],
            "flops_by_phase": cost["flops"]["by_phase"], "seconds_by_phase": cost["seconds_by_phase"],
            "held_out_after": summary.get("eval_after", {}).get("pass@1")}


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def estimate(recipe: Path) -> dict:
    """``r1lite cost --config RECIPE --json`` in-process."""
    from rich.console import Console

    cfg = build(GRPOConfig, read_yaml(recipe), {}, source=str(recipe), presets=preset)
    pricing = CostConfig(hardware=cfg.cost.hardware, watts=cfg.cost.watts, usd_per_hour=cfg.cost.usd_per_hour)
    return estimate_recipe(cfg, pricing, Overrides(), probe=True, console=Console(stderr=True))


def replay(recipe: Path, run: Path) -> dict:
    """The estimator's FLOPs for the work a run actually did (its lengths, skipped groups, traces):
    how far the formulas are from the meter when the assumptions are right."""
    from r1lite import tasks
    from r1lite.cost.work import run_prompts, run_work
    from r1lite.engine import make_decoder
    from r1lite.models import load_model, resolve_runtime
    from r1lite.train.policy import model_shape, model_weights

    cfg = build(GRPOConfig, read_yaml(recipe), {}, source=str(recipe), presets=preset)
    runtime = resolve_runtime(cfg.launch.device, cfg.launch.dtype)
    model, tokenizer = load_model(cfg.model, runtime)
    if cfg.optim.lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=cfg.optim.lora_r, lora_alpha=cfg.optim.lora_alpha,
                                                 target_modules=list(cfg.optim.lora_targets))).get_base_model()
    workload = run_workload(run, cfg)  # the run's own lengths and skipped groups: what `r1lite cost --like` reads
    work = run_work(cfg, model_shape(model), model_weights(model),
                    run_prompts(cfg, tokenizer, tasks.load_task(cfg.task, cfg.task_options)), workload,
                    make_decoder(model, runtime.dtype).flops).phases
    metered = json.loads((run / "summary.json").read_text())["cost"]["flops"]
    return {"run": str(run), "workload": {"base_tokens": statistics.mean(workload.base_lengths),
                                          "rollout_tokens": statistics.mean(workload.trained_lengths),
                                          "skipped_groups": workload.skipped_groups, "traces_per_item": workload.traces_per_item},
            "flops_by_phase": {k: w.flops for k, w in work.items()}, "metered_by_phase": metered["by_phase"],
            "relative_error": sum(w.flops for w in work.values()) / metered["total"] - 1}


def made_estimates(directory: Path, name: str) -> list[dict]:
    """``NAME.json``, or the repeats ``NAME.1.json``, ``NAME.2.json``, ... (the probe times a noisy
    machine: repeats show the estimate's own spread), in ``directory``."""
    paths = [directory / f"{name}.json"] if (directory / f"{name}.json").exists() else sorted(
        directory.glob(f"{name}.[0-9]*.json"), key=lambda p: int(p.stem.rsplit(".", 1)[1]))
    if not paths:
        raise SystemExit(f"{directory}: no {name}.json nor {name}.1.json (r1lite cost --config RECIPE --json > ...)")
    return [json.loads(p.read_text()) for p in paths]


def compare(recipe: Path, runs: list[Path], made_before: Path | None, name: str, recorded: dict | None) -> dict:
    """``recorded``: this case from an earlier result, whose runs (metered figures and replay) stand
    in for ``runs`` when those directories are gone (the runs' code must be the one estimated)."""
    repeats = made_estimates(made_before, name) if made_before else [estimate(recipe)]
    repeats.sort(key=lambda blocks: blocks["measured"]["wall_seconds"])
    blocks = dict(repeats[(len(repeats) - 1) // 2])  # the median probe (the lower of two)
    liked = made_before / f"{name}.like.json" if made_before else None
    if liked and liked.exists():  # r1lite cost --like EARLIER_RUN --json, made before these runs too
        blocks.update({f"{method} --like": block for method, block in json.loads(liked.read_text()).items()})
    raw = recorded["runs"] if recorded else [actual(r) for r in runs]
    measured = {key: spread([r[key] for r in raw]) for key in ("wall_seconds", "usd", "flops")}

    def errors(block: dict) -> dict:
        return {key: block_value(block, key) / measured[key]["median"] - 1 for key in measured}

    return {"recipe": str(recipe), "estimated_before_the_runs": made_before is not None, "estimates": blocks, "runs": raw,
            "actual": measured, "relative_error": {method: errors(block) for method, block in blocks.items()},
            "probe_repeats": [{"wall_seconds": r["measured"]["wall_seconds"], "flops": r["measured"]["flops"]["total"],
                               "relative_error": errors(r["measured"])} for r in repeats],
            "replay": recorded["replay"] if recorded else replay(recipe, runs[0])}


def block_value(block: dict, key: str) -> float:
    return block["flops"]["total"] if key == "flops" else block[key]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--case", nargs="+", action="append", required=True, metavar=("NAME RECIPE", "RUN_DIR"),
                   help="a name, a recipe and the run directories of its runs")
    p.add_argument("--excluded", nargs=2, action="append", default=[], metavar=("RUN_DIR", "REASON"),
                   help="a run recorded but left out of the medians, and why (e.g. the machine was shared)")
    p.add_argument("--estimates", type=Path, metavar="DIR",
                   help="read NAME.json (r1lite cost --config RECIPE --json, made before the runs) instead of estimating "
                        "now, and NAME.like.json beside it if there (the same with --like EARLIER_RUN)")
    p.add_argument("--runs-from", type=Path, metavar="RESULT.json",
                   help="take each case's runs (metered figures, replay) from this earlier result instead of run "
                        "directories (give a case as NAME RECIPE only); the runs' code must be what is estimated")
    p.add_argument("--note", action="append", default=[], help="a line for the result's notes (how the runs were made)")
    p.add_argument("--out", type=Path, help="result file (default: results/cost_estimate-<cpu kind>.json)")
    add_allow_dirty(p)
    args = p.parse_args()
    result = {"benchmark": "cost_estimate", **commit_fields("bench_cost_estimate", args.allow_dirty), "machine": machine(), "cases": {}}
    runs_from = json.loads(args.runs_from.read_text()) if args.runs_from else {"cases": {}}
    earlier = runs_from["cases"]
    for name, recipe, *runs in args.case:
        if bool(runs) == (name in earlier):
            raise SystemExit(f"--case {name}: give its run directories or take them from --runs-from (which has "
                             f"{', '.join(earlier) or 'no case'}), one or the other")
        result["cases"][name] = compare(Path(recipe), [Path(r) for r in runs], args.estimates, name, earlier.get(name))
        if name in earlier:
            result["cases"][name]["runs_from"] = {"result": str(args.runs_from), "commit": runs_from["commit"]}
        errors = result["cases"][name]["relative_error"]
        print(name, {m: {k: f"{100 * v:+.1f}%" for k, v in e.items()} for m, e in errors.items()}, flush=True)
    result["excluded"] = [{**actual(Path(run)), "reason": reason} for run, reason in args.excluded]
    result["notes"] = args.note
    out = args.out or RESULTS / f"cost_estimate-{result['machine']['cpu_kind']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
