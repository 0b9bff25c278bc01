"""What a GRPO run computes, phase by phase: the tokens, FLOPs and batches of its evaluations,
its cold start and its steps, counted with the meter's own formulas on the run's real prompts, and
the seconds that work takes at a given :class:`Speed`. ``r1lite cost`` (:mod:`r1lite.cost.estimate`)
and the probe (:mod:`r1lite.cost.probe`) both build on it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

from r1lite import prompts, tasks
from r1lite.cost.workload import Workload, lengths_like, step_points
from r1lite.meter.flops import Weights, decode_flops, train_pass_flops
from r1lite.meter.hardware import Hardware
from r1lite.models import ModelShape, shared_prefix
from r1lite.prompts import item_prompts
from r1lite.train.config import GRPOConfig

DecodeFlops = Callable[[int, int, int], float]
"""FLOPs of one decoder forward on ``rows`` x ``T`` tokens at column ``start``."""


def plain_decode_flops(shape: ModelShape, weights: Weights) -> DecodeFlops:
    """The decoder's FLOPs with no padded columns (GPUs; a model not loaded here)."""
    return lambda rows, T, start: decode_flops(shape, weights.total, rows, T, start, body_columns=rows * T,
                                               head_columns=rows, causal_only=False)


# ---------------------------------------------------------------------------------------------
# Work


@dataclass
class PhaseWork:
    """The work one phase does, as both speeds time it."""

    dense_flops: float = 0.0
    """FLOPs of whole-sequence passes: prefill, training passes."""
    decode_flops: float = 0.0
    """FLOPs of token-by-token decoding."""
    decode_steps: int = 0
    """Sequential decode forwards: the datasheet's latency floor counts these."""
    batches: int = 0
    """Decode batches they fall into: ranks decode different batches at once, one batch's steps
    run in turn."""
    updates: int = 0
    """Optimizer steps."""

    @property
    def flops(self) -> float:
        return self.dense_flops + self.decode_flops

    def add(self, other: PhaseWork, times: float = 1.0) -> None:
        self.dense_flops += times * other.dense_flops
        self.decode_flops += times * other.decode_flops
        self.decode_steps += round(times * other.decode_steps)
        self.batches += round(times * other.batches)
        self.updates += round(times * other.updates)


def generation_work(prompts: list[list[int]], samples: int, lengths: list[int], max_rows: int,
                    flops: DecodeFlops) -> PhaseWork:
    """Sampling ``samples`` completions of each prompt, ``lengths`` tokens each (in turn), batched
    like the engine: shortest prompts first, at most ``max_rows`` rows, a shared prefix prefilled
    once, then one decode forward per step for every row still in the batch (finished rows leave
    once at most three quarters of the rows are live). The first token of each completion comes
    from the prefill."""
    work = PhaseWork()
    order = sorted(prompts, key=len)
    per_batch = max(1, max_rows // samples)
    drawn = iter(lengths_like(lengths, len(prompts) * samples))
    for start in range(0, len(order), per_batch):
        group = order[start:start + per_batch]
        L = shared_prefix(group) if len(group) > 1 else 0
        S = max(map(len, group)) - L
        if L:
            work.dense_flops += flops(1, L, 0)
        work.dense_flops += flops(len(group), S, L)
        remaining = [next(drawn) for _ in range(len(group) * samples)]
        work.batches += 1
        rows, col, done = len(remaining), L + S, 1  # tokens each row has after the prefill
        while True:
            live = sum(n > done for n in remaining)
            if not live:
                break
            if live <= 0.75 * rows:
                rows = live
            work.decode_flops += flops(rows, 1, col)
            work.decode_steps += 1
            col, done = col + 1, done + 1
    return work


def train_work(shape: ModelShape, weights: Weights, prompts: list[list[int]], lengths: list[int], groups: float,
               group_size: int, micro_batch_size: int, forwards: int, updates: int) -> PhaseWork:
    """One GRPO train step over ``groups`` groups (may be fractional: an expectation): ``updates``
    forward+backward passes and ``forwards`` no-grad passes (reference, old log-probs), in chunks of
    whole groups; each chunk as wide as its longest prompt and completion, the prefix its prompts
    share run once. The chunk's FLOPs scale with its groups, so they are counted per group."""
    per_chunk = max(1, micro_batch_size // group_size)
    chunk = _chunk_shape(prompts[:per_chunk])
    rows = lengths_like(lengths, per_chunk * group_size)
    Lc, M = max(rows), sum(rows)  # M: real tokens per chunk
    passes = [(updates, True), (forwards, False)]
    one = sum(n * train_pass_flops(shape, weights, chunk[0], chunk[1], len(rows), Lc, M, backward=b, Lx=chunk[2])
              for n, b in passes) / chunk[0]
    return PhaseWork(dense_flops=groups * one, updates=updates)


def _chunk_shape(prompts: list[list[int]]) -> tuple[int, int, int]:
    """(prompts, width after the shared prefix, shared prefix) of a train pass over ``prompts``, as
    :func:`r1lite.train.policy.make_group_batch` lays them out."""
    shared = shared_prefix(prompts) if len(prompts) > 1 else 0
    return len(prompts), max(len(p) for p in prompts) - shared, shared


def sft_work(shape: ModelShape, weights: Weights, prompts: list[list[int]], lengths: list[int], traces: float,
             batch_size: int, epochs: int) -> PhaseWork:
    """The cold start's SFT: ``epochs`` passes over ``traces`` traces in steps of ``batch_size``,
    each trace its own prompt (counted per trace, as :func:`train_work` counts per group)."""
    chunk = _chunk_shape(prompts[:batch_size])
    rows = lengths_like(lengths, chunk[0])
    per_trace = train_pass_flops(shape, weights, chunk[0], chunk[1], chunk[0], max(rows), sum(rows), backward=True,
                                 Lx=chunk[2]) / chunk[0]
    steps = epochs * math.ceil(traces / batch_size)
    return PhaseWork(dense_flops=epochs * traces * per_trace, updates=steps)


@dataclass(frozen=True)
class RunPrompts:
    """The run's prompts, tokenized as the trainer will tokenize them."""

    eval: dict[str, list[list[int]]]
    """Held-out items in each format an evaluation uses."""
    cold_start: list[list[int]]
    """Cold-start items in the cold-start phrasing (what is sampled)."""
    traces: list[list[int]]
    """Cold-start items in the R1 format (what SFT trains on)."""
    train: list[list[int]]
    """A sample of train items in the recipe's format (two steps' worth: rollouts and train chunks)."""
    check: list[list[int]]
    """The cold start's check prompts (train items in the recipe's format), when it checks."""
    trace_lengths: list[int] = dataclasses.field(default_factory=list)
    """``cold_start_data``: each trace's completion tokens (eos included), with ``traces`` its prompts."""


def run_prompts(cfg: GRPOConfig, tokenizer, task: tasks.Task) -> RunPrompts:
    """The prompts a run with ``cfg`` will use, from its own items and seeds."""
    evals = {}
    if cfg.eval.items:
        items = task.split("test", cfg.eval.items, seed=cfg.eval.seed)
        for fmt in {fmt for _, fmt, _ in eval_phases(cfg)}:
            evals[fmt] = [p.ids for p in item_prompts(tokenizer, task, items, fmt, cfg.prefill_think and fmt == "r1",
                                                      cfg.template if fmt == "r1" else "chat")]
    cold = task.split("train", cfg.cold_start.items, seed=cfg.seed + 1) if cfg.cold_start.items else []
    train = task.split("train", 2 * cfg.optim.prompts_per_step, seed=cfg.seed)
    check = (task.split("train", cfg.cold_start.check_items, seed=cfg.seed + 2)
             if cfg.cold_start.enabled and cfg.cold_start.checks else [])
    if cfg.cold_start.data:  # the traces are the file's: their prompts and lengths exactly
        pairs = data_traces(cfg, tokenizer)
        return RunPrompts(evals, [], [p for p, _ in pairs], [p.ids for p in item_prompts(
            tokenizer, task, train, cfg.format, cfg.prefill_think, cfg.template)], [p.ids for p in item_prompts(
                tokenizer, task, check, cfg.format, cfg.prefill_think and cfg.format == "r1", cfg.template)],
            [len(c) for _, c in pairs])
    return RunPrompts(
        evals, [p.ids for p in item_prompts(tokenizer, task, cold, cfg.cold_start.format)],
        [p.ids for p in item_prompts(tokenizer, task, cold, "r1", template=cfg.template)],
        [p.ids for p in item_prompts(tokenizer, task, train, cfg.format, cfg.prefill_think, cfg.template)],
        [p.ids for p in item_prompts(tokenizer, task, check, cfg.format, cfg.prefill_think and cfg.format == "r1",
                                     cfg.template)])


def data_traces(cfg: GRPOConfig, tokenizer) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, completion ids) of each ``cold_start_data`` trace, as the cold start encodes them."""
    from r1lite.distill.traces import read_pairs
    from r1lite.train.sft import encode_pair

    return [encode_pair(tokenizer, m, p, c, cfg.template) for m, p, c in read_pairs(cfg.cold_start.data)]


def eval_phases(cfg: GRPOConfig) -> list[tuple[str, str, bool]]:
    """(summary key, format, after training?) for each evaluation the run does, in order."""
    if not cfg.eval.items:
        return []
    evals = [("eval_before", cfg.format, False)]
    if cfg.eval.base_plain and cfg.template != "r1_zero":  # the trainer skips them under r1_zero
        evals += [(prompts.base_eval_key(fmt), fmt, False) for fmt in cfg.eval.base_phrasings]
    if cfg.cold_start.enabled:
        evals.append(("eval_after_sft", cfg.format, True))
    return evals + [("eval_after", cfg.format, True)]


def checkpoints(cfg: GRPOConfig, steps: int | None = None) -> int:
    """Checkpoints the trainer writes in a run of ``steps`` GRPO steps (``max_steps`` unless the RL
    budget ends it sooner): after the cold start, every ``save_every`` steps and at the end.

    >>> from r1lite.config import build
    >>> checkpoints(build(GRPOConfig, {"max_steps": 36, "save_every": 8, "cold_start_items": 256}))
    6
    """
    steps = cfg.optim.max_steps if steps is None else steps
    saves = {s for s in range(1, steps + 1) if cfg.save_every and s % cfg.save_every == 0} | {steps}
    return len(saves) + cfg.cold_start.enabled


@dataclass
class RunWork:
    """The work of every phase the meter times, and the GRPO steps the run is expected to take."""

    phases: dict[str, PhaseWork]
    """``eval``, ``cold_start_sampling``, ``sft``, ``rollout``, ``train`` (phases that do nothing left out)."""
    steps: int
    """``max_steps``, or the step at which the RL stage's FLOPs reach ``max_rl_flops`` if sooner."""


def curve_points(cfg: GRPOConfig, steps: int) -> int:
    """Held-out evaluations mid-run (``eval_every``): after every ``eval_every``-th step but the last.

    >>> from r1lite.config import build
    >>> curve_points(build(GRPOConfig, {"eval_every": 8, "eval_items": 10}), 17)
    2
    """
    return (steps - 1) // cfg.eval.every if cfg.eval.every and cfg.eval.items and steps else 0


def run_work(cfg: GRPOConfig, shape: ModelShape, weights: Weights, prompts: RunPrompts, workload: Workload,
             flops: DecodeFlops) -> RunWork:
    """The work of every phase the meter times, following the trainer: its evaluations (before,
    mid-run every ``eval_every`` steps, after), the cold start, and the GRPO steps up to
    ``max_steps`` or to the first step whose rollouts and train passes reach ``max_rl_flops``."""
    w = workload
    phases = {name: PhaseWork() for name in ("eval", "cold_start_sampling", "sft", "rollout", "train")}
    for key, fmt, trained in eval_phases(cfg):
        lengths = w.eval_lengths.get(key) or ((w.final_lengths or w.trained_lengths) if trained else w.base_lengths)
        phases["eval"].add(generation_work(prompts.eval[fmt], 1, lengths, cfg.sampling.eval_batch_size, flops))
    if cfg.cold_start.data:
        phases["sft"].add(sft_work(shape, weights, prompts.traces, prompts.trace_lengths, len(prompts.trace_lengths),
                                   cfg.cold_start.batch_size, cfg.cold_start.epochs))
        if prompts.check:
            phases["sft"].add(generation_work(prompts.check, 1, w.trained_lengths, cfg.sampling.eval_batch_size, flops))
    elif cfg.cold_start.items:
        phases["cold_start_sampling"].add(generation_work(prompts.cold_start, cfg.cold_start.samples, w.base_lengths,
                                                          cfg.sampling.eval_batch_size, flops))
        phases["sft"].add(sft_work(shape, weights, prompts.traces, w.trained_lengths,
                                   cfg.cold_start.items * w.traces_per_item, cfg.cold_start.batch_size,
                                   cfg.cold_start.epochs))
        if prompts.check:  # one check, after the planned epochs (it passes: no further training assumed)
            phases["sft"].add(generation_work(prompts.check, 1, w.trained_lengths, cfg.sampling.eval_batch_size, flops))
    P, G = cfg.optim.prompts_per_step, cfg.optim.group_size
    rounds = cfg.loss.max_refill_rounds + 1 if cfg.loss.dynamic_sampling else 1
    forwards = int(cfg.optim.mu > 1) + int(cfg.loss.beta > 0)
    budget, spent, done = cfg.optim.max_rl_flops, 0.0, 0.0  # RL FLOPs and steps so far
    for lengths, steps, skipped in step_points(w, cfg.optim.max_steps, cfg.sampling.max_new_tokens, G):
        sampled = sum(skipped ** r for r in range(rounds))  # expected rounds' worth of P prompts
        if cfg.loss.dynamic_sampling:
            kept = P * (1 - skipped ** rounds) if skipped < 1 else 0.0
        else:
            kept = P * (1 - skipped) if cfg.loss.beta == 0 else float(P)
        rollout = generation_work(prompts.train[:P], G, lengths, cfg.sampling.rollout_batch_size, flops)
        step = train_work(shape, weights, prompts.train, lengths, kept, G, cfg.optim.micro_batch_size, forwards,
                          cfg.optim.mu)
        per_step = sampled * rollout.flops + step.flops
        last = budget and per_step > 0 and spent + steps * per_step >= budget
        if last:  # the trainer stops after the first step whose metered RL FLOPs reach the budget
            steps = min(cfg.optim.max_steps, math.ceil(done + (budget - spent) / per_step - 1e-9)) - done
        phases["rollout"].add(rollout, steps * sampled)
        phases["train"].add(step, steps)
        spent, done = spent + steps * per_step, done + steps
        if last:
            break
    steps_run = round(done)
    evals = curve_points(cfg, steps_run)
    if evals:
        lengths = w.eval_lengths.get("eval_after") or w.final_lengths or w.trained_lengths
        phases["eval"].add(generation_work(prompts.eval[cfg.format], 1, lengths, cfg.sampling.eval_batch_size, flops),
                           evals)
    return RunWork({name: work for name, work in phases.items() if work.flops > 0 or work.updates}, steps_run)


# ---------------------------------------------------------------------------------------------
# Time


@dataclass(frozen=True)
class Speed:
    """How fast one device does each kind of work, and where the figures come from."""

    method: str
    """``measured probe`` or ``datasheet``."""
    generate_flops_per_s: float | None
    """Measured: FLOP/s of a whole generation (prefill and decode together); None = datasheet split."""
    train_flops_per_s: float
    """FLOP/s of training passes (and, on the datasheet, of prefill)."""
    decode_flops_per_s: float = 0.0
    """Datasheet: FLOP/s of decoding."""
    decode_layer_seconds: float = 0.0
    """Datasheet: least time of one decode forward per layer."""
    optimizer_seconds: float = 0.0
    """Seconds of one optimizer step (measured; 0 on the datasheet)."""
    first_step_seconds: float = 0.0
    """Seconds the first step of a training phase takes beyond a later one of the same work (first
    calls at its shapes, the optimizer's state; measured; 0 on the datasheet)."""
    setup_seconds: float = 0.0
    """Seconds before the first phase: loading the model (measured; 0 on the datasheet)."""
    checkpoint_seconds: float = 0.0
    """Seconds to write one checkpoint (measured; 0 on the datasheet)."""
    report_seconds: float = 0.0
    """Seconds to write the report (measured; 0 on the datasheet)."""
    notes: tuple[str, ...] = ()
    """Where the figures come from, one line each."""


def datasheet_speed(hardware: Hardware, mfu: float | None = None) -> Speed:
    """The hardware row's throughputs; ``mfu`` replaces its training utilisation."""
    train = hardware.train_flops_per_s if mfu is None else mfu * hardware.peak_flops
    return Speed("datasheet", None, train, hardware.decode_flops_per_s, hardware.decode_layer_seconds, notes=(
        f"datasheet: {hardware.name} peak {hardware.peak_flops / 1e12:g} TFLOP/s; training passes and prefill at "
        f"{100 * train / hardware.peak_flops:.1f}% of it{' (--mfu)' if mfu is not None else ''}, decoding at "
        f"{100 * hardware.decode_utilization:.2f}% (at least {hardware.decode_layer_seconds * 1e3:g} ms per layer "
        "per decode step); setup, checkpoints and the report are not predicted",))


def phase_seconds(work: PhaseWork, speed: Speed, n_layers: int, devices: int) -> float:
    """Seconds of one phase at ``speed`` on ``devices`` (ideal data parallelism; the datasheet's
    decode latency floor shrinks only as far as there are batches to share out: one batch's steps
    run in turn on one device)."""
    if speed.generate_flops_per_s is not None:
        compute = work.flops / speed.generate_flops_per_s if work.decode_steps else work.flops / speed.train_flops_per_s
        first = speed.first_step_seconds if work.updates else 0.0
        return (compute + work.updates * speed.optimizer_seconds + first) / devices
    dense = work.dense_flops / (devices * speed.train_flops_per_s)
    decode = work.decode_flops / (devices * speed.decode_flops_per_s) if work.decode_flops else 0.0
    floor = work.decode_steps * n_layers * speed.decode_layer_seconds / max(1, min(devices, work.batches))
    return dense + max(decode, floor)
