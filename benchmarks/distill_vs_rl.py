"""R1's Table 6 at small scale: is distillation from a stronger model better than RL on the student,
at the same student compute?

Teacher: a stronger model, by default a run trained by the demo recipe (``make demo
DEMO_OUT=runs/demo``); any model with the student's tokenizer can be given (on-policy distillation
scores the student's tokens with it). Student: the embedded SmolLM2-135M-Instruct. R1's setting —
a 671B teacher, 1.5B-70B students — is not reproduced when both are 135M: here the teacher is the
student's own architecture after RL, so the question is only whether its traces carry what RL
found more cheaply than RL finds it again.

Rows, all evaluated on the same held-out items of the task (greedy pass@1 and format rate, maj@8
at temperature 0.6 / top-p 0.95):

(a) RL on the student: the demo recipe (a cold start from the student's own verified answers,
    then GRPO). Its metered student FLOPs are the budget B (evaluations left out, as in every row).
(b) SFT on the teacher's verified traces (``r1lite distill``), for B ±10% of SFT FLOPs: as many
    traces as ``--sft-epochs`` passes at B allow (more passes when the pool is too small).
(c) On-policy distillation (``objective: on_policy_distill``) for B: the step count from a 2-step
    calibration run's FLOPs per step.
(d) (b) then GRPO: SFT on traces for B/2, GRPO (the demo's settings) for the rest.

The teacher's FLOPs — sampling the traces, scoring the student's tokens in (c) — are in their own
columns and not in B. Wall time and money are each row's own (the cost meter's), teacher time
apart. Run on a committed tree (the JSON records the bare commit); ``--smoke`` runs every row at a
tiny size on the tiny random model (a check that the script works, not a result).

    python benchmarks/distill_vs_rl.py --teacher runs/demo        # benchmarks/results/distill_vs_rl.json
    python benchmarks/distill_vs_rl.py --rows b --reuse benchmarks/results/distill_vs_rl.json --work DIR
                                               # row (b) again; the other rows, budget and traces kept
    python benchmarks/distill_vs_rl.py --smoke --out runs/smoke.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, add_allow_dirty, commit_fields, machine  # noqa: E402

from r1lite import evaluate, prompts, tasks  # noqa: E402
from r1lite.config import build, read_yaml  # noqa: E402
from r1lite.distill import collect  # noqa: E402
from r1lite.distill.traces import read_pairs, sibling  # noqa: E402
from r1lite.files import write_json, write_jsonl  # noqa: E402
from r1lite.meter import meter  # noqa: E402
from r1lite.train import sft  # noqa: E402
from r1lite.train.config import GRPOConfig  # noqa: E402
from r1lite.train.policy import Policy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EVAL_PHASES = ("eval",)
TEACHER_PHASES = meter.TEACHER_PHASES
SMOKE = {"model": "tiny", "task_options": {"digits": 1}, "cold_start_items": 0, "cold_start_samples": 2,
         "max_steps": 2, "batch_size": 8, "group_size": 4, "micro_batch_size": 8, "rollout_batch_size": 8,
         "max_new_tokens": 32, "eval_batch_size": 16, "save_every": 0}
"""Overrides of the demo recipe for --smoke (every row runs, in a few minutes on 2 cores)."""


def student_flops(cost: dict) -> float:
    """A run's FLOPs without evaluations and without the teacher's share."""
    by_phase = cost["flops"]["by_phase"]
    return sum(f for p, f in by_phase.items() if p not in EVAL_PHASES + TEACHER_PHASES)


def teacher_flops(cost: dict) -> float:
    return sum(cost["flops"]["by_phase"].get(p, 0.0) for p in TEACHER_PHASES)


def grpo_step_flops(summary: dict) -> float:
    """A GRPO run's FLOPs per step: its rollouts and train steps (no evaluations, no cold start)."""
    by_phase = summary["cost"]["flops"]["by_phase"]
    return (by_phase.get("rollout", 0.0) + by_phase.get("train", 0.0)) / summary["steps"]


def train_run(recipe: dict, out: Path, **overrides) -> dict:
    """A training run in this process (no evaluations inside it; every row is evaluated alike afterwards)."""
    from r1lite.train.trainer import Trainer

    cfg = build(GRPOConfig, {**recipe, **overrides, "eval_items": 0, "eval_base_plain": False, "preflight": False, "out": str(out)},
                source="distill_vs_rl")
    Trainer(cfg).train()
    return json.loads((out / "summary.json").read_text())


def measure(model_dir: str, task: tasks.Task, items: list, args) -> dict:
    """Greedy pass@1 and format rate, maj@8 at R1's sampling, on the held-out items."""
    from r1lite.engine import make_engine
    from r1lite.models import load_model, resolve_runtime
    from r1lite.packaged import stop_token_ids

    runtime = resolve_runtime()
    model, tokenizer = load_model(model_dir, runtime)
    engine = make_engine(model, tokenizer, runtime.dtype, stop_token_ids(tokenizer, model), args.eval_batch_size)
    _, greedy = evaluate.evaluate(engine, tokenizer, task, items, "r1", max_new_tokens=args.max_new_tokens, seed=0)
    _, voted = evaluate.evaluate(engine, tokenizer, task, items, "r1", samples=args.samples,
                                 max_new_tokens=args.max_new_tokens, seed=0)
    return {"pass@1": greedy["pass@1"], f"maj@{args.samples}": voted[f"maj@{args.samples}"],
            "pass@1_sampled": voted["pass@1"], "format_rate": greedy["format_rate"]}


def sft_plan(pairs: list, budget: float, epochs: int, batch_size: int, micro_batch_size: int, model, pad_id: int,
             seed: int) -> list[int]:
    """Indices of the traces, in training order, whose SFT costs ``budget`` FLOPs as train_sft
    counts them (pass_flops per micro-batch): ``epochs`` passes over as many traces as that allows,
    and the last pass cut at the batch that lands nearest the budget (a whole extra pass overshot
    it by half). With too few traces, more passes over all of them."""
    from r1lite.train.policy import make_group_batch, pass_flops

    def batch_flops(indices: list[int]) -> float:
        micros = [indices[m:m + micro_batch_size] for m in range(0, len(indices), micro_batch_size)]
        return sum(pass_flops(model, make_group_batch([pairs[j][0] for j in c], list(range(len(c))),
                                                      [pairs[j][1] for j in c], pad_id), backward=True) for c in micros)

    rng = random.Random(seed)
    pool = list(range(len(pairs)))
    rng.shuffle(pool)
    per_pair = sum(batch_flops(pool[i:i + batch_size]) for i in range(0, len(pool), batch_size)) / len(pool)
    chosen = pool[:max(batch_size, int(budget / (epochs * per_pair)))]
    order: list[int] = []
    spent = 0.0
    while True:
        epoch = list(chosen)
        rng.shuffle(epoch)
        for i in range(0, len(epoch), batch_size):
            cost = batch_flops(epoch[i:i + batch_size])
            if order and spent + cost - budget > budget - spent:  # this batch would land farther from the budget than stopping
                return order
            order += epoch[i:i + batch_size]
            spent += cost


def sft_row(pairs: list, budget: float, out: Path, args, recipe: dict, usd_per_hour: float) -> dict:
    """(b): SFT of the student on teacher traces for the budget; the model saved to ``out``."""
    import torch

    from r1lite.models import load_model, resolve_runtime

    runtime = resolve_runtime()
    start = time.perf_counter()
    model, tokenizer = load_model(recipe["model"], runtime, seed=0)
    encoded = [sft.encode_pair(tokenizer, m, p, c) for m, p, c in pairs]
    order = sft_plan(encoded, budget, args.sft_epochs, recipe["cold_start_batch_size"], recipe["micro_batch_size"], model,
                     tokenizer.pad_token_id, 0)
    torch.manual_seed(0)
    history = sft.train_sft(Policy(model), tokenizer, [encoded[i] for i in order], epochs=1, lr=recipe["cold_start_lr"],
                            batch_size=recipe["cold_start_batch_size"], micro_batch_size=recipe["micro_batch_size"], seed=0,
                            autocast=runtime.autocast, device=runtime.device)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    wall = time.perf_counter() - start
    return {"student_flops": sum(r["flops"] for r in history), "steps": len(history), "traces_used": len(set(order)),
            "wall_seconds": wall, "usd": wall / 3600 * usd_per_hour}


def smoke_teacher(folder: Path) -> str:
    """For --smoke: a tiny model trained briefly on R1-format answers (a teacher that is right sometimes)."""
    import torch

    from r1lite.models import load_model, resolve_runtime

    task = tasks.load_task("arithmetic", SMOKE["task_options"])
    model, tokenizer = load_model("tiny", resolve_runtime("cpu", "fp32"), seed=1)
    pairs = []
    for item in task.split("train"):
        messages, prefill = prompts.build_messages(item, task, "r1")
        pairs.append(sft.encode_pair(tokenizer, messages, prefill,
                                     f"<think>{item.question[8:-1]} = {item.answer}</think>\n<answer>{item.answer}</answer>"))
    sft.train_sft(Policy(model), tokenizer, pairs, epochs=8, lr=3e-3, batch_size=8, micro_batch_size=8, seed=0,
                  autocast=contextlib.nullcontext, device=torch.device("cpu"))
    model.save_pretrained(folder / "teacher")
    tokenizer.save_pretrained(folder / "teacher")
    return str(folder / "teacher")


def reused(args, teacher: str, task: tasks.Task, held_out: list) -> dict:
    """The earlier result ``--reuse`` names, checked against this run; {} without it."""
    if not args.reuse:
        return {}
    previous = json.loads(args.reuse.read_text())
    mine = {"teacher": teacher, "task": task.name, "held_out_items": len(held_out), "samples": args.samples, "smoke": args.smoke}
    theirs = {**{k: previous.get(k) for k in mine}, "teacher": previous["teacher"]["model"]}
    if mine != theirs:
        differ = ", ".join(f"{k} {theirs[k]!r} (this run: {mine[k]!r})" for k in mine if mine[k] != theirs[k])
        raise SystemExit(f"distill_vs_rl: {args.reuse} was measured with {differ}; rerun every row instead")
    if "grpo_step_flops" not in previous:  # results written before the key: from row (a)'s own run
        a = json.loads((Path(next(r for r in previous["rows"] if r["row"] == "a")["run"]) / "summary.json").read_text())
        previous["grpo_step_flops"] = grpo_step_flops(a)
    for row in previous["rows"]:
        row.setdefault("commit", previous["commit"])
    return previous


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="runs/demo", help="the teacher: a run directory or model directory (default: runs/demo)")
    ap.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "demo.yaml", help="row (a)'s recipe, and GRPO's in (d)")
    ap.add_argument("--eval-items", type=int, default=300, help="held-out items every row is evaluated on")
    ap.add_argument("--samples", type=int, default=8, help="samples per item for maj@k (default: 8)")
    ap.add_argument("--distill-prompts", type=int, default=2048, help="train prompts the teacher is asked (the trace pool)")
    ap.add_argument("--samples-per-prompt", type=int, default=1)
    ap.add_argument("--sft-epochs", type=int, default=2, help="passes over the traces in (b) (more when the pool is short)")
    ap.add_argument("--eval-batch-size", type=int, default=256)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "distill_vs_rl", help="where the rows' runs go")
    ap.add_argument("--out", type=Path, default=RESULTS / "distill_vs_rl.json")
    ap.add_argument("--rows", default="abcd", help="the rows to run (default: all); the others come from --reuse")
    ap.add_argument("--reuse", type=Path, help="an earlier result of this benchmark (same teacher, task, items) whose "
                                                "other rows, budget and traces are kept; each row records its commit")
    ap.add_argument("--smoke", action="store_true", help="every row at a tiny size on the tiny model (checks the script)")
    add_allow_dirty(ap)
    args = ap.parse_args()
    if set(args.rows) - set("abcd") or not args.rows:
        raise SystemExit(f"distill_vs_rl: --rows {args.rows!r}: give letters from abcd")
    if set(args.rows) != set("abcd") and not args.reuse:
        raise SystemExit("distill_vs_rl: --rows without all of abcd needs --reuse RESULT.json for the rest")
    commit = commit_fields("distill_vs_rl", args.allow_dirty or args.smoke)
    recipe = read_yaml(args.recipe)
    if args.smoke:
        recipe.update(SMOKE)
        args.eval_items, args.distill_prompts = 7, 24
    args.max_new_tokens = recipe["max_new_tokens"]
    args.work.mkdir(parents=True, exist_ok=True)
    if any(args.work.iterdir()):
        raise SystemExit(f"distill_vs_rl: {args.work} is not empty; give another --work")
    if args.smoke:  # a smoke run reusing an earlier one keeps its teacher
        teacher = json.loads(args.reuse.read_text())["teacher"]["model"] if args.reuse else smoke_teacher(args.work)
    else:
        teacher = args.teacher
    task = tasks.load_task(recipe["task"], recipe.get("task_options"))
    held_out = task.split("test", args.eval_items, seed=0)
    previous = reused(args, teacher, task, held_out)
    rows: dict[str, dict] = {r["row"]: r for r in previous.get("rows", []) if r["row"] not in args.rows}
    started = time.perf_counter()

    # (a) RL on the student: the budget
    if "a" in rows:
        budget, grpo_step = previous["budget_student_flops"], previous["grpo_step_flops"]
    else:
        a = train_run(recipe, args.work / "a")
        budget = student_flops(a["cost"])
        grpo_step = grpo_step_flops(a)
        rows["a"] = {"row": "a", "name": "RL on the student (own cold start + GRPO)", "run": str(args.work / "a"),
                     "student_flops": budget, "teacher_flops": 0.0, "wall_seconds": a["cost"]["wall_seconds"],
                     "usd": a["cost"]["usd"],
                     **measure(str(args.work / "a"), task, held_out, args)}

    # the teacher's traces
    if previous:
        traces = Path(previous["traces"]["card"]).with_name(Path(previous["traces"]["card"]).name.replace(".card.json", ".jsonl"))
        card = json.loads(Path(previous["traces"]["card"]).read_text())
    else:
        traces = args.work / "traces.jsonl"
        dcfg = build(collect.DistillConfig, {"teacher": teacher, "task": recipe["task"], "task_options": recipe.get("task_options", {}),
                                             "limit": args.distill_prompts, "samples_per_prompt": args.samples_per_prompt,
                                             "max_new_tokens": recipe["max_new_tokens"], "concurrency": 64, "out": str(traces)})
        from rich.console import Console

        card = collect.collect(dcfg, Console())
    pairs = read_pairs(str(traces))
    distill_flops, distill_seconds = card["compute"]["flops"], card["compute"]["seconds"]
    usd_per_hour = rows["a"]["usd"] / rows["a"]["wall_seconds"] * 3600  # the meter's price of one device-hour here

    # (b) SFT on the traces
    if "b" not in rows:
        b = sft_row(pairs, budget, args.work / "b", args, recipe, usd_per_hour)
        rows["b"] = {"row": "b", "name": "SFT on the teacher's verified traces", "run": str(args.work / "b"), **b,
                     "teacher_flops": distill_flops, "teacher_seconds": distill_seconds,
                     **measure(str(args.work / "b"), task, held_out, args)}

    # (c) on-policy distillation: calibrate the FLOPs per step, then run for the budget
    if "c" not in rows:
        on_policy = {"objective": "on_policy_distill", "teacher": teacher, "cold_start_items": 0, "beta": 0.0,
                     "dynamic_sampling": False}
        calibration = train_run(recipe, args.work / "c-calibration", **on_policy, max_steps=2)
        per_step = student_flops(calibration["cost"]) / 2
        c = train_run(recipe, args.work / "c", **on_policy, max_steps=max(1, round(budget / per_step)))
        rows["c"] = {"row": "c", "name": "on-policy distillation (reverse KL)", "run": str(args.work / "c"),
                     "student_flops": student_flops(c["cost"]), "teacher_flops": teacher_flops(c["cost"]),
                     "steps": c["steps"], "wall_seconds": c["cost"]["wall_seconds"], "usd": c["cost"]["usd"],
                     **measure(str(args.work / "c"), task, held_out, args)}

    # (d) SFT on traces for half the budget (the run's cold start: cold_start_epochs passes), GRPO for the rest
    if "d" not in rows:
        from r1lite.models import load_model, resolve_runtime

        student, tokenizer = load_model(recipe["model"], resolve_runtime(), seed=0)
        encoded = [sft.encode_pair(tokenizer, m, p, cc) for m, p, cc in pairs]
        subset = sorted(set(sft_plan(encoded, budget / 2, recipe["cold_start_epochs"], recipe["cold_start_batch_size"],
                                     recipe["micro_batch_size"], student, tokenizer.pad_token_id, 0)))
        write_jsonl(args.work / "d-traces.jsonl", [{"messages": pairs[i][0], "prefill": pairs[i][1], "completion": pairs[i][2]}
                                                   for i in subset])
        d = train_run(recipe, args.work / "d", cold_start_data=str(args.work / "d-traces.jsonl"), cold_start_items=0,
                      max_steps=max(1, round(budget / 2 / grpo_step)))
        rows["d"] = {"row": "d", "name": "SFT on traces, then GRPO", "run": str(args.work / "d"),
                     "student_flops": student_flops(d["cost"]), "teacher_flops": distill_flops * len(subset) / len(pairs),
                     "steps": d["steps"], "wall_seconds": d["cost"]["wall_seconds"], "usd": d["cost"]["usd"],
                     **measure(str(args.work / "d"), task, held_out, args)}

    rows = [{"commit": commit["commit"], **rows[k]} for k in "abcd"]  # a reused row keeps its own commit
    for row in rows:
        row["budget_ratio"] = row["student_flops"] / budget
        row["within_budget"] = abs(row["budget_ratio"] - 1) <= 0.10
    teacher_scores = previous["teacher"] if previous else {"model": teacher, **measure(teacher, task, held_out, args)}
    best_distilled = max(r["pass@1"] for r in rows[1:])
    result = {"benchmark": "distill_vs_rl", **commit,
              "machine": machine(), "smoke": args.smoke, "teacher": teacher_scores,
              "student": recipe["model"], "task": task.name, "held_out_items": len(held_out), "samples": args.samples,
              "budget_student_flops": budget, "grpo_step_flops": grpo_step,
              "traces": {"kept": card["counts"]["kept"], "answered": card["counts"]["answered"],
                         "card": str(sibling(traces, ".card.json"))},
              "rows": rows, "r1_ordering_holds": best_distilled >= rows[0]["pass@1"],
              "wall_seconds": time.perf_counter() - started + previous.get("wall_seconds", 0.0),
              "reused_from": previous.get("commit") and {"commit": previous["commit"], "rows": [r["row"] for r in previous["rows"] if r["row"] not in args.rows]}}
    write_json(args.out, result)
    print(f"| row | pass@1 | maj@{args.samples} | format | student FLOPs (x B) | teacher FLOPs | wall | cost |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| ({r['row']}) {r['name']} | {r['pass@1']:.1%} | {r[f'maj@{args.samples}']:.1%} | {r['format_rate']:.0%} | "
              f"{r['student_flops']:.3g} ({r['budget_ratio']:.2f}) | {r['teacher_flops']:.3g} | {r['wall_seconds']:.0f} s | "
              f"${r['usd'] or 0:.4f} |")
    print(f"teacher {teacher}: pass@1 {teacher_scores['pass@1']:.1%}; R1's ordering (distillation >= RL at equal "
          f"student compute) {'holds' if result['r1_ordering_holds'] else 'does not hold'} here → {args.out}")


if __name__ == "__main__":
    main()
