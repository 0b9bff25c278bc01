"""R1's cold start, one phase of a GRPO run: sample the base with a
plain prompt, keep the verified-correct answers, rewrite them in the R1 format, fine-tune on them,
and (with ``cold_start_min_format`` or ``cold_start_min_accuracy``) keep training, checked every
``cold_start_check_every`` epochs, until the format is learned and the accuracy reached.

Why the check: a cold start exists to teach the format so that GRPO's rewards are not all zero;
a few dozen traces, two epochs, sometimes leave a model that writes ``<answer>`` before
``</think>`` on a third of its answers, and GRPO then spends its first steps on the format. A
fixed number of epochs also lands wherever its traces take it: the same recipe's cold start
varies widely between seeds, too low for some and leaving RL little to add for others.
Training until a set accuracy is reached, checked at a finer step than an epoch, lands every run
near the same point. The check decodes train prompts (never held-out items), so it steers the SFT
without seeing the test.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from r1lite import tasks
from r1lite.config import build
from r1lite.distill.collect import DistillConfig, collect
from r1lite.distill.traces import card_notice, read_pairs, sibling
from r1lite.engine import GenerationStats
from r1lite.errors import UsageError
from r1lite.files import write_jsonl
from r1lite.progress import progress
from r1lite.train import sft
from r1lite.train.config import LANDING_CHECKS
from r1lite.train.distributed import World
from r1lite.train.policy import Policy


def self_sampled(cfg, engine, tokenizer, task: tasks.Task, world: World, meter, console,
                 run_dir: Path) -> tuple[list[dict], dict]:
    """The model's own verified answers to a plain prompt, rewritten in the R1 format (and written to
    ``cold_start.jsonl``), with what the summary records about them. ``engine`` holds the weights
    to sample. Under template r1_zero the plain prompt is still rendered as under chat (a base
    model: the bare question), and the traces are learnt in the paper's template
    (:func:`r1lite.train.sft.self_traces`)."""
    items = task.split("train", cfg.cold_start.items, seed=cfg.seed + 1)
    mine = items[world.span(len(items))]
    stats = GenerationStats()
    with meter.phase("cold_start_sampling"), progress(console, "cold-start sampling",
                                                      len(mine) * cfg.cold_start.samples, "seq") as update:
        traces = sft.self_traces(engine, tokenizer, task, mine, phrasing=cfg.cold_start.format,
                                 samples=cfg.cold_start.samples, temperature=cfg.cold_start.temperature,
                                 max_new_tokens=cfg.sampling.max_new_tokens, seed=cfg.seed,
                                 per_item=cfg.cold_start.per_item, model_name=cfg.model,
                                 batch_size=cfg.sampling.eval_batch_size, stats=stats, on_progress=update,
                                 template=cfg.template)
    meter.add_flops("cold_start_sampling", stats.flops)
    traces = world.gather_lists(traces)
    if world.main:
        write_jsonl(run_dir / "cold_start.jsonl", traces)
    console.print(f"cold start: kept {len(traces)} verified traces from {len(items)} items "
                  f"x {cfg.cold_start.samples} samples → {run_dir / 'cold_start.jsonl'}")
    if not traces:
        raise UsageError("cold start: no verified-correct sample to learn from; raise cold_start_items or "
                         "cold_start_samples, or use a task the base model sometimes solves")
    return traces, {"items": len(items), "samples_per_item": cfg.cold_start.samples}


# The check and where it sends the weights next: pure functions of the check's readings.

@dataclass(frozen=True)
class Bars:
    """The check's bars (0 = none) and the accuracy ceiling (0 = none)."""

    min_format: float = 0.0
    min_accuracy: float = 0.0
    max_accuracy: float = 0.0


def verdict(reading: dict, bars: Bars) -> str:
    """``below`` (a bar unmet), ``above`` (the bars met, the accuracy past the ceiling) or ``within``.

    >>> verdict({"format_rate": 1.0, "accuracy": 0.5}, Bars(0.9, 0.52, 0.58))
    'below'
    >>> verdict({"format_rate": 1.0, "accuracy": 0.6}, Bars(0.9, 0.52, 0.58))
    'above'
    >>> verdict({"format_rate": 1.0, "accuracy": 0.6}, Bars(0.9, 0.52))
    'within'
    """
    if reading["format_rate"] < bars.min_format or reading["accuracy"] < bars.min_accuracy:
        return "below"
    return "above" if bars.max_accuracy and reading["accuracy"] > bars.max_accuracy else "within"


def score(reading: dict, bars: Bars) -> tuple[bool, float]:
    """How good a check below the bars is, for keeping the best: the format bar first, then accuracy."""
    return reading["format_rate"] >= bars.min_format, reading["accuracy"]


def next_stretch(low: float, high: float, t: float, found: str) -> tuple[float, float]:
    """The stretch of the line between the anchor (t = 0) and the weights past the ceiling (t = 1)
    still to search after the check at ``t`` read ``found``: below the bars → toward the later
    weights, past the ceiling → toward the anchor.

    >>> next_stretch(0.0, 1.0, 0.5, "below")
    (0.5, 1.0)
    >>> next_stretch(0.5, 1.0, 0.75, "above")
    (0.5, 0.75)
    """
    return (t, high) if found == "below" else (low, t)


@dataclass
class ColdStart:
    """What the cold-start SFT needs, and nothing of the run around it."""

    policy: Policy
    tokenizer: object
    check: Callable[[], dict]
    """Greedy ``format_rate`` and ``accuracy`` of the weights as they are, on train prompts."""
    meter: object
    console: object
    runtime: object
    world: World
    scratch: Path | None = None
    """Where the weights a check may send the SFT back to are shelved (:class:`Shelf`); None keeps
    them in memory."""


class Shelf:
    """The weights the SFT may go back to — the anchor a landing bisects toward, the best check a
    cap falls back to — kept in files rather than memory. Each is a full fp32 copy of the trainable
    weights (0.5 GiB for the 135M model), read once at most, and it would sit beside the SFT's
    optimizer state and every check's decoding, the cold start's highest memory. ``torch.save``
    writes each tensor's memory as it is (safetensors first builds the whole file's bytes in memory)
    and they read back bit for bit. A copy is a key; its file is ``<directory>/<name>-<key>.pt``,
    and the shelf touches no other file (each rank its own name). ``directory`` None keeps the
    copies in memory."""

    def __init__(self, directory: Path | None, name: str = "weights"):
        self.directory, self.name = directory, name
        self.held: dict[int, list[torch.Tensor]] = {}
        self.count = 0
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            for stale in directory.glob(f"{name}-*.pt"):  # a stopped run's copies: its cold start is redone
                stale.unlink()

    def _path(self, key: int) -> Path:
        return self.directory / f"{self.name}-{key}.pt"

    def put(self, params: list[torch.Tensor]) -> int:
        key, self.count = self.count, self.count + 1
        if self.directory is None:
            self.held[key] = snapshot(params)
        else:
            torch.save([p.detach() for p in params], self._path(key))
        return key

    def get(self, key: int) -> list[torch.Tensor]:
        if self.directory is None:
            return self.held[key]
        return torch.load(self._path(key), weights_only=True)

    def keep_only(self, *keys: int | None) -> None:
        """Drop every copy but these."""
        for key in range(self.count):
            if key not in keys:
                self.held.pop(key, None)
                if self.directory is not None:
                    self._path(key).unlink(missing_ok=True)

    def close(self) -> None:
        """Drop every copy, and the directory once no rank's copy is left in it."""
        self.keep_only()
        if self.directory is not None:
            with contextlib.suppress(OSError):
                self.directory.rmdir()


def fine_tune(cfg, phase: ColdStart, traces: list[dict]) -> tuple[dict, float]:
    """SFT on ``traces``: ``cold_start_epochs`` epochs, then (with a bar) on, checked every
    ``cold_start_check_every`` epochs, until a check lands between the bars and the ceiling or the
    ``cold_start_max_epochs`` cap comes. A check past the ceiling bisects back toward the weights
    of the check before it (the anchor; at first the SFT's start); at the cap below the bars, the
    best-checked weights go on. Returns what the summary records, and the FLOPs of the SFT steps."""
    bars = Bars(cfg.cold_start.min_format, cfg.cold_start.min_accuracy, cfg.cold_start.max_accuracy)
    pairs = [sft.encode_pair(phase.tokenizer, t["messages"], t["prefill"], t["completion"], cfg.template)
             for t in traces]
    per_epoch = -(-len(pairs) // cfg.cold_start.batch_size)
    first, cap = cfg.cold_start.epochs * per_epoch, cfg.cold_start.max_epochs * per_epoch
    interval = sft.check_steps(per_epoch, cfg.cold_start.check_every)
    params = [p for p in phase.policy.model.parameters() if p.requires_grad]
    steps = sft.sft_steps(phase.policy, phase.tokenizer, pairs, lr=cfg.cold_start.lr,
                          batch_size=cfg.cold_start.batch_size, micro_batch_size=cfg.optim.micro_batch_size,
                          seed=cfg.seed, autocast=phase.runtime.autocast, device=phase.runtime.device, world=phase.world)
    history: list[dict] = []
    checks: list[dict] = []
    best: dict = {}  # the best-checked weights below the bars (a shelf key), for a cap that comes first
    shelf = Shelf(phase.scratch, f"rank{phase.world.rank}")
    anchor = {"epochs": 0.0, "weights": shelf.put(params)} if bars.max_accuracy else {}
    kept, landed = None, None

    def check(epochs: float, **where) -> str:
        checks.append({"epochs": round(epochs, 3), **where, **phase.check()})
        shown = [(name, checks[-1][key], bar) for name, key, bar in (("format", "format_rate", bars.min_format),
                                                                    ("accuracy", "accuracy", bars.min_accuracy)) if bar]
        at = (f"{where['t']:.3g} of the way from the {where['between'][0]:g}- to the {where['between'][1]:g}-epoch "
              "weights" if where else f"after {epochs:.3g} epochs")
        phase.console.print(f"cold-start check {at}: " + ", ".join(f"{name} {value:.1%} (bar {bar:.0%})"
                                                                   for name, value, bar in shown) +
                            (f", ceiling {bars.max_accuracy:.0%}" if bars.max_accuracy else ""))
        return verdict(checks[-1], bars)

    with phase.meter.phase("sft"), progress(phase.console, "cold-start SFT", first, "steps") as update, \
            contextlib.closing(shelf):
        def train_to(step: int) -> None:
            while len(history) < step:
                history.append(next(steps))
                update(len(history), f"loss {history[-1]['loss']:.3f}")

        train_to(first)
        checked = bars.min_format > 0 or bars.min_accuracy > 0
        while checked and pairs:
            epochs = len(history) / per_epoch
            found = check(epochs)
            if found == "below":
                better = not best or score(checks[-1], bars) > best["score"]
                weights = shelf.put(params) if better or bars.max_accuracy else None  # one copy serves both
                if better:
                    best = {"score": score(checks[-1], bars), "epochs": checks[-1]["epochs"], "weights": weights}
                if bars.max_accuracy:
                    anchor = {"epochs": epochs, "weights": weights}
                shelf.keep_only(best.get("weights"), anchor.get("weights"))
                if len(history) >= cap:  # the cap came before the bars: the best-checked weights go on
                    kept = best["epochs"]
                    steps.close()  # the SFT's optimizer state goes before the copy comes back
                    put(params, shelf.get(best["weights"]))
                    phase.console.print(f"cold start: no check met the bars by the {cfg.cold_start.max_epochs}-epoch "
                                        f"cap; keeping the weights checked after {kept:g} epochs, the best")
                    break
                update(len(history), "training on", total=min(cap, len(history) + interval))
                train_to(min(cap, len(history) + interval))
            elif found == "above":
                steps.close()  # the SFT's optimizer state goes before the landing's copies and checks
                landed = land(params, shelf.get(anchor["weights"]), anchor["epochs"], epochs, check, phase.console)
                break
            else:
                break
    return ({"traces": len(traces), "sft_steps": len(history), "epochs": round(len(history) / per_epoch, 3),
             "checks": checks, "kept_epochs": kept, "landed": landed,
             "final_loss": history[-1]["loss"] if history else None}, sum(r["flops"] for r in history))


def land(params: list[torch.Tensor], start: list[torch.Tensor], start_epochs: float, epochs: float,
         check: Callable[..., str], console) -> dict:
    """The check met the bars above the ceiling: the weights go back along the straight line to
    the anchor's (``start``, checked after ``start_epochs``), bisected (t = 0 the anchor, 1 these)
    until a check lands between the bars and the ceiling; if none does in LANDING_CHECKS, the
    nearest point above the ceiling goes on.
    Nearby fine-tuning iterates of one model interpolate smoothly, where a half epoch of SFT steps
    can move the check by 15 points."""
    end = snapshot(params)
    between = [round(start_epochs, 3), round(epochs, 3)]
    low, high = 0.0, 1.0
    for _ in range(LANDING_CHECKS):
        t = (low + high) / 2
        put(params, [torch.lerp(a, b, t) for a, b in zip(start, end)])
        found = check(start_epochs + t * (epochs - start_epochs), t=t, between=between)
        if found == "within":
            break
        low, high = next_stretch(low, high, t, found)
    else:
        t = high
        put(params, [torch.lerp(a, b, t) for a, b in zip(start, end)])
    console.print(f"cold start: going on from the weights {t:.3g} of the way from the {start_epochs:g}- "
                  f"to the {epochs:g}-epoch weights")
    return {"t": t, "between": between}


def snapshot(params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def put(params: list[torch.Tensor], weights: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, w in zip(params, weights):
            p.copy_(w)


# A cold start from a teacher's traces

RUN_KEYS = ("teacher", "task", "task_options", "format", "template", "split", "limit", "samples_per_prompt", "temperature",
            "max_new_tokens", "seed", "out", "device", "dtype")
"""DistillConfig fields a training run sets from its own config (distill_options may set the others)."""


def distill_config(cfg) -> DistillConfig:
    """The distillation a run's ``cold_start_teacher`` runs (``cfg`` a :class:`r1lite.train.config.GRPOConfig`):
    ``cold_start_items`` train prompts x ``cold_start_samples`` at ``cold_start_temperature``, each
    within ``max_new_tokens`` (a longer trace could not be learnt), into ``<out>/distill.jsonl``."""
    fixed = sorted(set(cfg.cold_start.distill_options) & set(RUN_KEYS))
    if fixed:
        raise UsageError(f"distill_options: '{fixed[0]}' follows from the run's own keys (cold_start_*, task, format, "
                         "max_new_tokens, seed, out); set those instead")
    run_keys = {"teacher": cfg.cold_start.teacher, "task": cfg.task, "task_options": cfg.task_options,
                "format": cfg.format, "template": cfg.template, "split": "train", "limit": cfg.cold_start.items,
                "samples_per_prompt": cfg.cold_start.samples, "temperature": cfg.cold_start.temperature,
                "max_new_tokens": cfg.sampling.max_new_tokens, "seed": cfg.seed + 1,
                "out": str(Path(cfg.out) / "distill.jsonl"), "device": cfg.launch.device, "dtype": cfg.launch.dtype}
    return build(DistillConfig, {**run_keys, **cfg.cold_start.distill_options}, source="distill_options")


def teacher_traces(cfg, distill_cfg: DistillConfig | None, meter, console) -> tuple[list[dict], dict]:
    """(traces, what the summary records about them) for a run's cold start from ``cold_start_data``
    or from ``cold_start_teacher`` (distilled now: resumed like ``r1lite distill``)."""
    if cfg.cold_start.data:
        path = Path(cfg.cold_start.data)
        info = {"source": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    else:
        with meter.phase("teacher_sampling"):
            card = collect(distill_cfg, console)
        if card["compute"] is not None:
            meter.add_flops("teacher_sampling", card["compute"]["flops"])
        if not card["counts"]["kept"]:
            raise UsageError(f"cold start: {cfg.cold_start.teacher} gave no verified trace "
                             f"(card: {sibling(Path(distill_cfg.out), '.card.md')}); raise cold_start_items or check the teacher")
        path = Path(distill_cfg.out)
        info = {"source": str(path), "teacher": {**card["teacher"], "tokens": card["tokens"], "usd": card["cost"]["usd"],
                                                 "usd_per_mtok": card["cost"]["usd_per_mtok"],
                                                 "flops": card["compute"]["flops"] if card["compute"] else None,
                                                 "counts": card["counts"]}}
    notice = card_notice(path)
    if notice:
        console.print(notice, highlight=False)
    traces = [{"messages": m, "prefill": p, "completion": c} for m, p, c in read_pairs(str(path))]
    return traces, info
