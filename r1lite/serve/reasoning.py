"""The reasoning/answer split of a streamed completion, and the thinking budget a request asks for.

DeepSeek's API convention: ``reasoning_content`` carries the thinking (the text inside
``<think>…</think>``), ``content`` only the answer. A prompt that pre-fills ``<think>`` starts the
split inside the thinking (the opener is never in the output). For a run in the R1 format the
answer is the inside of its ``<answer>…</answer>`` block: the tags are markup and are left out.
A thinking block that never closes is the answer after all (``Split.finish`` says so), so a
client never gets an empty answer; except for structured output, whose answer is JSON or nothing. The cut itself is the engine's :class:`ThinkSplit`, the one
``r1lite chat`` uses too.
"""

from __future__ import annotations

from dataclasses import dataclass

from r1lite.engine import ThinkSplit
from r1lite.errors import UsageError
from r1lite.rewards import ANSWER_CLOSE, ANSWER_OPEN

EFFORT_BUDGETS = {"none": 0, "minimal": 16, "low": 64, "medium": 256, "high": 1024}
"""``reasoning_effort`` → thinking budget in tokens."""


class Split:
    """Feeds on generated text, returns (reasoning, content) increments, and counts the reasoning
    tokens: the tokens generated while inside the thinking block (its closing tag included), from
    the token ids each piece of text came from.

    >>> split = Split(thinking=True)
    >>> split.feed("a b</th", tokens=3), split.feed("ink> 42", final=True, tokens=2), split.reasoning_tokens
    (('a b', ''), ('', ' 42'), 5)
    """

    def __init__(self, thinking: bool = False, answer_tags: bool = False, opened: bool = False, closed: bool = False,
                 structured: bool = False):
        self.cut = ThinkSplit(thinking, (ANSWER_OPEN, ANSWER_CLOSE) if answer_tags else (), opened, closed)
        self.reasoning = ""
        self.content = ""
        self.reasoning_tokens = 0
        self.structured = structured
        """The answer is JSON (structured output): the whitespace before it (after ``</think>``) is
        left out, so ``content`` is exactly the JSON, and thinking that never closed stays reasoning."""

    @property
    def thinking(self) -> bool:
        """Inside the thinking block now."""
        return self.cut.thinking

    def feed(self, text: str, final: bool = False, tokens: int = 0) -> tuple[str, str]:
        """Add generated text (``tokens``: how many token ids it came from); return the
        (reasoning, content) text that became certain."""
        if self.cut.thinking:
            self.reasoning_tokens += tokens
        pieces = self.cut.feed(text, final)
        r = "".join(piece for kind, piece in pieces if kind == "thinking")
        c = "".join(piece for kind, piece in pieces if kind == "answer")
        if self.structured and not self.content:
            c = c.lstrip()
        self.reasoning += r
        self.content += c
        return r, c

    def finish(self) -> str:
        """At the end of generation: when a thinking block opened and never closed, its text is the
        answer (returned, and moved to ``content``; no token was reasoning after all); otherwise ""."""
        self.feed("", final=True)
        if self.cut.opened and not self.cut.closed and self.reasoning and not self.structured:
            moved, self.reasoning, self.reasoning_tokens = self.reasoning, "", 0
            self.content += moved
            return moved
        return ""


@dataclass(frozen=True)
class Budget:
    tokens: int | None
    """Thinking tokens allowed (None = no limit); 0 = no thinking at all."""
    source: str
    """Which request field decided it (for logs and tests)."""


def thinking_budget(body: dict, default: int | None) -> Budget:
    """The thinking budget from any control clients send today; the first present wins:
    ``max_thinking_tokens`` (r1lite), ``thinking_budget_tokens`` (llama.cpp),
    ``thinking_token_budget`` (vLLM), ``reasoning_effort`` (OpenAI: :data:`EFFORT_BUDGETS`),
    ``thinking: {type: disabled}`` (DeepSeek), ``chat_template_kwargs: {enable_thinking: false}``
    (Qwen3 templates); else the server's default.

    >>> thinking_budget({"reasoning_effort": "low"}, None), thinking_budget({"thinking": {"type": "disabled"}}, 99).tokens
    (Budget(tokens=64, source='reasoning_effort'), 0)
    """
    for key in ("max_thinking_tokens", "thinking_budget_tokens", "thinking_token_budget"):
        value = body.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < -1:
                raise UsageError(f"'{key}' must be an integer >= 0 (or -1 for no limit), got {value!r}")
            return Budget(None if value == -1 else value, key)
    effort = body.get("reasoning_effort")
    if effort is not None:
        if effort not in EFFORT_BUDGETS:
            raise UsageError(f"'reasoning_effort' must be one of {', '.join(EFFORT_BUDGETS)}, got {effort!r}")
        return Budget(EFFORT_BUDGETS[effort], "reasoning_effort")
    thinking = body.get("thinking")
    if thinking is not None:
        kind = thinking.get("type") if isinstance(thinking, dict) else None
        if kind not in ("enabled", "disabled"):
            raise UsageError(f"'thinking' must be {{\"type\": \"enabled\"}} or {{\"type\": \"disabled\"}}, got {thinking!r}")
        if kind == "disabled":
            return Budget(0, "thinking")
    kwargs = body.get("chat_template_kwargs")
    if isinstance(kwargs, dict) and kwargs.get("enable_thinking") is False:
        return Budget(0, "chat_template_kwargs.enable_thinking")
    return Budget(default, "server default")
