"""A GRPO run from start to report: evaluate the base, optional cold-start SFT, GRPO steps with
checkpoints, evaluate again, save the model, write summary, report and cost.

Run directory::

    config.yaml        the resolved config (a resume must match it)
    metrics.jsonl      one row per GRPO step
    summary.json       evaluations, cost, status (written as each phase ends)
    cold_start.jsonl   the cold-start traces with provenance (when a cold start ran)
    checkpoints/       the latest checkpoint (see r1lite.train.checkpoint)
    final/             the trained model as a Hugging Face directory (safetensors)
    report.html        plots and tables (plots/*.png)

Under torchrun every rank runs this same trainer on its share of the work and rank 0 alone writes
the run directory (:mod:`r1lite.train.distributed`). A resumed run reads it on every rank, so ``--out``
must be on a filesystem every node sees; it may resume with another number of processes.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from r1lite import evaluate, prompts, report, tasks
from r1lite.config import dump_yaml, to_dict
from r1lite.engine import GenerationStats, make_engine
from r1lite.engine.sampling import check_budget
from r1lite.errors import UsageError
from r1lite.files import (
    DiskFull, append_jsonl, write_json, write_jsonl, write_text,
)
from r1lite.meter import meter
from r1lite.meter.energy import open_counter
from r1lite.meter.hardware import CostConfig
from r1lite.meter.memory import release_free
from r1lite.models import device_kind, load_model, resolve_runtime, spec_context
from r1lite.packaged import stop_token_ids
from r1lite.progress import progress
from r1lite.train import checkpoint, coldstart, distributed, grpo, onpolicy, printout, rollout, rundir
from r1lite.train.config import GRPOConfig, LaunchConfig
from r1lite.train.policy import Policy, adamw, apply_update, dummy_batch, lr_schedule, pass_flops
from r1lite.train.reference import Reference

RL_PHASES = ("rollout", "train", "teacher_scoring")  # what max_rl_flops counts
CURVE_KEYS = ("pass@1", "format_rate", "completion_tokens_mean")  # an eval_curve point's figures
WALL_CLOCK_KEYS = ("step_seconds", "rollout_seconds", "train_seconds", "tokens_per_s", "time")


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; the trainer saved a checkpoint and stops."""


def rollout_dtype(cfg: LaunchConfig, runtime) -> torch.dtype:
    """The precision of the rollout and evaluation weights."""
    if cfg.rollout_dtype == "auto":
        return runtime.dtype
    return torch.bfloat16 if cfg.rollout_dtype in ("bf16", "bfloat16") else torch.float32


class Trainer:
    def __init__(self, cfg: GRPOConfig, resume: bool = False, console=None, force: bool = False):
        from rich.console import Console

        self.cfg = cfg
        self.run_dir = Path(cfg.out)
        self.resume = resume
        self.stop_signal: str | None = None
        # Everything a config can get wrong is checked here, before anything is written or loaded.
        launch = distributed.launch_from_env()
        self.runtime = resolve_runtime(cfg.launch.device, cfg.launch.dtype,
                                       launch.local_rank if launch.size > 1 else None)
        self.world = distributed.start(launch, self.runtime, cfg.launch.dist_timeout)
        self.console = console or Console(quiet=not self.world.main)
        with self.world.together():  # every rank checks; an error on one stops all
            self.world.agree(to_dict(cfg))
            distributed.check_launch(cfg, self.world.size)
            rundir.claim(self.run_dir, resume, force)
            self.summary = rundir.check_resume(cfg, self.run_dir, resume)
            self.task = tasks.load_task(cfg.task, cfg.task_options)
            check_budget(cfg.sampling.max_new_tokens, spec_context(cfg.model), flag="max_new_tokens")
            self.distill_cfg = coldstart.distill_config(cfg) if cfg.cold_start.teacher else None
            if cfg.cold_start.items and not (cfg.cold_start.data or cfg.cold_start.teacher) and not self.task.numeric:
                raise UsageError(f"cold_start_items={cfg.cold_start.items}: the cold start rewrites plain answers into "
                                 f"<answer> blocks and needs a numeric task; {self.task.name} is not (set cold_start_items 0)")

    # -- setup ------------------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.cfg
        if self.summary.get("finished"):
            return
        if self.world.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for stale in rundir.clean_stale_temps(self.run_dir):
                self.console.print(f"removed {stale}, left by a write that was cut off")
            if not self.resume:
                write_text(self.run_dir / "config.yaml", dump_yaml(cfg))
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.console.print(printout.header(cfg, self.runtime, self.world.size, self.run_dir, self.resume),
                           highlight=False)
        with self.world.together():
            hardware = CostConfig(hardware=cfg.cost.hardware, watts=cfg.cost.watts,
                                  usd_per_hour=cfg.cost.usd_per_hour).resolve(device_kind(self.runtime))
            counter, no_counter = open_counter(self.runtime.device.type, self.runtime.device.index or 0)
            self.meter = meter.CostMeter(hardware, energy=counter, no_energy_reason=no_counter)
            self.model, self.tokenizer = self.build_model()
            self.policy = Policy(self.model, cfg.sampling.temperature, cfg.optim.gradient_checkpointing)
            if cfg.launch.fsdp:
                self.world.shard(self.policy)
            self.teacher = onpolicy.Teacher(cfg.loss.teacher, self.runtime, self.tokenizer) if cfg.loss.teacher else None
        self.reference = (Reference(self.policy, cfg.optim.lora or cfg.launch.fsdp, cfg.sampling.temperature)
                          if cfg.loss.beta > 0 else None)
        self.params = [p for p in self.model.parameters() if p.requires_grad]  # after sharding: FSDP replaces them
        self.optimizer = adamw(self.params, cfg.optim.lr, cfg.optim.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_schedule(cfg.optim))
        with self.world.full_weights(self.policy):
            self.engine = make_engine(self.model, self.tokenizer, rollout_dtype(cfg.launch, self.runtime),
                                      stop_token_ids(self.tokenizer, self.model), cfg.sampling.rollout_batch_size,
                                      own_weights=self.world.fsdp)
        self.train_pool = self.task.split("train", self._train_pool_size(), seed=cfg.seed) if cfg.optim.max_steps else []
        self.eval_items = self.task.split("test", cfg.eval.items, seed=cfg.eval.seed) if cfg.eval.items else []
        self.step, self.data_position = 0, 0
        self.reward_running = [0.0, 0]  # reward_control random: the real reward's sum and count so far
        state = {}
        with self.world.together():
            ckpt = checkpoint.latest(self.run_dir) if self.resume else None
            if ckpt is not None:
                ckpt, state = checkpoint.load_or_before(ckpt, self.model, self.optimizer, self.scheduler,
                                                        self.console.print)
                self.step, self.data_position = state["step"], state["data_position"]
                self.reward_running = list(state.get("reward_running", self.reward_running))
                if self.world.main:  # the job's cost so far; the other ranks count their own from here
                    self.meter.load_state_dict(state["cost"])
                self.console.print(f"resumed from {ckpt} (step {self.step}, saved by {state['world_size']} "
                                   f"process{'es' if state['world_size'] > 1 else ''})")
                if self.reference is not None and state.get("reference_step") is not None:
                    self.reference.load(self.run_dir, state["reference_step"])
        if self.summary.get("cold_start_done") and not state.get("cold_start_done"):
            # the run stopped before the cold start's checkpoint was complete: its model is lost
            self.console.print("[yellow]the cold start's checkpoint was not written before the run stopped; "
                               "doing the cold start again[/]")
            for key in ("cold_start_done", "cold_start", "eval_after_sft"):
                self.summary.pop(key, None)
            self.save_summary()
        notes = rundir.truncate_metrics(self.run_dir, self.summary, self.step, write=self.world.main)
        for note in notes:
            self.console.print(f"[yellow]{note}[/]")

    def build_model(self):
        """The model to train (with LoRA adapters when configured) and its tokenizer."""
        cfg = self.cfg
        model, tokenizer = load_model(cfg.model, self.runtime, seed=cfg.seed)
        if cfg.optim.lora:
            from peft import LoraConfig, get_peft_model

            optim = cfg.optim
            model = get_peft_model(model, LoraConfig(r=optim.lora_r, lora_alpha=optim.lora_alpha, lora_dropout=0.0,
                                                     target_modules=list(optim.lora_targets)))
        # Eval mode throughout, training included: no dropout, so the log-probs trained on are those
        # of the policy that sampled (the generic, non-Llama path would otherwise drop activations).
        return model.eval(), tokenizer

    def _train_pool_size(self) -> int | None:
        if self.task.rows is not None:  # a finite source: all of its train split
            return None
        refills = self.cfg.loss.max_refill_rounds + 1 if self.cfg.loss.dynamic_sampling else 1
        return self.cfg.optim.max_steps * self.cfg.optim.prompts_per_step * refills

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

    @contextlib.contextmanager
    def engine_weights(self) -> Iterator[None]:
        """The rollout engine holds the current weights (under FSDP gathered whole, once) for the
        decoding inside the block, and drops its copy after it: the passes and updates between two
        decodings run without it, and every decoding syncs first anyway. A decoding that fails
        leaves its requests behind: they are dropped, so the unload does not hide the failure."""
        with self.world.full_weights(self.policy):
            self.engine.sync(self.model)
        try:
            yield
        except BaseException:
            self.engine.clear()
            raise
        finally:
            self.engine.unload()

    def run_eval(self, key: str, fmt: str) -> dict:
        """Evaluate the held-out items (each rank its share), unless the summary has ``key``; every
        completion with its score goes to ``<run>/<key>.jsonl`` (rows as ``r1lite eval --out``)."""
        if key in self.summary or not self.eval_items:
            return self.summary.get(key, {})
        with self.meter.phase("eval"), progress(self.console, f"eval {key}", len(self.world_share(self.eval_items)),
                                                "seq") as update:
            rows, result = self.decode(self.eval_items, fmt, "eval", on_progress=update)
        if self.world.main:
            write_jsonl(self.run_dir / f"{key}.jsonl", rows)
        self.console.print(f"{key}: accuracy {result['pass@1']:.1%}, format {result['format_rate']:.1%} "
                           f"({result['n_items']} items, {fmt})")
        self.summary[key] = result
        self.save_summary()
        return result

    def world_share(self, items: list) -> list:
        return items[self.world.span(len(items))]

    def decode(self, items: list[tasks.Item], fmt: str, phase: str, on_progress=None) -> tuple[list[dict], dict]:
        """Greedy evaluation of ``items`` with the current weights, each rank its share, its FLOPs
        metered under ``phase``; the whole job's rows and summary."""
        with self.engine_weights():
            shard = evaluate.evaluate(self.engine, self.tokenizer, self.task, self.world_share(items), fmt,
                                      max_new_tokens=self.cfg.sampling.max_new_tokens, seed=self.cfg.seed,
                                      batch_size=self.cfg.sampling.eval_batch_size,
                                      prefill_think=self.cfg.prefill_think and fmt == "r1", on_progress=on_progress,
                                      template=self.cfg.template if fmt == "r1" else "chat")
        self.meter.add_flops(phase, shard[1]["flops"])
        return evaluate.combine(self.world.gather(shard))

    def save_summary(self) -> None:
        if self.world.main:
            write_json(self.run_dir / "summary.json", self.summary)

    # -- phases -----------------------------------------------------------------------------------

    def evaluate_base(self) -> None:
        cfg = self.cfg
        if self.step > 0 or self.summary.get("cold_start_done"):
            return
        self.run_eval("eval_before", cfg.format)
        if cfg.eval.base_plain and cfg.template == "r1_zero":
            self.console.print("eval_base_plain: skipped under template r1_zero (its prompts are the paper's template "
                               "in the r1 format; plain phrasings are not an alternative to them)")
        elif cfg.eval.base_plain and "eval_base_plain" not in self.summary and self.eval_items:
            results = {}
            for phrasing in cfg.eval.base_phrasings:
                results[phrasing] = self.run_eval(prompts.base_eval_key(phrasing), phrasing)
            best = max(results, key=lambda p: results[p]["pass@1"])
            self.summary["eval_base_plain"] = {**results[best], "phrasing": best,
                                               "phrasings": {p: r["pass@1"] for p, r in results.items()}}
            self.save_summary()

    def cold_start(self) -> None:
        """R1's cold start (:mod:`r1lite.train.coldstart`): SFT on verified traces, the model's own answers
        or (cold_start_data, cold_start_teacher) a teacher's, then the evaluation after it. Done as
        one unit: its checkpoint is written before the summary says it is done, so a stop in
        between redoes it on resume."""
        cfg = self.cfg
        if not (cfg.cold_start.items or cfg.cold_start.data) or self.summary.get("cold_start_done"):
            return
        if cfg.cold_start.data or cfg.cold_start.teacher:  # a teacher's traces instead of the model's own
            traces, info = coldstart.teacher_traces(cfg, self.distill_cfg, self.meter, self.console)
        else:
            with self.engine_weights():
                traces, info = coldstart.self_sampled(cfg, self.engine, self.tokenizer, self.task, self.world, self.meter,
                                                      self.console, self.run_dir)
        phase = coldstart.ColdStart(self.policy, self.tokenizer, self.cold_start_check, self.meter, self.console,
                                    self.runtime, self.world,  # FSDP's sharded weights stay in memory
                                    scratch=None if self.world.fsdp else self.run_dir / "cold-start-weights")
        record, flops = coldstart.fine_tune(cfg, phase, traces)
        self.meter.add_flops("sft", flops)
        self.summary["cold_start"] = {**info, **record}
        self.run_eval("eval_after_sft", cfg.format)
        self.save_checkpoint(cold_start_done=True)
        self.summary["cold_start_done"] = True
        self.save_summary()
        self.check_stop()

    def cold_start_check(self) -> dict:
        """Greedy strict-format rate and accuracy, in the run's format, on train prompts the held-out
        set never sees (each rank its share; metered with the SFT it steers)."""
        items = self.task.split("train", self.cfg.cold_start.check_items, seed=self.cfg.seed + 2)
        result = self.decode(items, self.cfg.format, "sft")[1]
        return {"format_rate": result["format_rate"], "accuracy": result["accuracy"]}

    def save_checkpoint(self, cold_start_done: bool | None = None) -> None:
        """Every rank calls it (the job's cost and FSDP's shards are gathered); rank 0 writes."""
        state = {"data_position": self.data_position, "world_size": self.world.size,
                 "cost": meter.combine(self.world.gather(self.meter.state_dict())),
                 "cold_start_done": bool(self.summary.get("cold_start_done") if cold_start_done is None else cold_start_done),
                 "reference_step": None if self.reference is None else self.reference.step,
                 "reward_running": self.reward_running}
        checkpoint.save(self.run_dir, self.step, self.model, self.optimizer, self.scheduler, state, write=self.world.main)
        if self.world.main and self.reference is not None and self.reference.step is not None:
            self.reference.keep_only(self.run_dir, {json.loads((c / "state.json").read_text()).get("reference_step")
                                                    for c in checkpoint.kept(self.run_dir)})

    # -- GRPO -------------------------------------------------------------------------------------

    def rollout(self) -> tuple[list[dict], dict]:
        """One step's groups (:func:`r1lite.train.rollout.sample_groups`): this rank's kept ones, and in
        ``info`` what every rank saw."""
        stats = GenerationStats()
        with self.engine_weights():
            groups, info = rollout.sample_groups(self.engine, self.tokenizer, self.task, self.cfg, self.world, self.step,
                                                 self.next_items, stats)
        if self.cfg.loss.reward_control == "random":
            rollout.random_rewards(groups, info, self.reward_running, self.cfg.seed, self.step,
                                   self.world.span(self.cfg.optim.prompts_per_step).start)
        self.meter.add_flops("rollout", stats.flops)
        return groups, info

    def train_step(self, groups: list[dict]) -> dict:
        """Update the policy on a step's kept groups, this rank's share in ``groups`` (every rank
        calls it, with no group too): the same update as one process on all of them."""
        cfg, world, device = self.cfg, self.world, self.runtime.device
        parts, counted = grpo.step_passes(groups, cfg, world, device, self.tokenizer.pad_token_id,
                                          skip_alike=self.reference is None)
        real, train_tokens = len(parts), float(sum(part.tokens for part, _, _ in parts))
        if world.fsdp:  # every pass gathers weights: each rank runs as many as the busiest, the rest weighted 0
            dummy = dummy_batch(self.tokenizer.pad_token_id).to(device)
            parts += [(dummy, torch.zeros(1, 1, device=device), torch.zeros(1, device=device))] * (world.max(real) - real)
        old = ref = None
        flops = 0.0
        with torch.no_grad():
            if cfg.optim.mu > 1:
                old = [self.logprobs(part)[0] for part, _, _ in parts]
                flops += sum(pass_flops(self.model, part, backward=False) for part, _, _ in parts)
            if self.reference is not None:
                self.start_reference()
                with self.runtime.autocast():
                    ref = [self.reference.logprobs(part) for part, _, _ in parts]
                flops += sum(pass_flops(self.model, part, backward=False) for part, _, _ in parts)
        stats = {"loss": 0.0, "clipped": 0.0, "kl_sum": 0.0, "entropy_sum": 0.0}
        grad_norm = 0.0
        for it in range(cfg.optim.mu):
            if not parts:
                for p in self.params:
                    p.grad = torch.zeros_like(p)
            for j, (part, w, adv) in enumerate(parts):
                logp, entropy = self.logprobs(part, with_entropy=it == 0 or cfg.loss.entropy_coef > 0)
                loss, st = grpo.policy_loss(logp, logp.detach() if old is None else old[j],
                                            None if ref is None else ref[j], adv, w, cfg.loss, entropy)
                # freed heap back to the OS around the backward, which would take fresh pages beside it
                release_free()
                loss.backward()
                release_free()
                flops += pass_flops(self.model, part, backward=True)
                if it == cfg.optim.mu - 1:
                    stats["clipped"] += st["clipped"]
                    stats["kl_sum"] += st["kl_sum"]
                    stats["loss"] += float(loss.detach())
                if it == 0:
                    stats["entropy_sum"] += float((entropy.detach() * (w > 0)).sum())
            grad_norm = apply_update(self.params, self.optimizer, cfg.optim.max_grad_norm, world, self.scheduler)
        self.meter.add_flops("train", flops)
        loss, clipped, kl_sum, entropy_sum, counted, train_tokens, passes = world.sum(
            [stats["loss"], stats["clipped"], stats["kl_sum"], stats["entropy_sum"], counted, train_tokens, real])
        return {"loss": loss, "clip_frac": clipped / max(1.0, counted),
                "kl": kl_sum / max(1.0, counted) if cfg.loss.beta > 0 else None,
                "entropy": entropy_sum / max(1.0, counted) if passes else None, "grad_norm": grad_norm,
                "lr": self.scheduler.get_last_lr()[0], "loss_tokens": int(counted), "train_tokens": int(train_tokens)}

    def distill_step(self, groups: list[dict]) -> dict:
        """On-policy distillation's update (objective on_policy_distill): :func:`r1lite.train.onpolicy.train_step`."""
        train, flops, teacher_flops = onpolicy.train_step(self.model, self.teacher, self.optimizer, self.scheduler,
                                                          self.params, groups, self.cfg, self.runtime.autocast,
                                                          self.tokenizer.pad_token_id, self.runtime.device)
        self.meter.add_flops("train", flops)
        self.meter.add_flops("teacher_scoring", teacher_flops)
        return train

    def logprobs(self, batch, with_entropy: bool = False):
        with self.runtime.autocast():
            return self.policy(batch, with_entropy=with_entropy)

    # -- the run ----------------------------------------------------------------------------------

    def train(self) -> int:
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        lock = rundir.RunLock(self.run_dir, self.console) if self.world.main else contextlib.nullcontext()
        try:
            with lock:
                return self.run_phases()
        except Interrupted as e:

            where = f"checkpoint at step {self.step} saved" if checkpoint.latest(self.run_dir) else "no checkpoint yet"
            self.console.print(f"[yellow]{e}[/]: {where}; continue with the same command plus --resume {self.run_dir}")
            return 130 if str(e) == "SIGINT" else 143
        except DiskFull as e:
            last = checkpoint.latest(self.run_dir)
            where = f"its last checkpoint ({last.name})" if last else "the start"
            raise DiskFull(f"{e}; then the same command plus --resume {self.run_dir} continues from {where}") from e
        except (RuntimeError, torch.distributed.DistError) as e:  # another rank stopped: say so in one line
            failure = distributed.peer_failure(e, self.world)
            if failure is None:
                raise
            raise failure from None
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def run_phases(self) -> int:
        self.setup()
        if self.summary.get("finished"):
            self.console.print(f"{self.run_dir} is finished ({self.summary.get('steps')} steps); nothing to do")
            return 0
        self.evaluate_base()
        self.check_stop()
        self.cold_start()
        self.grpo_loop()
        self.finish()
        return 0

    def _on_signal(self, signum, frame) -> None:
        if self.stop_signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.stop_signal = signal.Signals(signum).name
        self.console.print(f"\n{self.stop_signal}: finishing the current phase, then saving a checkpoint "
                           "(send it again to stop at once)")

    def stop_requested(self) -> str | None:
        """The signal any rank got, or None: every rank stops at the same point."""
        return next((name for name in self.world.gather(self.stop_signal) if name), None)

    def check_stop(self) -> None:
        """At a point where the run directory is consistent: stop if a signal came."""
        stop = self.stop_requested()
        if stop:
            raise Interrupted(stop)

    def start_reference(self) -> None:
        """Take the KL reference from the policy as RL starts (after any cold start), once."""
        if self.reference is not None and self.reference.step is None:
            self.reference.take(self.step)
            self.reference.save(self.run_dir, write=self.world.main)

    def rl_flops(self) -> float:
        """The RL stage's metered FLOPs so far (rollouts, train passes, teacher scoring), the whole job's."""
        return self.world.sum([sum(self.meter.flops_by_phase.get(p, 0.0) for p in RL_PHASES)])[0]

    def budget_spent(self, flops: float | None = None) -> bool:
        budget = self.cfg.optim.max_rl_flops
        return bool(budget) and (self.rl_flops() if flops is None else flops) >= budget

    def curve_point(self, flops: float) -> None:
        """A held-out evaluation mid-run (eval_every), kept in the summary's ``eval_curve``."""
        with self.meter.phase("eval"):
            result = self.decode(self.eval_items, self.cfg.format, "eval")[1]
        point = {"step": self.step, "rl_flops": flops, **{k: result[k] for k in CURVE_KEYS}}
        self.summary.setdefault("eval_curve", []).append(point)
        self.save_summary()
        self.console.print(f"eval at step {self.step}: accuracy {result['pass@1']:.1%}, format {result['format_rate']:.1%}")

    def grpo_loop(self) -> None:
        cfg = self.cfg
        if self.step >= cfg.optim.max_steps or self.budget_spent():
            return
        self.start_reference()
        with progress(self.console, "GRPO", cfg.optim.max_steps, "steps", done=self.step, log_every=0) as update:
            while self.step < cfg.optim.max_steps:
                t0 = time.perf_counter()
                with self.meter.phase("rollout"):
                    groups, info = self.rollout()
                t1 = time.perf_counter()
                if self.step == 0 and cfg.loss.objective == "grpo":
                    self.preflight(info)
                train = None
                if info["groups_kept"]:  # on some rank: every rank joins the update
                    with self.meter.phase("train"):
                        train = self.distill_step(groups) if self.teacher is not None else self.train_step(groups)
                t2 = time.perf_counter()
                self.step += 1
                row = rollout.step_metrics(self.step, info, train, {"step": t2 - t0, "rollout": t1 - t0, "train": t2 - t1},
                                           self.scheduler.get_last_lr()[0])
                row["rl_flops"] = self.rl_flops()
                spent = self.budget_spent(row["rl_flops"])
                if self.world.main:
                    append_jsonl(self.run_dir / "metrics.jsonl", row)
                update(self.step, f"reward {row['reward_mean']:.2f}  acc {row['accuracy']:.0%}  fmt {row['format_rate']:.0%}  "
                                  f"len {row['completion_len_mean']:.0f}  {row['step_seconds']:.1f}s/step")
                last = spent or self.step == cfg.optim.max_steps
                if cfg.eval.every and self.eval_items and self.step % cfg.eval.every == 0 and not last:
                    self.curve_point(row["rl_flops"])
                stop = self.stop_requested()
                reset = cfg.loss.ref_reset_every
                if self.reference is not None and reset and self.step % reset == 0:
                    self.reference.take(self.step)  # saved before the checkpoint that names it
                    self.reference.save(self.run_dir, write=self.world.main)
                    self.save_checkpoint()
                elif (cfg.save_every and self.step % cfg.save_every == 0) or last or stop:
                    self.save_checkpoint()
                if stop:
                    raise Interrupted(stop)
                if spent:
                    self.console.print(f"the RL budget is spent: {meter.human_flops(row['rl_flops'])} after step "
                                       f"{self.step} (max_rl_flops {meter.human_flops(cfg.optim.max_rl_flops)})")
                    break

    def preflight(self, info: dict) -> None:
        """Before the first update: print and record what its groups say; stop (exit 2) if none of
        them can give a gradient, unless ``preflight`` is off."""
        self.summary["preflight"] = rollout.preflight(info, self.cfg.optim.group_size)
        self.save_summary()
        rollout.preflight_verdict(self.summary["preflight"], self.console, refuse=self.cfg.preflight)

    def finish(self) -> None:
        cfg = self.cfg
        self.summary["rl_flops"] = self.rl_flops()
        # the last checkpoint holds them: AdamW's state (two fp32 copies of the weights) need not sit
        # beside the last evaluation's working set
        self.optimizer.state.clear()
        self.reference = None
        self.run_eval("eval_after", cfg.format)
        job_cost = self.meter.report(self.world.gather(self.meter.state_dict()))
        final = self.run_dir / "final"
        trained = self.model
        if self.world.fsdp:  # the whole model from every rank's shards, as a plain model on rank 0
            state = distributed.full_state(self.model.state_dict(), keep=self.world.main)
            if self.world.main:
                trained = self.build_model()[0]
                trained.load_state_dict(state)
        if self.world.main:
            checkpoint.write_final(final, trained.merge_and_unload() if cfg.optim.lora else trained, self.tokenizer,
                                   cfg.model)
        self.summary.update({"model": cfg.model, "task": self.task.name, "format": cfg.format,
                             "template": cfg.template, "steps": self.step,
                             "runtime": self.runtime.describe(), "world_size": self.world.size, "final": str(final),
                             "cost": job_cost})
        self.summary["cost_per_point"] = meter.cost_per_point(self.summary)
        self.summary["cost"]["teacher"] = meter.teacher_cost(self.summary["cost"], self.summary.get("cold_start", {}),
                                                             cfg.loss.teacher)
        self.save_summary()
        if not self.world.main:
            return
        path = report.write_report(self.run_dir)
        self.summary["finished"] = True
        self.save_summary()
        printout.result(self.console, self.summary, self.task.name, path)
