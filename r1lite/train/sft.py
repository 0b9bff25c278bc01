"""Supervised fine-tuning on (prompt, completion) pairs, and R1's cold start from the model's own
verified answers.

The cold start here is rejection sampling on the base model itself: sample it with a plain prompt,
keep only completions whose answer the task's verifier accepts, and rewrite each as an R1-format
completion — the model's own text inside ``<think>``, its own (verified) final answer inside
``<answer>``. No answer computed by a program enters the data, so what the model gains afterwards
comes from the model and from RL, not from supervised gold answers. Departure from R1: DeepSeek's
cold-start data were long chains of thought written or reviewed by people and by R1-Zero; a
135M model's own short answers are what a laptop can afford.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from r1lite import prompts, rewards, tasks
from r1lite.config import opt
from r1lite.distill.traces import card_notice, read_pairs
from r1lite.engine import Request, Sampling, derive_seed
from r1lite.errors import UsageError
from r1lite.packaged import carry_source
from r1lite.prompts import encode_messages, item_prompts
from r1lite.train.distributed import World
from r1lite.train.policy import (
    Policy,
    adamw,
    apply_update,
    dummy_batch,
    make_group_batch,
    pass_flops,
)


@dataclass
class SFTConfig:
    """A supervised fine-tuning run on a JSONL of prompt/completion pairs."""

    data: str = opt("", "JSONL with 'prompt' (or chat 'messages') and 'completion' per row")
    model: str = opt("default", "model to fine-tune: default, gemma3-270m, tiny, tiny-gemma3, a local HF directory or a hub id")
    out: str = opt("runs/sft", "run directory; the model goes to <out>/final")
    epochs: int = opt(2, "passes over the data")
    lr: float = opt(2e-5, "learning rate (AdamW, constant)")
    batch_size: int = opt(8, "examples per optimizer step")
    micro_batch_size: int = opt(8, "examples per forward/backward (memory only)")
    gradient_checkpointing: bool = opt(False, "keep only each decoder layer's input for the backward pass and recompute "
                                              "the rest there: less memory, about one more forward's time, the same "
                                              "gradients")
    seed: int = opt(0, "seed for the data order")
    template: str = opt("auto", "how each row's messages become the prompt: chat (the model's chat template), r1_zero "
                                "(the R1 paper's plain template, for base models) or auto (r1_zero for gemma3-270m, "
                                "tiny-gemma3 and runs trained with it, chat otherwise)")
    device: str = opt("auto", "auto, cpu or cuda[:N]")
    dtype: str = opt("auto", "auto (bf16 where fast), bf16 or fp32")

    def __post_init__(self):
        if not self.data:
            raise UsageError("sft needs --data FILE.jsonl (rows with 'prompt' or 'messages', and 'completion')")
        for key in ("epochs", "batch_size", "micro_batch_size"):
            if getattr(self, key) < 1:
                raise UsageError(f"{key}={getattr(self, key)} must be >= 1")
        if self.lr <= 0:
            raise UsageError(f"lr={self.lr} must be > 0")
        self.template = prompts.resolve_template(self.template, self.model)


def run(cfg: SFTConfig, console) -> int:
    """``r1lite sft``: fine-tune ``cfg.model`` on ``cfg.data`` and save ``<out>/final``."""
    from pathlib import Path

    from r1lite.files import atomic_dir, remove_stale_temps, writable, write_jsonl
    from r1lite.models import load_model, resolve_runtime
    from r1lite.progress import progress

    out = Path(cfg.out)
    if (out / "final").exists():
        raise UsageError(f"{out}/final exists; choose another --out")
    if (out / "metrics.jsonl").exists():  # sft writes it after final/: with no final/ beside it, it is not ours
        raise UsageError(f"{out / 'metrics.jsonl'} exists and no finished sft run wrote it; choose another --out")
    writable(out, directory=True)  # before the work: a run must not end by losing its model
    for stale in remove_stale_temps(out / "final") + remove_stale_temps(out / "metrics.jsonl"):
        console.print(f"removed {stale}, left by a write that was cut off")
    runtime = resolve_runtime(cfg.device, cfg.dtype)
    rows = read_pairs(cfg.data)
    notice = card_notice(cfg.data)  # traces r1lite distill wrote: say whose they are, and on what terms
    if notice:
        console.print(notice, highlight=False)
    torch.manual_seed(cfg.seed)
    model, tokenizer = load_model(cfg.model, runtime, seed=cfg.seed)
    pairs = [encode_pair(tokenizer, m, p, c, cfg.template) for m, p, c in rows]
    console.print(f"r1lite sft: {len(pairs)} examples x {cfg.epochs} epochs, template {cfg.template}, on "
                  f"{runtime.describe()}")
    steps = cfg.epochs * -(-len(pairs) // cfg.batch_size)
    with progress(console, "SFT", steps, "steps") as update:
        history = train_sft(Policy(model, checkpointing=cfg.gradient_checkpointing), tokenizer, pairs, epochs=cfg.epochs,
                            lr=cfg.lr, batch_size=cfg.batch_size, micro_batch_size=cfg.micro_batch_size, seed=cfg.seed,
                            autocast=runtime.autocast, device=runtime.device,
                            on_step=lambda r: update(len(r["history"]), f"epoch {r['epoch']}  loss {r['loss']:.4f}"))
    with atomic_dir(out / "final") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        carry_source(cfg.model, tmp)  # a packaged base's origin and terms (Gemma's) go with the weights
    write_jsonl(out / "metrics.jsonl", history)
    console.print(f"model: {out / 'final'}")
    return 0


def encode_pair(tokenizer, messages: list[dict], prefill: str, completion: str,
                template: str = "chat") -> tuple[list[int], list[int]]:
    """Prompt ids (the template, assistant turn opened, prefill) and completion ids ending in eos.
    Under r1_zero with nothing pre-filled the completion starts with the space after ``Assistant:``
    (:func:`r1lite.prompts.completion_start`), as the model writes it."""
    prompt = encode_messages(tokenizer, messages, prefill, template)
    start = prompts.completion_start(template, prefill)
    if completion[:1].isspace():
        start = ""
    body = tokenizer.encode(start + completion, add_special_tokens=False) + [tokenizer.eos_token_id]
    return prompt, body


def check_steps(per_epoch: int, check_every: float) -> int:
    """SFT steps between two cold-start checks: ``check_every`` epochs, rounded to whole steps, at
    least one."""
    return max(1, round(check_every * per_epoch))


def sft_steps(policy: Policy, tokenizer, pairs: list[tuple[list[int], list[int]]], *, lr: float, batch_size: int,
              micro_batch_size: int, seed: int, autocast, device, world: World | None = None) -> Iterator[dict]:
    """Minimise the mean negative log-likelihood of completion tokens (prompt tokens not counted),
    one optimizer step per item drawn, the epochs' shuffled orders one after another, for as long
    as the caller draws.

    Each item is that step's metrics: ``epoch``, ``loss`` (token-mean NLL), ``tokens``, ``flops``
    (forward and backward as computed, :func:`r1lite.train.policy.pass_flops`). The model stays in eval
    mode: no dropout, so the loss is that of the model as it samples. ``world``: under torchrun
    each rank trains on its contiguous share of every batch and the gradients are summed (the loss
    is each batch's token mean on every rank); every rank has all ``pairs``.
    """
    world = world or World()
    model = policy.model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, lr)
    rng = random.Random(seed)
    for epoch in itertools.count():
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for start in range(0, len(order), batch_size):
            chunk = [pairs[i] for i in order[start:start + batch_size]]
            total_tokens = sum(len(c) for _, c in chunk)
            mine = chunk[world.span(len(chunk))]
            micros: list[list | None] = [mine[m:m + micro_batch_size] for m in range(0, len(mine), micro_batch_size)]
            if world.fsdp:  # every pass is a collective: as many on each rank as on the one with the largest share
                largest = -(-len(chunk) // world.size)
                micros += [None] * (-(-largest // micro_batch_size) - len(micros))
            loss_sum, flops = 0.0, 0.0
            for micro in micros:
                batch = (dummy_batch(tokenizer.pad_token_id) if micro is None else
                         make_group_batch([p for p, _ in micro], list(range(len(micro))), [c for _, c in micro],
                                          tokenizer.pad_token_id)).to(device)
                with autocast():
                    logp, _ = policy(batch)
                loss = -(logp * batch.completion_mask).sum() / total_tokens * (micro is not None)
                loss.backward()
                loss_sum += loss.item()
                flops += pass_flops(model, batch, backward=True)
            apply_update(params, optimizer, 1.0, world)
            yield {"epoch": epoch, "loss": world.sum([loss_sum])[0], "tokens": total_tokens, "flops": flops}


def train_sft(policy: Policy, tokenizer, pairs: list[tuple[list[int], list[int]]], *, epochs: int,
              on_step: Callable[[dict], None] | None = None, **options) -> list[dict]:
    """``epochs`` passes of :func:`sft_steps` (``options`` are its keywords): one metrics row per
    optimizer step; ``on_step`` gets each row, with ``history`` (the rows so far)."""
    history: list[dict] = []
    if not pairs:
        return history
    steps = sft_steps(policy, tokenizer, pairs, **options)
    for _ in range(epochs * -(-len(pairs) // options["batch_size"])):
        history.append(next(steps))
        if on_step:
            on_step({**history[-1], "history": history})
    return history


def r1_trace(plain_completion: str) -> str:
    """A verified plain answer rewritten in the R1 format: its own text as the thought, its own
    last number as the answer.

    >>> r1_trace("40 + 38 = 78.<|im_end|>")
    '<think>\\n40 + 38 = 78.\\n</think>\\n<answer>78</answer>'
    """
    thought = rewards.strip_end(plain_completion).strip()
    return f"<think>\n{thought}\n</think>\n<answer>{rewards.last_number(plain_completion)}</answer>"


def self_traces(engine, tokenizer, task: tasks.Task, items: list[tasks.Item], *, phrasing: str, samples: int,
                temperature: float, max_new_tokens: int, seed: int, per_item: int, model_name: str,
                batch_size: int | None = None, stats=None, on_progress=None, template: str = "chat") -> list[dict]:
    """Rejection-sample the model on ``items`` with a plain prompt and rewrite the verified-correct
    completions in the R1 format, whose messages are those of ``template``. Each row records where
    it came from (provenance).

    The plain prompt is rendered as under template chat whatever ``template`` is: the model's chat
    template, or for a base model without one the bare question and hint on a line of their own
    (after its bos), which a base model continues with an answer. Only the traces learnt from
    take the run's template."""
    if not task.numeric:
        raise UsageError(f"cold start rewrites plain answers into <answer> blocks and needs a numeric task; {task.name} is not")
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature)
    prompted = item_prompts(tokenizer, task, items, phrasing)
    requests = [Request(p.ids, sampling, n=samples, seed=derive_seed(seed, int(item.id, 16))) for item, p in zip(items, prompted)]
    outputs = engine.generate(requests, stats=stats, max_rows=batch_size, on_progress=on_progress)
    rows = []
    for item, completions in zip(items, outputs):
        correct = {rewards.strip_end(c.text).strip(): c for c in completions
                   if c.finish == "stop" and prompts.score(c.text, item, task, phrasing)["accuracy"] == 1.0}
        # The shortest distinct verified samples: cheaper to train on and to sample in RL later.
        for thought in sorted(correct, key=len)[:per_item]:
            c = correct[thought]
            messages, prefill = prompts.build_messages(item, task, "r1", template=template)
            rows.append({
                "item_id": item.id, "messages": messages, "prefill": prefill, "completion": r1_trace(c.text),
                "provenance": {"teacher": model_name, "prompt_format": phrasing, "temperature": temperature,
                               "seed": seed, "raw_completion": c.text, "verified_by": f"{task.name} verifier"},
            })
    return rows
