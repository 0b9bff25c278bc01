"""Honest evaluation: pass@1, pass@k, maj@k, format rate and lengths, for generated completions or
for completions another system produced.

The metric is the training reward: both call :func:`r1lite.prompts.score`.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from r1lite import prompts, tasks
from r1lite.config import opt
from r1lite.engine import GenerationStats, Request, Sampling, derive_seed
from r1lite.engine.grammar import read_response_format
from r1lite.engine.sampling import check_budget
from r1lite.engine.thinking import CLOSE_THINKING
from r1lite.errors import UsageError
from r1lite.files import read_jsonl, remove_stale_temps, writable, write_json, write_jsonl
from r1lite.prompts import item_prompts, stop_strings, stopped_text


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al. 2021): 1 - C(n-c, k) / C(n, k).

    An item with fewer than k samples gives pass@n: 1 if any of its n samples is correct, else 0
    (the estimator is undefined there; :func:`summarize` counts such items in ``items_below_k``).

    >>> pass_at_k(4, 1, 1)
    0.25
    >>> pass_at_k(4, 1, 4)
    1.0
    >>> round(pass_at_k(10, 2, 3), 4)
    0.5333
    >>> pass_at_k(2, 0, 4), pass_at_k(2, 1, 4)
    (0.0, 1.0)
    """
    if n < 1 or not 0 <= c <= n or k < 1:
        raise ValueError(f"pass_at_k(n={n}, c={c}, k={k}): needs 1 <= n, 0 <= c <= n, 1 <= k")
    k = min(k, n)
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def ks_for(samples: int) -> list[int]:
    """The k reported for S samples: powers of two below S, and S itself.

    >>> ks_for(1), ks_for(8), ks_for(6)
    ([1], [1, 2, 4, 8], [1, 2, 4, 6])
    """
    ks = [k for k in (2 ** i for i in range(12)) if k < samples]
    return ks + [samples]


def majority_correct(keys: list, accuracies: list[float]) -> float:
    """maj@k: the accuracy of the most common extracted answer (ties go to the earliest seen);
    0 when no sample produced an answer.

    >>> majority_correct([42.0, 41.0, 42.0], [1.0, 0.0, 1.0])
    1.0
    >>> majority_correct([None, None], [0.0, 0.0])
    0.0
    """
    counted = Counter(k for k in keys if k is not None)
    if not counted:
        return 0.0
    top = max(counted.values())
    winner = next(k for k in keys if k is not None and counted[k] == top)
    return accuracies[keys.index(winner)]


def think_text(completion: str) -> str | None:
    """The text inside the first <think>…</think> block, if any.

    >>> think_text("<think>a b</think><answer>1</answer>")
    'a b'
    """
    start = completion.find("<think>")
    end = completion.find("</think>")
    if end < 0:
        return None
    return completion[start + len("<think>") if 0 <= start < end else 0:end]


def score_row(completion: str, item: tasks.Item, task: tasks.Task, fmt: str, prefill: str = "") -> dict:
    """Accuracy, format, and the answer key majority voting uses, for one completion."""
    scored = prompts.score(completion, item, task, fmt, prefill)
    key = prompts.extract_answer(completion, task, fmt, prefill)
    if key is not None and task.numeric:
        number = tasks.rewards.parse_number(key)
        key = number if number is not None else key.strip()
    elif key is not None:
        key = key.strip()
    think = think_text(prefill + completion)
    return {**scored, "answer_key": key, "completion_chars": len(completion),
            "think_chars": None if think is None else len(think)}


def summarize(rows: list[dict], samples: int) -> dict:
    """Metrics over rows grouped by ``item_id`` (each group = one item's samples)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["item_id"], []).append(r)
    scored = [g for g in groups.values() if all(r["accuracy"] is not None for r in g)]
    n_scored = max(1, len(scored))
    out: dict = {"n_items": len(groups), "samples": samples, "skipped_items": len(groups) - len(scored)}
    out["pass@1"] = sum(sum(r["accuracy"] for r in g) / len(g) for g in scored) / n_scored
    for k in ks_for(samples)[1:]:
        out[f"pass@{k}"] = sum(pass_at_k(len(g), sum(r["accuracy"] >= 1.0 for r in g), k) for g in scored) / n_scored
    out["items_below_k"] = sum(len(g) < samples for g in scored)  # these count pass@n (see pass_at_k)
    if samples > 1:
        out[f"maj@{samples}"] = sum(majority_correct([r["answer_key"] for r in g], [r["accuracy"] for r in g])
                                    for g in scored) / n_scored
    out["format_rate"] = sum(r["format"] for r in rows) / max(1, len(rows))
    tokens = [r["completion_tokens"] for r in rows if r.get("completion_tokens") is not None]
    if tokens:
        out["completion_tokens_mean"] = sum(tokens) / len(tokens)
        out["completion_tokens_median"] = statistics.median(tokens)
        think = [r["think_tokens"] for r in rows if r.get("think_tokens") is not None]
        out["think_tokens_mean"] = sum(think) / len(think) if think else 0.0
        out["truncated_rate"] = sum(r["finish"] == "length" for r in rows) / len(rows)
    else:
        chars = [r["completion_chars"] for r in rows]
        out["completion_chars_mean"] = sum(chars) / max(1, len(chars))
        think = [r["think_chars"] for r in rows if r["think_chars"] is not None]
        out["think_chars_mean"] = sum(think) / len(think) if think else 0.0
    out["accuracy"] = out["pass@1"]
    return out


def evaluate(engine, tokenizer, task: tasks.Task, items: list[tasks.Item], fmt: str, samples: int = 1,
             max_new_tokens: int = 256, temperature: float | None = None, top_p: float | None = None,
             seed: int = 0, batch_size: int | None = None, prefill_think: bool = False,
             on_progress=None, context: int = 0, template: str = "chat", response_format: dict | None = None,
             max_thinking_tokens: int | None = None) -> tuple[list[dict], dict]:
    """Generate ``samples`` completions per item and score them. One sample means greedy decoding;
    more use temperature 0.6 and top-p 0.95 unless given (the R1 paper's evaluation setting).
    ``template``: the prompt template (:data:`r1lite.prompts.TEMPLATES`); under r1_zero a
    completion also stops at ``</answer>`` and is scored up to it (:func:`r1lite.prompts.stopped_text`).

    An item's samples draw from a seed fixed by (``seed``, the item), so they do not depend on
    which other items are evaluated with it or in what batch. ``on_progress(sequences_done)``.
    ``context``: the model's (0 = not known); the longest prompt and ``max_new_tokens`` must fit it.
    ``max_thinking_tokens``: the thinking budget (budget forcing; None = no limit).

    ``response_format`` (OpenAI's, :meth:`r1lite.engine.Engine.compile`): each answer is JSON held
    to the schema. In the r1 format the model thinks first (``<think>`` pre-filled; with a budget of
    0 an empty thinking block instead) and the answer is ``<answer>`` JSON ``</answer>``; in a plain
    format the completion is the JSON."""
    if samples == 1:
        temperature, top_p = (0.0 if temperature is None else temperature), (1.0 if top_p is None else top_p)
    else:
        temperature, top_p = (0.6 if temperature is None else temperature), (0.95 if top_p is None else top_p)
    stops = stop_strings(template, fmt)
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, stop=stops)
    grammar = engine.compile(response_format, answer_tags=fmt == "r1") if response_format is not None else None
    prompts = item_prompts(tokenizer, task, items, fmt, prefill_think or (grammar is not None and fmt == "r1"), template)
    if grammar is not None and fmt == "r1" and max_thinking_tokens == 0:  # no thinking: the answer from the first token
        close = tokenizer.encode(CLOSE_THINKING, add_special_tokens=False)
        prompts = [replace(p, ids=p.ids + close, prefill=p.prefill + CLOSE_THINKING) for p in prompts]
    check_budget(max_new_tokens, context, max((len(p.ids) for p in prompts), default=0))  # before any generation
    stats = GenerationStats()
    requests = [Request(p.ids, sampling, n=samples, seed=derive_seed(seed, int(item.id, 16)), grammar=grammar,
                        max_thinking_tokens=max_thinking_tokens, thinking=p.prefill.endswith("<think>"))
                for item, p in zip(items, prompts)]
    outputs = engine.generate(requests, stats=stats, max_rows=batch_size, on_progress=on_progress)
    errors_before = task.verifier_errors.count
    rows = []
    for item, prompt, completions in zip(items, prompts, outputs):
        for s, c in enumerate(completions):
            text = stopped_text(c.text, stops)
            row = {"item_id": item.id, "sample": s, "question": item.question, "answer": item.answer,
                   "completion": text, "finish": c.finish, "completion_tokens": len(c.token_ids), "template": template}
            row.update(score_row(text, item, task, fmt, prompt.prefill))
            think = think_text(prompt.prefill + text)
            row["think_tokens"] = None if think is None else len(tokenizer.encode(think, add_special_tokens=False))
            rows.append(row)
    settings = {"task": task.name, "format": fmt, "template": template, "samples": samples,
                "max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
    summary = _summary(rows, settings, stats.seconds, stats.new_tokens, stats.prompt_tokens, stats.flops)
    return rows, {**summary, **verifier_errors(task, errors_before)}


def verifier_errors(task: tasks.Task, before: int) -> dict:
    """``{"verifier_errors": n}`` when the task's verifier raised ``n`` times since ``before`` (those
    items scored 0), else nothing."""
    n = task.verifier_errors.count - before
    return {"verifier_errors": n} if n else {}


def _summary(rows: list[dict], settings: dict, seconds: float, new_tokens: int, prompt_tokens: int, flops: float) -> dict:
    return {"task": settings["task"], "format": settings["format"], "template": settings.get("template", "chat"),
            **summarize(rows, settings["samples"]),
            "max_new_tokens": settings["max_new_tokens"], "temperature": settings["temperature"],
            "top_p": settings["top_p"], "tokens_per_s": new_tokens / seconds if seconds else 0.0, "seconds": seconds,
            "new_tokens": new_tokens, "prompt_tokens": prompt_tokens, "flops": flops}


def combine(shards: list[tuple[list[dict], dict]]) -> tuple[list[dict], dict]:
    """One evaluation from :func:`evaluate` s of disjoint shards of its items (the ranks of a
    distributed run, in order): the metrics over every row, the counters summed, the slowest
    shard's seconds."""
    rows = [r for shard_rows, _ in shards for r in shard_rows]
    parts = [summary for _, summary in shards]
    return rows, _summary(rows, parts[0], max(s["seconds"] for s in parts), sum(s["new_tokens"] for s in parts),
                          sum(s["prompt_tokens"] for s in parts), sum(s["flops"] for s in parts))


def score_file(task: tasks.Task, fmt: str, completions: Path, out: Path) -> dict:
    """Score JSONL rows with ``answer`` and ``completion`` (optional ``prompt``/``id``; other fields
    kept) produced elsewhere. Writes ``out`` (same rows, same order, plus ``accuracy`` and
    ``format``) and ``<out>.summary.json``; returns the summary. Rows sharing an ``id`` (or a
    ``prompt``) are the samples of one item for pass@k and maj@k."""
    rows, outputs = [], []
    errors_before = task.verifier_errors.count
    for n, row in read_jsonl(completions, required=("answer", "completion")):
        if not isinstance(row["completion"], str):
            raise UsageError(f"{completions}:{n}: 'completion' must be a string")
        question = str(row.get("prompt", ""))
        item = tasks.Item(id=str(row.get("id", question or f"line-{n}")), question=question, answer=row["answer"], meta={})
        scored = score_row(row["completion"], item, task, fmt)
        rows.append({"item_id": item.id, **scored, "finish": None})
        outputs.append({**row, "accuracy": scored["accuracy"], "format": scored["format"]})
    samples = max(Counter(r["item_id"] for r in rows).values(), default=1)
    summary = {"task": task.name, "format": fmt, "source": str(completions), **summarize(rows, samples),
               **verifier_errors(task, errors_before)}
    write_jsonl(out, outputs)
    write_json(summary_path(out), summary)
    return summary


def summary_path(out: Path) -> Path:
    return Path(str(out) + ".summary.json")


def summary_table(summary: dict, title: str):
    """A rich table of the headline metrics."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.3f}" if key.startswith(("pass@", "maj@", "format_rate", "accuracy", "truncated")) else f"{value:.1f}"
        table.add_row(key, str(value))
    return table


# ---------------------------------------------------------------------------------------------
# The command


SPLITS = ("test", "train", "all")


@dataclass
class EvalOptions:
    """``r1lite eval``: flags are these fields. Generate and score (``model``), or score a JSONL of
    completions produced elsewhere (``completions``)."""

    model: str = opt("", "default, gemma3-270m, tiny, tiny-gemma3, a local HF directory, a run directory, or a hub id "
                         "(\"\" with --completions)")
    task: str = opt("", "task spec: arithmetic, countdown, gsm8k:PATH, math:PATH, svamp:PATH, jsonl:PATH, gym:NAME")
    task_options: dict = opt({}, "task options, e.g. digits=3 or ops=+-", old=("task_opt",))
    format: str = opt("r1", "prompt format: r1 (<think>/<answer>), plain, plain:1 or plain:2")
    template: str = opt("auto", prompts.TEMPLATE_HELP)
    prefill_think: bool | None = opt(None, prompts.PREFILL_HELP)
    split: str = opt("test", "which items: test (held out), train or all")
    limit: int = opt(100, "items to evaluate (-1 = the whole split)")
    samples: int = opt(1, "samples per item; 1 = greedy")
    max_new_tokens: int = opt(256, "token budget per completion")
    max_thinking_tokens: int | None = opt(None, "thinking budget in tokens, the forced close included (unset = no limit)")
    response_format: str = opt("", "SCHEMA.json: each answer is JSON held to this JSON schema (r1 format: the model "
                                    "thinks first, then <answer> JSON </answer>); \"\" = free text")
    temperature: float | None = opt(None, "sampling temperature (unset = 0 for 1 sample, 0.6 for more)")
    top_p: float | None = opt(None, "nucleus sampling (unset = 1 for 1 sample, 0.95 for more)")
    seed: int = opt(0, "seed for item choice and sampling")
    eval_batch_size: int = opt(64, "most sequences decoded together", old=("batch_size",))
    device: str = opt("auto", "auto, cpu or cuda[:N]")
    dtype: str = opt("auto", "auto (bf16 where fast), bf16 or fp32")
    completions: str = opt("", "score this JSONL (rows with answer and completion) instead of generating (\"\" = generate)")
    out: str = opt("", "JSONL of scored rows; the summary goes to <out>.summary.json (\"\" = print the summary only)")

    def __post_init__(self):
        if not self.task:
            raise UsageError("eval needs --task (arithmetic, countdown, gsm8k:PATH, jsonl:PATH, gym:NAME, ...)")
        if self.format not in prompts.FORMATS:
            raise UsageError(f"--format {self.format}: use one of {', '.join(prompts.FORMATS)}")
        self.template = prompts.resolve_template(self.template, self.model, self.format)  # before any model loads
        if self.prefill_think is None:
            self.prefill_think = prompts.default_prefill(self.template, self.format)
        if self.prefill_think and self.format != "r1":
            raise UsageError(f"--prefill-think applies to the r1 format only, not '{self.format}'")
        if self.split not in SPLITS:
            raise UsageError(f"--split {self.split}: use one of {', '.join(SPLITS)}")
        if self.completions:
            if self.model:
                raise UsageError("--completions scores existing completions; drop --model (or drop --completions to generate)")
            if not self.out:
                raise UsageError("--completions needs --out FILE for the scored rows")
            return
        if not self.model:
            raise UsageError("eval needs --model M to generate, or --completions FILE to score existing completions")
        if self.samples < 1:
            raise UsageError(f"--samples {self.samples}: must be >= 1")
        if self.limit == 0 or self.limit < -1:
            raise UsageError(f"--limit {self.limit}: give a positive number of items, or -1 for the whole split")
        if self.max_thinking_tokens is not None and self.max_thinking_tokens < 0:
            raise UsageError(f"--max-thinking-tokens {self.max_thinking_tokens}: give a number of tokens >= 0 (omit it for no limit)")



def run(opts: EvalOptions, console) -> int:
    """``r1lite eval``: score ``opts.completions``, or generate with ``opts.model`` and score."""
    if opts.out:  # before the work: a run must not end by losing its results
        for path in (Path(opts.out), summary_path(Path(opts.out))):
            writable(path)
            remove_stale_temps(path)  # what a killed eval left while writing it
    task = tasks.load_task(opts.task, opts.task_options)
    if opts.completions:
        out = Path(opts.out)
        summary = score_file(task, opts.format, Path(opts.completions), out)
        console.print(summary_table(summary, f"{task.name} · {opts.format} · scored {opts.completions}"))
        console.print(f"rows: {out}\nsummary: {summary_path(out)}")
        return 0
    from r1lite.engine import make_engine
    from r1lite.models import load_model, resolve_runtime
    from r1lite.packaged import stop_token_ids
    from r1lite.progress import progress

    response_format = read_response_format(opts.response_format) if opts.response_format else None
    runtime = resolve_runtime(opts.device, opts.dtype)
    items = task.split(opts.split, None if opts.limit == -1 else opts.limit, seed=opts.seed)
    console.print(f"r1lite eval: {len(items)} {opts.split} items of {task.name}, {opts.samples} sample(s) each, "
                  f"format {opts.format}, template {opts.template}, on {runtime.describe()}")
    model, tokenizer = load_model(opts.model, runtime)
    engine = make_engine(model, tokenizer, runtime.dtype, stop_token_ids(tokenizer, model), opts.eval_batch_size)
    with progress(console, "eval", len(items) * opts.samples, "seq") as update:
        rows, summary = evaluate(
            engine, tokenizer, task, items, opts.format, samples=opts.samples, max_new_tokens=opts.max_new_tokens,
            temperature=opts.temperature, top_p=opts.top_p, seed=opts.seed, prefill_think=opts.prefill_think,
            on_progress=update, context=model.config.max_position_embeddings, template=opts.template,
            response_format=response_format, max_thinking_tokens=opts.max_thinking_tokens)
    summary = {"model": opts.model, "split": opts.split, **summary}
    console.print(summary_table(summary, f"{opts.model} · {task.name} · {opts.format}"))
    if opts.out:
        out = Path(opts.out)
        write_jsonl(out, rows)
        write_json(summary_path(out), summary)
        console.print(f"rows: {out}\nsummary: {summary_path(out)}")
    return 0
