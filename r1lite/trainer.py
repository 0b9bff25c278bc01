"""A GRPO run from start to report: evaluate the base, optional cold-start SFT, GRPO steps with
checkpoints, evaluate again, save the model, write summary, report and cost.

Run directory::

    config.yaml        the resolved config (a resume must match it)
    metrics.jsonl      one row per GRPO step
    summary.json       evaluations, cost, status (written as each phase ends)
    cold_start.jsonl   the cold-start traces with provenance (when a cold start ran)
    checkpoints/       the latest checkpoint (see r1lite.checkpoint)
    final/             the trained model as a Hugging Face directory (safetensors)
    report.html        plots and tables (plots/*.png)
"""

from __future__ import annotations

import math
import random
import signal
import time
from pathlib import Path

import torch
import yaml

from r1lite import checkpoint, cost, distill, evaluate, grpo, onpolicy, report, rewards, sft, tasks
from r1lite.config import dump_yaml, to_dict
from r1lite.engine import GenerationStats, Request, Sampling, derive_seed, make_engine
from r1lite.errors import UsageError
from r1lite.files import append_jsonl, atomic_dir, read_json, read_jsonl, write_json, write_jsonl, write_text
from r1lite.grpo import GRPOConfig
from r1lite.models import load_model, resolve_runtime, stop_token_ids
from r1lite.policy import Policy, adamw, make_group_batch, pass_flops
from r1lite.progress import progress
from r1lite.prompts import item_prompts
from r1lite.reference import Reference

WALL_CLOCK_KEYS = ("step_seconds", "rollout_seconds", "train_seconds", "tokens_per_s", "time")
PLAIN_PHRASINGS = ("plain", "plain:1", "plain:2")


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; the trainer saved a checkpoint and stops."""


def check_resume(cfg: GRPOConfig, run_dir: Path, resume: bool) -> dict:
    """The run directory's summary so far; refuse to mix runs."""
    config_path = run_dir / "config.yaml"
    if not resume:
        if config_path.exists():
            raise UsageError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                             "(same flags), or choose another --out")
        return {}
    if not config_path.exists():
        raise UsageError(f"--resume {run_dir}: no config.yaml there; not an r1lite run directory")
    saved = yaml.safe_load(config_path.read_text())
    now = to_dict(cfg)
    diffs = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
    if diffs:
        k = diffs[0]
        raise UsageError(f"--resume {run_dir}: '{k}' was {saved.get(k)!r} in the original run, now {now.get(k)!r}; "
                         "resume with the same flags and recipe as the original run")
    summary_file = run_dir / "summary.json"
    return read_json(summary_file, "delete it to rerun the evaluations") if summary_file.exists() else {}


def lr_lambda(cfg: GRPOConfig):
    total = cfg.max_steps * cfg.mu

    def factor(update: int) -> float:
        if update < cfg.warmup_steps:
            return (update + 1) / cfg.warmup_steps
        progress = (update - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        if cfg.lr_schedule == "linear":
            return max(0.0, 1 - progress)
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
    return factor


def rollout_dtype(cfg: GRPOConfig, runtime) -> torch.dtype:
    """The precision of the rollout and evaluation weights."""
    if cfg.rollout_dtype == "auto":
        return runtime.dtype
    return torch.bfloat16 if cfg.rollout_dtype in ("bf16", "bfloat16") else torch.float32


class Trainer:
    def __init__(self, cfg: GRPOConfig, resume: bool = False, console=None):
        from rich.console import Console

        self.cfg = cfg
        self.console = console or Console()
        self.run_dir = Path(cfg.out)
        self.summary = check_resume(cfg, self.run_dir, resume)
        self.resume = resume
        self.stop_signal: str | None = None
        # Everything a config can get wrong is checked here, before anything is written or loaded.
        self.runtime = resolve_runtime(cfg.device, cfg.dtype)
        self.task = tasks.load_task(cfg.task, cfg.task_options)
        self.distill_cfg = distill.cold_start_config(cfg) if cfg.cold_start_teacher else None
        if cfg.cold_start_items and not (cfg.cold_start_data or cfg.cold_start_teacher) and not self.task.numeric:
            raise UsageError(f"cold_start_items={cfg.cold_start_items}: the cold start rewrites plain answers into "
                             f"<answer> blocks and needs a numeric task; {self.task.name} is not (set cold_start_items 0)")

    # -- setup ------------------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.cfg
        if self.summary.get("finished"):
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self.resume:
            write_text(self.run_dir / "config.yaml", dump_yaml(cfg))
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.console.print(f"[bold]r1lite train[/] → {self.run_dir}  ({self.runtime.describe()})")
        self.console.print(dump_yaml(cfg).rstrip(), style="dim", highlight=False)
        if self.runtime.device.type == "cpu":  # the price row's peak and throughput follow the dtype
            device_name = "cpu" if self.runtime.dtype == torch.bfloat16 else "cpu-fp32"
        else:
            device_name = torch.cuda.get_device_name(self.runtime.device)
        hardware = cost.CostConfig(hardware=cfg.hardware, watts=cfg.watts, usd_per_hour=cfg.usd_per_hour).resolve(device_name)
        self.meter = cost.CostMeter(hardware)
        self.model, self.tokenizer = load_model(cfg.model, self.runtime, seed=cfg.seed)
        if cfg.lora:
            from peft import LoraConfig, get_peft_model

            self.model = get_peft_model(self.model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                                                               target_modules=list(cfg.lora_targets)))
        # Eval mode throughout, training included: no dropout, so the log-probs trained on are those
        # of the policy that sampled (the generic, non-Llama path would otherwise drop activations).
        self.model.eval()
        self.policy = Policy(self.model, cfg.temperature)
        self.reference = Reference(self.model, cfg.lora, cfg.temperature) if cfg.beta > 0 else None
        self.teacher = onpolicy.Teacher(cfg.teacher, self.runtime, self.tokenizer) if cfg.teacher else None
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = adamw(self.params, cfg.lr, cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.engine = make_engine(self.model, self.tokenizer, rollout_dtype(cfg, self.runtime),
                                  stop_token_ids(self.tokenizer, self.model), cfg.rollout_batch_size)
        self.train_pool = self.task.split("train", self._train_pool_size(), seed=cfg.seed)
        self.eval_items = self.task.split("test", cfg.eval_items, seed=cfg.seed) if cfg.eval_items else []
        self.step, self.data_position = 0, 0
        ckpt = checkpoint.latest(self.run_dir) if self.resume else None
        state = {}
        if ckpt is not None:
            state = checkpoint.load(ckpt, self.model, self.optimizer, self.scheduler)
            self.step, self.data_position = state["step"], state["data_position"]
            self.meter.load_state_dict(state["cost"])
            self.console.print(f"resumed from {ckpt} (step {self.step})")
            if self.reference is not None and state.get("reference_step") is not None:
                self.reference.load(self.run_dir, state["reference_step"])
        if self.summary.get("cold_start_done") and not state.get("cold_start_done"):
            # the run stopped before the cold start's checkpoint was complete: its model is lost
            self.console.print("[yellow]the cold start's checkpoint was not written before the run stopped; "
                               "doing the cold start again[/]")
            for key in ("cold_start_done", "cold_start", "eval_after_sft"):
                self.summary.pop(key, None)
            self.save_summary()
        self._truncate_metrics()

    def _train_pool_size(self) -> int | None:
        if self.task.rows is not None:  # a finite source: all of its train split
            return None
        refills = self.cfg.max_refill_rounds + 1 if self.cfg.dynamic_sampling else 1
        return self.cfg.max_steps * self.cfg.prompts_per_step * refills

    def _truncate_metrics(self) -> None:
        """Rows written after the last checkpoint are dropped; the resumed run writes them again. A
        cut-off last line (a kill mid-write) is dropped with a note."""
        path = self.run_dir / "metrics.jsonl"
        if path.exists():
            notes: list[str] = []
            rows = [r for _, r in read_jsonl(path, notes=notes)]
            for note in notes:
                self.console.print(f"[yellow]{note}[/]")
            write_jsonl(path, [r for r in rows if r["step"] <= self.step])

    # -- helpers ------------------------------------------------------------------------------------

    def next_items(self, count: int) -> list[tasks.Item]:
        """The next ``count`` training items in a seeded order, reshuffled every epoch."""
        out = []
        n = len(self.train_pool)
        for _ in range(count):
            epoch, pos = divmod(self.data_position, n)
            order = list(range(n))
            random.Random(self.cfg.seed * 1_000_003 + epoch).shuffle(order)
            out.append(self.train_pool[order[pos]])
            self.data_position += 1
        return out

    def run_eval(self, key: str, fmt: str) -> dict:
        if key in self.summary or not self.eval_items:
            return self.summary.get(key, {})
        self.engine.sync(self.model)
        with self.meter.phase("eval"), progress(self.console, f"eval {key}", len(self.eval_items), "seq") as update:
            _, result = evaluate.evaluate(self.engine, self.tokenizer, self.task, self.eval_items, fmt,
                                          max_new_tokens=self.cfg.max_new_tokens, seed=self.cfg.seed,
                                          batch_size=self.cfg.eval_batch_size,
                                          prefill_think=self.cfg.prefill_think and fmt == "r1", on_progress=update)
        self.meter.add_flops("eval", result["flops"])
        self.console.print(f"{key}: accuracy {result['pass@1']:.1%}, format {result['format_rate']:.1%} "
                           f"({result['n_items']} items, {fmt})")
        self.summary[key] = result
        self.save_summary()
        return result

    def save_summary(self) -> None:
        write_json(self.run_dir / "summary.json", self.summary)

    # -- phases -----------------------------------------------------------------------------------

    def evaluate_base(self) -> None:
        cfg = self.cfg
        if self.step > 0 or self.summary.get("cold_start_done"):
            return
        self.run_eval("eval_before", cfg.format)
        if cfg.eval_base_plain and "eval_base_plain" not in self.summary and self.eval_items:
            results = {}
            for phrasing in cfg.base_phrasings:
                results[phrasing] = self.run_eval(f"eval_base_phrasing{PLAIN_PHRASINGS.index(phrasing)}", phrasing)
            best = max(results, key=lambda p: results[p]["pass@1"])
            self.summary["eval_base_plain"] = {**results[best], "phrasing": best,
                                               "phrasings": {p: r["pass@1"] for p, r in results.items()}}
            self.save_summary()

    def cold_start(self) -> None:
        """R1's cold start: SFT on verified traces, the model's own answers or (cold_start_data,
        cold_start_teacher) a teacher's. Done as one unit: its checkpoint is written before the
        summary says it is done, so a stop in between redoes it on resume."""
        cfg = self.cfg
        if not (cfg.cold_start_items or cfg.cold_start_data) or self.summary.get("cold_start_done"):
            return
        if cfg.cold_start_data or cfg.cold_start_teacher:
            return self.cold_start_sft(*distill.cold_start_traces(cfg, self.distill_cfg, self.meter, self.console))
        items = self.task.split("train", cfg.cold_start_items, seed=cfg.seed + 1)
        stats = GenerationStats()
        self.engine.sync(self.model)
        with self.meter.phase("cold_start_sampling"), progress(self.console, "cold-start sampling",
                                                               len(items) * cfg.cold_start_samples, "seq") as update:
            traces = sft.self_traces(self.engine, self.tokenizer, self.task, items, phrasing=cfg.cold_start_format,
                                     samples=cfg.cold_start_samples, temperature=cfg.cold_start_temperature,
                                     max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, per_item=cfg.cold_start_per_item,
                                     model_name=cfg.model, batch_size=cfg.eval_batch_size, stats=stats, on_progress=update)
        self.meter.add_flops("cold_start_sampling", stats.flops)
        write_jsonl(self.run_dir / "cold_start.jsonl", traces)
        self.console.print(f"cold start: kept {len(traces)} verified traces from {len(items)} items "
                           f"x {cfg.cold_start_samples} samples → {self.run_dir / 'cold_start.jsonl'}")
        if not traces:
            raise UsageError("cold start: no verified-correct sample to learn from; raise cold_start_items or "
                             "cold_start_samples, or use a task the base model sometimes solves")
        self.cold_start_sft(traces, {"items": len(items), "samples_per_item": cfg.cold_start_samples})

    def cold_start_sft(self, traces: list[dict], info: dict) -> None:
        cfg = self.cfg
        pairs = [sft.encode_pair(self.tokenizer, t["messages"], t["prefill"], t["completion"]) for t in traces]
        steps = cfg.cold_start_epochs * -(-len(pairs) // cfg.cold_start_batch_size)
        with self.meter.phase("sft"), progress(self.console, "cold-start SFT", steps, "steps") as update:
            history = sft.train_sft(self.model, self.tokenizer, pairs, epochs=cfg.cold_start_epochs, lr=cfg.cold_start_lr,
                                    batch_size=cfg.cold_start_batch_size, micro_batch_size=cfg.micro_batch_size,
                                    seed=cfg.seed, autocast=self.runtime.autocast, device=self.runtime.device,
                                    on_step=lambda r: update(len(r["history"]), f"loss {r['loss']:.3f}"))
        self.meter.add_flops("sft", sum(r["flops"] for r in history))
        self.summary["cold_start"] = {**info, "traces": len(traces), "sft_steps": len(history),
                                      "final_loss": history[-1]["loss"] if history else None}
        self.run_eval("eval_after_sft", cfg.format)
        self.save_checkpoint(cold_start_done=True)
        self.summary["cold_start_done"] = True
        self.save_summary()
        self.check_stop()

    def save_checkpoint(self, cold_start_done: bool | None = None) -> None:
        state = {"data_position": self.data_position, "cost": self.meter.state_dict(),
                 "cold_start_done": bool(self.summary.get("cold_start_done") if cold_start_done is None else cold_start_done),
                 "reference_step": None if self.reference is None else self.reference.step}
        checkpoint.save(self.run_dir, self.step, self.model, self.optimizer, self.scheduler, state)
        if self.reference is not None and self.reference.step is not None:
            self.reference.keep_only_current(self.run_dir)

    # -- GRPO -------------------------------------------------------------------------------------

    def rollout(self) -> tuple[list[dict], dict]:
        """Sample groups for one step; with dynamic sampling keep only informative groups and refill.

        Prompt i of round r of step s samples with seed (seed, s, r, i): the completions do not
        depend on the batch they were decoded in."""
        cfg = self.cfg
        sampling = Sampling(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            top_k=cfg.top_k, stop=tuple(cfg.stop))
        self.engine.sync(self.model)
        groups: list[dict] = []
        seen: list[dict] = []
        stats = GenerationStats()
        rounds = 0
        while len(groups) < cfg.prompts_per_step:
            items = self.next_items(cfg.prompts_per_step - len(groups))
            prompts = item_prompts(self.tokenizer, self.task, items, cfg.format, cfg.prefill_think)
            requests = [Request(p.ids, sampling, n=cfg.group_size, seed=derive_seed(cfg.seed, self.step, rounds, i))
                        for i, p in enumerate(prompts)]
            outputs = self.engine.generate(requests, stats=stats)
            for item, prompt, completions in zip(items, prompts, outputs):
                group = self.score_group(item, prompt.ids, prompt.prefill, completions)
                seen.append(group)
                if not cfg.dynamic_sampling or bool(grpo.informative_groups(group["reward"], cfg.group_size)[0]):
                    groups.append(group)
            rounds += 1
            if not cfg.dynamic_sampling or rounds > cfg.max_refill_rounds:
                break
        self.meter.add_flops("rollout", stats.flops)
        info = {"groups_sampled": len(seen), "groups_kept": len(groups), "rollout_tokens": stats.new_tokens,
                "rollout_tokens_per_s": stats.tokens_per_s}
        return groups, {"seen": seen, **info}

    def score_group(self, item, prompt, prefill, completions) -> dict:
        """Rewards of one group: each configured function, weighted and summed."""
        cfg = self.cfg
        scored = [tasks.score(c.text, item, self.task, cfg.format, prefill) for c in completions]
        accuracy = [s["accuracy"] or 0.0 for s in scored]  # None (unusable gold) counts 0
        parts: dict[str, list[float]] = {}
        for name in cfg.rewards:
            if name == "format_partial":
                parts[name] = [rewards.format_partial(prefill + c.text) for c in completions]
            else:
                parts[name] = accuracy if name == "accuracy" else [s["format"] for s in scored]
        weights = dict(cfg.rewards)
        if cfg.overlong_buffer:
            parts["overlong"] = [rewards.overlong_penalty(len(c.token_ids), cfg.max_new_tokens, cfg.overlong_buffer)
                                 for c in completions]
            weights["overlong"] = 1.0
        total = sum(weights[name] * torch.tensor(vals, dtype=torch.float32) for name, vals in parts.items())
        return {"prompt": prompt, "completions": completions, "reward": total, "parts": parts,
                "accuracy": accuracy, "format": [s["format"] for s in scored]}

    def train_step(self, groups: list[dict]) -> dict:
        cfg = self.cfg
        G = cfg.group_size
        completions = [c for g in groups for c in g["completions"]]
        rewards_all = torch.cat([g["reward"] for g in groups])  # [N]
        advantages = grpo.group_advantages(rewards_all, G, cfg.scale_rewards).to(self.runtime.device)
        batch = make_group_batch([g["prompt"] for g in groups], [i // G for i in range(len(completions))],
                                 [c.token_ids for c in completions], self.tokenizer.pad_token_id).to(self.runtime.device)
        mask = batch.completion_mask.clone()
        if cfg.mask_truncated:
            mask[torch.tensor([c.finish == "length" for c in completions])] = 0
        weights = grpo.token_weights(mask, cfg.loss_type, G, cfg.max_new_tokens)
        if self.reference is None:
            # A group whose rewards are all equal has advantage 0 on every token, so with no KL term
            # its loss and gradient are exactly 0: leave it out of the forward and backward passes.
            # The weights above were computed on the whole batch, so the gradient is unchanged
            # (typically a third to a half of the groups, and of the train step, on arithmetic).
            # When no group is informative the whole gradient is 0: no forward or backward at all,
            # but the optimizer still steps on zero gradients (Adam's moments keep moving the
            # weights, exactly as after a computed zero gradient).
            keep = grpo.informative_groups(rewards_all, G)
            if not bool(keep.any()):
                advantages = advantages[:0]
            elif not bool(keep.all()):
                rows = keep.repeat_interleave(G).nonzero().squeeze(1).to(self.runtime.device)
                batch, advantages, weights = batch.rows(rows), advantages[rows], weights[rows]
        n = len(advantages)
        per_chunk = max(1, cfg.micro_batch_size // G) * G  # whole groups: each prompt runs once per chunk
        chunks = [slice(i, min(n, i + per_chunk)) for i in range(0, n, per_chunk)]
        parts = [batch.rows(c) for c in chunks]  # each chunk trimmed to the widths it needs
        old = ref = None
        flops = 0.0
        with torch.no_grad():
            if cfg.mu > 1:
                old = [self.logprobs(part)[0] for part in parts]
                flops += sum(pass_flops(self.model, part, backward=False) for part in parts)
            if self.reference is not None:
                self.start_reference()
                with self.runtime.autocast():
                    ref = [self.reference.logprobs(part) for part in parts]
                flops += sum(pass_flops(self.model, part, backward=False) for part in parts)
        counted = float((weights > 0).sum())
        stats = {"clipped": 0.0, "kl_sum": 0.0, "entropy_sum": 0.0, "loss": 0.0}
        grad_norm = 0.0
        for it in range(cfg.mu):
            if n == 0:
                for p in self.params:
                    p.grad = torch.zeros_like(p)
            for j, (c, part) in enumerate(zip(chunks, parts)):
                logp, entropy = self.logprobs(part, with_entropy=it == 0)
                w = weights[c, :logp.shape[1]]
                loss, st = grpo.policy_loss(logp, logp.detach() if old is None else old[j],
                                            None if ref is None else ref[j], advantages[c], w, cfg)
                loss.backward()
                flops += pass_flops(self.model, part, backward=True)
                if it == cfg.mu - 1:
                    stats["clipped"] += st["clipped"]
                    stats["kl_sum"] += st["kl_sum"]
                    stats["loss"] += float(loss)
                if it == 0:
                    stats["entropy_sum"] += float((entropy * (w > 0)).sum())
            max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, max_norm))
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.meter.add_flops("train", flops)
        return {"loss": stats["loss"], "clip_frac": stats["clipped"] / max(1.0, counted),
                "kl": stats["kl_sum"] / max(1.0, counted) if cfg.beta > 0 else None,
                "entropy": stats["entropy_sum"] / max(1.0, counted) if n else None, "grad_norm": grad_norm,
                "lr": self.scheduler.get_last_lr()[0], "loss_tokens": int(counted),
                "train_tokens": sum(part.tokens for part in parts)}

    def distill_step(self, groups: list[dict]) -> dict:
        """On-policy distillation's update (objective on_policy_distill): :func:`r1lite.onpolicy.train_step`."""
        train, flops, teacher_flops = onpolicy.train_step(self.model, self.teacher, self.optimizer, self.scheduler,
                                                          self.params, groups, self.cfg, self.runtime.autocast,
                                                          self.tokenizer.pad_token_id, self.runtime.device)
        self.meter.add_flops("train", flops)
        self.meter.add_flops("teacher_scoring", teacher_flops)
        return train

    def logprobs(self, batch, with_entropy: bool = False):
        with self.runtime.autocast():
            return self.policy(batch, with_entropy=with_entropy)

    def step_metrics(self, info: dict, train: dict | None, seconds: dict) -> dict:
        cfg = self.cfg
        seen = info["seen"]
        rewards_all = torch.cat([g["reward"] for g in seen])
        lengths = [len(c.token_ids) for g in seen for c in g["completions"]]
        row = {"step": self.step, "reward_mean": float(rewards_all.mean()), "reward_std": float(rewards_all.std()),
               "accuracy": float(sum(sum(g["accuracy"]) for g in seen) / len(lengths))}
        for name in seen[0]["parts"]:
            vals = torch.tensor([v for g in seen for v in g["parts"][name]])
            row[f"rewards/{name}_mean"], row[f"rewards/{name}_std"] = float(vals.mean()), float(vals.std())
        row["format_rate"] = sum(sum(g["format"]) for g in seen) / len(lengths)
        row.update({"completion_len_mean": sum(lengths) / len(lengths), "completion_len_max": max(lengths),
                    "truncated_frac": sum(c.finish == "length" for g in seen for c in g["completions"]) / len(lengths),
                    "groups_kept": info["groups_kept"], "groups_sampled": info["groups_sampled"]})
        row.update(train or {"loss": None, "clip_frac": None, "kl": None, "entropy": None, "grad_norm": None,
                             "lr": self.scheduler.get_last_lr()[0], "loss_tokens": 0})
        row.update({"step_seconds": seconds["step"], "rollout_seconds": seconds["rollout"],
                    "train_seconds": seconds["train"],
                    "tokens_per_s": info["rollout_tokens"] / seconds["rollout"] if seconds["rollout"] else 0.0})
        return row

    # -- the run ----------------------------------------------------------------------------------

    def train(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.setup()
            if self.summary.get("finished"):
                self.console.print(f"{self.run_dir} is finished ({self.summary.get('steps')} steps); nothing to do")
                return 0
            self.evaluate_base()
            self.check_stop()
            self.cold_start()
            self.grpo_loop()
            self.finish()
        except Interrupted as e:
            where = f"checkpoint at step {self.step} saved" if checkpoint.latest(self.run_dir) else "no checkpoint yet"
            self.console.print(f"[yellow]{e}[/]: {where}; continue with the same command plus --resume {self.run_dir}")
            return 130 if str(e) == "SIGINT" else 143
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        return 0

    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.stop_signal = signal.Signals(signum).name
        self.console.print(f"\n{self.stop_signal}: finishing the current phase, then saving a checkpoint "
                           "(send it again to stop at once)")

    def check_stop(self) -> None:
        """At a point where the run directory is consistent: stop if a signal came."""
        if self.stop_signal:
            raise Interrupted(self.stop_signal)

    def start_reference(self) -> None:
        """Take the KL reference from the policy as RL starts (after any cold start), once."""
        if self.reference is not None and self.reference.step is None:
            self.reference.take(self.step)
            self.reference.save(self.run_dir)

    def grpo_loop(self) -> None:
        cfg = self.cfg
        if self.step >= cfg.max_steps:
            return
        self.start_reference()
        with progress(self.console, "GRPO", cfg.max_steps, "steps", done=self.step, log_every=0) as update:
            while self.step < cfg.max_steps:
                t0 = time.perf_counter()
                with self.meter.phase("rollout"):
                    groups, info = self.rollout()
                t1 = time.perf_counter()
                train = None
                if groups:
                    with self.meter.phase("train"):
                        train = self.distill_step(groups) if self.teacher is not None else self.train_step(groups)
                t2 = time.perf_counter()
                self.step += 1
                row = self.step_metrics(info, train, {"step": t2 - t0, "rollout": t1 - t0, "train": t2 - t1})
                append_jsonl(self.run_dir / "metrics.jsonl", row)
                update(self.step, f"reward {row['reward_mean']:.2f}  acc {row['accuracy']:.0%}  fmt {row['format_rate']:.0%}  "
                                  f"len {row['completion_len_mean']:.0f}  {row['step_seconds']:.1f}s/step")
                if self.reference is not None and cfg.ref_reset_every and self.step % cfg.ref_reset_every == 0:
                    self.reference.take(self.step)  # saved before the checkpoint that names it
                    self.reference.save(self.run_dir)
                    self.save_checkpoint()
                elif (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.max_steps or self.stop_signal:
                    self.save_checkpoint()
                self.check_stop()

    def finish(self) -> None:
        cfg = self.cfg
        self.run_eval("eval_after", cfg.format)
        model = self.model.merge_and_unload() if cfg.lora else self.model
        with atomic_dir(self.run_dir / "final") as tmp:
            model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
        final = self.run_dir / "final"
        self.summary.update({"model": cfg.model, "task": self.task.name, "format": cfg.format, "steps": self.step,
                             "runtime": self.runtime.describe(), "final": str(final), "cost": self.meter.report()})
        self.summary["cost"]["teacher"] = distill.teacher_cost(self.summary["cost"], self.summary.get("cold_start", {}), cfg.teacher)
        self.save_summary()
        path = report.write_report(self.run_dir)
        self.summary["finished"] = True
        self.save_summary()
        self.print_result(path)

    def print_result(self, report_path: Path) -> None:
        from rich.table import Table

        table = Table(title=f"{self.task.name} · held-out, greedy")
        for h in report.TABLE_HEADER:
            table.add_column(h, justify="left" if not h else "right")
        for row in report.before_after_table(self.summary):
            table.add_row(*row)
        self.console.print(table)
        line = report.headline(self.summary)
        if line:
            self.console.print(line)
        self.console.print(cost.format_cost(self.summary["cost"]))
        self.console.print(f"report: {report_path}")
