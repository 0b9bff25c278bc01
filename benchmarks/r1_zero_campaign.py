"""R1-Zero as evidence: the recipe over seeds, its two controls, the instruct model, and pass@k.

Arms, each a ``r1lite train --config recipes/r1_zero.yaml`` run with the same budget and the same
held-out items (``eval_items``/``eval_seed`` of the recipe, greedy):

- ``r1-zero`` (seeds 0, 1, 2): the recipe as it is, on the base model.
- ``random reward`` (seeds 0, 1): ``reward_control: random``, each completion rewarded 0 or 1 at
  random with the real reward's running mean (the spurious-rewards check).
- ``format reward only`` (seeds 0, 1): the recipe's format reward alone, accuracy weight dropped.
- ``instruct`` (seeds 0, 1, 2): the same recipe on the embedded instruct model with no SFT
  (``--model default --template chat --format r1``) at 8 prompts a step (``INSTRUCT``), and its two
  controls (``instruct, random reward``, ``instruct, format reward only``; seeds 0, 1).

Then pass@1/4/16/64 (temperature 1, 64 samples of each of 100 held-out items) of the base model and
the ``r1-zero`` seed-0 model, and of the instruct model before RL and its seed-0 model. One run after
another on an idle machine (a second heavy process halves each), resumable: finished rows stay in
the result file, an interrupted run continues from its checkpoint. Result:
``benchmarks/results/r1-zero-<cpu kind>.json``; ``--table`` prints the tables ``docs/r1_zero.md`` shows.

    python benchmarks/r1_zero_campaign.py                       # everything (many hours on 2 cores)
    python benchmarks/r1_zero_campaign.py --arms r1-zero --seeds 0
    python benchmarks/r1_zero_campaign.py --pass-at-k           # only the pass@k rows
    python benchmarks/r1_zero_campaign.py --pass-at-k "instruct, before RL" "instruct seed 0"
    python benchmarks/r1_zero_campaign.py --table
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
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
from r1lite.files import read_jsonl, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "r1_zero.yaml"
SEEDS = {"r1-zero": (0, 1, 2), "random reward": (0, 1), "format reward only": (0, 1), "instruct": (0, 1, 2),
         "instruct, random reward": (0, 1), "instruct, format reward only": (0, 1)}
KS = (1, 4, 16, 64)
# The instruct arms sample 8 prompts a step where the recipe samples 4: at 4, whether the instruct model finds the
# sums in 60 steps was the seed's luck (7.7, 15.0 and 52.7% on three seeds, docs/r1_zero.md); at 8 more groups
# carry a right answer early. The base model keeps the recipe's 4, which fits its run in 45 minutes.
INSTRUCT = {"model": "default", "template": "chat", "format": "r1", "batch_size": 64, "rollout_batch_size": 64}


def slug(name: str) -> str:
    """An arm's or a pass@k row's name as a file name: ``instruct, random reward`` -> ``instruct-random-reward``."""
    return name.replace(",", "").replace(" ", "-")


def arm_recipe(recipe: dict, arm: str, seed: int) -> dict:
    """The recipe as ``arm`` runs it at ``seed``."""
    out = {**recipe, "seed": seed}
    if arm.startswith("instruct"):
        out.update(INSTRUCT)
    if arm.endswith("random reward"):
        out["reward_control"] = "random"
    elif arm.endswith("format reward only"):
        out["rewards"] = {k: v for k, v in recipe["rewards"].items() if k != "accuracy"}
    return out


def lengths_and_correctness(rows: list[dict]) -> dict:
    """Do longer answers come out right more often? Mean completion tokens of right and wrong
    answers, and the accuracy of the longer and the shorter half."""
    right = [r["completion_tokens"] for r in rows if r["accuracy"]]
    wrong = [r["completion_tokens"] for r in rows if not r["accuracy"]]
    ordered = sorted(rows, key=lambda r: r["completion_tokens"])
    half = len(ordered) // 2

    def acc(part):
        return sum(bool(r["accuracy"]) for r in part) / len(part) if part else None
    return {"tokens_right": statistics.mean(right) if right else None, "tokens_wrong": statistics.mean(wrong) if wrong else None,
            "accuracy_shorter_half": acc(ordered[:half]), "accuracy_longer_half": acc(ordered[half:])}


def row_of(run: Path, summary: dict, arm: str, seed: int, info: dict, commit: str) -> dict:
    before, after = summary["eval_before"], summary["eval_after"]
    metrics = [r for _, r in read_jsonl(run / "metrics.jsonl")]
    evals = [r for _, r in read_jsonl(run / "eval_after.jsonl")]
    return {"arm": arm, "seed": seed, "commit": commit,
            "cpu_kind": info["cpu_kind"], "model": summary["model"], "steps": summary["steps"],
            "preflight": summary.get("preflight"),
            "accuracy_before": before["pass@1"], "accuracy": after["pass@1"],
            "format_before": before["format_rate"], "format": after["format_rate"],
            "tokens_before": before["completion_tokens_mean"], "tokens": after["completion_tokens_mean"],
            "think_tokens_before": before.get("think_tokens_mean"), "think_tokens": after.get("think_tokens_mean"),
            "items": after["n_items"], "first_step": {k: metrics[0].get(k) for k in ("reward_mean", "accuracy", "format_rate")},
            "last_step": {k: metrics[-1].get(k) for k in ("reward_mean", "accuracy", "format_rate", "entropy",
                                                          "completion_len_mean", "empty_think_frac")},
            "lengths": lengths_and_correctness(evals), "wall_seconds": summary["cost"]["wall_seconds"],
            "usd": summary["cost"]["usd"], "run": str(run.relative_to(ROOT)) if run.is_relative_to(ROOT) else str(run)}


PASS_AT_K = {"base": ("r1-zero", ""), "r1-zero seed 0": ("r1-zero", "r1-zero-s0"),
             "instruct, before RL": ("instruct", ""), "instruct seed 0": ("instruct", "instruct-s0")}
"""pass@k rows: name -> (the arm whose prompt settings it uses, its trained run; "" = the arm's model untrained)."""


def pass_at_k(model: str, settings: dict, out: Path, args) -> dict:
    """pass@1/4/16/64 at temperature 1 on ``args.k_items`` held-out items, 64 samples each, prompted
    as the arm's runs are (template, format, the ``<think>`` prefill)."""
    rows = out.with_suffix(".jsonl")
    cmd = [sys.executable, "-m", "r1lite", "eval", "--model", model, "--task", settings["task"], "--split", "test",
           "--limit", str(args.k_items), "--samples", str(max(KS)), "--temperature", "1", "--top-p", "1",
           "--max-new-tokens", str(settings["max_new_tokens"]), "--seed", "0", "--out", str(rows),
           "--template", settings["template"], "--format", settings["format"],
           "--prefill-think" if settings.get("prefill_think") else "--no-prefill-think"]
    for key, value in (settings.get("task_options") or {}).items():
        cmd += ["--task-options", f"{key}={value}"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    summary = json.loads(Path(f"{rows}.summary.json").read_text())
    return {"model": model, "items": summary["n_items"], **{f"pass@{k}": summary[f"pass@{k}"] for k in KS},
            "format_rate": summary["format_rate"]}


def tables(result: dict) -> str:
    lines = ["| arm | seed | accuracy before → after | format before → after | tokens before → after | wall |",
             "|---|---:|---:|---:|---:|---:|"]
    order = list(SEEDS)
    for r in sorted(result["rows"], key=lambda r: (order.index(r["arm"]), r["seed"])):
        lines.append(f"| {r['arm']} | {r['seed']} | {100 * r['accuracy_before']:.1f}% → {100 * r['accuracy']:.1f}% | "
                     f"{100 * r['format_before']:.1f}% → {100 * r['format']:.1f}% | {r['tokens_before']:.0f} → "
                     f"{r['tokens']:.0f} | {r['wall_seconds'] / 60:.1f} min |")
    if result.get("pass_at_k"):
        lines += ["", "| model | " + " | ".join(f"pass@{k}" for k in KS) + " | format |",
                  "|---|" + "---:|" * (len(KS) + 1)]
        for name, p in result["pass_at_k"].items():
            lines.append(f"| {name} | " + " | ".join(f"{100 * p[f'pass@{k}']:.1f}%" for k in KS)
                         + f" | {100 * p['format_rate']:.1f}% |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", nargs="*", choices=list(SEEDS), help="arms to run (default: all)")
    parser.add_argument("--seeds", nargs="*", type=int, help="seeds to run (default: each arm's own)")
    parser.add_argument("--pass-at-k", nargs="*", choices=list(PASS_AT_K),
                        help="only these pass@k rows (none named: every row whose model exists)")
    parser.add_argument("--k-items", type=int, default=100)
    parser.add_argument("--recipe", default=str(RECIPE))
    parser.add_argument("--work", default=str(ROOT / "runs" / "r1-zero-campaign"))
    parser.add_argument("--table", action="store_true", help="print the tables from the result file")
    parser.add_argument("--rescan", action="store_true", help="rebuild every row from its run directory (each row "
                                                              "keeps its commit), then print the tables")
    parser.add_argument("--out", default="", help="result file (default: benchmarks/results/r1-zero-<cpu kind>.json)")
    add_allow_dirty(parser)
    args = parser.parse_args()
    info = machine()
    path = Path(args.out) if args.out else RESULTS / f"r1-zero-{info['cpu_kind']}.json"
    result = json.loads(path.read_text()) if path.exists() else {"rows": [], "pass_at_k": {}}
    if args.table:
        print(tables(result))
        return
    if args.rescan:
        result["rows"] = [row_of(ROOT / r["run"], json.loads((ROOT / r["run"] / "summary.json").read_text()), r["arm"],
                                 r["seed"], {"cpu_kind": r["cpu_kind"]}, r["commit"]) for r in result["rows"]]
        write_json(path, result)
        print(tables(result))
        return
    recipe = read_yaml(Path(args.recipe))
    if result.get("recipe_settings", recipe) != recipe:  # rows of one recipe only
        raise SystemExit(f"{path} holds runs of another version of {args.recipe}; pass --out another file")
    result.update({**commit_fields("r1_zero_campaign.py", args.allow_dirty), "machine": info, "recipe": args.recipe,
                   "recipe_settings": recipe})
    work = Path(args.work)
    if not args.pass_at_k:
        for arm in args.arms or list(SEEDS):
            for seed in args.seeds if args.seeds is not None else SEEDS[arm]:
                if any(r["arm"] == arm and r["seed"] == seed for r in result["rows"]):
                    continue
                run = work / f"{slug(arm)}-s{seed}"
                summary = train_run(arm_recipe(recipe, arm, seed), run)
                result["rows"].append(row_of(run, summary, arm, seed, info, result["commit"]))
                write_json(path, result)
                drop_checkpoints(run)
                r = result["rows"][-1]
                print(f"{arm} seed {seed}: {100 * r['accuracy_before']:.1f}% -> {100 * r['accuracy']:.1f}%, format "
                      f"{100 * r['format']:.1f}%, {r['wall_seconds'] / 60:.1f} min", flush=True)
    if args.pass_at_k is not None or not args.arms:
        for name in args.pass_at_k or list(PASS_AT_K):
            arm, trained = PASS_AT_K[name]
            settings = arm_recipe(recipe, arm, 0)
            model = str(work / trained) if trained else settings["model"]
            if name in result["pass_at_k"] or (trained and not (work / trained / "final").exists()):
                continue
            work.mkdir(parents=True, exist_ok=True)
            result["pass_at_k"][name] = pass_at_k(model, settings, work / f"pass-at-k-{slug(name)}", args)
            write_json(path, result)
    print(tables(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
