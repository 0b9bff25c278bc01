"""``r1lite chat``: talk to a model — a GGUF on llama.cpp or a PyTorch model — with the thinking shown
dimmed and the answer plain, and an optional thinking budget (budget forcing closes the thinking
and lets the model answer)."""

from __future__ import annotations

from dataclasses import dataclass

from r1lite.config import opt
from r1lite.edge.backends import Backend, open_model
from r1lite.engine import Request, Sampling
from r1lite.engine.engine import THINK_OPEN, ThinkSplit
from r1lite.engine.sampling import check_budget
from r1lite.errors import UsageError


class ThoughtPrinter:
    """Streams text to a console, the part inside ``<think>…</think>`` dimmed with the tags hidden
    on a terminal; elsewhere (a pipe, a log) the text as it is, tags included, so a script can
    tell the thinking from the answer. The cut is the engine's :class:`ThinkSplit` (the server's
    too): a tag split across deltas is held back until it is whole."""

    def __init__(self, console, thinking: bool):
        self.console, self.split = console, ThinkSplit(thinking)
        self.answer = ""
        self.raw = not console.is_terminal
        if self.raw and thinking:
            console.print(THINK_OPEN, end="", highlight=False, markup=False)

    def feed(self, text: str, final: bool = False) -> None:
        for kind, piece in self.split.feed(text, final):
            if kind == "answer":
                self.answer += piece
            if kind != "tag" or self.raw:
                self.console.print(piece, end="", style="dim" if kind == "thinking" else None, highlight=False, markup=False)


def reply(backend: Backend, messages: list[dict], sampling: Sampling, budget: int | None, seed: int, console) -> str:
    """Stream one answer to ``messages``; return the answer's text (the thinking left out). The
    conversation and ``sampling.max_new_tokens`` must fit the model's context."""
    ids, thinking = backend.prompt(messages)
    check_budget(sampling.max_new_tokens, backend.context, len(ids))
    engine = backend.engine
    engine.add(Request(ids, sampling, seed=seed, stream=True, max_thinking_tokens=budget, thinking=thinking))
    printer = ThoughtPrinter(console, thinking)
    while engine.has_work:
        for delta in engine.step():
            printer.feed(delta.text, final=delta.finish is not None)
    console.print()
    return printer.answer.strip()


@dataclass
class ChatConfig:
    """``r1lite chat``: flags are these fields."""

    model: str = opt("", "FILE.gguf (llama.cpp), default, tiny, a run directory or a model directory")
    prompt: str = opt("", "answer this once and exit (\"\" = interactive)")
    max_thinking_tokens: int | None = opt(None, "thinking budget in tokens, the forced close included (unset = no limit)")
    max_new_tokens: int = opt(512, "token budget of an answer, thinking included")
    temperature: float = opt(0.6, "sampling temperature, 0 = greedy (0.6 is R1's)")
    top_p: float = opt(0.95, "nucleus sampling (0.95 is R1's)")
    seed: int = opt(0, "seed of the first answer (each later turn adds 1)")
    device: str = opt("auto", "PyTorch models: auto, cpu or cuda[:N]")
    dtype: str = opt("auto", "PyTorch models: auto, bf16 or fp32")

    def __post_init__(self):
        if not self.model:
            raise UsageError("chat needs --model (FILE.gguf, default, tiny, a run directory or a model directory)")
        if self.max_thinking_tokens is not None and self.max_thinking_tokens < 0:
            raise UsageError(f"--max-thinking-tokens {self.max_thinking_tokens}: give a number of tokens >= 0 (omit it for no limit)")


def run(cfg: ChatConfig, console) -> int:
    backend = open_model(cfg.model, cfg.device, cfg.dtype, max_rows=4)
    check_budget(cfg.max_new_tokens, backend.context)  # before the first question, not after it
    sampling = Sampling(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p)
    history: list[dict] = []
    if cfg.prompt:
        reply(backend, [{"role": "user", "content": cfg.prompt}], sampling, cfg.max_thinking_tokens, cfg.seed, console)
        return 0
    console.print(f"r1lite chat · {backend.name} on {backend.kind} · an empty line or Ctrl-D ends", style="bold")
    turn = 0
    while True:
        try:
            text = console.input("[bold]you>[/] ").strip()
        except EOFError:
            break
        if not text:
            break
        history.append({"role": "user", "content": text})
        answer = reply(backend, history, sampling, cfg.max_thinking_tokens, cfg.seed + turn, console)
        history.append({"role": "assistant", "content": answer})  # the thinking is not sent back (DeepSeek's advice)
        turn += 1
    return 0
