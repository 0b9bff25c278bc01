"""Rewards and verifiers: pure text -> number functions.

Every function here takes model text (and a gold answer) and returns a number: 1.0 / 0.0 for a
check, a fraction for partial credit, or ``None`` when the *gold* cannot be used (the caller skips
that item). No torch, no model, no file I/O, so the same function is the training reward and the
evaluation metric.

All functions run in time linear in the length of their input: tags are found with ``str.find`` /
``str.count``, and the few regular expressions have no nested or overlapping quantifiers. (The one
exception is :func:`regex_match`, whose pattern comes from the user's data.)
"""

from __future__ import annotations

import ast
import json
import math
import re
import threading
from collections import Counter
from decimal import Decimal
from fractions import Fraction
from typing import Any

END_TOKENS = (
    "<|im_end|>",
    "<|endoftext|>",
    "</s>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<｜end▁of▁sentence｜>",
    "<end_of_turn>",
)
"""End-of-turn tokens that a decoder may leave at the end of a completion."""

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

# One number, the whole string: sign, digits (commas only as thousands separators), decimals.
_NUMBER = re.compile(r"[+-]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?|[+-]?\.[0-9]+")
# A run that starts with a digit and continues over digits, commas and periods (no backtracking:
# nothing follows the starred class).
_DIGIT_RUN = re.compile(r"[0-9][0-9.,]*")


def strip_end(text: str) -> str:
    """Remove trailing whitespace and end-of-turn tokens, repeatedly.

    >>> strip_end("42 <|im_end|>\\n<|endoftext|>  ")
    '42'
    >>> strip_end("  keep leading space ")
    '  keep leading space'
    """
    while True:
        text = text.rstrip()
        for token in END_TOKENS:
            if text.endswith(token):
                text = text[: -len(token)]
                break
        else:
            return text


def r1_answer(completion: str) -> str | None:
    """The trimmed text of the one ``<answer>`` block after ``</think>``; None when malformed.

    Rules: exactly one ``</think>``; at most one ``<think>``, before it; exactly one ``<answer>`` and
    one ``</answer>``, both after ``</think>`` and in that order; only whitespace between
    ``</think>`` and ``<answer>``; only whitespace and end-of-turn tokens after ``</answer>``.

    >>> r1_answer("<think>7*6</think>\\n<answer> 42 </answer><|im_end|>")
    '42'
    >>> r1_answer("<think>maybe <answer>41</answer></think>")  # only inside the thinking
    >>> r1_answer("<think>x</think><answer>1</answer><answer>2</answer>")  # two answers
    >>> r1_answer("<think>x</think><answer>42</answer> Hope this helps!")  # text after
    >>> r1_answer("<think>x</think><answer>42")  # unclosed
    """
    close = completion.find(THINK_CLOSE)
    if close < 0 or completion.count(THINK_CLOSE) != 1:
        return None
    opens = completion.count(THINK_OPEN)
    if opens > 1 or (opens == 1 and completion.find(THINK_OPEN) > close):
        return None
    if completion.count(ANSWER_OPEN) != 1 or completion.count(ANSWER_CLOSE) != 1:
        return None
    start = completion.find(ANSWER_OPEN)
    end = completion.find(ANSWER_CLOSE)
    if start < close or end < start:
        return None
    if completion[close + len(THINK_CLOSE) : start].strip():
        return None
    if strip_end(completion[end + len(ANSWER_CLOSE) :]):
        return None
    return completion[start + len(ANSWER_OPEN) : end].strip()


def r1_format(completion: str) -> float:
    """1.0 iff the completion is ``<think>…</think> <answer>…</answer>`` with both parts non-empty.

    The ``<think>`` block must start the completion (after optional whitespace) and hold some text;
    only whitespace may separate it from the one ``<answer>`` block, whose content must be
    non-empty; only whitespace and end-of-turn tokens may follow. When generation was prefilled
    with ``<think>``, the caller passes ``prefill + completion``: the prefill counts as part of the
    completion.

    >>> r1_format("<think>6*7=42</think> <answer>42</answer>")
    1.0
    >>> r1_format("<think></think><answer>42</answer>")  # empty thinking
    0.0
    >>> r1_format("Sure! <think>x</think><answer>42</answer>")  # text before <think>
    0.0
    """
    if not completion.lstrip().startswith(THINK_OPEN) or completion.count(THINK_OPEN) != 1:
        return 0.0
    answer = r1_answer(completion)
    thinking = completion[completion.find(THINK_OPEN) + len(THINK_OPEN) : completion.find(THINK_CLOSE)]
    return 1.0 if answer and thinking.strip() else 0.0


def format_partial(completion: str) -> float:
    """0.25 for each of ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` present exactly once.

    A denser format signal than :func:`r1_format` for recipes that want one; it ignores order.

    >>> format_partial("<think>x</think><answer>1</answer>")
    1.0
    >>> format_partial("<think>x</think> 42")
    0.5
    >>> format_partial("<answer>1</answer><answer>2</answer>")
    0.0
    """
    tags = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
    return 0.25 * sum(completion.count(tag) == 1 for tag in tags)


def _unbox(text: str) -> str:
    """The inside of a whole ``\\boxed{…}`` wrapper, or the text itself."""
    if text.startswith("\\boxed{") and text.endswith("}"):
        return text[len("\\boxed{") : -1].strip()
    return text


def parse_number(text: str) -> float | None:
    """The one number that the trimmed text is (an optional whole ``\\boxed{}`` allowed), or None.

    Commas are accepted only as proper thousands separators.

    >>> parse_number(" 42.0 "), parse_number("\\\\boxed{42}"), parse_number("-1,234.5"), parse_number(".5")
    (42.0, 42.0, -1234.5, 0.5)
    >>> [parse_number(t) for t in ("41 or 42", "41, 42, 43", "4 2", "42abc", "1,23", "")]
    [None, None, None, None, None, None]
    """
    value = parse_decimal(text)
    return None if value is None else float(value)


def parse_decimal(text: str) -> Decimal | None:
    """:func:`parse_number` as an exact decimal (no float rounding: 99980100 stays 99980100).

    >>> parse_decimal("1,000.50"), parse_decimal("x")
    (Decimal('1000.50'), None)
    """
    text = _unbox(text.strip())
    if not _NUMBER.fullmatch(text):
        return None
    return Decimal(text.replace(",", ""))


def last_number(text: str) -> str | None:
    """The text of the last number in ``text`` (for plain-format numeric tasks), or None.

    Handles signs, thousands commas and decimals; a trailing sentence period or comma is not part
    of the number, and a minus right after a letter, digit or ``)`` is read as a hyphen or a
    subtraction, not a sign. The result always satisfies :func:`parse_number`.

    >>> last_number("So 40 + 38 is 78.")
    '78'
    >>> last_number("The balance is -1,234.50 dollars"), last_number("5-3 gives 2"), last_number("none")
    ('-1,234.50', '2', None)
    >>> last_number("pick from 3,4"), last_number("it costs .5")
    ('4', '.5')
    """
    match = None
    for match in _DIGIT_RUN.finditer(text):
        pass
    if match is None:
        return None
    run = match.group().rstrip(".,")
    end = match.start() + len(run)
    if not _NUMBER.fullmatch(run):  # e.g. "3,4" (a list) or "1.2.3": keep the last valid piece
        run = run.rsplit(",", 1)[-1]
        pieces = run.split(".")
        run = ".".join(pieces[-2:]) if len(pieces) > 2 else run
        run = run if _NUMBER.fullmatch(run) else pieces[-1]
    start = end - len(run)  # every piece above is a suffix of the run
    if run[0] != "." and start >= 1 and text[start - 1] == "." and (start < 2 or not text[start - 2].isdigit()):
        run, start = "." + run, start - 1
    if start >= 1 and text[start - 1] == "-":
        before = text[start - 2] if start >= 2 else " "
        if not (before.isalnum() or before == ")"):
            run = "-" + run
    return run


def _gold_number(gold: float | int | str) -> Decimal | None:
    """The exact value of a gold answer, or None when it is not one finite number. A float gold is
    read as its shortest repr (0.1 -> Decimal('0.1')), so it equals the same text written out."""
    if isinstance(gold, bool):
        return None
    if isinstance(gold, int):
        return Decimal(gold)
    if isinstance(gold, float):
        return Decimal(repr(gold)) if math.isfinite(gold) else None
    return parse_decimal(str(gold))


def numeric_equal(response: str, gold: float | int | str, tolerance: float = 0.0, rel_tolerance: float = 0.0) -> float | None:
    """1.0 when the response is one number equal to ``gold``; None if gold isn't a number.

    Equality is exact (decimal arithmetic, no float slack): ``99980100`` is not ``99980001``, and
    ``1.5`` is not ``1.50001``. A tolerance is only what the caller asks for: ``|response - gold| <=
    tolerance``, or ``<= rel_tolerance * |gold|``.

    >>> numeric_equal("\\\\boxed{1,000}", 1000), numeric_equal("999", "1,000"), numeric_equal("41 or 42", 42)
    (1.0, 0.0, 0.0)
    >>> numeric_equal("99980100", 99980001), numeric_equal("0.10", 0.1), numeric_equal("10.4", 10, tolerance=0.5)
    (0.0, 1.0, 1.0)
    >>> numeric_equal("3", "three") is None
    True
    """
    target = _gold_number(gold)
    if target is None:
        return None
    value = parse_decimal(response)
    if value is None:
        return 0.0
    slack = max(Decimal(repr(float(tolerance))), Decimal(repr(float(rel_tolerance))) * abs(target))
    return 1.0 if abs(value - target) <= slack else 0.0


def exact_match(response: str, gold: Any) -> float:
    """1.0 when the trimmed response equals ``str(gold)`` trimmed (case-sensitive).

    >>> exact_match(" Paris ", "Paris"), exact_match("paris", "Paris")
    (1.0, 0.0)
    """
    return 1.0 if response.strip() == str(gold).strip() else 0.0


def regex_match(response: str, pattern: str) -> float:
    """1.0 when the whole trimmed response matches ``pattern`` (``re.fullmatch``).

    The pattern comes from the user's data; its running time is the user's responsibility.

    >>> regex_match("TICKET-123", r"TICKET-\\d+"), regex_match("TICKET-123 ok", r"TICKET-\\d+")
    (1.0, 0.0)
    """
    return 1.0 if re.fullmatch(pattern, response.strip()) else 0.0


def _json_text(response: str) -> str:
    """The JSON text of a response: the inside of one ```json fenced block, or the whole response."""
    text = response.strip()
    if text.count("```json") == 1:
        start = text.find("```json") + len("```json")
        end = text.find("```", start)
        return text[start:end] if end >= 0 else ""
    if text.startswith("```") and text.endswith("```") and text.count("```") == 2:
        return text[3:-3]
    return text


def _parse_json(response: str) -> tuple[bool, Any]:
    """(True, value) when the response holds one JSON value, else (False, None)."""
    try:
        return True, json.loads(_json_text(response))
    except (ValueError, RecursionError):
        return False, None


def _same_json(a: Any, b: Any) -> bool:
    """Structural JSON equality: unlike ``==``, ``true`` differs from ``1``; ``1`` equals ``1.0``.

    >>> _same_json({"a": [1, True]}, {"a": [1.0, True]}), _same_json(1, True)
    (True, False)
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def json_match(response: str, gold: Any) -> float:
    """1.0 when the response (bare, or inside one ```json fence) is JSON structurally equal to ``gold``.

    >>> json_match('```json\\n{"id": 7, "tags": ["a"]}\\n```', {"tags": ["a"], "id": 7})
    1.0
    >>> json_match('{"id": 7', {"id": 7}), json_match('{"ok": 1}', {"ok": True})
    (0.0, 0.0)
    """
    ok, value = _parse_json(response)
    return 1.0 if ok and _same_json(value, gold) else 0.0


def json_schema_match(response: str, schema: dict, gold: Any = None) -> float:
    """1.0 when the response is JSON valid against ``schema`` (and equal to ``gold`` if one is given).

    ``gold=None`` means "no gold": a JSON ``null`` gold cannot be expressed.

    >>> schema = {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}}
    >>> json_schema_match('{"id": 3}', schema), json_schema_match('{"id": "3"}', schema)
    (1.0, 0.0)
    >>> json_schema_match('{"id": 3}', schema, gold={"id": 4})
    0.0
    """
    import jsonschema

    ok, value = _parse_json(response)
    if not ok or not jsonschema.validators.validator_for(schema)(schema).is_valid(value):
        return 0.0
    return 1.0 if gold is None or _same_json(value, gold) else 0.0


def json_fields(response: str, gold: dict) -> dict[str, bool] | None:
    """Per key of the ``gold`` object, whether the response's JSON object holds the same value there;
    None when the response is not a JSON object.

    >>> json_fields('{"id": 7, "tag": "b", "extra": 1}', {"id": 7, "tag": "a"})
    {'id': True, 'tag': False}
    >>> json_fields('[7]', {"id": 7}) is None
    True
    """
    ok, value = _parse_json(response)
    if not ok or not isinstance(value, dict):
        return None
    return {key: key in value and _same_json(value[key], want) for key, want in gold.items()}


def json_partial(response: str, gold: dict) -> float:
    """Partial credit for an extraction: the fraction of the gold object's fields the response's JSON
    object gets right (keys it adds cost nothing here; the strict verifiers refuse them), 0 for a
    response that is not a JSON object.

    >>> json_partial('{"id": 7, "tag": "b"}', {"id": 7, "tag": "a"}), json_partial('{"id": 7', {"id": 7})
    (0.5, 0.0)
    """
    hits = json_fields(response, gold)
    return sum(hits.values()) / len(hits) if hits else 0.0


def math_equal(response: str, gold: str) -> float | None:
    """1.0 when math-verify finds the response equivalent to the LaTeX ``gold``; None if gold won't parse.

    Both sides are wrapped in ``$…$`` before parsing, so bare LaTeX (``\\frac43``), ``\\boxed{}`` and
    inline math all work. math-verify's timeout uses ``signal.alarm`` and so only works in the main
    thread; elsewhere this function turns the timeout off (``parsing_timeout=None``,
    ``timeout_seconds=None``), and the caller must bound the time itself.

    >>> math_equal("\\\\frac{1}{2}", "0.5"), math_equal("\\\\boxed{\\\\frac12}", "\\\\dfrac{1}{2}"), math_equal("1/3", "0.5")
    (1.0, 1.0, 0.0)
    """
    from math_verify import parse, verify

    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    target = parse(f"${gold}$", parsing_timeout=timeout)
    if not target:
        return None
    answer = parse(f"${response}$", parsing_timeout=timeout)
    return 1.0 if answer and verify(target, answer, timeout_seconds=timeout) else 0.0


_COUNTDOWN_CHARS = frozenset("0123456789+-*/() \t\n")
_COUNTDOWN_NODES = (ast.Expression, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div, ast.Constant)


def _evaluate(node: ast.AST) -> Fraction:
    """Exact value of a checked countdown tree (depth is at most the count of numbers)."""
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    left, right = _evaluate(node.left), _evaluate(node.right)
    if isinstance(node.op, ast.Add):
        return left + right
    if isinstance(node.op, ast.Sub):
        return left - right
    if isinstance(node.op, ast.Mult):
        return left * right
    return left / right  # ZeroDivisionError is the caller's to catch


def countdown_check(expression: str, gold: dict) -> float:
    """1.0 when ``expression`` uses each of ``gold["numbers"]`` once and evaluates to ``gold["target"]``.

    The expression is parsed with ``ast`` (never evaluated by Python): only integers, ``+ - * /``
    and parentheses; no unary minus, no other numbers; division by zero scores 0. A trailing
    ``= <target>`` is ignored.

    >>> gold = {"target": 24, "numbers": [4, 6, 2, 3]}
    >>> countdown_check("(6 - 2) * (4 + 2) ", {"target": 24, "numbers": [6, 2, 4, 2]})
    1.0
    >>> countdown_check("6 * 4 * (3 - 2) = 24", gold), countdown_check("6 * 4", gold), countdown_check("6 * 4 * 3 / 3", gold)
    (1.0, 0.0, 0.0)
    >>> countdown_check("__import__('os')", gold), countdown_check("(6 - 2) ** 2 + 2 * 3 + 2", gold)
    (0.0, 0.0)
    """
    text = expression.strip()
    if text.count("=") > 1:
        return 0.0
    text = text.partition("=")[0]
    if not text.strip() or not _COUNTDOWN_CHARS.issuperset(text):
        return 0.0
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return 0.0
    numbers = []
    for node in ast.walk(tree):  # iterative: a long chain cannot blow the stack here
        if not isinstance(node, _COUNTDOWN_NODES):
            return 0.0
        if isinstance(node, ast.Constant):
            if type(node.value) is not int:
                return 0.0
            numbers.append(node.value)
    if Counter(numbers) != Counter(gold["numbers"]):
        return 0.0
    try:
        value = _evaluate(tree.body)
    except (ZeroDivisionError, RecursionError):  # a chain of thousands of numbers is too deep
        return 0.0
    return 1.0 if abs(value - gold["target"]) <= 1e-9 else 0.0


def overlong_penalty(length: int, max_len: int, buffer: int) -> float:
    """DAPO's soft overlong punishment (Yu et al. 2025, "DAPO", eq. 13).

    With ``L_max = max_len`` and ``L_cache = buffer``::

        R(L) = 0                               if L <= L_max - L_cache
             = ((L_max - L_cache) - L) / L_cache  if L_max - L_cache < L <= L_max
             = -1                              if L > L_max

    It is added to the accuracy reward. ``buffer=0`` is a hard cut at ``max_len``.

    >>> overlong_penalty(80, 100, 20), overlong_penalty(90, 100, 20), overlong_penalty(100, 100, 20), overlong_penalty(101, 100, 20)
    (0.0, -0.5, -1.0, -1.0)
    """
    if buffer < 0 or buffer > max_len:
        raise ValueError(f"overlong buffer must be in [0, max_len={max_len}], got {buffer}")
    if length <= max_len - buffer:
        return 0.0
    if length > max_len:
        return -1.0
    return ((max_len - buffer) - length) / buffer
