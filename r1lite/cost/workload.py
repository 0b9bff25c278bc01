"""What a run's sequences are assumed to look like, before it runs: completion lengths, how many
groups score alike (and are left out of the train step), the traces a cold start keeps.

A :class:`Workload` comes from the probe (:mod:`r1lite.cost.probe`: the untrained model on this
machine), from an earlier run of the recipe (``--like``: :func:`run_workload`), or from upper
bounds (:func:`unprobed_workload`), with flags in place of any figure (:class:`Overrides`). A run
without a cold start (R1-Zero) is assumed to move from the untrained model's samples toward its
greedy answers: lengths at a constant rate per step (:func:`step_points`), and groups coming to
score alike as its rollouts turn into those answers (:func:`skipped_at`). Every estimate prints
the assumptions (:func:`workload_notes`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from r1lite.train.config import LANDING_CHECKS, GRPOConfig


@dataclass(frozen=True)
class Workload:
    """What the run's sequences are assumed to look like (each field is printed as an assumption)."""

    base_lengths: list[int]
    """Completion lengths (tokens) of the untrained model: its evaluations, its cold-start samples,
    and (without a cold start) the GRPO rollouts."""
    trained_lengths: list[int]
    """Completion lengths after the cold start (its traces), for GRPO's rollouts and the later
    evaluations; without a cold start, the same as ``base_lengths``."""
    skipped_groups: float
    """Fraction of a step's groups whose rewards are all equal (no gradient: left out of the step)."""
    traces_per_item: float
    """Cold start: traces kept per item (verified, distinct, at most ``cold_start_per_item``)."""
    final_lengths: list[int] = field(default_factory=list)
    """Completion lengths the GRPO rollouts reach by the last step (empty: they stay at
    ``trained_lengths``), and the evaluations after training. For a run without a cold start, the
    probe takes the untrained model's greedy answers in the recipe's format: RL sharpens a policy
    toward its mode (its sampling entropy collapses), so its samples come to look like its greedy
    answers. Between the two, lengths are assumed to move at a constant relative rate per step
    (geometrically)."""
    sampled_rewards: list[float] = field(default_factory=list)
    """Rewards of the untrained model's sampled completions (the probe's rollout batch), with
    ``final_rewards`` for a run whose rollouts move toward ``final_lengths``."""
    final_rewards: list[float] = field(default_factory=list)
    """Rewards of the untrained model's greedy answers in the recipe's format (empty: groups score
    alike at ``skipped_groups`` for the whole run). With them, a rollout at progress p of the way
    from the sampled to the greedy lengths is assumed to be a greedy answer with probability p and
    otherwise a sample like the untrained model's, so groups come to score alike as RL sharpens the
    policy (:func:`skipped_at`)."""
    eval_lengths: dict[str, list[int]] = field(default_factory=dict)
    """Completion lengths of evaluations measured on their own (greedy, in their own format), by
    summary key (:func:`eval_phases`); an evaluation not here takes ``base_lengths`` before
    training and ``trained_lengths`` after."""
    notes: list[str] = field(default_factory=list)
    """Where each figure comes from, one line each."""

    def __post_init__(self) -> None:
        if not self.base_lengths or not self.trained_lengths:
            raise ValueError("a workload needs at least one completion length of each kind")


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def lengths_like(sample: list[int], count: int) -> list[int]:
    """``count`` completion lengths drawn in turn from ``sample`` (a probe's, or one assumed figure).

    >>> lengths_like([3, 5], 5)
    [3, 5, 3, 5, 3]
    """
    return [sample[i % len(sample)] for i in range(count)]


def lengths_with_mean(value: float, count: int = 20) -> list[int]:
    """Whole token counts whose mean is ``value`` to 1/``count`` of a token.

    >>> lengths_with_mean(29.5, 4)
    [29, 30, 29, 30]
    """
    low, high = math.floor(value), round((value - math.floor(value)) * count)
    return [low + 1 if (i * high) // count != ((i + 1) * high) // count else low for i in range(count)]


def step_points(w: Workload, max_steps: int, max_new_tokens: int, group_size: int,
                points: int = 8) -> list[tuple[list[int], float, float]]:
    """(completion lengths, GRPO steps they stand for, fraction of groups scoring alike): the
    rollouts over the run, at up to ``points`` evenly spaced steps, each scaled from
    ``trained_lengths`` toward ``final_lengths``' mean at a constant rate per step (see
    :attr:`Workload.final_lengths`), its groups alike as :func:`skipped_at` says.

    >>> step_points(Workload([40], [40], 0.0, 0.0, final_lengths=[10]), 2, 64, 8)
    [([28], 1.0, 0.0), ([14], 1.0, 0.0)]
    """
    if not w.final_lengths or not max_steps:
        return [(w.trained_lengths, float(max_steps), w.skipped_groups)]
    ratio = mean(w.final_lengths) / mean(w.trained_lengths)
    n = min(points, max_steps)
    return [([min(max_new_tokens, max(1, round(x * ratio ** ((i + 0.5) / n)))) for x in w.trained_lengths],
             max_steps / n, skipped_at(w, (i + 0.5) / n, group_size)) for i in range(n)]


def skipped_at(w: Workload, progress: float, group_size: int) -> float:
    """The fraction of groups whose rewards are all equal when each rollout is the item's greedy
    answer with probability ``progress`` and otherwise a sample like the untrained model's (its
    rewards' frequencies pooled over the probe's batch), averaged over the greedy answers'
    rewards; never below the probe's measured ``skipped_groups``.

    >>> skipped_at(Workload([9], [9], 0.1, 0.0, sampled_rewards=[0.0, 1.0], final_rewards=[1.0]), 0.5, 2)
    0.625
    """
    if not w.final_rewards or not w.sampled_rewards:
        return w.skipped_groups
    freq = Counter(round(r, 6) for r in w.sampled_rewards)
    values = set(freq) | {round(r, 6) for r in w.final_rewards}

    def alike(greedy: float) -> float:
        return sum((progress * (v == greedy) + (1 - progress) * freq[v] / len(w.sampled_rewards)) ** group_size
                   for v in values)

    return max(w.skipped_groups, mean([alike(round(r, 6)) for r in w.final_rewards]))


def workload_notes(cfg: GRPOConfig, w: Workload) -> list[str]:
    """The workload's assumptions as printed lines."""
    lines = list(w.notes)
    if w.final_lengths:
        lines.append(f"rollout completions: from {mean(w.trained_lengths):.1f} tokens (the untrained model's samples) "
                     f"to {mean(w.final_lengths):.1f} by the last step (its greedy answers: RL sharpens the policy toward "
                     f"its mode), at a constant rate per step: {mean_rollout_length(w, cfg):.1f} on average; "
                     "evaluations after training as long as the greedy answers (an R1-Zero run that learns to "
                     "think longer grows instead: pass --completion-tokens)")
    else:
        lines.append(f"completion length: untrained model {mean(w.base_lengths):.1f} tokens"
                     + (f", after the cold start {mean(w.trained_lengths):.1f} tokens" if cfg.cold_start.enabled else "")
                     + " (mean), for the whole run (R1-Zero runs often grow longer)")
    if cfg.loss.beta > 0:
        lines.append("every group trains (a KL reference gives each one a gradient)")
    else:
        refill = " (DAPO dynamic sampling refills them)" if cfg.loss.dynamic_sampling else ""
        if w.final_rewards and w.final_lengths:
            last = step_points(w, cfg.optim.max_steps, cfg.sampling.max_new_tokens, cfg.optim.group_size)[-1][2]
            lines.append(f"skipped groups (rewards all equal): from {100 * w.skipped_groups:.0f}% to {100 * last:.0f}% "
                         f"by the last step, {100 * mean_skipped(w, cfg):.0f}% on average{refill}: each rollout assumed "
                         "to be the greedy answer as often as the lengths have moved toward it, else a sample like "
                         "the untrained model's, with the rewards of both measured by the probe")
        else:
            lines.append(f"skipped groups (rewards all equal): {100 * w.skipped_groups:.0f}%{refill}")
    if cfg.cold_start.items and not cfg.cold_start.data:
        lines.append(f"cold start keeps {w.traces_per_item:.2f} traces per item: "
                     f"{cfg.cold_start.items * w.traces_per_item:.0f} traces")
    if cfg.cold_start.enabled:
        if cfg.cold_start.checks:
            lines.append(f"the cold start's check passes after {cfg.cold_start.epochs} epochs (each "
                         f"{cfg.cold_start.check_every:g} epochs more, up to {cfg.cold_start.max_epochs}, add "
                         f"{cfg.cold_start.check_every / cfg.cold_start.epochs:.0%} of the SFT and a check"
                         + (f"; a check above the {cfg.cold_start.max_accuracy:.0%} ceiling adds up to "
                            f"{LANDING_CHECKS} more" if cfg.cold_start.max_accuracy else "") + ")")
    return lines


def mean_rollout_length(w: Workload, cfg: GRPOConfig) -> float:
    """The rollouts' mean completion length over the run."""
    points = step_points(w, cfg.optim.max_steps, cfg.sampling.max_new_tokens, cfg.optim.group_size)
    return sum(mean(lengths) * steps for lengths, steps, _ in points) / max(1e-9, sum(steps for _, steps, _ in points))


def mean_skipped(w: Workload, cfg: GRPOConfig) -> float:
    """The fraction of groups scoring alike, averaged over the run's steps."""
    points = step_points(w, cfg.optim.max_steps, cfg.sampling.max_new_tokens, cfg.optim.group_size)
    return sum(skipped * steps for _, steps, skipped in points) / max(1e-9, sum(steps for _, steps, _ in points))


# ---------------------------------------------------------------------------------------------
# Where a workload comes from


@dataclass(frozen=True)
class Overrides:
    """Assumptions given as flags instead of measured (None = the probe's, or an upper bound)."""

    completion_tokens: int | None = None
    """Every completion this long (``--completion-tokens``)."""
    skipped_groups: float | None = None
    """This fraction of groups scores alike (``--skipped-groups``)."""
    mfu: float | None = None
    """The datasheet's training utilisation (``--mfu``)."""
    like: str | None = None
    """A finished run whose lengths, skipped groups and cold-start traces stand in for the probe's
    (``--like RUN_DIR``): a repeat of a recipe, or a close variant of one, estimated from what an
    earlier run of it did."""

    def __post_init__(self) -> None:
        from r1lite.errors import UsageError

        if self.completion_tokens is not None and self.completion_tokens < 1:
            raise UsageError(f"--completion-tokens {self.completion_tokens}: must be at least 1")
        if self.skipped_groups is not None and not 0 <= self.skipped_groups <= 1:
            raise UsageError(f"--skipped-groups {self.skipped_groups}: a fraction in [0, 1]")
        if self.mfu is not None and not 0 < self.mfu <= 1:
            raise UsageError(f"--mfu {self.mfu}: a fraction of peak in (0, 1]")


def unprobed_workload(cfg: GRPOConfig) -> Workload:
    """Upper bounds where nothing was measured: completions as long as the budget, no group skipped,
    the most traces a cold start may keep."""
    budget = cfg.sampling.max_new_tokens
    return Workload([budget], [budget], 0.0, float(cfg.cold_start.per_item), notes=[
        f"no probe: completions as long as max_new_tokens ({budget}), no group skipped, "
        f"{cfg.cold_start.per_item} trace(s) per cold-start item: upper bounds (--completion-tokens, --skipped-groups)"])


def run_workload(run: Path, cfg: GRPOConfig) -> Workload:
    """What a finished run's sequences were, from its logs: the base's mean completion length (its
    plain-prompt evaluation, else its first evaluation, else its rollouts), the GRPO rollouts'
    mean length, the fraction of sampled groups left out of its train steps, and the traces its
    cold start kept per item (scaled to ``cfg``'s items)."""
    from r1lite.errors import UsageError
    from r1lite.files import read_jsonl

    summary_path, metrics_path = run / "summary.json", run / "metrics.jsonl"
    for path in (summary_path, metrics_path):
        if not path.is_file():
            raise UsageError(f"--like {run}: no {path.name}; give the directory of a run `r1lite train` finished")
    summary = json.loads(summary_path.read_text())
    rows = [row for _, row in read_jsonl(metrics_path, notes=[]) if "completion_len_mean" in row]
    if not rows:
        raise UsageError(f"--like {run}: {metrics_path} has no GRPO steps; give a run that trained")
    rollout = statistics.mean(r["completion_len_mean"] for r in rows)
    if any(r.get("groups_sampled", 0) > r.get("groups_kept", 0) for r in rows):  # dynamic sampling dropped them
        skipped = 1 - sum(r["groups_kept"] for r in rows) / sum(r["groups_sampled"] for r in rows)
    else:  # left out of the train step: completion tokens trained on over tokens sampled
        batch = cfg.optim.batch_size
        skipped = 1 - statistics.mean(r["loss_tokens"] / (batch * r["completion_len_mean"]) for r in rows)
    evals = [summary[k] for k in ("eval_base_plain", "eval_before") if isinstance(summary.get(k), dict)]
    base = evals[0]["completion_tokens_mean"] if evals else rollout
    cold = summary.get("cold_start") or {}
    traces = cold.get("traces", 0) / cold["items"] if cold.get("items") else float(cfg.cold_start.per_item)
    return Workload(lengths_with_mean(base), lengths_with_mean(rollout), skipped, traces, notes=[
        f"like {run} ({len(rows)} GRPO steps): base completions {base:.1f} tokens, rollouts {rollout:.1f}, "
        f"{100 * skipped:.0f}% of sampled groups scored alike, {traces:.3f} cold-start traces per item"])


def apply_overrides(w: Workload, o: Overrides) -> Workload:
    """The workload with the flags' figures in place of the measured ones, saying so."""
    notes = list(w.notes)
    if o.completion_tokens is not None:
        w = dataclasses.replace(w, base_lengths=[o.completion_tokens], trained_lengths=[o.completion_tokens],
                                final_lengths=[], final_rewards=[], eval_lengths={})
        notes.append(f"--completion-tokens {o.completion_tokens}: every completion that long")
    if o.skipped_groups is not None:
        w = dataclasses.replace(w, skipped_groups=o.skipped_groups, final_rewards=[])
        notes.append(f"--skipped-groups {o.skipped_groups:g} for the whole run")
    return dataclasses.replace(w, notes=notes)


def like_or(workload: Workload, cfg: GRPOConfig, o: Overrides) -> Workload:
    """``--like``'s workload when one is given, else ``workload``."""
    return run_workload(Path(o.like).expanduser(), cfg) if o.like else workload
