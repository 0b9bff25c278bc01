"""A run's cost before it starts: the work a GRPO recipe does, phase by phase, and two ways to time it.

The work is counted with the meter's own formulas (:mod:`r1lite.flops`, and the decoder's own
``flops`` when the model is loaded here), on the run's real prompts (its eval items, cold-start
items and a sample of its train items, tokenized), following what the trainer does:

- evaluations: greedy, ``eval_items`` each, batched like the engine batches them (shortest prompts
  first, ``eval_batch_size`` rows, a shared prefix prefilled once, finished rows leaving once they
  are a quarter of the batch);
- the cold start: ``cold_start_items x cold_start_samples`` plain-prompt samples, then SFT on the
  traces it keeps;
- GRPO steps: one rollout batch (with DAPO dynamic sampling: the expected refill rounds) and a
  train step over the groups whose rewards are not all equal (all of them when a KL reference is
  held), in micro-batches of whole groups, ``mu`` updates.

What a run's sequences will look like cannot be known before it runs: a
:class:`~r1lite.workload.Workload` holds the assumptions (completion lengths, the fraction of
groups skipped, the traces a cold start keeps), measured by the probe (:mod:`r1lite.probe`), read
from an earlier run or given as flags, and every estimate lists them.

The time comes from either of two :class:`Speed` figures: measured (the probe's throughput on this
machine, its setup, checkpoint and report times) or datasheet (a hardware row's peak x its stated
utilisation; setup, checkpoints and the report not predicted). Departure from the run: the batch
model of the engine is simplified (requests do not join a running batch; compaction keeps the
column count), which moves decode FLOPs by a few percent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from r1lite import tasks
from r1lite.cost import cost_report, human_seconds
from r1lite.flops import ModelShape, Weights, decode_flops, train_pass_flops
from r1lite.grpo import GRPOConfig
from r1lite.hardware import Hardware
from r1lite.prompts import item_prompts, shared_prefix
from r1lite.workload import (
    Overrides, Workload, apply_overrides, lengths_like, like_or, step_points, unprobed_workload, workload_notes,
)

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
    :func:`r1lite.policy.make_group_batch` lays them out."""
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


def run_prompts(cfg: GRPOConfig, tokenizer, task: tasks.Task) -> RunPrompts:
    """The prompts a run with ``cfg`` will use, from its own items and seeds."""
    evals = {}
    if cfg.eval_items:
        items = task.split("test", cfg.eval_items, seed=cfg.eval_seed)
        for fmt in {cfg.format, *(cfg.base_phrasings if cfg.eval_base_plain else [])}:
            evals[fmt] = [p.ids for p in item_prompts(tokenizer, task, items, fmt, cfg.prefill_think and fmt == "r1")]
    cold = task.split("train", cfg.cold_start_items, seed=cfg.seed + 1) if cfg.cold_start_items else []
    train = task.split("train", 2 * cfg.prompts_per_step, seed=cfg.seed)
    check = (task.split("train", cfg.cold_start_check_items, seed=cfg.seed + 2)
             if cfg.cold_start_items and cfg.checks_cold_start else [])
    return RunPrompts(
        evals, [p.ids for p in item_prompts(tokenizer, task, cold, cfg.cold_start_format)],
        [p.ids for p in item_prompts(tokenizer, task, cold, "r1")],
        [p.ids for p in item_prompts(tokenizer, task, train, cfg.format, cfg.prefill_think)],
        [p.ids for p in item_prompts(tokenizer, task, check, cfg.format, cfg.prefill_think and cfg.format == "r1")])


def eval_phases(cfg: GRPOConfig) -> list[tuple[str, str, bool]]:
    """(summary key, format, after training?) for each evaluation the run does, in order."""
    if not cfg.eval_items:
        return []
    evals = [("eval_before", cfg.format, False)]
    if cfg.eval_base_plain:
        evals += [(tasks.base_eval_key(fmt), fmt, False) for fmt in cfg.base_phrasings]
    if cfg.cold_start_items:
        evals.append(("eval_after_sft", cfg.format, True))
    return evals + [("eval_after", cfg.format, True)]


def checkpoints(cfg: GRPOConfig) -> int:
    """Checkpoints the trainer writes: after the cold start, every ``save_every`` steps and at the end.

    >>> checkpoints(GRPOConfig(max_steps=36, save_every=8, cold_start_items=256))
    6
    """
    saves = {s for s in range(1, cfg.max_steps + 1) if cfg.save_every and s % cfg.save_every == 0} | {cfg.max_steps}
    return len(saves) + bool(cfg.cold_start_items)


def run_work(cfg: GRPOConfig, shape: ModelShape, weights: Weights, prompts: RunPrompts, workload: Workload,
             flops: DecodeFlops) -> dict[str, PhaseWork]:
    """The work of every phase the meter times: ``eval``, ``cold_start_sampling``, ``sft``,
    ``rollout``, ``train`` (phases that do nothing are left out)."""
    w = workload
    phases = {name: PhaseWork() for name in ("eval", "cold_start_sampling", "sft", "rollout", "train")}
    for key, fmt, trained in eval_phases(cfg):
        lengths = w.eval_lengths.get(key) or ((w.final_lengths or w.trained_lengths) if trained else w.base_lengths)
        phases["eval"].add(generation_work(prompts.eval[fmt], 1, lengths, cfg.eval_batch_size, flops))
    if cfg.cold_start_items:
        phases["cold_start_sampling"].add(generation_work(prompts.cold_start, cfg.cold_start_samples, w.base_lengths,
                                                          cfg.eval_batch_size, flops))
        phases["sft"].add(sft_work(shape, weights, prompts.traces, w.trained_lengths,
                                   cfg.cold_start_items * w.traces_per_item, cfg.cold_start_batch_size,
                                   cfg.cold_start_epochs))
        if prompts.check:  # one check, after the planned epochs (it passes: no further training assumed)
            phases["sft"].add(generation_work(prompts.check, 1, w.trained_lengths, cfg.eval_batch_size, flops))
    P, G = cfg.prompts_per_step, cfg.group_size
    rounds = cfg.max_refill_rounds + 1 if cfg.dynamic_sampling else 1
    forwards = int(cfg.mu > 1) + int(cfg.beta > 0)
    for lengths, steps, skipped in step_points(w, cfg.max_steps, cfg.max_new_tokens, G):
        sampled = sum(skipped ** r for r in range(rounds))  # expected rounds' worth of P prompts
        if cfg.dynamic_sampling:
            kept = P * (1 - skipped ** rounds) if skipped < 1 else 0.0
        else:
            kept = P * (1 - skipped) if cfg.beta == 0 else float(P)
        rollout = generation_work(prompts.train[:P], G, lengths, cfg.rollout_batch_size, flops)
        step = train_work(shape, weights, prompts.train, lengths, kept, G, cfg.micro_batch_size, forwards, cfg.mu)
        phases["rollout"].add(rollout, steps * sampled)
        phases["train"].add(step, steps)
    return {name: work for name, work in phases.items() if work.flops > 0 or work.updates}


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


def estimate(cfg: GRPOConfig, work: dict[str, PhaseWork], speed: Speed, hardware: Hardware, devices: int,
             pue: float, n_layers: int, assumptions: list[str]) -> dict:
    """The cost block (:func:`r1lite.cost.cost_report`, ``"estimated": true``) of a run at ``speed``."""
    seconds = {name: phase_seconds(w, speed, n_layers, devices) for name, w in work.items()}
    outside = speed.setup_seconds + checkpoints(cfg) * speed.checkpoint_seconds + speed.report_seconds
    outside += speed.checkpoint_seconds  # the final model, saved like a checkpoint
    notes = [*assumptions, *speed.notes]
    if outside:
        notes.append(f"outside the phases: {human_seconds(outside)} (setup, {checkpoints(cfg)} checkpoints and the "
                     "final model, the report)")
    if devices > 1:
        notes.append(f"{devices} devices: every phase {devices}x faster (ideal data parallelism)")
    return cost_report(hardware, devices, pue, sum(seconds.values()) + outside,
                       {name: w.flops for name, w in work.items()}, seconds, estimated=True,
                       energy_source="an estimate measures nothing", assumptions=notes, method=speed.method)


# ---------------------------------------------------------------------------------------------
# A recipe, end to end


def phase_table(blocks: dict[str, dict]):
    """A rich table of the estimates side by side: time and FLOPs by phase, then the totals."""
    from rich.table import Table

    from r1lite.cost import human_flops, short_number, usd

    table = Table(title="estimate before the run")
    table.add_column("")
    for method, block in blocks.items():
        table.add_column(f"{method} ({block['hardware']} ×{block['devices']})", justify="right")
    first = next(iter(blocks.values()))
    for phase in first["seconds_by_phase"]:
        table.add_row(f"{phase} ({human_flops(first['flops']['by_phase'][phase])})",
                      *(human_seconds(b["seconds_by_phase"][phase]) for b in blocks.values()))
    rows = [("outside the phases", lambda b: human_seconds(b["wall_seconds"] - sum(b["seconds_by_phase"].values()))),
            ("wall time", lambda b: human_seconds(b["wall_seconds"])),
            ("FLOPs", lambda b: human_flops(b["flops"]["total"])),
            ("device-hours", lambda b: short_number(b["device_hours"])),
            ("energy", lambda b: f"{short_number(b['kwh'])} kWh"),
            ("money", lambda b: f"{usd(b['usd'])} at {usd(b['usd_per_hour_per_device'])}/h")]
    for label, cell in rows:
        table.add_row(label, *(cell(b) for b in blocks.values()))
    return table


def known_shape(spec: str) -> ModelShape | None:
    """The shape of a model that is not to be loaded here: a built-in table row, or a local
    ``config.json`` (a file, or a directory with no weights beside it); None for a loadable model."""
    from r1lite.flops import config_shape, table_shape

    path = Path(spec).expanduser()
    if path.is_file() or (path.is_dir() and (path / "config.json").exists()
                          and not any(path.glob("*.safetensors")) and not any(path.glob("*.bin"))):
        return config_shape(path)
    return None if spec in ("default", "tiny") or path.exists() else table_shape(spec)


def loadable_shape(spec: str) -> ModelShape:
    """The shape of a model this machine can load, read from its config alone."""
    from r1lite.errors import UsageError
    from r1lite.flops import SHAPES, config_shape
    from r1lite.models import embedded_checkpoint, load_tokenizer, resolve_path, tiny_config

    if spec == "tiny":
        tokenizer = load_tokenizer("tiny")
        return ModelShape.from_config(tiny_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id), "tiny")
    path = embedded_checkpoint() if spec == "default" else resolve_path(spec)
    if path is None:
        raise UsageError(f"--model {spec} --no-probe: its shape is unknown here; pass a local model directory, a "
                         f"config.json, or a built-in shape ({', '.join(SHAPES)})")
    return config_shape(path)


def estimate_recipe(cfg: GRPOConfig, pricing, overrides: Overrides, probe: bool, console) -> dict[str, dict]:
    """``r1lite cost``: the measured estimate (when the probe ran on the hardware priced) and the
    datasheet one, each a cost block, keyed by method."""
    from r1lite.flops import full_weights, lora_weights
    from r1lite.hardware import CostConfig
    from r1lite.models import device_kind, load_tokenizer, resolve_runtime

    runtime = resolve_runtime(cfg.device, cfg.dtype)
    chosen = pricing.resolve(device_kind(runtime))
    here = CostConfig().resolve(device_kind(runtime)).name
    shape = known_shape(cfg.model)
    notes: list[str] = []
    measured = None
    if shape is None and probe:
        from r1lite.probe import run_probe

        measured = run_probe(cfg, console)
        shape, weights, flops = measured.shape, measured.weights, measured.decode_flops
        tokenizer, task = measured.tokenizer, measured.task
        workload = apply_overrides(like_or(measured.workload, cfg, overrides), overrides)
        if chosen.name != here:
            notes.append(f"the probe measured the workload on this machine ({here}); the time is the datasheet's "
                         f"for {chosen.name}")
    else:
        loaded = shape is None
        shape = shape or loadable_shape(cfg.model)
        weights = lora_weights(shape, cfg.lora_r, list(cfg.lora_targets)) if cfg.lora else full_weights(shape)
        flops = plain_decode_flops(shape, weights)
        tokenizer = load_tokenizer(cfg.model if loaded else "default")
        task = tasks.load_task(cfg.task, cfg.task_options)
        workload = apply_overrides(like_or(unprobed_workload(cfg), cfg, overrides), overrides)
        if not loaded:
            where = cfg.model if Path(cfg.model).expanduser().exists() else "the built-in shape table"
            notes.append(f"{shape.name}: shape from {where}; prompt lengths counted with SmolLM2's tokenizer")
    work = run_work(cfg, shape, weights, run_prompts(cfg, tokenizer, task), workload, flops)
    notes = [*workload_notes(cfg, workload), *notes]
    blocks = {}
    if measured is not None and chosen.name == here:
        blocks["measured"] = estimate(cfg, work, measured.speed, chosen, pricing.devices, pricing.pue, shape.n_layers, notes)
    blocks["datasheet"] = estimate(cfg, work, datasheet_speed(chosen, overrides.mfu), chosen, pricing.devices,
                                   pricing.pue, shape.n_layers, notes)
    return blocks
