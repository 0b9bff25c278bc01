"""``r1lite chat``: talk to a model — a GGUF on llama.cpp or a PyTorch model — with the thinking shown
dimmed and the answer plain, and an optional thinking budget (budget forcing closes the thinking
and lets the model answer)."""

from __future__ import annotations

from r1lite.edge.backends import Backend, open_model
from r1lite.engine import Request, Sampling
from r1lite.engine.engine import THINK_CLOSE, THINK_OPEN
from r1lite.errors import UsageError


class ThoughtPrinter:
    """Streams text to a console, the part inside ``<think>…</think>`` dimmed with the tags hidden
    on a terminal; elsewhere (a pipe, a log) the text as it is, tags included, so a script can
    tell the thinking from the answer. A tag split across deltas is held back until it is whole."""

    def __init__(self, console, thinking: bool):
        self.console, self.thinking, self.pending = console, thinking, ""
        self.answer = ""
        self.raw = not console.is_terminal
        if self.raw and thinking:
            console.print(THINK_OPEN, end="", highlight=False, markup=False)

    def feed(self, text: str, final: bool = False) -> None:
        self.pending += text
        while True:
            tag = THINK_CLOSE if self.thinking else THINK_OPEN
            at = self.pending.find(tag)
            if at < 0:
                break
            self._out(self.pending[:at])
            if self.raw:
                self.console.print(tag, end="", highlight=False, markup=False)
            self.pending, self.thinking = self.pending[at + len(tag):], not self.thinking
        keep = 0 if final else next((n for n in range(len(tag) - 1, 0, -1) if self.pending.endswith(tag[:n])), 0)
        self._out(self.pending[:len(self.pending) - keep])
        self.pending = self.pending[len(self.pending) - keep:]

    def _out(self, text: str) -> None:
        if not text:
            return
        if not self.thinking:
            self.answer += text
        self.console.print(text, end="", style="dim" if self.thinking else None, highlight=False, markup=False)


def reply(backend: Backend, messages: list[dict], sampling: Sampling, budget: int | None, seed: int, console) -> str:
    """Stream one answer to ``messages``; return the answer's text (the thinking left out)."""
    ids, thinking = backend.prompt(messages)
    engine = backend.engine
    engine.add(Request(ids, sampling, seed=seed, stream=True, max_thinking_tokens=budget, thinking=thinking))
    printer = ThoughtPrinter(console, thinking)
    while engine.has_work:
        for delta in engine.step():
            printer.feed(delta.text, final=delta.finish is not None)
    console.print()
    return printer.answer.strip()


def run(args, console) -> int:
    if args.max_thinking_tokens is not None and args.max_thinking_tokens < 0:
        raise UsageError(f"--max-thinking-tokens {args.max_thinking_tokens}: give a number of tokens >= 0 (omit it for no limit)")
    backend = open_model(args.model, args.device, args.dtype, max_rows=4)
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p)
    history: list[dict] = []
    if args.prompt is not None:
        reply(backend, [{"role": "user", "content": args.prompt}], sampling, args.max_thinking_tokens, args.seed, console)
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
        answer = reply(backend, history, sampling, args.max_thinking_tokens, args.seed + turn, console)
        history.append({"role": "assistant", "content": answer})  # the thinking is not sent back (DeepSeek's advice)
        turn += 1
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="talk to a model (a GGUF file or a PyTorch model), thinking dimmed",
                       description="Interactive, or one answer with --prompt. The thinking is shown dimmed, the answer plain.")
    p.add_argument("--model", required=True, help="FILE.gguf (llama.cpp), default, tiny, a run directory or a model directory")
    p.add_argument("--prompt", help="answer this once and exit (default: interactive)")
    p.add_argument("--max-thinking-tokens", type=int, default=None,
                   help="thinking budget in tokens, the forced close included (default: no limit)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="token budget of an answer, thinking included (default: 512)")
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature, 0 = greedy (default: 0.6, R1's)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default: 0.95, R1's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the first answer (each later turn adds 1)")
    p.add_argument("--device", default="auto", help="PyTorch models: auto, cpu or cuda[:N]")
    p.add_argument("--dtype", default="auto", help="PyTorch models: auto, bf16 or fp32")
