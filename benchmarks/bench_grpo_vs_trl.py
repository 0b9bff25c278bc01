"""One GRPO step, r1lite against TRL's GRPOTrainer, on the same settings, each side in its own process.

Settings (both sides): the embedded SmolLM2-135M-Instruct, full fine-tuning; 2-digit addition
prompts in the ``plain:2`` phrasing (the same chat messages); one step = 2 prompts x 8 completions and one
optimizer update; at most 64 new tokens; sampling at temperature 1, no top-k/top-p; beta = 0 (no
reference model); mu = 1; the token-mean ("dapo") loss with group std scaling; the same learning
rate; no activation checkpointing; the same reward (r1lite's accuracy + 0.1 x format); the dtype
r1lite resolves for the machine (bf16 where bf16 is fast, else fp32) on both sides.

Why plain:2 and not the R1 format: the untouched base model never writes <think>/<answer>, so in
the R1 format every reward is 0 and every group has zero advantage; TRL would still run its
forward and backward on a zero loss while r1lite skips them (exactly: the gradient is 0), which
would time nothing useful. The base model answers ~24% of plain:2 items correctly, so most groups
have varied rewards and both sides train. r1lite still leaves the groups with equal rewards out
of its passes (exact at beta = 0); ``train_tokens`` per step shows how many tokens it trained on.

Each side runs in a child process (peak RSS only grows within a process) and reports per-step
seconds, tokens generated, its resolved config and its peak RSS. The result is the median of steps
3..N on each side: ``speedup`` = TRL median / r1lite median, ``memory_ratio`` = r1lite peak RSS /
TRL peak RSS. Both sides run ``--runs`` times (3), one after the other; the result is the median
run's (``speedups`` and ``each_run`` keep every run).

    pip install -e '.[bench]'
    python benchmarks/bench_grpo_vs_trl.py --steps 8     # writes benchmarks/results/grpo_vs_trl-<cpu kind>.json
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, add_allow_dirty, commit_fields, machine

SETTINGS = {"prompts_per_step": 2, "group_size": 8, "max_new_tokens": 64, "lr": 1e-6, "beta": 0.0, "mu": 1,
            "loss_type": "dapo", "scale_rewards": "group", "temperature": 1.0, "task": "arithmetic", "format": "plain:2",
            "seed": 0}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_r1lite(steps: int) -> dict:
    from r1lite.config import build, to_dict
    from r1lite.train.config import GRPOConfig
    from r1lite.train.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = build(GRPOConfig, dict(
            model="default", task=SETTINGS["task"], format=SETTINGS["format"], seed=SETTINGS["seed"],
            max_steps=steps, batch_size=SETTINGS["prompts_per_step"] * SETTINGS["group_size"],
            group_size=SETTINGS["group_size"], micro_batch_size=16, mu=SETTINGS["mu"],
            max_new_tokens=SETTINGS["max_new_tokens"], temperature=SETTINGS["temperature"],
            loss_type=SETTINGS["loss_type"], scale_rewards=SETTINGS["scale_rewards"], beta=SETTINGS["beta"],
            lr=SETTINGS["lr"], rewards={"accuracy": 1.0, "format": 0.1}, eval_items=0, save_every=0, preflight=False,
            out=f"{tmp}/run"))
        trainer = Trainer(cfg)
        trainer.train()
        rows = [json.loads(line) for line in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        return {"config": to_dict(cfg), "runtime": trainer.runtime.describe(),
                "step_seconds": [r["step_seconds"] for r in rows],
                "rollout_seconds": [r["rollout_seconds"] for r in rows],
                "train_seconds": [r["train_seconds"] for r in rows],
                "tokens_generated": [round(r["completion_len_mean"] * cfg.optim.batch_size) for r in rows],
                "train_tokens": [r.get("train_tokens", 0) for r in rows],
                "peak_rss_mb": peak_rss_mb()}


def run_trl(steps: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from r1lite import prompts, tasks
    from r1lite.models import load_model, resolve_runtime

    runtime = resolve_runtime()
    model, tokenizer = load_model("default", runtime)
    task = tasks.load_task(SETTINGS["task"])
    items = task.split("train", steps * SETTINGS["prompts_per_step"] * 4, seed=SETTINGS["seed"])
    by_id = {item.id: item for item in items}
    data = Dataset.from_list([{"prompt": prompts.build_messages(item, task, SETTINGS["format"])[0], "item_id": item.id}
                              for item in items])

    def accuracy_and_format(completions, item_id, **_):
        out = []
        for messages, iid in zip(completions, item_id):
            s = prompts.score(messages[0]["content"], by_id[iid], task, SETTINGS["format"])
            out.append((s["accuracy"] or 0.0) + 0.1 * s["format"])
        return out

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds, self.tokens, self._t = [], [], 0.0

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.seconds.append(time.perf_counter() - self._t)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                self.tokens.append(round(logs["completions/mean_length"] * SETTINGS["prompts_per_step"] * SETTINGS["group_size"]))

    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp, max_steps=steps, per_device_train_batch_size=SETTINGS["prompts_per_step"] * SETTINGS["group_size"],
            gradient_accumulation_steps=1, num_generations=SETTINGS["group_size"],
            max_completion_length=SETTINGS["max_new_tokens"], learning_rate=SETTINGS["lr"], beta=SETTINGS["beta"],
            num_iterations=SETTINGS["mu"], loss_type=SETTINGS["loss_type"], scale_rewards=SETTINGS["scale_rewards"],
            temperature=SETTINGS["temperature"], top_k=0, top_p=1.0, gradient_checkpointing=False,
            bf16=runtime.dtype == torch.bfloat16, use_cpu=runtime.device.type == "cpu", seed=SETTINGS["seed"],
            reward_weights=[1.0], logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
            dataloader_num_workers=0, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
            max_grad_norm=1.0, remove_unused_columns=False)
        timer = StepTimer()
        trainer = GRPOTrainer(model=model, processing_class=tokenizer, reward_funcs=[accuracy_and_format], args=args,
                              train_dataset=data, callbacks=[timer])
        trainer.train()
        config = {k: v for k, v in args.to_dict().items() if not k.startswith("_")}
    return {"config": config, "runtime": runtime.describe(), "step_seconds": timer.seconds,
            "tokens_generated": timer.tokens, "peak_rss_mb": peak_rss_mb()}


def child(side: str, steps: int) -> dict:
    """Run one side in a fresh interpreter; its JSON report is the last line it prints."""
    proc = subprocess.run([sys.executable, __file__, "--side", side, "--steps", str(steps)], capture_output=True,
                          text=True, cwd=Path(__file__).parent)
    if proc.returncode != 0:
        raise SystemExit(f"{side} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8, help="steps per side (>= 6); the median of steps 3..N counts")
    p.add_argument("--runs", type=int, default=3, help="runs of both sides; the median speedup counts, each is kept")
    p.add_argument("--side", choices=("r1lite", "trl"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help="default: benchmarks/results/grpo_vs_trl-<cpu kind>.json")
    add_allow_dirty(p)
    args = p.parse_args()
    if args.steps < 6:
        raise SystemExit("--steps must be at least 6 (steps 1-2 are warm-up)")
    if args.side:
        print(json.dumps(run_r1lite(args.steps) if args.side == "r1lite" else run_trl(args.steps)))
        return
    commit = commit_fields("bench_grpo_vs_trl", args.allow_dirty)  # before anything is measured: the code that runs
    runs = []
    for r in range(args.runs):
        sides = {}
        for side in ("trl", "r1lite"):  # one at a time: nothing else running while a side is timed
            print(f"run {r + 1}/{args.runs}: {side} ...", flush=True)
            sides[side] = child(side, args.steps)
            s = sides[side]
            print(f"  {side}: steps {[round(x, 1) for x in s['step_seconds']]} s, peak RSS {s['peak_rss_mb']:.0f} MB", flush=True)
        median = {side: statistics.median(s["step_seconds"][2:]) for side, s in sides.items()}
        runs.append({"median_step_seconds": median, "peak_rss_mb": {side: s["peak_rss_mb"] for side, s in sides.items()},
                     "speedup": median["trl"] / median["r1lite"],
                     "memory_ratio": sides["r1lite"]["peak_rss_mb"] / sides["trl"]["peak_rss_mb"], "sides": sides})
        print(f"  run {r + 1}: {runs[-1]['speedup']:.2f}x faster, peak RSS ratio {runs[-1]['memory_ratio']:.2f}", flush=True)
    mid = sorted(runs, key=lambda run: run["speedup"])[len(runs) // 2]  # the run with the median speedup
    result = {
        "benchmark": "grpo_vs_trl", **commit, "machine": machine(), "settings": SETTINGS,
        "steps": args.steps, "runs": len(runs),
        "speedup": statistics.median(run["speedup"] for run in runs),
        "speedups": [run["speedup"] for run in runs],
        "memory_ratio": statistics.median(run["memory_ratio"] for run in runs),
        "median_step_seconds": mid["median_step_seconds"], "peak_rss_mb": mid["peak_rss_mb"],
        "sides": mid["sides"], "each_run": [{k: v for k, v in run.items() if k != "sides"} for run in runs],
    }
    median = result["median_step_seconds"]
    out = args.out or RESULTS / f"grpo_vs_trl-{result['machine']['cpu_kind']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"median of {len(runs)} runs: {result['speedup']:.2f}x faster (each: "
          f"{', '.join(f'{x:.2f}x' for x in result['speedups'])}); the median run's step (steps 3..{args.steps}): TRL "
          f"{median['trl']:.2f} s, r1lite {median['r1lite']:.2f} s; peak RSS ratio (r1lite / TRL) {result['memory_ratio']:.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
