"""The reasoning/answer split of a streamed completion, and the thinking budget a request asks for.

DeepSeek's API convention: ``reasoning_content`` carries the thinking (the text inside
``<think>…</think>``), ``content`` only the answer. A prompt that pre-fills ``<think>`` starts the
split inside the thinking (the opener is never in the output). For a run in the R1 format the
answer is the inside of its ``<answer>…</answer>`` block: the tags are markup and are left out.
A thinking block that never closes is the answer after all (``Split.finish`` says so), so a
client never gets an empty answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from r1lite.errors import UsageError

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"

EFFORT_BUDGETS = {"none": 0, "minimal": 16, "low": 64, "medium": 256, "high": 1024}
"""``reasoning_effort`` → thinking budget in tokens."""


@dataclass
class Split:
    """Feeds on generated text, returns (reasoning, content) increments. Text that could be the
    start of a tag is held back until it is whole."""

    thinking: bool = False
    """Inside a thinking block (True from the start when the prompt pre-filled ``<think>``)."""
    answer_tags: bool = False
    """Leave ``<answer>``/``</answer>`` out of the content (R1-format runs)."""
    reasoning: str = ""
    content: str = ""
    closed: bool = False
    """A thinking block was closed."""
    opened: bool = False
    _pending: str = field(default="", repr=False)

    def __post_init__(self):
        self.opened = self.opened or self.thinking

    def feed(self, text: str, final: bool = False) -> tuple[str, str]:
        """Add generated text; return the (reasoning, content) text that became certain."""
        out_r, out_c = [], []
        self._pending += text
        while self._pending:
            tags = [THINK_CLOSE] if self.thinking else ([THINK_OPEN] if not self.opened else []) + (
                [ANSWER_OPEN, ANSWER_CLOSE] if self.answer_tags else [])
            hits = [(self._pending.find(t), t) for t in tags if t in self._pending]
            if hits:
                at, tag = min(hits)
                (out_r if self.thinking else out_c).append(self._pending[:at])
                self._pending = self._pending[at + len(tag):]
                if tag == THINK_CLOSE:
                    self.thinking, self.closed = False, True
                elif tag == THINK_OPEN:
                    self.thinking = self.opened = True
                continue
            keep = 0 if final else max((n for t in tags for n in range(len(t) - 1, 0, -1) if self._pending.endswith(t[:n])),
                                       default=0)
            (out_r if self.thinking else out_c).append(self._pending[:len(self._pending) - keep])
            self._pending = self._pending[len(self._pending) - keep:]
            break
        r, c = "".join(out_r), "".join(out_c)
        self.reasoning += r
        self.content += c
        return r, c

    def finish(self) -> str:
        """At the end of generation: when a thinking block opened and never closed, its text is the
        answer (returned, and moved to ``content``); otherwise ""."""
        self.feed("", final=True)
        if self.opened and not self.closed and self.reasoning:
            moved, self.reasoning = self.reasoning, ""
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
