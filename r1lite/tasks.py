"""Tasks: prompts, gold answers and the verifier that checks them. Nothing here knows about training.

A task spec is ``NAME`` or ``NAME:SOURCE`` (``arithmetic``, ``countdown``, ``gsm8k:data.jsonl``,
``math:…``, ``svamp:…``, ``jsonl:…``, ``gym:chain_sum``); :data:`LOADERS` maps each name to its
loader. Train and test never overlap: a problem's split is a hash of its question text, so held-out
membership does not depend on the seed.

Prompt formats, the answer extractor and the scoring of a completion are in :mod:`r1lite.prompts`.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import importlib
import json
import os
import random
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from r1lite import rewards
from r1lite.errors import UsageError
from r1lite.files import read_jsonl

NUMBER_HINT = "Give the answer as a single number."
MAX_DIGITS = 18
"""The most digits an arithmetic operand may have (a 500-digit operand is no task for a small model)."""
ENUMERATE_LIMIT = 100_000
"""A generated task whose whole problem space is at most this large is enumerated (a finite source)."""


@dataclass(frozen=True)
class Item:
    id: str
    """Stable id: sha1 of the question text, first 12 hex chars."""
    question: str
    """The problem text shown to the model."""
    answer: Any
    """Gold, in the form the task's check expects; JSON-serialisable."""
    meta: dict
    """Anything else worth keeping (source line, generator params)."""


def make_item(question: str, answer: Any, meta: dict) -> Item:
    """An :class:`Item` whose id is the sha1 of its question.

    >>> make_item("What is 1 + 1?", 2, {}).id
    'ed434a97b946'
    """
    return Item(hashlib.sha1(question.encode()).hexdigest()[:12], question, answer, meta)


def held_out_bucket(question: str) -> float:
    """A number in [0, 1) fixed by the question text; the item is held out (test) when below ``held_out``.

    >>> 0 <= held_out_bucket("What is 1 + 1?") < 1
    True
    """
    return int(hashlib.sha1(question.encode()).hexdigest()[:8], 16) / 16**8


def in_split(question: str, which: str, held_out: float) -> bool:
    """Whether a question belongs to ``which`` ("train", "test" or "all")."""
    return which == "all" or (held_out_bucket(question) < held_out) == (which == "test")


@dataclass
class VerifierErrors:
    """Exceptions a user's Python verifier raised: each scores its item 0 (failed); the first is shown."""
    count: int = 0
    first: str = ""

    def record(self, kind: str, error: Exception) -> None:
        self.count += 1
        if self.count == 1:
            self.first = f"verifier '{kind}' raised {type(error).__name__}: {error}"
            print(f"r1lite: {self.first}; that item scores 0 (failed), and later errors are only counted "
                  "(verifier_errors in the summary). Fix the verifier so it returns a number for any response",
                  file=sys.stderr)


@dataclass
class Task:
    name: str
    """The spec it was loaded from, e.g. "arithmetic" or "gsm8k:/x.jsonl"."""
    check: Callable[[str, Any], float | None]
    """(extracted response, item.answer) -> score in [0, 1], or None: gold unusable, skip the item."""
    numeric: bool
    """Plain format: the response is the last number of the completion."""
    answer_hint: str
    """One sentence telling the model what the answer looks like."""
    held_out: float = 0.1
    """Fraction of problems (by question hash) in the test split."""
    rows: list[Item] | None = None
    """A finite source: every item, unique, in source order. None for generated tasks."""
    draw: Callable[[int, int], Iterator[Item]] | None = field(default=None, repr=False)
    """A generated source: (seed, count) -> ``count`` random items, duplicates possible."""
    verifier_errors: VerifierErrors = field(default_factory=VerifierErrors, repr=False)
    """Exceptions raised by a user's Python verifier so far (their items scored 0)."""

    def split(self, which: str, n: int | None = None, seed: int = 0) -> list[Item]:
        """``n`` unique items of the "train", "test" or "all" split, the same for the same seed.

        ``n=None`` returns the whole split in source order (finite sources only); otherwise the
        seed picks which ``n`` items, in random order.
        """
        if which not in ("train", "test", "all"):
            raise UsageError(f"{self.name}: unknown split '{which}'; use train, test or all")
        if n is not None and n < 1:
            raise UsageError(f"{self.name}: asked for {n} items; ask for at least 1")
        if self.rows is not None:
            pool = [item for item in self.rows if in_split(item.question, which, self.held_out)]
            if n is None:
                return pool
            if n > len(pool):
                raise UsageError(f"{self.name}: the {which} split has {len(pool)} items; asked for {n}")
            return random.Random(seed).sample(pool, n)
        if n is None:
            raise UsageError(f"{self.name} is generated: say how many {which} items you want (n)")
        share = {"all": 1.0, "test": self.held_out, "train": 1.0 - self.held_out}[which]
        if share == 0:
            raise UsageError(f"{self.name}: the {which} split is empty (held_out={self.held_out})")
        tries = int(5 * n / share) + 1000
        items, seen = [], set()
        for item in self.draw(seed, tries):
            if item.question not in seen and in_split(item.question, which, self.held_out):
                seen.add(item.question)
                items.append(item)
                if len(items) == n:
                    return items
        raise UsageError(f"{self.name}: found only {len(items)} distinct {which} problems in {tries} "
                         f"draws; ask for fewer than {n} or widen the task options")


def _options(spec: str, options: dict | None, defaults: dict) -> dict:
    """``defaults`` updated with ``options``; unknown keys, wrong types and a bad ``held_out`` are errors."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise UsageError(f"{spec}: unknown option(s) {', '.join(unknown)}; known: {', '.join(defaults)}")
    for key, value in options.items():
        want = float if key == "held_out" else type(defaults[key])
        if defaults[key] is not None and not isinstance(value, want if want is not float else (int, float)):
            raise UsageError(f"{spec}: option {key}={value!r} should be a {want.__name__}")
    merged = {**defaults, **options}
    if not 0 <= merged["held_out"] < 1:
        raise UsageError(f"{spec}: held_out must be in [0, 1), got {merged['held_out']}")
    return merged


# ------------------------------------------------------------------------------ generated tasks

_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def _digit_range(digits: int) -> range:
    """Integers with exactly ``digits`` digits (0 counts as a 1-digit number).

    >>> _digit_range(1), _digit_range(2)
    (range(0, 10), range(10, 100))
    """
    return range(0 if digits == 1 else 10 ** (digits - 1), 10**digits)


def _arithmetic_item(a: int, op: str, b: int) -> Item:
    return make_item(f"What is {a} {op} {b}?", _OPS[op](a, b), {"a": a, "op": op, "b": b})


def load_arithmetic(spec: str, options: dict | None) -> Task:
    """``a <op> b`` with operands of fixed digit counts. Options: ops, digits, digits_a, digits_b."""
    defaults = {"ops": "+", "digits": 2, "digits_a": None, "digits_b": None, "held_out": 0.1,
                "answer_hint": NUMBER_HINT}
    opts = _options(spec, options, defaults)
    ops = opts["ops"]
    if not ops or set(ops) - set(_OPS):
        raise UsageError(f"{spec}: ops must be made of + - *, got '{ops}'")
    ops = sorted(set(ops), key=ops.index)
    widths = [opts["digits"] if opts[k] is None else opts[k] for k in ("digits_a", "digits_b")]
    if min(widths) < 1 or max(widths) > MAX_DIGITS:
        raise UsageError(f"{spec}: digits must be at least 1 and at most {MAX_DIGITS}, got {widths}; set --task-options digits=N")
    range_a, range_b = _digit_range(widths[0]), _digit_range(widths[1])
    task = Task(spec, rewards.numeric_equal, True, opts["answer_hint"], opts["held_out"])
    if len(ops) * len(range_a) * len(range_b) <= ENUMERATE_LIMIT:
        task.rows = [_arithmetic_item(a, op, b) for op in ops for a in range_a for b in range_b]
        return task

    def draw(seed: int, count: int) -> Iterator[Item]:
        rng = random.Random(seed)
        for _ in range(count):
            yield _arithmetic_item(rng.choice(range_a), rng.choice(ops), rng.choice(range_b))

    task.draw = draw
    return task


def countdown_instance(rng: random.Random, count: int, max_number: int) -> tuple[list[int], int, str]:
    """Random numbers in [1, max_number] and a target built from them: (numbers, target, solution).

    Numbers are combined pairwise in random order by a random operation whose result is a positive
    integer, so every instance is solvable.

    >>> numbers, target, solution = countdown_instance(random.Random(0), 4, 99)
    >>> rewards.countdown_check(solution, {"target": target, "numbers": numbers})
    1.0
    """
    numbers = [rng.randint(1, max_number) for _ in range(count)]
    terms = [(n, str(n)) for n in numbers]
    while len(terms) > 1:
        (a, x), (b, y) = terms.pop(rng.randrange(len(terms))), terms.pop(rng.randrange(len(terms)))
        choices = [(a + b, f"{x} + {y}"), (a * b, f"{x} * {y}")]
        if a > b:
            choices.append((a - b, f"{x} - {y}"))
        if a % b == 0:
            choices.append((a // b, f"{x} / {y}"))
        value, text = rng.choice(choices)
        terms.append((value, f"({text})" if terms else text))
    return numbers, terms[0][0], terms[0][1]


def load_countdown(spec: str, options: dict | None) -> Task:
    """Reach a target from given numbers with + - * /. Options: count, max_number."""
    hint = ("Give an arithmetic expression that uses each given number exactly once, "
            "with only + - * / and parentheses.")
    opts = _options(spec, options, {"count": 4, "max_number": 99, "held_out": 0.1, "answer_hint": hint})
    count, max_number = opts["count"], opts["max_number"]
    if count < 1 or max_number < 1:
        raise UsageError(f"{spec}: count and max_number must be at least 1, got {count} and {max_number}")

    def draw(seed: int, tries: int) -> Iterator[Item]:
        rng = random.Random(seed)
        for _ in range(tries):
            numbers, target, solution = countdown_instance(rng, count, max_number)
            numbers = sorted(numbers)
            question = f"Using the numbers {numbers}, create an expression that equals {target}."
            yield make_item(question, {"target": target, "numbers": numbers}, {"solution": solution})

    return Task(spec, rewards.countdown_check, False, opts["answer_hint"], opts["held_out"], draw=draw)


def load_gym(spec: str, options: dict | None) -> Task:
    """Any reasoning-gym generator, scored by its own ``score_answer``; the item's answer is the entry.

    Options other than ``held_out`` and ``answer_hint`` go to the generator's config. The entry is
    JSON-serialisable, but a few generators (arc_agi, rearc) keep tuples in it that a JSON round trip
    turns into lists, which their scorer then rejects: score entries in the process that made them.
    """
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    name = spec.partition(":")[2]
    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=5, cutoff=0.5) or sorted(DATASETS)[:5]
        raise UsageError(f"{spec}: unknown reasoning-gym generator '{name}'; close names: "
                         f"{', '.join(close)} ({len(DATASETS)} in all)")
    config = dict(options or {})
    ours = {k: config.pop(k) for k in ("held_out", "answer_hint") if k in config}
    opts = _options(spec, ours, {"held_out": 0.1, "answer_hint": "Give only the final answer, in the form "
                                                                  "the question asks for."})
    try:
        scorer = reasoning_gym.create_dataset(name, size=1, seed=0, **config)
    except (TypeError, ValueError, AssertionError) as e:
        raise UsageError(f"{spec}: bad generator options {config} ({e})") from None

    def draw(seed: int, tries: int) -> Iterator[Item]:
        dataset = reasoning_gym.create_dataset(name, size=tries, seed=seed, **config)
        for index in range(tries):
            entry = dataset[index]
            json.dumps(entry)  # the item's answer must be JSON-serialisable: fail loudly if not
            yield make_item(entry["question"], entry, {"seed": seed, "index": index})

    return Task(spec, scorer.score_answer, False, opts["answer_hint"], opts["held_out"], draw=draw)


# ---------------------------------------------------------------------------------- file sources


def read_rows(source: str, opts: dict) -> Iterator[tuple[str, dict]]:
    """(``where``, row) for each row of a local JSONL file (``path:line``) or a hub dataset (``id[i]``)."""
    if os.path.exists(source):
        for number, row in read_jsonl(source):
            yield f"{source}:{number}", row
        return
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
        raise UsageError(f"{source}: no such file; pass a JSONL path or a hub id (owner/name)")
    try:
        import datasets
    except ImportError:
        raise UsageError(f"{source} is not a local file: install r1lite[hub] or pass a local JSONL path") from None
    try:
        rows = datasets.load_dataset(source, opts["config"], split=opts["split"])
    except Exception as e:  # offline, unknown id, wrong config or split: the library's reason, one line
        raise UsageError(f"{source}: cannot load from the hub ({type(e).__name__}: {e})") from None
    for number, row in enumerate(rows):
        yield f"{source}[{number}]", dict(row)


def need(row: dict, key: str, where: str, why: str) -> Any:
    """``row[key]``, or a usage error naming the place and what every row needs."""
    if key not in row:
        raise UsageError(f"{where}: missing key '{key}'; every row needs {why}")
    return row[key]


def load_rows(spec: str, options: dict | None, hint: str,
              to_item: Callable[[dict, str], tuple[str, Any]], **extra: Any) -> tuple[list[Item], dict]:
    """Unique items (first of each question kept, source order) of a file task, and its options.

    ``to_item(row, where) -> (question, answer)``. Options: held_out, answer_hint, and for hub ids
    ``config`` and ``split`` (default "test").
    """
    name, _, source = spec.partition(":")
    if not source:
        raise UsageError(f"{spec}: name the data: {name}:PATH.jsonl")
    defaults = {"held_out": 0.1, "answer_hint": hint, "config": None, "split": "test", **extra}
    opts = _options(spec, options, defaults)
    items, seen = [], set()
    for where, row in read_rows(source, opts):
        question, answer = to_item(row, where)
        if not isinstance(question, str):
            raise UsageError(f"{where}: the question is {type(question).__name__} {question!r}, not text; "
                             "write it as a JSON string")
        if question not in seen:
            seen.add(question)
            items.append(make_item(question, answer, {"source": where}))
    if not items:
        raise UsageError(f"{spec}: no items")
    return items, opts


def gsm8k_gold(answer: Any, where: str) -> str | float:
    """The gold number of a GSM8K answer: the text after ``####``, commas removed.

    >>> gsm8k_gold("3 + 4 = <<3+4=7>>7 eggs\\n#### 1,007", "x:1")
    '1007'
    """
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        return answer
    if not isinstance(answer, str) or "####" not in answer:
        raise UsageError(f"{where}: 'answer' must be a number or end with '#### <number>' (GSM8K format)")
    return answer.rsplit("####", 1)[1].strip().replace(",", "")


def load_gsm8k(spec: str, options: dict | None) -> Task:
    """GSM8K rows: ``question``, and ``answer`` ending in ``#### <number>``."""
    def to_item(row: dict, where: str) -> tuple[str, Any]:
        why = "'question' and 'answer' (GSM8K format)"
        return need(row, "question", where, why), gsm8k_gold(need(row, "answer", where, why), where)

    items, opts = load_rows(spec, options, NUMBER_HINT, to_item)
    return Task(spec, rewards.numeric_equal, True, opts["answer_hint"], opts["held_out"], rows=items)


def load_svamp(spec: str, options: dict | None) -> Task:
    """SVAMP rows: the question is ``Body`` + " " + ``Question``, the gold ``Answer``."""
    def to_item(row: dict, where: str) -> tuple[str, Any]:
        why = "'Body', 'Question' and 'Answer' (SVAMP format)"
        body, question = need(row, "Body", where, why), need(row, "Question", where, why)
        return f"{str(body).strip()} {str(question).strip()}", need(row, "Answer", where, why)

    items, opts = load_rows(spec, options, NUMBER_HINT, to_item)
    return Task(spec, rewards.numeric_equal, True, opts["answer_hint"], opts["held_out"], rows=items)


def load_math(spec: str, options: dict | None) -> Task:
    """MATH / MATH-500 rows: ``problem`` and ``answer`` (LaTeX), checked with math-verify."""
    def to_item(row: dict, where: str) -> tuple[str, Any]:
        why = "'problem' and 'answer' (MATH format)"
        return need(row, "problem", where, why), need(row, "answer", where, why)

    hint = "Give the final answer as a LaTeX expression, for example \\frac{3}{4} or 2\\sqrt{5}."
    items, opts = load_rows(spec, options, hint, to_item)
    return Task(spec, rewards.math_equal, False, opts["answer_hint"], opts["held_out"], rows=items)


VERIFIERS = ("exact", "numeric", "regex", "json", "json_schema", "python:module:function")


def row_gold(row: dict, default: Any, where: str, python_fns: dict) -> dict:
    """The gold of one custom row, ``{"verifier": kind, "gold": …, …params}``, checked at load time.

    The verifier is the row's ``verifier`` (a name or ``{"type": name, …params}``) or ``default``;
    python verifiers are imported into ``python_fns`` (name -> function). Only ``default`` (the
    user's task option) may name one: a row that does is refused, so a data file never runs code.
    """
    verifier = row.get("verifier", default)
    params = dict(verifier) if isinstance(verifier, dict) else {"type": verifier}
    kind = params.pop("type", None)
    if "verifier" in row and isinstance(kind, str) and kind.startswith("python:"):
        raise UsageError(f"{where}: the row names the Python verifier '{kind}', and a data file may not choose "
                         f"code to run; remove it from the row and pass it as a task option: "
                         f"--task-options verifier={kind}")
    if not isinstance(kind, str) or not (kind in VERIFIERS[:-1] or kind.startswith("python:")):
        raise UsageError(f"{where}: unknown verifier {kind!r}; use one of {', '.join(VERIFIERS)}")
    why = f"an 'answer' (the gold for the '{kind}' verifier)"
    gold = {"verifier": kind, "gold": row.get("answer") if kind == "json_schema" else need(row, "answer", where, why)}
    if kind == "numeric":
        gold["tolerance"] = row.get("tolerance", params.get("tolerance", 0.0))
        if isinstance(gold["tolerance"], bool) or not isinstance(gold["tolerance"], (int, float)) or gold["tolerance"] < 0:
            raise UsageError(f"{where}: 'tolerance' {gold['tolerance']!r} must be a number >= 0 (0 = exact)")
        if rewards.numeric_equal("0", gold["gold"]) is None:
            raise UsageError(f"{where}: 'answer' {gold['gold']!r} is not a number (numeric verifier)")
    elif kind == "regex":
        try:
            re.compile(gold["gold"])
        except (re.error, TypeError) as e:
            raise UsageError(f"{where}: 'answer' is not a valid regex ({e})") from None
    elif kind == "json_schema":
        import jsonschema

        gold["schema"] = need({**params, **row}, "schema", where, "a 'schema' for the json_schema verifier")
        try:
            jsonschema.validators.validator_for(gold["schema"]).check_schema(gold["schema"])
        except jsonschema.SchemaError as e:
            raise UsageError(f"{where}: 'schema' is not a valid JSON schema ({e.message})") from None
    elif kind.startswith("python:") and kind not in python_fns:
        _, module, function = (kind.split(":", 2) + ["", ""])[:3]
        try:
            python_fns[kind] = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError, ValueError) as e:
            raise UsageError(f"{where}: cannot import verifier '{kind}' ({e}); "
                             "use python:module:function with the module on PYTHONPATH") from None
    return gold


def check_row(response: str, answer: dict, python_fns: dict, errors: VerifierErrors | None = None) -> float | None:
    """Score a response against one custom row's gold (see :func:`row_gold`). An exception in a
    Python verifier scores 0 (failed) and is recorded in ``errors``; without ``errors`` it propagates.

    >>> check_row(" 3.1 ", {"verifier": "numeric", "gold": 3, "tolerance": 0.2}, {})
    1.0
    >>> check_row("abc-9", {"verifier": "regex", "gold": "[a-z]+-\\\\d"}, {})
    1.0
    """
    kind, gold = answer["verifier"], answer["gold"]
    if kind == "exact":
        return rewards.exact_match(response, gold)
    if kind == "numeric":
        return rewards.numeric_equal(response, gold, tolerance=answer["tolerance"])
    if kind == "regex":
        return rewards.regex_match(response, gold)
    if kind == "json":
        return rewards.json_match(response, gold)
    if kind == "json_schema":
        return rewards.json_schema_match(response, answer["schema"], gold)
    try:
        result = python_fns[kind](response, gold)
        return None if result is None else float(result)
    except Exception as e:  # the user's code: one item fails, not the run
        if errors is None:
            raise
        errors.record(kind, e)
        return 0.0


def load_jsonl(spec: str, options: dict | None) -> Task:
    """Your own rows: ``question`` (or ``prompt``), ``answer``, and optionally ``verifier``.

    Options: ``verifier`` (default "exact") for rows that name none, held_out, answer_hint,
    ``partial_credit`` (rows whose gold is a JSON object: score the fraction of its fields the
    answer gets right, 0 for an answer that is not a JSON object, instead of all-or-nothing; a
    reward for extraction tasks, see examples/tickets). A ``python:MODULE:FUNC`` verifier is given
    only as this option, never by a row.
    """
    python_fns: dict[str, Callable] = {}
    verifier = (options or {}).get("verifier", "exact")  # a name or {"type": …}; checked with each row

    def to_item(row: dict, where: str) -> tuple[str, Any]:
        if "question" not in row and "prompt" not in row:
            raise UsageError(f"{where}: missing key 'question'; every row needs a 'question' (or 'prompt')")
        question = row["question"] if "question" in row else row["prompt"]
        return question, row_gold(row, verifier, where, python_fns)

    items, opts = load_rows(spec, options, "", to_item, verifier=None, partial_credit=False)
    kinds = {item.answer["verifier"] for item in items}
    if opts["partial_credit"]:
        return partial_task(spec, items, opts)
    numeric = kinds == {"numeric"}
    hint = opts["answer_hint"] or (NUMBER_HINT if numeric else "Give the answer as JSON."
                                   if kinds <= {"json", "json_schema"} else "Give only the final answer.")
    errors = VerifierErrors()
    check = functools.partial(check_row, python_fns=python_fns, errors=errors)
    return Task(spec, check, numeric, hint, opts["held_out"], rows=items, verifier_errors=errors)


def partial_task(spec: str, items: list[Item], opts: dict) -> Task:
    """A ``jsonl:`` task scored by :func:`r1lite.rewards.json_partial`: every row's gold must be a
    JSON object under the json or json_schema verifier."""
    for item in items:
        gold = item.answer
        if gold["verifier"] not in ("json", "json_schema") or not isinstance(gold["gold"], dict):
            raise UsageError(f"{item.meta['source']}: partial_credit scores the fields of a JSON object, and this row's "
                             f"gold is {gold['verifier']} {json.dumps(gold['gold'])[:60]}; give every row a JSON object "
                             "'answer' with the json or json_schema verifier, or drop partial_credit")
    hint = opts["answer_hint"] or "Give the answer as JSON."
    return Task(spec, partial_check, False, hint, opts["held_out"], rows=items)


def partial_check(response: str, answer: dict) -> float:
    """:func:`r1lite.rewards.json_partial` against a custom row's gold (see :func:`row_gold`)."""
    return rewards.json_partial(response, answer["gold"])


LOADERS: dict[str, Callable[[str, dict | None], Task]] = {
    "arithmetic": load_arithmetic,
    "countdown": load_countdown,
    "gsm8k": load_gsm8k,
    "math": load_math,
    "svamp": load_svamp,
    "jsonl": load_jsonl,
    "gym": load_gym,
}
"""Task name -> loader(spec, options). Names from ``gsm8k`` on take a source after a colon."""


def load_task(spec: str, options: dict | None = None) -> Task:
    """The task named by ``spec`` (``NAME`` or ``NAME:SOURCE``), configured by ``options``.

    >>> task = load_task("arithmetic", {"digits": 1})
    >>> len(task.split("train")), len(task.split("test")), task.split("test")[0].question
    (93, 7, 'What is 0 + 3?')
    """
    name = spec.partition(":")[0]
    if name not in LOADERS:
        raise UsageError(f"unknown task '{spec}'; use one of arithmetic, countdown, gsm8k:PATH, math:PATH, "
                         "svamp:PATH, jsonl:PATH, gym:NAME")
    if name in ("arithmetic", "countdown") and ":" in spec:
        raise UsageError(f"{spec}: {name} takes no source; set options instead")
    return LOADERS[name](spec, options)
