"""``r1lite distill``: verified reasoning traces from a teacher, with provenance, for ``r1lite sft``.

R1's small models were SFT on ~800K samples from the big model, kept only where they were right
(rejection sampling). Here: ``--limit`` prompts of a task's ``--split``, ``--samples-per-prompt``
answers each from a teacher (:mod:`r1lite.distill.teachers`), and for each answer, in this order:

1. the prompt's question is decontaminated before anything is asked: a question sharing a word
   8-gram with the task's held-out split or a ``--decontaminate`` file is not asked (counted);
2. a trace that stopped on the length limit is dropped (``length``);
3. its thinking is read from ``reasoning_content`` (DeepSeek, llama.cpp), ``reasoning`` (vLLM,
   Ollama), or ``<think>…</think>`` in the content; a thinking block that opened and never closed
   is dropped (``unclosed_thinking``); no thinking at all is kept (reasoning field ``none``);
4. the completion is rebuilt as ``<think>{thinking}</think>`` plus the answer in the task's format,
   and kept only where the task's verifier accepts it (``incorrect`` otherwise);
5. an exact duplicate (same prompt, same completion) is dropped (``duplicate``).

Files, beside ``--out traces.jsonl`` (one row per line, each appended and fsynced as its answer
arrives)::

    traces.jsonl          kept rows: messages, prefill, completion, provenance
    traces.dropped.jsonl  every other answer (with its stage and raw text) and every failed request
    traces.card.md/json   the dataset card: teacher, terms, counts at every filter, tokens, cost

Resume: the same command again asks nothing the two JSONL files already hold an answer for (a
failed request is asked again). Files written by another teacher, task, split, format or sampling
are refused, never truncated. A last line a kill cut off is not a row: it is cut before the first
new append (a whole row that lost only its newline gets it back).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from r1lite import __version__, prompts, rewards, tasks
from r1lite.config import opt
from r1lite.distill.contamination import NGRAM, references
from r1lite.distill.teachers import (
    Answer,
    Ask,
    EndpointConfig,
    EndpointTeacher,
    Failure,
    LocalTeacher,
    TeacherSampling,
    now,
)
from r1lite.distill.traces import STAGES, card_markdown, sibling
from r1lite.errors import UsageError
from r1lite.files import ProcessLock, append_jsonl, read_jsonl, writable, write_json, write_text


@dataclass
class DistillConfig:
    """``r1lite distill``: flags are these fields."""

    teacher: str = opt("", "an OpenAI-compatible base URL (http://host:port/v1), a local model (default, a run "
                           "directory, a Hugging Face directory) or FILE.gguf (llama.cpp)")
    task: str = opt("", "task spec: arithmetic, countdown, gsm8k:PATH, math:PATH, svamp:PATH, jsonl:PATH, gym:NAME")
    task_options: dict = opt({}, "task options, e.g. digits=3")
    out: str = opt("", "traces JSONL; the card goes to <stem>.card.md and <stem>.card.json")
    format: str = opt("r1", "prompt format: r1 (<think>/<answer>), plain, plain:1 or plain:2")
    template: str = opt("auto", "prompt template of the traces' messages (the student's): chat (the R1 instruction "
                                "in a chat turn), r1_zero (the R1 paper's plain template: the turn is the question "
                                "and its hint; r1 format only) or auto (the teacher's); the teacher is asked in its "
                                "own (an endpoint: chat)")
    split: str = opt("train", "which prompts: train or all (the held-out test split is what decontamination removes)")
    limit: int = opt(100, "prompts to draw from the split (-1 = the whole split of a file task)", old=("n",))
    samples_per_prompt: int = opt(1, "answers asked per prompt, each with its own seed")
    temperature: float = opt(0.6, "teacher sampling temperature (R1's 0.6; 0 = greedy)")
    top_p: float = opt(0.95, "teacher nucleus sampling (R1's 0.95; 1 = off)")
    max_new_tokens: int = opt(2048, "token budget of one answer, thinking included; an answer that reaches it is dropped",
                              old=("max_tokens",))
    seed: int = opt(0, "seed for the prompt choice and each request's seed")
    teacher_model: str = opt("", "endpoint model id (\"\" = the one model the endpoint lists)")
    api_key_env: str = opt("", "environment variable that holds the endpoint's key, e.g. DEEPSEEK_API_KEY (\"\" = no key)")
    concurrency: int = opt(8, "requests in flight at once (a local teacher: sequences decoded together)")
    timeout: float = opt(600.0, "seconds one request may take, from sending it to the answer's last byte, before it is retried")
    max_retries: int = opt(5, "retries of a request that timed out, got 429 or 5xx, or a malformed answer")
    backoff: float = opt(1.0, "seconds before the first retry, doubled for each further one (a Retry-After header wins, up to 60 s)")
    decontaminate: list = opt([], "JSONL files (rows with question, problem or prompt) whose texts no kept question may share an 8-gram with")
    teacher_usd_per_mtok: str = opt("", "teacher prices as IN,OUT US dollars per million prompt and completion tokens (\"\" = no cost)")
    teacher_terms: str = opt("", "the teacher's terms or licence, recorded in the card and shown wherever the traces are used")
    device: str = opt("auto", "local teachers: auto, cpu or cuda[:N]")
    dtype: str = opt("auto", "local teachers: auto, bf16 or fp32")

    def __post_init__(self):
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise UsageError(msg)

        need(bool(self.teacher), "distill needs --teacher (an OpenAI-compatible base URL, a local model or FILE.gguf)")
        need(bool(self.task), "distill needs --task (arithmetic, gsm8k:PATH, jsonl:PATH, ...)")
        need(self.out.endswith(".jsonl"), f"--out {self.out or '(none)'}: name the traces file, e.g. --out traces.jsonl")
        need(self.format in prompts.FORMATS, f"--format {self.format}: use one of {', '.join(prompts.FORMATS)}")
        self.template = prompts.resolve_template(self.template, "" if self.endpoint else self.teacher, self.format)
        need(self.split in ("train", "all"), f"--split {self.split}: use train or all (the held-out split is never distilled)")
        need(self.limit >= 1 or self.limit == -1, f"--limit {self.limit}: give a positive number of prompts, or -1 for the whole split")
        need(self.samples_per_prompt >= 1, f"--samples-per-prompt {self.samples_per_prompt}: must be >= 1")
        need(self.temperature >= 0, f"--temperature {self.temperature}: must be >= 0 (0 = greedy)")
        need(0 < self.top_p <= 1, f"--top-p {self.top_p}: must be in (0, 1]")
        need(self.max_new_tokens >= 1, f"--max-new-tokens {self.max_new_tokens}: must be >= 1")
        need(self.concurrency >= 1, f"--concurrency {self.concurrency}: must be >= 1")
        need(self.timeout > 0, f"--timeout {self.timeout}: must be > 0 seconds")
        need(self.max_retries >= 0 and self.backoff >= 0, "--max-retries and --backoff must be >= 0")
        need(not self.api_key_env or self.api_key_env in os.environ,
             f"--api-key-env {self.api_key_env}: ${self.api_key_env} is not set; export it, or drop --api-key-env")
        self.prices()

    @property
    def endpoint(self) -> bool:
        return self.teacher.startswith(("http://", "https://"))

    @property
    def teacher_template(self) -> str:
        """The template the teacher is asked in, whatever the traces record: its own (chat for an
        endpoint, which applies its chat template; a base model's r1_zero), so an instruct teacher
        gets the R1 instruction and a base teacher the paper's template."""
        return prompts.resolve_template("auto", "" if self.endpoint else self.teacher, self.format)

    def prices(self) -> tuple[float, float] | None:
        """(USD per million prompt tokens, per million completion tokens), or None."""
        if not self.teacher_usd_per_mtok:
            return None
        parts = self.teacher_usd_per_mtok.split(",")
        try:
            prices = tuple(float(p) for p in parts)
        except ValueError:
            prices = ()
        if len(prices) != 2 or min(prices) < 0:
            raise UsageError(f"--teacher-usd-per-mtok {self.teacher_usd_per_mtok}: give two prices IN,OUT "
                             "in US dollars per million tokens, e.g. 0.28,0.42")
        return prices

    def sampling(self) -> TeacherSampling:
        return TeacherSampling(self.temperature, self.top_p, self.max_new_tokens)


# ---------------------------------------------------------------------------------------------
# From an answer to a row


def split_reasoning(content: str, fields: dict) -> tuple[str, str, str] | None:
    """(thinking, answer text, the field the thinking came in) of an answer; None when a thinking
    block opened in the content and never closed.

    The field is ``reasoning_content`` or ``reasoning`` when the endpoint sent one, ``content`` when
    the thinking was ``<think>…</think>`` in the content (text before ``<think>`` is not kept), and
    ``none`` when there was no thinking at all.

    >>> split_reasoning("4", {"reasoning_content": "2 + 2", "reasoning": None})
    ('2 + 2', '4', 'reasoning_content')
    >>> split_reasoning("<think>2 + 2</think> <answer>4</answer>", {})
    ('2 + 2', '<answer>4</answer>', 'content')
    >>> split_reasoning("<think>2 + 2 is", {}), split_reasoning("4", {"reasoning": ""})
    (None, ('', '4', 'none'))
    """
    for name in ("reasoning_content", "reasoning"):
        if fields.get(name):
            return fields[name].strip(), rewards.strip_end(content).strip(), name
    opened, closed = content.find(rewards.THINK_OPEN), content.find(rewards.THINK_CLOSE)
    if closed < 0:
        return None if opened >= 0 else ("", rewards.strip_end(content).strip(), "none")
    start = opened + len(rewards.THINK_OPEN) if 0 <= opened < closed else 0  # a template may have opened it
    answer = rewards.strip_end(content[closed + len(rewards.THINK_CLOSE):]).strip()
    return content[start:closed].strip(), answer, "content"


def build_completion(thinking: str, answer: str, fmt: str) -> str:
    """``<think>{thinking}</think>`` and the answer in the task's format: for r1 the inside of the
    answer's ``<answer>`` block (or the whole answer when it has none) in one ``<answer>`` block.

    >>> build_completion("2 + 2", "It is <answer>4</answer>.", "r1")
    '<think>\\n2 + 2\\n</think>\\n<answer>4</answer>'
    >>> build_completion("", "4", "plain")
    '<think>\\n\\n</think>\\n4'
    """
    if fmt == "r1":
        start, end = answer.find(rewards.ANSWER_OPEN), answer.find(rewards.ANSWER_CLOSE)
        if 0 <= start < end:
            answer = answer[start + len(rewards.ANSWER_OPEN):end].strip()
        answer = f"{rewards.ANSWER_OPEN}{answer}{rewards.ANSWER_CLOSE}"
    return f"{rewards.THINK_OPEN}\n{thinking}\n{rewards.THINK_CLOSE}\n{answer}"


def prompt_sha256(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def request_seed(seed: int, item: tasks.Item, sample: int) -> int:
    """The seed of one ask, for endpoints and local teachers alike: fixed by (run seed, prompt,
    sample); 31 bits, which every endpoint accepts (llama.cpp's seed is 32-bit).

    >>> request_seed(0, tasks.make_item("What is 1 + 1?", 2, {}), 0)
    174865473
    """
    digest = hashlib.sha256(f"{seed}:{item.id}:{sample}".encode()).hexdigest()
    return int(digest[:8], 16) % 2 ** 31


@dataclass
class DistillRun:
    """One distillation: its config, task, teacher identity, and what its files already hold."""

    cfg: DistillConfig
    task: tasks.Task
    teacher: dict
    kept: list[dict]
    dropped: list[dict]

    @property
    def identity(self) -> dict:
        """What every row of the files must share with this run."""
        c = self.cfg  # "max_tokens" below: the name rows already written carry, so they still resume
        return {"teacher": self.teacher, "task": self.task.name, "task_options": normalise(c.task_options),
                "split": c.split, "format": c.format, "template": c.template,
                "sampling": {"temperature": c.temperature, "top_p": c.top_p, "max_tokens": c.max_new_tokens, "seed": c.seed}}

    def provenance(self, item: tasks.Item, messages: list[dict], result: Answer | Failure, seed: int) -> dict:
        identity = self.identity
        reported = result.reported if isinstance(result, Answer) else {}
        return {"prompt_id": item.id, "prompt_sha256": prompt_sha256(messages), "sample": result.key[1],
                **{k: v for k, v in identity.items() if k != "sampling"},
                "sampling": {**identity["sampling"], "request_seed": seed, "reported": reported},
                "attempts": result.attempts, "timestamp": result.timestamp}


def normalise(obj):
    """The value as JSON gives it back (tuples become lists), for comparing with rows read back."""
    return json.loads(json.dumps(obj))


def judge(run: DistillRun, item: tasks.Item, answer: Answer, seen: set[tuple[str, str]]) -> tuple[str, dict]:
    """(stage, row) for one answer: ``kept`` or the filter that dropped it (:data:`STAGES`)."""
    messages, prefill = prompts.build_messages(item, run.task, run.cfg.format, template=run.cfg.template)
    seed = request_seed(run.cfg.seed, item, answer.key[1])
    provenance = run.provenance(item, messages, answer, seed)
    provenance.update({"finish_reason": answer.finish_reason, "usage": answer.usage})
    raw = {"content": answer.content, **answer.fields}
    if answer.finish_reason == "length":
        return "length", {"stage": "length", "raw": raw, "provenance": provenance}
    parts = split_reasoning(answer.content, answer.fields)
    if parts is None:
        return "unclosed_thinking", {"stage": "unclosed_thinking", "raw": raw, "provenance": provenance}
    thinking, answer_text, field = parts
    completion = build_completion(thinking, answer_text, run.cfg.format)
    checked = completion if run.cfg.format == "r1" else answer_text  # plain: the answer after the thinking
    scored = prompts.score(checked, item, run.task, run.cfg.format)
    provenance.update({"reasoning_field": field,
                       "verifier": {"accuracy": scored["accuracy"], "format": scored["format"],
                                    "response": prompts.extract_answer(checked, run.task, run.cfg.format)}})
    row = {"messages": messages, "prefill": prefill, "completion": completion, "provenance": provenance}
    if scored["accuracy"] != 1.0:
        return "incorrect", {"stage": "incorrect", "raw": raw, **row}
    if (provenance["prompt_sha256"], completion) in seen:
        return "duplicate", {"stage": "duplicate", "raw": raw, **row}
    seen.add((provenance["prompt_sha256"], completion))
    return "kept", row


# ---------------------------------------------------------------------------------------------
# The files


def read_rows(path: Path) -> list[dict]:
    """The rows of one of the run's JSONL files ([] when it does not exist); a cut-off last line
    (a kill mid-append) is left out."""
    return [row for _, row in read_jsonl(path, notes=[])] if path.exists() else []


def check_same_run(run: DistillRun, path: Path, rows: list[dict]) -> None:
    """Refuse files another teacher, task, split, format or sampling wrote."""
    identity = run.identity
    for n, row in enumerate(rows, 1):
        provenance = row.get("provenance")
        if not isinstance(provenance, dict) or "prompt_id" not in provenance:
            raise UsageError(f"{path}:{n} was not written by r1lite distill (no provenance); choose another --out")
        for key, want in identity.items():
            got = provenance.get(key, "chat" if key == "template" else None)  # rows from before templates: chat
            if key == "sampling" and isinstance(got, dict):
                got = {k: got.get(k) for k in want}
            if got != want:
                raise UsageError(f"{path} holds traces from another run: its {key} is {json.dumps(got)}, this run's "
                                 f"{json.dumps(want)}; choose another --out, or rerun with that run's flags")


def trim_torn_tail(path: Path) -> None:
    """Mend a last line without its newline (a kill mid-append left it): a whole row gets its newline
    back, a cut-off one (not a row) is cut."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return
        tail = data[data.rfind(b"\n") + 1:]
        try:
            whole = isinstance(json.loads(tail), dict)
        except ValueError:
            whole = False
        if whole:
            f.write(b"\n")
        else:
            f.truncate(len(data) - len(tail))
        f.flush()
        os.fsync(f.fileno())


def answered(row: dict) -> tuple[str, int]:
    return row["provenance"]["prompt_id"], row["provenance"]["sample"]


# ---------------------------------------------------------------------------------------------
# The run


def open_teacher(cfg: DistillConfig) -> EndpointTeacher | LocalTeacher:
    """An endpoint for a URL, else a local model through the engine."""
    if cfg.endpoint:
        key = os.environ[cfg.api_key_env] if cfg.api_key_env else None
        return EndpointTeacher(EndpointConfig(cfg.teacher, cfg.teacher_model, key, f"${cfg.api_key_env}", cfg.timeout,
                                              cfg.max_retries, cfg.backoff, cfg.concurrency), cfg.sampling())
    if cfg.teacher_model or cfg.api_key_env:
        raise UsageError("--teacher-model and --api-key-env are for endpoint teachers (a URL); drop them for a local model")
    return LocalTeacher(cfg.teacher, cfg.sampling(), cfg.concurrency, cfg.device, cfg.dtype, cfg.teacher_template,
                        cfg.format)


def select_prompts(cfg: DistillConfig, task: tasks.Task) -> tuple[list[tasks.Item], list[tasks.Item], Counter, str]:
    """(selected items, the clean ones to ask, contaminated count by source, how the held-out split was used)."""
    items = task.split(cfg.split, None if cfg.limit == -1 else cfg.limit, seed=cfg.seed)
    reference, held_out = references(task, cfg.decontaminate)
    clean, dirty = [], Counter()
    for item in items:
        source = reference.source_of(item.question)
        if source is None and tasks.in_split(item.question, "test", task.held_out):
            source = f"{task.name} held-out split"
        if source is None:
            clean.append(item)
        else:
            dirty[source] += 1
    if not clean:
        raise UsageError(f"all {len(items)} prompts overlap the held-out split or a --decontaminate file; "
                         "distill other prompts (--split train, another --task) or check the --decontaminate files")
    return items, clean, dirty, held_out


def collect(cfg: DistillConfig, console) -> dict:
    """Ask the teacher for what the files lack, filter and append each answer, write the card; the card."""
    for path in (Path(cfg.out), sibling(Path(cfg.out), ".dropped.jsonl"), sibling(Path(cfg.out), ".card.md")):
        writable(path)  # before the teacher is asked anything
    task = tasks.load_task(cfg.task, cfg.task_options)
    selected, clean, dirty, held_out = select_prompts(cfg, task)
    out, dropped_file = Path(cfg.out), sibling(Path(cfg.out), ".dropped.jsonl")
    # One process at a time on these files: a second would ask for what the first is asking for.
    with ProcessLock(sibling(out, ".lock"), out, console.print):
        return collect_into(cfg, console, task, (selected, clean, dirty, held_out), out, dropped_file)


def collect_into(cfg: DistillConfig, console, task, picked: tuple, out: Path, dropped_file: Path) -> dict:
    """:func:`collect` once it holds the files."""
    from r1lite.progress import progress

    selected, clean, dirty, held_out = picked
    kept, dropped = read_rows(out), read_rows(dropped_file)
    teacher = open_teacher(cfg)
    teacher.preflight()
    run = DistillRun(cfg, task, teacher.identity, kept, dropped)
    check_same_run(run, out, kept)
    check_same_run(run, dropped_file, dropped)
    # Everything is checked: from here on the files may change.
    done = {answered(r) for r in kept} | {answered(r) for r in dropped if r["stage"] != "failed"}
    seen = {(r["provenance"]["prompt_sha256"], r["completion"]) for r in kept}
    by_id = {item.id: item for item in clean}
    asks = [Ask((item.id, s), prompts.build_messages(item, task, cfg.format, template=cfg.teacher_template)[0],
                request_seed(cfg.seed, item, s))
            for item in clean for s in range(cfg.samples_per_prompt) if (item.id, s) not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    for path in (out, dropped_file):
        trim_torn_tail(path)
    open(out, "a").close()
    console.print(f"r1lite distill: {len(clean)} prompts x {cfg.samples_per_prompt} from {task.name} ({cfg.split}), "
                  f"teacher {teacher.identity['model']} ({teacher.identity['kind']}); "
                  f"{len(asks)} requests to make, {len(done)} answered before")
    tally = Counter()

    def on_result(result: Answer | Failure) -> None:
        item = by_id[result.key[0]]
        if isinstance(result, Failure):
            messages = prompts.build_messages(item, task, cfg.format, template=cfg.template)[0]
            row = {"stage": "failed", "failure": {"kind": result.kind, "error": result.error},
                   "provenance": run.provenance(item, messages, result, request_seed(cfg.seed, item, result.key[1]))}
            stage = "failed"
        else:
            stage, row = judge(run, item, result, seen)
        append_jsonl(out if stage == "kept" else dropped_file, row)
        (run.kept if stage == "kept" else run.dropped).append(row)
        tally[stage] += 1
        update(sum(tally.values()), f"kept {tally['kept']}  failed {tally['failed']}")

    with progress(console, "distill", len(asks), "req") as update:
        teacher.run(asks, on_result)
    card = make_card(run, selected, clean, dirty, held_out, teacher)
    write_json(sibling(out, ".card.json"), card)
    write_text(sibling(out, ".card.md"), card_markdown(card))
    return card


def run(cfg: DistillConfig, console) -> int:
    """``r1lite distill``: collect, then say what the files hold and what they lack."""
    card = collect(cfg, console)
    c = card["counts"]
    console.print(f"kept {c['kept']} of {c['answered']} answers ({card['acceptance_rate']:.1%}) → {cfg.out}", highlight=False)
    console.print("dropped: " + ", ".join(f"{s.replace('_', ' ')} {c[s]}" for s in STAGES)
                  + f"; decontaminated {c['prompts_contaminated']} prompts", highlight=False)
    t = card["tokens"]
    cost = f"${card['cost']['usd']:.4f}" if card["cost"]["usd"] is not None else "no prices given"
    console.print(f"tokens: {t['prompt']:,} in, {t['completion']:,} out ({t['reasoning']:,} reasoning); cost {cost}",
                  highlight=False)
    console.print(f"lacks: {card['lacks']}", highlight=False)
    console.print(f"card: {sibling(Path(cfg.out), '.card.md')}", highlight=False)
    return 0


# ---------------------------------------------------------------------------------------------
# The dataset card


def make_card(run: DistillRun, selected: list, clean: list, dirty: Counter, held_out: str, teacher) -> dict:
    """Counts at every filter, tokens, failures per prompt and cost, from what the files hold."""
    cfg = run.cfg
    answers = run.kept + [r for r in run.dropped if r["stage"] != "failed"]
    done = {answered(r) for r in answers}
    lacking = {answered(r): r for r in run.dropped if r["stage"] == "failed" and answered(r) not in done}
    stages = Counter(r["stage"] for r in answers if "stage" in r)
    counts = {"prompts_selected": len(selected), "prompts_contaminated": sum(dirty.values()),
              "contaminated_by_source": dict(dirty), "prompts_asked": len(clean),
              "requests": len(clean) * cfg.samples_per_prompt, "answered": len(answers),
              **{s: stages[s] for s in STAGES}, "kept": len(run.kept), "failed": len(lacking)}
    tokens = {"prompt": 0, "completion": 0, "reasoning": 0, "kept_completion": 0}
    for r in answers:
        usage = r["provenance"]["usage"]
        tokens["prompt"] += usage.get("prompt_tokens", 0)
        tokens["completion"] += usage.get("completion_tokens", 0)
        tokens["reasoning"] += usage.get("reasoning_tokens", 0)
    tokens["kept_completion"] = sum(r["provenance"]["usage"].get("completion_tokens", 0) for r in run.kept)
    per_prompt: dict[str, dict] = {}
    for (prompt_id, sample), r in sorted(lacking.items()):
        entry = per_prompt.setdefault(prompt_id, {"samples": []})
        entry["samples"].append(sample)
        entry.update({**r["failure"], "attempts": r["provenance"]["attempts"]})
    prices = cfg.prices()
    cost = {"usd_per_mtok": None, "usd": None, "note": "no prices given (--teacher-usd-per-mtok IN,OUT)"}
    if prices is not None:
        usd = tokens["prompt"] / 1e6 * prices[0] + tokens["completion"] / 1e6 * prices[1]
        cost = {"usd_per_mtok": {"prompt": prices[0], "completion": prices[1]}, "usd": usd,
                "note": "every answered request, kept or not, at the prices given; failed requests not counted"}
    compute = None
    if isinstance(teacher, LocalTeacher):
        stats = teacher.stats
        compute = {"flops": stats.flops, "seconds": stats.seconds, "new_tokens": stats.new_tokens,
                   "note": "this invocation only (earlier, resumed invocations are not in it)"}
    if lacking:
        lacks = (f"{len(lacking)} requests ({len(per_prompt)} prompts) failed after retries; rerun the same command "
                 "to ask them again (failures per prompt in the card)")
    else:
        lacks = "nothing: every request was answered"
    return {
        "what": "verified reasoning traces (r1lite distill)", "r1lite_version": __version__, "written": now(),
        "traces": Path(cfg.out).name, "dropped": sibling(Path(cfg.out), ".dropped.jsonl").name,
        "teacher": {**run.teacher, "terms": cfg.teacher_terms or None},
        "task": run.task.name, "task_options": normalise(cfg.task_options), "split": cfg.split, "format": cfg.format,
        "template": cfg.template,
        "sampling": run.identity["sampling"], "samples_per_prompt": cfg.samples_per_prompt,
        "decontamination": {"ngram": NGRAM, "held_out_split": held_out, "files": list(cfg.decontaminate)},
        "counts": counts, "acceptance_rate": counts["kept"] / counts["answered"] if counts["answered"] else 0.0,
        "reasoning_fields": dict(Counter(r["provenance"]["reasoning_field"] for r in run.kept)),
        "tokens": tokens, "cost": cost, "compute": compute,
        "failures": {"requests": len(lacking), "prompts": len(per_prompt), "per_prompt": per_prompt},
        "lacks": lacks,
    }
