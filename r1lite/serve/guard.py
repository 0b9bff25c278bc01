"""The content guard: Llama Guard 3's hazard categories (S1–S14) checked by a policy of patterns a
person can read and edit (``guard_policy.yaml``), PII redaction, and an optional judge model on any
OpenAI-compatible endpoint (Llama Guard on llama.cpp, Ollama or vLLM) whose verdict is parsed
strictly. Offline by default: nothing is downloaded. An answer is guarded as it streams, each new
sentence once (:class:`AnswerGuard`)."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from r1lite.errors import UsageError
from r1lite.serve.prefilter import FactorIndex, PatternSet

DEFAULT_POLICY = Path(__file__).with_name("guard_policy.yaml")
CODES = tuple(f"S{i}" for i in range(1, 15))
CONTEXT_CHARS = 512
"""The output guard reads each new sentence after this many characters of the answer before it, so
a pattern that spans a sentence boundary is still seen (the default policy's widest pattern with a
bounded width spans 251)."""
WHITESPACE = re.compile(r"\s")
EARLY_CHARS = 256
"""The output guard releases settled text before its sentence ends only this far into an answer,
and only before its first sentence ends: the first words come at once, and the partial scans
(each up to this long) stay a few per answer."""


@dataclass(frozen=True)
class Verdict:
    safe: bool
    code: str = ""
    """The category that blocked it (``S9``), "" when safe."""
    name: str = ""
    by: str = ""
    """``policy`` or ``judge``."""


SAFE = Verdict(True)


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum card numbers carry.

    >>> luhn_ok("4111111111111111"), luhn_ok("4111111111111112")
    (True, False)
    """
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


NEVER = re.compile(r"(?!)")
"""A pattern that matches nothing (a category with no patterns on one side)."""


def either(patterns: list[re.Pattern]) -> re.Pattern:
    """One pattern that matches where any of ``patterns`` does: one scan of the text instead of one
    per pattern (~390 patterns in the default policy). A pattern with a numbered backreference
    (``\\1``) would point at another pattern's group once joined: such patterns are refused.

    >>> either([re.compile("bomb", re.I), re.compile(r"pipe\\s+bomb", re.I)]).search("a PIPE bomb") is not None
    True
    """
    for p in patterns:
        if re.search(r"\\[1-9]|\(\?P=", p.pattern):
            raise UsageError(f"guard pattern {p.pattern!r}: backreferences are not supported (patterns are joined)")
    return re.compile("|".join(f"(?:{p.pattern})" for p in patterns), re.I) if patterns else NEVER


class GuardPolicy:
    """A compiled guard policy (see the YAML file for its format)."""

    def __init__(self, path: Path | str = DEFAULT_POLICY):
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise UsageError(f"--guard-policy {path}: cannot read it ({str(e).splitlines()[0]})") from None
        if not isinstance(data, dict) or not isinstance(data.get("categories"), dict):
            raise UsageError(f"--guard-policy {path}: expected a mapping with 'categories' (see {DEFAULT_POLICY.name})")
        self.path, self.refusal = path, data.get("refusal", "I can't help with that. ({code} {name})")
        self.categories = []
        for code, spec in data["categories"].items():
            if code not in CODES:
                raise UsageError(f"--guard-policy {path}: category '{code}' is not one of S1..S14")
            try:
                block = [re.compile(p, re.I) for p in spec.get("block") or []]
                allow = [re.compile(p, re.I) for p in spec.get("allow") or []]
            except re.error as e:
                raise UsageError(f"--guard-policy {path}: category {code}: bad pattern ({e})") from None
            self.categories.append((code, spec.get("name", code), PatternSet(block, either(block)),
                                    PatternSet(allow, either(allow))))
        self.index = FactorIndex(f for _, _, block, allow in self.categories for f in block.factors() + allow.factors())
        self.pii = {kind: re.compile(p) for kind, p in (data.get("pii") or {}).items()}

    def check(self, text: str, allowed: set[str] | None = None) -> Verdict:
        """The first category whose block patterns match and allow patterns do not. ``allowed``:
        the categories an allow pattern matched in earlier parts of the same text; the ones that
        match here join it (a text checked a part at a time gets the verdict of the whole)."""
        flat = " ".join(text.split())
        found = self.index.present(flat.lower()) if flat.isascii() else None
        allowed = set() if allowed is None else allowed
        for code, name, block, allow in self.categories:
            if code not in allowed and allow.search(flat, found):
                allowed.add(code)
            if code not in allowed and block.search(flat, found):
                return Verdict(False, code, name, "policy")
        return SAFE

    @functools.cached_property
    def partial(self):
        """Every block pattern as one pattern of the ``regex`` package (transformers depends on it),
        which can say where a match may begin that the end of a text cuts off; ``re`` cannot."""
        import regex

        joined = "|".join(f"(?:{p.pattern})" for _, _, block, _ in self.categories for _, p in block.patterns)
        return regex.compile(joined or "(?!)", regex.I)

    def settled(self, text: str, start: int = 0) -> int:
        """How many leading characters of ``text`` no block pattern can match any part of, whatever
        follows: those before the leftmost place where a match begins, or one that the end of the
        text cuts off (read, as :meth:`check` reads, with whitespace runs as one space). Text that
        is settled can be shown before its sentence is checked; the guard blocks no less.

        ``start``: this method's answer for a prefix of ``text`` (a stream's text so far). A place
        where a match of the longer text begins is one where a match of the prefix begins or is cut
        off, so none begins before it, and the search starts there: each token of a streamed answer
        scans its last words, not the whole answer (a scan of 83 characters took 3.3 ms against the
        policy's one pattern of every block pattern, on the serving thread, for every stream).

        >>> p = GuardPolicy()
        >>> text = "Okay, to build a pipe bo"  # "build a pipe bo" may go on as "build a pipe bomb"
        >>> text[:p.settled(text)]
        'Okay, to '
        >>> p.settled("Okay.")
        5
        >>> p.settled(text + "ok", p.settled(text)) == p.settled(text + "ok")
        True
        """
        words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]
        pos = 0  # where start is in the flattened text, a character early (the space before a word)
        for a, b in words:
            if b >= start:
                pos = max(0, pos + max(0, start - a) - 1)
                break
            pos += b - a + 1
        else:
            pos = max(0, pos - 1)
        m = self.partial.search(" ".join(text[a:b] for a, b in words), pos, partial=True)
        if m is None:
            return len(text)
        at = m.start()  # in the flattened text: words joined by one space
        for a, b in words:
            if at <= b - a:  # in this word, or on the space after it (then: the word's end)
                return a + at
            at -= b - a + 1
        return len(text)

    def redact(self, text: str) -> tuple[str, dict[str, int]]:
        """PII replaced by ``[REDACTED:kind]`` (card numbers only where their Luhn checksum holds)."""
        counts: dict[str, int] = {}

        def sub(kind: str):
            def replace(m: re.Match) -> str:
                if kind == "card" and not luhn_ok(re.sub(r"\D", "", m.group())):
                    return m.group()
                counts[kind] = counts.get(kind, 0) + 1
                return f"[REDACTED:{kind}]"
            return replace

        for kind in ("secret", "email", "card", "phone"):  # secrets first: a token can look like digits
            if kind in self.pii:
                text = self.pii[kind].sub(sub(kind), text)
        return text, counts

    def refusal_text(self, verdict: Verdict) -> str:
        return self.refusal.format(code=verdict.code, name=verdict.name)


def parse_llama_guard(text: str) -> Verdict:
    """Llama Guard's verdict, strictly: ``safe``, or ``unsafe`` and a line of comma-separated
    codes. Anything else is an error (a judge that says something else is not trusted).

    >>> parse_llama_guard("safe"), parse_llama_guard("\\n\\nunsafe\\nS9,S1").code
    (Verdict(safe=True, code='', name='', by=''), 'S9')
    """
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if lines == ["safe"]:
        return SAFE
    if len(lines) == 2 and lines[0] == "unsafe":
        codes = [c.strip() for c in lines[1].split(",")]
        if codes and all(c in CODES for c in codes):
            return Verdict(False, codes[0], "", "judge")
    raise ValueError(f"not a Llama Guard verdict: {text[:80]!r}")


class Judge:
    """A guard model behind an OpenAI-compatible chat endpoint (``/v1/chat/completions``)."""

    def __init__(self, url: str, model: str = "llama-guard", api_key: str | None = None, timeout: float = 30.0):
        self.url, self.model, self.api_key, self.timeout = url.rstrip("/"), model, api_key, timeout

    async def check(self, client, conversation: list[dict]) -> Verdict:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        r = await client.post(f"{self.url}/v1/chat/completions", headers=headers, timeout=self.timeout,
                              json={"model": self.model, "messages": conversation, "temperature": 0, "max_tokens": 16})
        r.raise_for_status()
        return parse_llama_guard(r.json()["choices"][0]["message"]["content"] or "")


class Guard:
    """The policy, the PII redaction and the optional judge, as the server uses them."""

    def __init__(self, policy: GuardPolicy, judge: Judge | None = None, names: dict[str, str] | None = None):
        self.policy, self.judge = policy, judge
        self.names = {code: name for code, name, _, _ in policy.categories} | (names or {})

    async def check(self, client, text: str, conversation: list[dict] | None = None,
                    allowed: set[str] | None = None) -> Verdict:
        """The policy's verdict (``allowed``: see :meth:`GuardPolicy.check`), then the judge's on
        ``conversation`` (default: ``text`` as the user's turn)."""
        verdict = self.policy.check(text, allowed)
        if verdict.safe and self.judge is not None:
            verdict = await self.judged(client, conversation or [{"role": "user", "content": text}])
        return verdict

    async def check_input(self, client, messages: list[dict]) -> Verdict:
        """The verdict on a request's conversation: the policy's on each of :func:`user_texts` (the
        first that blocks), then the judge's, once, on the user's turns joined as one user turn."""
        texts = user_texts(messages)
        for text in texts:
            verdict = self.policy.check(text)
            if not verdict.safe:
                return verdict
        if self.judge is None:
            return SAFE
        whole = texts[-1] if texts else ""  # the user turns joined
        return await self.judged(client, [{"role": "user", "content": whole}])

    async def judged(self, client, conversation: list[dict]) -> Verdict:
        """The judge's verdict on ``conversation``, named by the policy's category names."""
        try:
            verdict = await self.judge.check(client, conversation)
        except Exception as e:  # an unreachable or garbled judge fails closed, and says why
            return Verdict(False, "judge_error", f"the guard judge failed: {type(e).__name__}", "judge")
        if not verdict.safe:
            verdict = Verdict(False, verdict.code, self.names.get(verdict.code, verdict.code), "judge")
        return verdict


def user_texts(messages: list[dict]) -> list[str]:
    """What the input guard reads in a conversation: each user turn alone, the latest first (an
    ``allow`` phrase in one turn cannot let another turn through), then, last, all the user turns
    joined in order, the whole request (one split across turns is read as one text); each distinct
    text once, so a conversation is read at most twice over.

    >>> user_texts([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}])
    ['c', 'a', 'a\\nc']
    >>> user_texts([{"role": "system", "content": "s"}, {"role": "user", "content": "only"}])
    ['only']
    """
    turns = [m["content"] for m in messages if m["role"] == "user"]
    return list(dict.fromkeys([*reversed(turns), "\n".join(turns)] if turns else []))


def tail(text: str, size: int = CONTEXT_CHARS) -> str:
    """The end of ``text``: from a whitespace on (no word cut in two), at most ``size`` characters
    after it; all of ``text`` when it is that short.

    >>> tail("one two three", 9), tail("one two three", 20), tail("unbroken", 4)
    (' two three', 'one two three', '')
    """
    if len(text) <= size:
        return text
    cut = WHITESPACE.search(text, len(text) - size - 1)
    return text[cut.start():] if cut else ""


class AnswerGuard:
    """The output guard over one answer as it streams: each new piece (a sentence or more) is read
    once, after the :func:`tail` of the answer before it, and a category that an ``allow``
    pattern matched anywhere earlier in the answer stays allowed, so the policy blocks what it
    blocked when it re-read the whole answer at every sentence, with reads linear in the answer's
    length. The judge rates the same window as the assistant's turn (not the whole answer)."""

    def __init__(self, guard: Guard, client, prompt: str):
        self.guard, self.client, self.prompt = guard, client, prompt
        self.before = ""
        """The end of the answer checked so far."""
        self.allowed: set[str] = set()
        self.checked = False
        """Whether a piece was checked: the answer's first sentence has ended."""
        self.settled_at = ("", 0)
        """The last text :meth:`early` read and its settled characters."""

    def early(self, held: str) -> int:
        """How many leading characters of ``held``, the text after what was released, may be
        released before their sentence ends (:meth:`GuardPolicy.settled`): only within the answer's
        first sentence and :data:`EARLY_CHARS`, and never with a judge (it rates whole sentences).
        They count as checked (:meth:`released`)."""
        if self.guard.judge is not None or self.checked or len(self.before) + len(held) > EARLY_CHARS:
            return 0
        text = self.before + held
        start = self.settled_at[1] if text.startswith(self.settled_at[0]) else 0  # the text grew: scan from there
        self.settled_at = (text, self.guard.policy.settled(text, start))
        return max(0, self.settled_at[1] - len(self.before))

    def released(self, text: str) -> None:
        """``text`` went out as settled: it joins the answer before the next piece unchecked (no
        block pattern can match any part of it)."""
        self.before = tail(self.before + text)

    async def check(self, text: str) -> Verdict:
        """The verdict on the answer once ``text`` (the new piece) is added to it."""
        self.checked = True
        window = self.before + text
        self.before = tail(window)
        conversation = [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": window}]
        return await self.guard.check(self.client, window, conversation, self.allowed)
