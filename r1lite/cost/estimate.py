"""A run's cost before it starts: the work a GRPO recipe does, phase by phase, and two ways to time it.

The work is counted with the meter's own formulas (:mod:`r1lite.meter.flops`, and the decoder's own
``flops`` when the model is loaded here), on the run's real prompts (its eval items, cold-start
items and a sample of its train items, tokenized), following what the trainer does:

- evaluations: greedy, ``eval_items`` each, batched like the engine batches them (shortest prompts
  first, ``eval_batch_size`` rows, a shared prefix prefilled once, finished rows leaving once they
  are a quarter of the batch);
- the cold start: ``cold_start_items x cold_start_samples`` plain-prompt samples, then SFT on the
  traces it keeps; with ``cold_start_data``, SFT on that file's traces (their own prompts and lengths);
- GRPO steps: one rollout batch (with DAPO dynamic sampling: the expected refill rounds) and a
  train step over the groups whose rewards are not all equal (all of them when a KL reference is
  held), in micro-batches of whole groups, ``mu`` updates.

What a run's sequences will look like cannot be known before it runs: a
:class:`~r1lite.cost.workload.Workload` holds the assumptions (completion lengths, the fraction of
groups skipped, the traces a cold start keeps), measured by the probe (:mod:`r1lite.cost.probe`), read
from an earlier run or given as flags, and every estimate lists them.

The time comes from either of two :class:`Speed` figures: measured (the probe's throughput on this
machine, its setup, checkpoint and report times) or datasheet (a hardware row's peak x its stated
utilisation; setup, checkpoints and the report not predicted). Departure from the run: the batch
model of the engine is simplified (requests do not join a running batch; compaction keeps the
column count), which moves decode FLOPs by a few percent.
"""

from __future__ import annotations

from pathlib import Path

from r1lite import tasks
from r1lite.cost.memory import memory_block, memory_notes, phase_peaks
from r1lite.cost.work import (
    PhaseWork,
    Speed,
    checkpoints,
    datasheet_speed,
    phase_seconds,
    plain_decode_flops,
    run_prompts,
    run_work,
)
from r1lite.cost.workload import (
    Overrides,
    apply_overrides,
    like_or,
    unprobed_workload,
    workload_notes,
)
from r1lite.engine.sampling import check_budget
from r1lite.meter.hardware import Hardware
from r1lite.meter.meter import cost_report, human_flops, human_seconds
from r1lite.packaged import named
from r1lite.models import ModelShape
from r1lite.train.config import GRPOConfig


def estimate(cfg: GRPOConfig, work: dict[str, PhaseWork], speed: Speed, hardware: Hardware, devices: int,
             pue: float, n_layers: int, assumptions: list[str], steps: int | None = None,
             memory: dict | None = None) -> dict:
    """The cost block (:func:`r1lite.meter.meter.cost_report`, ``"estimated": true``) of a run at
    ``speed`` that takes ``steps`` GRPO steps (``max_steps`` when None), with ``memory``'s peak
    resident memory fields (:func:`r1lite.cost.memory.memory_block`) where there is an estimate."""
    seconds = {name: phase_seconds(w, speed, n_layers, devices) for name, w in work.items()}
    saves = checkpoints(cfg, steps)
    outside = speed.setup_seconds + saves * speed.checkpoint_seconds + speed.report_seconds
    outside += speed.checkpoint_seconds  # the final model, saved like a checkpoint
    notes = [*assumptions, *speed.notes]
    if outside:
        notes.append(f"outside the phases: {human_seconds(outside)} (setup, {saves} checkpoints and the "
                     "final model, the report)")
    if devices > 1:
        notes.append(f"{devices} devices: every phase {devices}x faster (ideal data parallelism)")
    return cost_report(hardware, devices, pue, sum(seconds.values()) + outside,
                       {name: w.flops for name, w in work.items()}, seconds, estimated=True,
                       energy_source="an estimate measures nothing", assumptions=notes, method=speed.method,
                       memory=memory)


# ---------------------------------------------------------------------------------------------
# A recipe, end to end


def phase_table(blocks: dict[str, dict]):
    """A rich table of the estimates side by side: time and FLOPs by phase, then the totals."""
    from rich.table import Table

    from r1lite.meter.meter import human_flops, short_number, usd

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
            ("peak resident memory", peak_memory),
            ("device-hours", lambda b: short_number(b["device_hours"])),
            ("energy", lambda b: f"{short_number(b['kwh'])} kWh"),
            ("money", lambda b: f"{usd(b['usd'])} at {usd(b['usd_per_hour_per_device'])}/h")]
    for label, cell in rows:
        table.add_row(label, *(cell(b) for b in blocks.values()))
    return table


def peak_memory(block: dict) -> str:
    """The block's largest phase peak and its phase, or a dash (a datasheet estimate has none)."""
    by_phase = block.get("peak_rss_mib_by_phase")
    if not by_phase:
        return "—"
    phase = max(by_phase, key=by_phase.get)
    return f"{by_phase[phase] / 1024:.2f} GiB ({phase})"


def known_shape(spec: str) -> ModelShape | None:
    """The shape of a model that is not to be loaded here: a built-in table row, or a local
    ``config.json`` (a file, or a directory with no weights beside it); None for a loadable model."""
    from r1lite.meter.flops import config_shape, table_shape

    path = Path(spec).expanduser()
    if path.is_file() or (path.is_dir() and (path / "config.json").exists()
                          and not any(path.glob("*.safetensors")) and not any(path.glob("*.bin"))):
        return config_shape(path)
    return None if named(spec) or path.exists() else table_shape(spec)


def loadable_shape(spec: str) -> ModelShape:
    """The shape of a model this machine can load, read from its config alone."""
    from r1lite.errors import UsageError
    from r1lite.meter.flops import SHAPES, config_shape
    from r1lite.models import load_tokenizer, resolve_path
    from r1lite.packaged import checkpoint, named, tiny_model

    if spec.startswith("tiny") and named(spec):
        return ModelShape.from_config(tiny_model(spec, load_tokenizer(spec), 0).config, spec)
    path = checkpoint(spec) if named(spec) else resolve_path(spec)
    if path is None:
        raise UsageError(f"--model {spec} --no-probe: its shape is unknown here; pass a local model directory, a "
                         f"config.json, or a built-in shape ({', '.join(SHAPES)})")
    return config_shape(path)


def estimate_recipe(cfg: GRPOConfig, pricing, overrides: Overrides, probe: bool, console) -> dict[str, dict]:
    """``r1lite cost``: the measured estimate (when the probe ran on the hardware priced) and the
    datasheet one, each a cost block, keyed by method."""
    from r1lite.meter.flops import full_weights, lora_weights
    from r1lite.meter.hardware import CostConfig
    from r1lite.models import device_kind, load_tokenizer, resolve_runtime, spec_context

    runtime = resolve_runtime(cfg.launch.device, cfg.launch.dtype)
    chosen = pricing.resolve(device_kind(runtime))
    here = CostConfig().resolve(device_kind(runtime)).name
    shape = known_shape(cfg.model)
    loaded = shape is None  # a model this machine loads: the probe runs it, or its config gives the shape
    if loaded and not probe:
        shape = loadable_shape(cfg.model)
    # before the probe runs anything or a step is counted: the budget must fit the model's context
    check_budget(cfg.sampling.max_new_tokens, spec_context(cfg.model) if shape is None else shape.context,
                 flag="max_new_tokens")
    notes: list[str] = []
    measured = None
    if shape is None:
        from r1lite.cost.probe import run_probe

        measured = run_probe(cfg, console)
        shape, weights, flops = measured.shape, measured.weights, measured.decode_flops
        tokenizer, task = measured.tokenizer, measured.task
        workload = apply_overrides(like_or(measured.workload, cfg, overrides), overrides)
        if chosen.name != here:
            notes.append(f"the probe measured the workload on this machine ({here}); the time is the datasheet's "
                         f"for {chosen.name}")
    else:
        optim = cfg.optim
        weights = lora_weights(shape, optim.lora_r, list(optim.lora_targets)) if optim.lora else full_weights(shape)
        flops = plain_decode_flops(shape, weights)
        tokenizer = load_tokenizer(cfg.model if loaded else "default")
        task = tasks.load_task(cfg.task, cfg.task_options)
        workload = apply_overrides(like_or(unprobed_workload(cfg), cfg, overrides), overrides)
        if not loaded:
            where = cfg.model if Path(cfg.model).expanduser().exists() else "the built-in shape table"
            notes.append(f"{shape.name}: shape from {where}; prompt lengths counted with SmolLM2's tokenizer")
    prompts = run_prompts(cfg, tokenizer, task)
    run = run_work(cfg, shape, weights, prompts, workload, flops)
    work = run.phases
    notes = [*workload_notes(cfg, workload), *notes]
    memory = None
    if measured is not None and measured.memory is not None:
        memory = memory_block(phase_peaks(cfg, measured.memory, prompts, workload))
        notes += memory_notes(measured.memory)
    if run.steps < cfg.optim.max_steps:
        notes.append(f"max_rl_flops {human_flops(cfg.optim.max_rl_flops)}: the RL budget is expected to be spent "
                     f"after step {run.steps} of max_steps {cfg.optim.max_steps}")
    blocks = {}
    if measured is not None and chosen.name == here:
        blocks["measured"] = estimate(cfg, work, measured.speed, chosen, pricing.devices, pricing.pue, shape.n_layers,
                                      notes, run.steps, memory)
    blocks["datasheet"] = estimate(cfg, work, datasheet_speed(chosen, overrides.mfu), chosen, pricing.devices,
                                   pricing.pue, shape.n_layers, notes, run.steps)
    return blocks
