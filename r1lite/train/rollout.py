"""One GRPO step's rollouts: sample G completions of each prompt, score them with the configured
rewards, keep the groups DAPO's dynamic sampling keeps (refilling with new prompts), and the step's
metrics row.

Under torchrun each rank samples its contiguous share of every round's prompts
(:meth:`r1lite.train.distributed.World.span`) with the seed of the prompt's index in the whole round,
then the groups' rewards and lengths are gathered: every rank knows what the whole batch kept, so
the refill rounds, and the metrics, are those of one process.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from r1lite import evaluate, prompts, rewards, tasks
from r1lite.engine import GenerationStats, Request, Sampling, derive_seed
from r1lite.errors import UsageError
from r1lite.prompts import item_prompts
from r1lite.train import grpo
from r1lite.train.config import GRPOConfig
from r1lite.train.distributed import World


def sample_groups(engine, tokenizer, task: tasks.Task, cfg: GRPOConfig, world: World, step: int,
                  next_items: Callable[[int], list[tasks.Item]], stats: GenerationStats) -> tuple[list[dict], dict]:
    """Sample groups for one step; with dynamic sampling keep only informative groups and refill.

    Prompt i of round r of step s samples with seed (seed, s, r, i): the completions do not depend
    on the batch they were decoded in, nor on the rank. ``next_items(n)``: the next n training
    items (the same on every rank). Returns this rank's kept groups and ``info``: every rank's
    groups as ``seen`` (rewards and lengths), ``groups_sampled``, ``groups_kept``, ``rollout_tokens``."""
    s = cfg.sampling
    stops = tuple(dict.fromkeys([*s.stop, *prompts.stop_strings(cfg.template, cfg.format)]))  # r1_zero: </answer>
    sampling = Sampling(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                        stop=stops)
    groups: list[dict] = []  # this rank's kept groups
    seen: list[dict] = []  # every rank's groups, kept or not
    kept = rounds = 0
    P, G = cfg.optim.prompts_per_step, cfg.optim.group_size
    while kept < P:
        items = next_items(P - kept)
        share = world.span(len(items))
        prompted = item_prompts(tokenizer, task, items[share], cfg.format, cfg.prefill_think, cfg.template)
        requests = [Request(p.ids, sampling, n=G, seed=derive_seed(cfg.seed, step, rounds, i))
                    for i, p in zip(range(share.start, share.stop), prompted)]
        outputs = engine.generate(requests, stats=stats)
        mine = [score_group(cfg, task, item, p.ids, p.prefill, c) for item, p, c in zip(items[share], prompted, outputs)]
        keep = [not cfg.loss.dynamic_sampling or bool(grpo.informative_groups(g["reward"], G)[0]) for g in mine]
        groups += [g for g, k in zip(mine, keep) if k]
        round_seen = world.gather_lists([(g["seen"], k) for g, k in zip(mine, keep)])
        seen += [g for g, _ in round_seen]
        kept += sum(k for _, k in round_seen)
        rounds += 1
        if not cfg.loss.dynamic_sampling or rounds > cfg.loss.max_refill_rounds:
            break
    new_tokens = world.sum([stats.new_tokens])[0]
    return groups, {"seen": seen, "groups_sampled": len(seen), "groups_kept": kept, "rollout_tokens": int(new_tokens)}


def score_group(cfg: GRPOConfig, task: tasks.Task, item: tasks.Item, prompt: list[int], prefill: str,
                completions) -> dict:
    """Rewards of one group: each configured function, weighted and summed. ``seen`` holds what
    the step's metrics need (small enough to gather from every rank). Under template r1_zero each
    text is scored up to its ``</answer>`` (:func:`r1lite.prompts.stopped_text`)."""
    stops = prompts.stop_strings(cfg.template, cfg.format)
    texts = [prompts.stopped_text(c.text, stops) for c in completions]
    scored = [prompts.score(text, item, task, cfg.format, prefill) for text in texts]
    accuracy = [s["accuracy"] or 0.0 for s in scored]  # None (unusable gold) counts 0
    parts: dict[str, list[float]] = {}
    for name in cfg.loss.rewards:
        if name == "format_partial":
            parts[name] = [rewards.format_partial(prefill + text) for text in texts]
        elif name == "answer_format":
            parts[name] = [prompts.answer_checkable(text, task, cfg.format, prefill) for text in texts]
        else:
            parts[name] = accuracy if name == "accuracy" else [s["format"] for s in scored]
    weights = dict(cfg.loss.rewards)
    if cfg.loss.overlong_buffer:
        parts["overlong"] = [rewards.overlong_penalty(len(c.token_ids), cfg.sampling.max_new_tokens,
                                                      cfg.loss.overlong_buffer) for c in completions]
        weights["overlong"] = 1.0
    total = sum(weights[name] * torch.tensor(vals, dtype=torch.float32) for name, vals in parts.items())
    thinks = [evaluate.think_text(prefill + text) for text in texts]
    seen = {"reward": total, "parts": parts, "accuracy": accuracy, "format": [s["format"] for s in scored],
            "lengths": [len(c.token_ids) for c in completions], "truncated": [c.finish == "length" for c in completions],
            "think_chars": [None if t is None else len(t.strip()) for t in thinks], "sample": prefill + texts[0]}
    return {"prompt": prompt, "completions": completions, "reward": total, "seen": seen}


def random_rewards(groups: list[dict], info: dict, running: list[float], seed: int, step: int, start: int) -> None:
    """The "random reward" control (the spurious-rewards check): every completion's trained reward
    becomes 0 or 1 at random, 1 with probability the real reward's running mean (``running``: its sum
    and count over every completion so far, this step's included; updated in place), so the run
    sees rewards of the real run's size that carry no information. Each group's draws are seeded by
    (seed, step, its index in the step): the same on every rank and after a resume. ``groups``: this
    rank's, which start at index ``start`` of ``info["seen"]``; the real rewards stay in each seen
    group as ``real_reward``."""
    seen = info["seen"]
    real = torch.cat([g["reward"] for g in seen])
    running[0] += float(real.sum())
    running[1] += real.numel()
    p = min(max(running[0] / running[1], 0.0), 1.0)
    for j, g in enumerate(seen):
        g["real_reward"] = g["reward"]
        draw = torch.rand(len(g["reward"]), generator=torch.Generator().manual_seed(derive_seed(seed, step, j, 1)))
        g["reward"] = (draw < p).float()
    for i, g in enumerate(groups):
        g["reward"] = seen[start + i]["reward"]


def sample_metrics(info: dict) -> dict:
    """What a step's sampled groups say (every rank's): rewards, accuracy, format, thinking and
    lengths, and the groups kept; :func:`step_metrics` and :func:`preflight` both read it."""
    seen = info["seen"]
    rewards_all = torch.cat([g["reward"] for g in seen])
    lengths = [n for g in seen for n in g["lengths"]]
    row = {"reward_mean": float(rewards_all.mean()), "reward_std": float(rewards_all.std()),
           "accuracy": float(sum(sum(g["accuracy"]) for g in seen) / len(lengths))}
    if "real_reward" in seen[0]:  # reward_control random: what the real rewards would have been
        row["real_reward_mean"] = float(torch.cat([g["real_reward"] for g in seen]).mean())
    for name in seen[0]["parts"]:
        vals = torch.tensor([v for g in seen for v in g["parts"][name]])
        row[f"rewards/{name}_mean"], row[f"rewards/{name}_std"] = float(vals.mean()), float(vals.std())
    row["format_rate"] = sum(sum(g["format"]) for g in seen) / len(lengths)
    thinks = [n for g in seen for n in g["think_chars"] if n is not None]  # completions that close </think>
    row["think_chars_mean"] = sum(thinks) / len(thinks) if thinks else None
    row["empty_think_frac"] = sum(n == 0 for n in thinks) / len(thinks) if thinks else None
    row["sample"] = seen[0]["sample"]  # the step's first completion, as the report shows it
    row.update({"completion_len_mean": sum(lengths) / len(lengths), "completion_len_max": max(lengths),
                "truncated_frac": sum(t for g in seen for t in g["truncated"]) / len(lengths),
                "groups_kept": info["groups_kept"], "groups_sampled": info["groups_sampled"]})
    return row


def step_metrics(step: int, info: dict, train: dict | None, seconds: dict, lr: float) -> dict:
    """The metrics row of a step from :func:`sample_groups`' ``info``, the update's figures (None:
    no group was kept, no update), the phases' seconds and the learning rate."""
    row = {"step": step, **sample_metrics(info)}
    row.update(train or {"loss": None, "clip_frac": None, "kl": None, "entropy": None, "grad_norm": None, "lr": lr,
                         "loss_tokens": 0})
    row.update({"step_seconds": seconds["step"], "rollout_seconds": seconds["rollout"], "train_seconds": seconds["train"],
                "tokens_per_s": info["rollout_tokens"] / seconds["rollout"] if seconds["rollout"] else 0.0})
    return row


def preflight(info: dict, group_size: int) -> dict:
    """What the first step's groups say before any update: reward mean, the share of groups whose
    rewards are all equal (they give GRPO no gradient), format rate and mean completion length."""
    seen, m = info["seen"], sample_metrics(info)
    alike = 1.0 - float(grpo.informative_groups(torch.cat([g["reward"] for g in seen]), group_size).float().mean())
    return {"groups": len(seen), "reward_mean": m["reward_mean"], "groups_alike": alike, "format_rate": m["format_rate"],
            "completion_len_mean": m["completion_len_mean"]}


def preflight_verdict(record: dict, console, refuse: bool) -> None:
    """Print the pre-flight's figures; with ``refuse``, stop (exit 2) when every group scored alike."""
    console.print(f"pre-flight: reward mean {record['reward_mean']:.3g}, {record['groups_alike']:.0%} of "
                  f"{record['groups']} groups scored alike, format {record['format_rate']:.0%}, "
                  f"mean length {record['completion_len_mean']:.0f} tokens")
    if record["groups_alike"] == 1.0 and refuse:
        raise UsageError(preflight_refusal(record))


def preflight_refusal(record: dict) -> str:
    """The one line a run stops with when every group of its first step scored alike."""
    return (f"pre-flight: all {record['groups']} groups of the first step scored alike (reward mean "
            f"{record['reward_mean']:.3g}, format {record['format_rate']:.0%}), so GRPO would learn nothing; "
            "start from a cold start (cold_start_items, or cold_start_data), make the task easier (--task-options), "
            "sample more per prompt (group_size), raise the temperature, or add a format reward (rewards: "
            "{accuracy: 1.0, format: 0.1}); --no-preflight (preflight: false) trains anyway")
