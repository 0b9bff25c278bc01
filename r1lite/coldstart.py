"""R1's cold start, one phase of a GRPO run (:class:`r1lite.trainer.Trainer`): sample the base with a
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

from typing import TYPE_CHECKING

import torch

from r1lite import distill, sft
from r1lite.engine import GenerationStats
from r1lite.errors import UsageError
from r1lite.files import write_jsonl
from r1lite.progress import progress

if TYPE_CHECKING:
    from r1lite.trainer import Trainer

# Checks a cold start past its accuracy ceiling spends bisecting its way back (each halves the
# stretch of weights it searches).
LANDING_CHECKS = 4


def run(trainer: Trainer) -> None:
    """R1's cold start: SFT on verified traces, the model's own answers or (cold_start_data,
    cold_start_teacher) a teacher's. Done as one unit: its checkpoint is written before the
    summary says it is done, so a stop in between redoes it on resume."""
    cfg = trainer.cfg
    if not (cfg.cold_start_items or cfg.cold_start_data) or trainer.summary.get("cold_start_done"):
        return
    if cfg.cold_start_data or cfg.cold_start_teacher:  # a teacher's traces instead of the model's own
        traces, info = distill.cold_start_traces(cfg, trainer.distill_cfg, trainer.meter, trainer.console)
    else:
        traces, info = self_sampled(trainer)
    fine_tune(trainer, traces, info)


def self_sampled(trainer: Trainer) -> tuple[list[dict], dict]:
    """The model's own verified answers to a plain prompt, rewritten in the R1 format (and written to
    ``cold_start.jsonl``), with what the summary records about them."""
    cfg = trainer.cfg
    items = trainer.task.split("train", cfg.cold_start_items, seed=cfg.seed + 1)
    mine = items[trainer.world.span(len(items))]
    stats = GenerationStats()
    trainer.sync_engine()
    with trainer.meter.phase("cold_start_sampling"), progress(trainer.console, "cold-start sampling",
                                                              len(mine) * cfg.cold_start_samples, "seq") as update:
        traces = sft.self_traces(trainer.engine, trainer.tokenizer, trainer.task, mine, phrasing=cfg.cold_start_format,
                                 samples=cfg.cold_start_samples, temperature=cfg.cold_start_temperature,
                                 max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, per_item=cfg.cold_start_per_item,
                                 model_name=cfg.model, batch_size=cfg.eval_batch_size, stats=stats, on_progress=update)
    trainer.meter.add_flops("cold_start_sampling", stats.flops)
    traces = trainer.world.gather_lists(traces)
    if trainer.world.main:
        write_jsonl(trainer.run_dir / "cold_start.jsonl", traces)
    trainer.console.print(f"cold start: kept {len(traces)} verified traces from {len(items)} items "
                          f"x {cfg.cold_start_samples} samples → {trainer.run_dir / 'cold_start.jsonl'}")
    if not traces:
        raise UsageError("cold start: no verified-correct sample to learn from; raise cold_start_items or "
                         "cold_start_samples, or use a task the base model sometimes solves")
    return traces, {"items": len(items), "samples_per_item": cfg.cold_start_samples}


def fine_tune(trainer: Trainer, traces: list[dict], info: dict) -> None:
    """SFT on ``traces`` (with the format check), the evaluation after it, and the checkpoint that
    marks the cold start done."""
    cfg = trainer.cfg
    pairs = [sft.encode_pair(trainer.tokenizer, t["messages"], t["prefill"], t["completion"]) for t in traces]
    per_epoch = -(-len(pairs) // cfg.cold_start_batch_size)
    checks: list[dict] = []

    interval = sft.check_steps(per_epoch, cfg.cold_start_check_every)
    best: dict = {}  # the best-checked weights so far, for a cold start that reaches its cap below the bars
    # With a ceiling: the weights of the last check below the bars (at first the SFT's start), where
    # a check past the ceiling steps back toward.
    anchor: dict = {}
    landed: dict = {}  # where the bisection went on from
    ceiling = cfg.cold_start_max_accuracy

    def record(epochs: float, **where) -> tuple[bool, bool]:
        """Check the weights as they are now; (a bar unmet, the accuracy above the ceiling)."""
        checks.append({"epochs": round(epochs, 3), **where, **check(trainer)})
        bars = [(name, checks[-1][key], bar) for name, key, bar in (("format", "format_rate", cfg.cold_start_min_format),
                                                                   ("accuracy", "accuracy", cfg.cold_start_min_accuracy)) if bar]
        at = (f"{where['t']:.3g} of the way from the {where['between'][0]:g}- to the {where['between'][1]:g}-epoch "
              "weights" if where else f"after {epochs:.3g} epochs")
        trainer.console.print(f"cold-start check {at}: " + ", ".join(f"{name} {value:.1%} (bar {bar:.0%})"
                                                                     for name, value, bar in bars) +
                              (f", ceiling {ceiling:.0%}" if ceiling else ""))
        return any(value < bar for _, value, bar in bars), bool(ceiling) and checks[-1]["accuracy"] > ceiling

    def checked(epochs: float) -> bool:
        """Check, keep the weights if they are the best checked so far; True if a bar is still unmet."""
        more, high = record(epochs)
        score = (checks[-1]["format_rate"] >= cfg.cold_start_min_format, checks[-1]["accuracy"])
        better = more and (not best or score > best["score"])
        now = snapshot() if better or (more and ceiling) else None  # one copy serves both
        if better:
            best.update(score=score, epochs=checks[-1]["epochs"], weights=now)
        if more and ceiling:
            anchor.update(epochs=epochs, weights=now)
        elif high:
            land(epochs)
        return more

    def land(epochs: float) -> None:
        """The check met the bars above the ceiling: the weights go back along the straight line to
        the anchor's, bisected (t = 0 the anchor, 1 these) until a check lands between the bars and
        the ceiling; if none does in LANDING_CHECKS, the nearest point above the ceiling goes on.
        Nearby fine-tuning iterates of one model interpolate smoothly, where a half epoch of SFT steps
        can move the check by 15 points."""
        start, end = anchor["weights"], snapshot()
        between = [round(anchor["epochs"], 3), round(epochs, 3)]

        def go_to(t: float) -> None:
            put([torch.lerp(a, b, t) for a, b in zip(start, end)])

        low, high = 0.0, 1.0
        for _ in range(LANDING_CHECKS):
            t = (low + high) / 2
            go_to(t)
            more, above = record(anchor["epochs"] + t * (epochs - anchor["epochs"]), t=t, between=between)
            if not (more or above):
                break
            low, high = (t, high) if more else (low, t)
        else:
            t = high
            go_to(t)
        landed.update(t=t, between=between)
        trainer.console.print(f"cold start: going on from the weights {t:.3g} of the way from the {anchor['epochs']:g}- "
                              f"to the {epochs:g}-epoch weights")

    def snapshot() -> list[torch.Tensor]:
        return [p.detach().clone() for p in params]

    def put(weights: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for p, w in zip(params, weights):
                p.copy_(w)

    def again(epochs: float) -> bool:
        """Train on while the greedy format rate or accuracy on train prompts is below the recipe's bar."""
        more = checked(epochs)
        if more:
            done = round(epochs * per_epoch)
            update(done, "training on", total=done + interval)
        return more

    params = [p for p in trainer.model.parameters() if p.requires_grad]
    if ceiling:
        anchor.update(epochs=0.0, weights=snapshot())

    with trainer.meter.phase("sft"), progress(trainer.console, "cold-start SFT", cfg.cold_start_epochs * per_epoch,
                                              "steps") as update:
        history = sft.train_sft(trainer.policy, trainer.tokenizer, pairs, epochs=cfg.cold_start_epochs, lr=cfg.cold_start_lr,
                                batch_size=cfg.cold_start_batch_size, micro_batch_size=cfg.micro_batch_size,
                                seed=cfg.seed, autocast=trainer.runtime.autocast, device=trainer.runtime.device,
                                world=trainer.world, on_step=lambda r: update(len(r["history"]), f"loss {r['loss']:.3f}"),
                                max_epochs=cfg.cold_start_max_epochs, again=again if cfg.checks_cold_start else None,
                                check_every=cfg.cold_start_check_every)
        kept = None
        if best and len(history) >= cfg.cold_start_max_epochs * per_epoch and checked(len(history) / per_epoch):
            # the cap came before the bars: the best-checked weights (the cap's own included) go on to RL
            kept = best["epochs"]
            put(best["weights"])
            trainer.console.print(f"cold start: no check met the bars by the {cfg.cold_start_max_epochs}-epoch cap; "
                                  f"keeping the weights checked after {kept:g} epochs, the best")
        best.clear()
    trainer.meter.add_flops("sft", sum(r["flops"] for r in history))
    trainer.summary["cold_start"] = {**info, "traces": len(traces), "sft_steps": len(history),
                                     "epochs": round(len(history) / per_epoch, 3), "checks": checks,
                                     "kept_epochs": kept, "landed": landed or None,
                                     "final_loss": history[-1]["loss"] if history else None}
    trainer.run_eval("eval_after_sft", cfg.format)
    trainer.save_checkpoint(cold_start_done=True)
    trainer.summary["cold_start_done"] = True
    trainer.save_summary()
    trainer.check_stop()


def check(trainer: Trainer) -> dict:
    """Greedy strict-format rate and accuracy, in the run's format, on train prompts the held-out
    set never sees (each rank its share; metered with the SFT it steers)."""
    cfg = trainer.cfg
    items = trainer.task.split("train", cfg.cold_start_check_items, seed=cfg.seed + 2)
    result = trainer.decode(items, cfg.format, "sft")
    return {"format_rate": result["format_rate"], "accuracy": result["accuracy"]}
