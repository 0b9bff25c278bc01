"""Where the seconds of one GRPO train step go (after the rollout), on the embedded model.

Settings follow bench_grpo_vs_trl.py: 2 prompts x 8 completions, at most 64 new tokens, full
fine-tuning, beta = 0, mu = 1. One rollout is drawn, then the train step on it is timed in phases
(forward with the fused vocabulary head, backward, gradient clipping + AdamW) and profiled with
torch.profiler; the top operators by self time are printed.

    python benchmarks/profile_train_step.py        # writes benchmarks/results/train_step_profile.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch
from common import RESULTS, add_allow_dirty, commit_fields, machine

from r1lite.config import build
from r1lite.train import grpo
from r1lite.train.config import GRPOConfig
from r1lite.train.policy import make_group_batch, pass_flops
from r1lite.train.trainer import Trainer


def phases(trainer: Trainer, groups: list[dict]) -> dict:
    """Seconds of forward, backward and optimizer for one train step on ``groups`` (one chunk), on
    the trainer's device (each clock read waits for a GPU to finish), its tokens and its FLOPs."""
    cfg, device = trainer.cfg, trainer.runtime.device
    completions = [c for g in groups for c in g["completions"]]
    G = cfg.optim.group_size
    batch = make_group_batch([g["prompt"] for g in groups], [i // G for i in range(len(completions))],
                             [c.token_ids for c in completions], trainer.tokenizer.pad_token_id).to(device)
    advantages = grpo.group_advantages(torch.cat([g["reward"] for g in groups]), G, cfg.loss.scale_rewards).to(device)
    weights = grpo.token_weights(batch.completion_mask, cfg.loss.loss_type, G, cfg.sampling.max_new_tokens)

    def clock() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    t0 = clock()
    logp, _ = trainer.logprobs(batch.rows(slice(None)))
    loss, _ = grpo.policy_loss(logp, logp.detach(), None, advantages, weights, cfg.loss)
    t1 = clock()
    loss.backward()
    t2 = clock()
    torch.nn.utils.clip_grad_norm_(trainer.params, cfg.optim.max_grad_norm)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    t3 = clock()
    return {"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2, "tokens": batch.tokens,
            "flops": pass_flops(trainer.model, batch, backward=True)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", help="default: benchmarks/results/train_step_profile-<cpu kind>.json")
    add_allow_dirty(p)
    args = p.parse_args()
    commit = commit_fields("profile_train_step", args.allow_dirty)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = build(GRPOConfig, dict(model="default", task="arithmetic", format="plain:2", batch_size=16, group_size=8,
                                     micro_batch_size=16, max_new_tokens=64, beta=0.0, mu=1, lr=1e-6, eval_items=0,
                                     save_every=0, max_steps=1, out=f"{tmp}/run"))
        trainer = Trainer(cfg)
        trainer.setup()
        groups, _ = trainer.rollout()
        runs = [phases(trainer, groups) for _ in range(args.repeats + 1)][1:]  # the first warms up
        median = {k: statistics.median(r[k] for r in runs) for k in ("forward", "backward", "optimizer")}
        total = sum(median.values())
        print(f"runtime: {trainer.runtime.describe()}; {runs[0]['tokens']} tokens per step")
        for k, v in median.items():
            print(f"  {k:9s} {v:6.2f} s  {v / total:5.0%}")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            phases(trainer, groups)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        print(table)
        top = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:15]
        ops = [{"op": e.key, "self_seconds": e.self_cpu_time_total / 1e6, "calls": e.count} for e in top]
    result = {"benchmark": "train_step_profile", **commit, "machine": machine(),
              "runtime": trainer.runtime.describe(), "tokens": runs[0]["tokens"], "median_seconds": median,
              "top_ops": ops}
    out = RESULTS / f"train_step_profile-{result['machine']['cpu_kind']}.json" if args.out is None else args.out
    with open(out, "w") as f:
        f.write(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
