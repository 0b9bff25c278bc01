"""The probe behind ``r1lite cost``'s measured estimate: a minute at most of the recipe's own code.

The probe builds the run's :class:`~r1lite.train.trainer.Trainer` in a temporary directory and times,
on this machine, in the recipe's precision:

1. setup: loading the model, the optimizer and the engine (``Trainer.setup``);
2. one rollout batch, exactly as a GRPO step samples it (``Trainer.rollout``), metered;
3. two train steps over one micro-batch of those groups (``Trainer.train_step``): the first (its
   first calls at these shapes and the optimizer's state cost a training phase once) and a second,
   metered, which gives the rate; and one optimizer step alone;
4. one checkpoint and the report.

From (2) come the workload assumptions: completion lengths and the fraction of groups whose
rewards are all equal; a run without a cold start also takes the untrained model's greedy answers
(their lengths and rewards), toward which RL is assumed to move its rollouts. A run with a cold
start trains GRPO on a policy taught by its traces, which the probe cannot make in a minute; so for such a recipe the rollout batch is sampled the way the
cold start samples (its phrasing and temperature), and the policy after it is assumed to write
what its traces hold: the verified answers rewritten in ``<think>/<answer>``, and groups scoring
alike as often as the base's plain answers do. The train step's groups get alternating rewards for the timing (a
group with equal rewards would be left out), so it always computes a gradient.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from r1lite import report
from r1lite.config import with_values
from r1lite.cost.memory import MIB, MemoryProbe, kv_positions, pass_tokens
from r1lite.cost.work import DecodeFlops, Speed, data_traces
from r1lite.cost.workload import Workload, mean
from r1lite.files import append_jsonl
from r1lite.meter.memory import release_free, reset_peak, status_mib
from r1lite.meter.flops import Weights
from r1lite.models import ModelShape
from r1lite.prompts import item_prompts, stop_strings
from r1lite.train import grpo, rollout, sft
from r1lite.train.config import GRPOConfig

PROBE_SECONDS = 60.0
"""What the probe aims to stay under; a recipe too big for this machine says so in its notes."""


@dataclass
class Probe:
    """What the probe measured, and the loaded model's shape and FLOP counter."""

    speed: Speed
    workload: Workload
    memory: MemoryProbe | None
    """Resident memory as measured (None where the process's resident set cannot be read)."""
    shape: ModelShape
    weights: Weights
    decode_flops: DecodeFlops
    """The loaded decoder's own ``flops`` (padded columns as this machine computes them)."""
    tokenizer: object
    task: object
    device: str
    """The runtime, in words (device, dtype and why)."""
    seconds: float
    """How long the probe took."""


def probe_config(cfg: GRPOConfig, out: str) -> GRPOConfig:
    """The recipe as the probe runs it: into ``out``, one rollout round, and for a cold-start recipe
    the cold start's phrasing and temperature (see the module docstring)."""
    changes: dict = {"out": out, "dynamic_sampling": False}
    if cfg.cold_start.items:
        changes.update(format=cfg.cold_start.format, template="chat", prefill_think=False,  # as the cold start samples
                       temperature=cfg.cold_start.temperature, cold_start_items=0)
    return with_values(cfg, **changes)


def trace_stats(groups: list[dict], tokenizer, cfg: GRPOConfig) -> tuple[list[int], float]:
    """From plain-answer groups: the token lengths of the traces a cold start would keep (each
    group's shortest verified answers rewritten in the R1 format, eos included), and the traces it
    is expected to keep per item. An item whose group
    is right a fraction p of the time keeps min(``cold_start_per_item``, k) traces where k ~
    Binomial(``cold_start_samples``, p); every sample of the group informs p, so a probe of a few
    items says more than its first ``cold_start_samples`` samples would."""
    lengths, kept = [], []
    for g in groups:
        correct = [c for c, acc in zip(g["completions"], g["seen"]["accuracy"]) if c.finish == "stop" and acc == 1.0]
        traces = sorted(len(tokenizer.encode(sft.r1_trace(c.text), add_special_tokens=False)) + 1 for c in correct)
        lengths += traces[:cfg.cold_start.per_item]  # the cold start keeps the shortest
        p, n = len(correct) / len(g["completions"]), cfg.cold_start.samples
        kept.append(sum(min(cfg.cold_start.per_item, k) * math.comb(n, k) * p ** k * (1 - p) ** (n - k)
                        for k in range(n + 1)))
    return lengths, mean(kept)


def run_probe(cfg: GRPOConfig, console) -> Probe:
    """Measure the recipe on this machine (see the module docstring)."""
    from rich.console import Console

    from r1lite.train.policy import model_shape, model_weights
    from r1lite.train.trainer import Trainer

    if cfg.model == "default":  # its one-time cache build is not a run's setup: out of the timing
        from r1lite.packaged import embedded_checkpoint

        embedded_checkpoint()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="r1lite-probe-") as tmp:
        pcfg = probe_config(cfg, tmp)
        trainer = Trainer(pcfg, console=Console(quiet=True))
        console.print(f"probe: loading {cfg.model} ({trainer.runtime.describe()})")
        trainer.setup()
        setup = time.perf_counter() - start
        release_free()
        resident = status_mib("VmRSS")
        trainer.engine.unload()  # a run's passes and updates run without the engine's copy of the weights
        release_free()
        engine_copy = max(0.0, resident - (status_mib("VmRSS") or resident)) if resident is not None else 0.0
        G = pcfg.optim.group_size
        console.print(f"probe: one rollout batch ({pcfg.optim.prompts_per_step} prompts x {G}, "
                      f"{pcfg.format} prompt, temperature {pcfg.sampling.temperature:g})")
        t0 = time.perf_counter()
        with trainer.meter.phase("rollout"):
            groups, info = trainer.rollout()
        rollout_seconds = time.perf_counter() - t0
        peaks = dict(trainer.meter.memory.by_phase)  # loading ("setup") and the rollout batch
        lengths = [len(c.token_ids) for g in groups for c in g["completions"]]
        rewards = torch.cat([g["reward"] for g in groups])
        skipped = 1.0 - float(grpo.informative_groups(rewards, G).float().mean())
        eval_lengths, greedy_rewards = greedy_eval_lengths(trainer, cfg, groups, console)
        traces, per_item = trace_stats(groups, trainer.tokenizer, cfg) if cfg.cold_start.items else (lengths, 0.0)
        if cfg.cold_start.data:  # the policy after SFT on the file writes like its traces
            traces = [min(len(c), cfg.sampling.max_new_tokens) for _, c in data_traces(cfg, trainer.tokenizer)]
            skipped = 0.0  # what the SFT'd policy scores is unknown here: every group trains (an upper bound)
        elif cfg.cold_start.items and not traces:  # nothing verified in the probe: upper bounds (see probe_notes)
            per_item = float(cfg.cold_start.per_item)

        chunk = groups[:max(1, pcfg.optim.micro_batch_size // G)]
        for g in chunk:  # alternating rewards: every group trains (the timing needs its gradient)
            g["reward"] = torch.arange(G, dtype=torch.float32) % 2
        console.print(f"probe: two train steps ({len(chunk) * G} completions): the first, and a later one")
        t0 = time.perf_counter()
        trainer.train_step(chunk)  # first calls at these shapes, the optimizer's state: once a phase
        first_seconds = time.perf_counter() - t0
        trainer.meter.flops_by_phase.pop("train")
        release_free()
        before = status_mib("VmRSS")
        t0 = time.perf_counter()
        with trainer.meter.phase("train"):
            train = trainer.train_step(chunk)
        train_seconds = time.perf_counter() - t0
        memory = None
        if resident is not None and before is not None and "train" in trainer.meter.memory.by_phase:
            chunk_lengths = [len(c.token_ids) for g in chunk for c in g["completions"]]
            memory = MemoryProbe(
                setup_peak=peaks.get("setup", resident), resident=resident, rollout_peak=peaks.get("rollout", resident),
                rollout_positions=kv_positions([g["prompt"] for g in groups], G, pcfg.sampling.rollout_batch_size,
                                               pcfg.sampling.max_new_tokens),
                optimizer=max(0.0, before - (resident - engine_copy)), train_peak=trainer.meter.memory.by_phase["train"],
                train_before=before, train_tokens=round(pass_tokens([g["prompt"] for g in chunk], len(chunk_lengths), chunk_lengths)),
                gradients=sum(p.numel() for p in trainer.params) * 4 / MIB, engine=engine_copy)
        optimizer_seconds = time_optimizer_step(trainer)
        release_free()
        resets = reset_peak()
        t0 = time.perf_counter()
        trainer.save_checkpoint()
        checkpoint_seconds = time.perf_counter() - t0
        if memory is not None and resets:  # writing a checkpoint with the optimizer's state held
            memory = dataclasses.replace(memory, checkpoint_peak=status_mib("VmHWM") or 0.0)
        t0 = time.perf_counter()
        append_jsonl(Path(tmp) / "metrics.jsonl", rollout.step_metrics(
            1, info, train, {"step": rollout_seconds + train_seconds, "rollout": rollout_seconds, "train": train_seconds},
            trainer.scheduler.get_last_lr()[0]))
        report.write_report(Path(tmp))
        report_seconds = time.perf_counter() - t0
        base = trainer.model.get_base_model() if cfg.optim.lora else trainer.model
        flops = trainer.meter.flops_by_phase
        trainer.engine.sync(trainer.model)  # its flops() reads how its packed products pad their columns
        decoder = trainer.engine.decoder
        seconds = time.perf_counter() - start
        generate_rate = flops["rollout"] / rollout_seconds
        train_rate = flops["train"] / max(1e-9, train_seconds - pcfg.optim.mu * optimizer_seconds)
        first_step = max(0.0, first_seconds - train_seconds)
        from r1lite.models import cpu_kind

        kind = f"CPU kind {cpu_kind()}, " if trainer.runtime.device.type == "cpu" else ""
        speed_notes = [f"measured on this machine ({kind}{trainer.runtime.describe()}) by a {seconds:.0f} s probe: "
                       f"generation at {generate_rate / 1e9:.1f} GFLOP/s, training passes at {train_rate / 1e9:.1f} "
                       f"GFLOP/s (a training phase's first step {first_step:.1f} s more), an optimizer step "
                       f"{optimizer_seconds:.2f} s, setup {setup:.1f} s, a checkpoint "
                       f"{checkpoint_seconds:.1f} s, the report {report_seconds:.1f} s"]
        if seconds > PROBE_SECONDS:
            speed_notes.append(f"the probe took {seconds:.0f} s, over its {PROBE_SECONDS:.0f} s aim: the model is large "
                               "for this machine (estimate a bigger one with --hardware and --no-probe)")
        speed = Speed("measured probe", generate_rate, train_rate, optimizer_seconds=optimizer_seconds,
                      first_step_seconds=first_step, setup_seconds=setup, checkpoint_seconds=checkpoint_seconds,
                      report_seconds=report_seconds, notes=tuple(speed_notes))
        final = eval_lengths.pop("greedy", [])
        workload = Workload(lengths, traces or [cfg.sampling.max_new_tokens], skipped, per_item,
                            eval_lengths=eval_lengths,
                            final_lengths=final, sampled_rewards=rewards.tolist() if greedy_rewards else [],
                            final_rewards=greedy_rewards,
                            notes=probe_notes(cfg, pcfg, lengths, skipped, traces, eval_lengths))
        return Probe(speed, workload, memory, model_shape(base), model_weights(base), decoder.flops, trainer.tokenizer,
                     trainer.task, trainer.runtime.describe(), seconds)


EVAL_SAMPLE = 32
"""Held-out items the probe decodes greedily per evaluation of the untrained model."""


def greedy_eval_lengths(trainer, cfg: GRPOConfig, groups: list[dict], console) -> tuple[dict[str, list[int]], list[float]]:
    """Completion lengths of the untrained model decoded greedily (as the run evaluates) on up to
    ``EVAL_SAMPLE`` of the run's held-out items, for each evaluation of the untrained model (keyed
    by its summary key) and, for a run without a cold start, in the recipe's format (key
    ``greedy``: where its rollouts are assumed to end, see :class:`~r1lite.cost.workload.Workload`;
    the rollout batch's prompts when the run holds no items out). Greedy answers are far shorter
    than the temperature-1 samples of the rollout batch. Also the rewards of the ``greedy``
    answers, as the recipe scores a rollout (empty without held-out items or that key)."""
    from r1lite.cost.work import eval_phases
    from r1lite.engine import Request, Sampling

    wanted = {key: fmt for key, fmt, trained in eval_phases(cfg) if not trained}
    if not cfg.cold_start.enabled:
        wanted["greedy"] = cfg.format
    items = trainer.eval_items[:EVAL_SAMPLE]
    by_format, rewards = {}, []
    with trainer.engine_weights():
        for fmt in sorted(set(wanted.values())):
            prompts = (item_prompts(trainer.tokenizer, trainer.task, items, fmt, cfg.prefill_think and fmt == "r1",
                                    cfg.template if fmt == "r1" else "chat") if items else [])
            ids = [p.ids for p in prompts] or [g["prompt"] for g in groups]  # no held-out items: the recipe's format only
            console.print(f"probe: greedy answers of the untrained model to {len(ids)} prompts ({fmt})")
            greedy = Sampling(max_new_tokens=cfg.sampling.max_new_tokens, temperature=0.0,  # as evaluations decode
                              stop=stop_strings(cfg.template if fmt == "r1" else "chat", fmt))
            outputs = trainer.engine.generate([Request(x, greedy) for x in ids], max_rows=cfg.sampling.eval_batch_size)
            by_format[fmt] = [len(c[0].token_ids) for c in outputs]
            if prompts and fmt == wanted.get("greedy"):
                rewards = [float(rollout.score_group(cfg, trainer.task, item, p.ids, p.prefill, c)["reward"][0])
                           for item, p, c in zip(items, prompts, outputs)]
    return {key: by_format[fmt] for key, fmt in wanted.items()}, rewards


def time_optimizer_step(trainer) -> float:
    """Seconds of one optimizer step on zero gradients (the probe's model is thrown away after)."""
    for p in trainer.params:
        p.grad = torch.zeros_like(p)
    t0 = time.perf_counter()
    trainer.optimizer.step()
    seconds = time.perf_counter() - t0
    trainer.optimizer.zero_grad(set_to_none=True)
    return seconds


def probe_notes(cfg: GRPOConfig, pcfg: GRPOConfig, lengths: list[int], skipped: float, traces: list[int],
                eval_lengths: dict[str, list[int]]) -> list[str]:
    """Where the workload's figures come from."""
    n = len(lengths)
    lines = [f"probe rollout batch: {n} completions of the untrained model ({pcfg.format} prompt, temperature "
             f"{pcfg.sampling.temperature:g}): mean {mean(lengths):.1f} tokens, {100 * skipped:.0f}% of its groups "
             "scored alike"]
    if eval_lengths:
        items = len(next(iter(eval_lengths.values())))
        lines.append(f"evaluations of the untrained model, from its greedy answers to {items} held-out items: "
                     + ", ".join(f"{key} {mean(v):.1f} tokens" for key, v in eval_lengths.items()))
    if cfg.cold_start.data:
        lines.append(f"after the cold start on {cfg.cold_start.data} ({len(traces)} traces, mean {mean(traces):.1f} "
                     "tokens) the policy is assumed to write like its traces, and every group to train (an upper "
                     "bound: what it scores is not known before it exists; --skipped-groups sets a figure)")
    elif cfg.cold_start.items:
        lines.append(f"after the cold start the policy is assumed to write its traces: {len(traces)} in the probe "
                     f"(each item's shortest verified answer), mean {mean(traces):.1f} tokens" if traces else
                     f"the probe found no verified {pcfg.format} answer: traces assumed as long as max_new_tokens "
                     f"({cfg.sampling.max_new_tokens}), an upper bound")
        lines.append("groups after the cold start assumed to score alike as often as the base's plain answers do")
    return lines
