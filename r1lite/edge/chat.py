"""``r1lite chat``: talk to a model — a GGUF on llama.cpp or a PyTorch model — with the thinking shown
dimmed and the answer plain, an optional thinking budget (budget forcing closes the thinking
and lets the model answer), and optionally answers held to a JSON schema (``--response-format``:
the thinking runs free, the answer is JSON)."""

from __future__ import annotations

from dataclasses import dataclass

from r1lite import prompts
from r1lite.config import opt
from r1lite.edge.backends import Backend, open_model
from r1lite.engine import Request, Sampling
from r1lite.engine.grammar import ANSWER_CLOSE, ANSWER_OPEN, Grammar, read_response_format
from r1lite.engine.sampling import check_budget
from r1lite.engine.thinking import CLOSE_THINKING, THINK_OPEN, ThinkSplit
from r1lite.errors import UsageError


class ThoughtPrinter:
    """Streams text to a console, the part inside ``<think>…</think>`` dimmed with the tags hidden
    on a terminal; elsewhere (a pipe, a log) the text as it is, tags included, so a script can
    tell the thinking from the answer. The cut is the engine's :class:`ThinkSplit` (the server's
    too): a tag split across deltas is held back until it is whole."""

    def __init__(self, console, thinking: bool, marks: tuple[str, ...] = ()):
        self.console, self.split = console, ThinkSplit(thinking, marks)
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


def think_first(tokenizer, ids: list[int], thinking: bool, budget: int | None) -> tuple[list[int], bool]:
    """A structured answer's prompt: with a budget other than 0 the model thinks first (``<think>``
    opened when the prompt does not open it); with 0, an opened block is closed empty, so the
    answer starts at the first token. Returns the ids and whether they leave ``<think>`` open."""
    if budget == 0:
        return (ids + tokenizer.encode(CLOSE_THINKING, add_special_tokens=False), False) if thinking else (ids, False)
    return (ids, True) if thinking else (ids + tokenizer.encode(THINK_OPEN, add_special_tokens=False), True)


def reply(backend: Backend, messages: list[dict], sampling: Sampling, budget: int | None, seed: int, console,
          grammar: Grammar | None = None) -> str:
    """Stream one answer to ``messages``; return the answer's text (the thinking left out; with a
    ``grammar``, the JSON without its ``<answer>`` tags). The conversation and
    ``sampling.max_new_tokens`` must fit the model's context."""
    ids, thinking = backend.prompt(messages)
    if grammar is not None:
        ids, thinking = think_first(backend.tokenizer, ids, thinking, budget)
    check_budget(sampling.max_new_tokens, backend.context, len(ids))
    engine = backend.engine
    engine.add(Request(ids, sampling, seed=seed, stream=True, max_thinking_tokens=budget, thinking=thinking,
                       grammar=grammar))
    printer = ThoughtPrinter(console, thinking, (ANSWER_OPEN, ANSWER_CLOSE) if grammar is not None and grammar.answer_tags else ())
    while engine.has_work:
        for delta in engine.step():
            printer.feed(delta.text, final=delta.finish is not None)
    console.print()
    return printer.answer.strip()


@dataclass
class ChatConfig:
    """``r1lite chat``: flags are these fields."""

    model: str = opt("", "FILE.gguf (llama.cpp), default, gemma3-270m, tiny, tiny-gemma3, a run directory or a model directory")
    prompt: str = opt("", "answer this once and exit (\"\" = interactive)")
    max_thinking_tokens: int | None = opt(None, "thinking budget in tokens, the forced close included (unset = no limit)")
    max_new_tokens: int = opt(512, "token budget of an answer, thinking included")
    temperature: float = opt(0.6, "sampling temperature, 0 = greedy (0.6 is R1's)")
    top_p: float = opt(0.95, "nucleus sampling (0.95 is R1's)")
    seed: int = opt(0, "seed of the first answer (each later turn adds 1)")
    response_format: str = opt("", "SCHEMA.json: every answer is JSON held to this JSON schema, the thinking free "
                                    "(\"\" = free text)")
    template: str = opt("auto", "prompt template: chat, r1_zero (the R1 paper's plain template for base models) or auto "
                                "(a run's or a GGUF's own; r1_zero for gemma3-270m and tiny-gemma3, chat otherwise)")
    device: str = opt("auto", "PyTorch models: auto, cpu or cuda[:N]")
    dtype: str = opt("auto", "PyTorch models: auto, bf16, fp32 or int8 (CPU: weights as llama.cpp's Q8_0, a quarter of fp32's bytes per token)")

    def __post_init__(self):
        if not self.model:
            raise UsageError("chat needs --model (FILE.gguf, default, gemma3-270m, tiny, tiny-gemma3, a run directory "
                             "or a model directory)")
        if self.max_thinking_tokens is not None and self.max_thinking_tokens < 0:
            raise UsageError(f"--max-thinking-tokens {self.max_thinking_tokens}: give a number of tokens >= 0 (omit it for no limit)")
        if self.template != "auto":
            prompts.check_template(self.template, "r1")


def run(cfg: ChatConfig, console) -> int:
    response_format = read_response_format(cfg.response_format) if cfg.response_format else None
    backend = open_model(cfg.model, cfg.device, cfg.dtype, max_rows=4, template=cfg.template)
    check_budget(cfg.max_new_tokens, backend.context)  # before the first question, not after it
    sampling = Sampling(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                        stop=backend.stop)
    grammar = None
    if response_format is not None:
        grammar = backend.engine.compile(response_format, answer_tags=backend.format_name == "r1")
    history: list[dict] = []
    if cfg.prompt:
        reply(backend, [{"role": "user", "content": cfg.prompt}], sampling, cfg.max_thinking_tokens, cfg.seed, console, grammar)
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
        answer = reply(backend, history, sampling, cfg.max_thinking_tokens, cfg.seed + turn, console, grammar)
        history.append({"role": "assistant", "content": answer})  # the thinking is not sent back (DeepSeek's advice)
        turn += 1
    return 0
