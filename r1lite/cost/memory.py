"""A run's peak resident memory by phase, before it runs: the probe's measurements, scaled to each phase.

The probe (:mod:`r1lite.cost.probe`) measures on this machine, in the recipe's precision and with
the recipe's engine and micro-batch, what a run's process holds (:class:`MemoryProbe`): the
resident set after setup (the runtime, the model, the rollout engine's copy), the peak of one
rollout batch (the KV cache, and its copy while finished rows leave), the optimizer's state after
its first update, and the peak of a later train step over one micro-batch (the gradients and what
the passes keep). Each phase of the run is then, as the meter counts it
(``cost.peak_rss_mib_by_phase``):

- ``setup``: the probe's own loading peak, or its peak while writing a checkpoint with the
  optimizer's state held (a run writes them after updates), whichever is larger;
- ``eval`` and ``cold_start_sampling``: the rollout batch's peak above the resident set, scaled by
  the KV-cache positions (rows x (widest prompt + ``max_new_tokens``)) at ``eval_batch_size`` rows,
  with the optimizer's state held where evaluations run between GRPO steps (``eval_every``; the
  last one runs after a run drops it);
- ``sft``: the cold start's own optimizer state, its passes' gradients and activations (the train
  step's, scaled by tokens per pass), and its checks' decoding (the copies of the weights it may go
  back to are in files; a landing reads two of them once the optimizer's state is gone);
- ``rollout``: the rollout batch at the run's prompts, with the optimizer's state;
- ``train``: the gradients and the activations per token of the probe's train step at the run's
  completion lengths, with the optimizer's state, without the engine's copy of the weights (a run
  drops it between decodings; the SFT's passes too).

What this leaves out: memory a phase frees while it runs and the C allocator keeps (the meter reads
the resident set, which includes it), and the lengths the run reaches where they differ from the
assumed workload's.
"""

from __future__ import annotations

from dataclasses import dataclass

from r1lite.cost.work import RunPrompts
from r1lite.cost.workload import Workload, mean
from r1lite.train.config import GRPOConfig

MIB = 2.0 ** 20


@dataclass(frozen=True)
class MemoryProbe:
    """What the probe measured, in MiB of resident memory."""

    setup_peak: float
    """The peak while loading the model and building the engine."""
    resident: float
    """After setup: the runtime, the model's weights, the rollout engine's copy."""
    rollout_peak: float
    """The peak of one rollout batch, before any update."""
    rollout_positions: int
    """KV-cache positions that batch allocates: rows x (widest prompt + ``max_new_tokens``)."""
    optimizer: float
    """The resident set's growth from the first update: the optimizer's state."""
    train_peak: float
    """The peak of a later train step over one micro-batch (the optimizer's state held)."""
    train_before: float
    """The resident set before that step."""
    train_tokens: int
    """Tokens in that step's passes (prompts and completions)."""
    gradients: float
    """The trainable parameters' gradients (fp32), part of the train step's growth."""
    checkpoint_peak: float = 0.0
    """The peak while writing a checkpoint with the optimizer's state held (0: not measured)."""
    engine: float = 0.0
    """The rollout engine's copy of the weights, part of ``resident``: a run drops it between
    decodings, so its passes and updates run without it."""


def kv_positions(prompts: list[list[int]], samples: int, max_rows: int, max_new_tokens: int) -> int:
    """KV-cache positions of the largest batch the engine decodes: ``max_rows`` rows at most (a
    prompt's samples together), each as wide as the widest prompt plus ``max_new_tokens``.

    >>> kv_positions([[1] * 10, [2] * 20], 4, 6, 8)
    168
    """
    if not prompts:
        return 0
    rows = min(max_rows, len(prompts) * samples)
    return rows * (max(len(p) for p in prompts) + max_new_tokens)


def pass_tokens(prompts: list[list[int]], completions: int, lengths: list[int]) -> float:
    """Tokens of one pass: ``prompts`` once each, ``completions`` completions of ``lengths``' mean.

    >>> pass_tokens([[1, 2, 3], [4, 5]], 4, [10, 20])
    65.0
    """
    return completions * mean(lengths) + sum(len(p) for p in prompts)


def phase_peaks(cfg: GRPOConfig, m: MemoryProbe, prompts: RunPrompts, w: Workload) -> dict[str, float]:
    """Each phase's peak resident MiB (see the module docstring), for the phases the run has."""
    new = cfg.sampling.max_new_tokens
    per_position = max(0.0, m.rollout_peak - m.resident) / max(1, m.rollout_positions)
    activations = max(0.0, m.train_peak - m.train_before - m.gradients) / max(1, m.train_tokens)
    rl = cfg.optim.max_steps > 0
    updates = rl or cfg.cold_start.enabled  # checkpoints are written with the optimizer's state (or its room) held
    peaks = {"setup": max(m.setup_peak, (m.checkpoint_peak or m.resident + m.optimizer) if updates else m.resident)}
    if cfg.eval.items:
        widest = max(kv_positions(p, 1, cfg.sampling.eval_batch_size, new) for p in prompts.eval.values())
        peaks["eval"] = m.resident + (m.optimizer if rl and cfg.eval.every else 0.0) + per_position * widest
    G = cfg.optim.group_size
    if cfg.cold_start.enabled:
        if prompts.cold_start:
            peaks["cold_start_sampling"] = m.resident + per_position * kv_positions(
                prompts.cold_start, cfg.cold_start.samples, cfg.sampling.eval_batch_size, new)
        held = m.resident + m.optimizer
        per_pass = min(cfg.cold_start.batch_size, cfg.optim.micro_batch_size)  # each trace its own prompt
        sft = held - m.engine + m.gradients + activations * pass_tokens(prompts.traces[:per_pass], per_pass,
                                                                         w.trained_lengths)
        check = held + per_position * kv_positions(prompts.check, 1, cfg.sampling.eval_batch_size, new)
        peaks["sft"] = max(sft, check if prompts.check else 0.0)
    if rl:
        P = cfg.optim.prompts_per_step
        peaks["rollout"] = m.resident + m.optimizer + per_position * kv_positions(
            prompts.train[:P], G, cfg.sampling.rollout_batch_size, new)
        lengths = w.final_lengths if w.final_lengths and mean(w.final_lengths) > mean(w.trained_lengths) else w.trained_lengths
        groups = min(P, max(1, cfg.optim.micro_batch_size // G))  # a pass holds whole groups
        peaks["train"] = m.resident - m.engine + m.optimizer + m.gradients + activations * pass_tokens(
            prompts.train[:groups], groups * G, lengths)
    return peaks


def memory_block(peaks: dict[str, float]) -> dict:
    """The cost block's memory fields, as :meth:`r1lite.meter.memory.PeakMemory.report` names them."""
    return {"peak_rss_mib": max(peaks.values()), "peak_rss_mib_by_phase": {k: round(v, 1) for k, v in peaks.items()}}


def memory_notes(m: MemoryProbe) -> list[str]:
    """The measurements the memory estimate scales, as printed lines."""
    return [f"resident memory measured by the probe: {m.resident:.0f} MiB after setup, {m.engine:.0f} of it the engine's "
            f"copy of the weights (loading peak "
            f"{m.setup_peak:.0f}, writing a checkpoint {m.checkpoint_peak:.0f}); a rollout batch {m.rollout_peak - m.resident:+.0f} MiB over "
            f"{m.rollout_positions} KV positions; the optimizer's state {m.optimizer:.0f} MiB; a train step over "
            f"one micro-batch ({m.train_tokens} tokens) {m.train_peak - m.train_before:+.0f} MiB, gradients "
            f"{m.gradients:.0f} of it; each phase's peak scaled from these (memory the C allocator keeps after a "
            "phase frees it is not predicted)"]
