"""The thinking block: its tags, the sentence and close that budget forcing writes when a
sequence's thinking reaches its budget, and :class:`ThinkSplit` (streamed text cut at the block,
for ``chat`` and ``serve`` alike)."""

from __future__ import annotations

from dataclasses import dataclass, field

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
CLOSE_SENTENCE = "\n\nI have to give the answer now."
"""Budget forcing: when a sequence's thinking reaches its budget, the engine writes this sentence
and ``CLOSE_THINKING`` for it and lets the model answer. Forcing starts early enough that the
thinking, the forced tokens included, stays within the budget; a budget shorter than the sentence
and the close gets the close alone (a budget shorter than the close cannot be kept: the close is
still written)."""
CLOSE_THINKING = "\n</think>\n\n"


@dataclass
class ThinkSplit:
    """Streamed text cut at its thinking block, for ``chat`` and ``serve`` alike: :meth:`feed`
    returns the pieces that became certain, in order, as ``(kind, text)``: ``thinking`` (inside
    ``<think>…</think>``), ``answer`` (outside) or ``tag`` (a tag, as written). Text that could be
    the start of a tag is held back until it is whole. One block per answer: a ``<think>`` after
    the block opened is answer text.

    >>> split = ThinkSplit()
    >>> split.feed("Sure. <thi") + split.feed("nk>a b</th") + split.feed("ink> 42", final=True)
    [('answer', 'Sure. '), ('tag', '<think>'), ('thinking', 'a b'), ('tag', '</think>'), ('answer', ' 42')]
    """

    thinking: bool = False
    """Inside the block (True from the start when the prompt pre-filled ``<think>``)."""
    marks: tuple[str, ...] = ()
    """More tags cut out of the answer (R1's ``<answer>`` and ``</answer>``)."""
    opened: bool = False
    """The block opened: a later ``<think>`` is text."""
    closed: bool = False
    """The block closed."""
    pending: str = field(default="", repr=False)
    """Text held back: it could be the start of a tag."""

    def __post_init__(self) -> None:
        self.opened = self.opened or self.thinking

    def tags(self) -> list[str]:
        """The tags that can come next."""
        if self.thinking:
            return [THINK_CLOSE]
        return ([] if self.opened else [THINK_OPEN]) + list(self.marks)

    def feed(self, text: str, final: bool = False) -> list[tuple[str, str]]:
        """Add generated text; return the pieces that became certain (all of them when ``final``)."""
        pieces: list[tuple[str, str]] = []
        self.pending += text
        while hits := sorted((self.pending.find(t), t) for t in self.tags() if t in self.pending):
            at, tag = hits[0]
            pieces += [(self.kind, self.pending[:at]), ("tag", tag)]
            self.pending = self.pending[at + len(tag):]
            if tag == THINK_CLOSE:
                self.thinking, self.closed = False, True
            elif tag == THINK_OPEN:
                self.thinking = self.opened = True
        keep = 0 if final else max((n for t in self.tags() for n in range(len(t) - 1, 0, -1)
                                    if self.pending.endswith(t[:n])), default=0)
        pieces.append((self.kind, self.pending[:len(self.pending) - keep]))
        self.pending = self.pending[len(self.pending) - keep:]
        return [(kind, piece) for kind, piece in pieces if piece]

    @property
    def kind(self) -> str:
        return "thinking" if self.thinking else "answer"
