"""``r1lite serve``: any r1lite model — a PyTorch model or a GGUF — behind an OpenAI-compatible API
with the reasoning returned separately, a thinking budget, a content guard, limits, and a web chat
page. Modules: ``app`` (routes, limits, the request's life), ``worker`` (the engine's step loop in
a thread), ``reasoning`` (the reasoning/answer split, the budget controls), ``guard`` (policy,
PII redaction, judge), ``schema`` (the request bodies), ``responses`` (``/v1/responses`` over the chat
completion's steps), ``page.html``, ``guard_policy.yaml``.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

from r1lite.config import opt
from r1lite.errors import UsageError
from r1lite.packaged import named

REASONING_FIELDS = ("reasoning_content", "reasoning", "both")


@dataclass
class ServeOptions:
    """``r1lite serve``: flags are these fields (the app's own :class:`r1lite.serve.app.ServeConfig`
    is built from them)."""

    model: str = opt("", "FILE.gguf, default, gemma3-270m, tiny, tiny-gemma3, a run directory or a model directory")
    served_model_name: str = opt("", "the name clients send as 'model' (\"\" = the model's name)")
    host: str = opt("127.0.0.1", "address to listen on (127.0.0.1 = this machine only)")
    port: int = opt(8000, "port to listen on")
    api_key: str = opt("", "bearer key for /v1/* and /metrics (\"\" = --api-key-file, then $R1LITE_API_KEY; none = open)")
    api_key_file: str = opt("", "a file whose first line is the bearer key (off the command line, which every local user can read)")
    max_body_bytes: int = opt(1 << 20, "largest request body in bytes (larger: 413)")
    max_concurrency: int = opt(32, "requests decoding at once, one batch")
    max_queue: int = opt(64, "requests waiting beyond those (more: 429)")
    request_timeout: float = opt(300.0, "seconds a request may take (then 504)")
    max_tokens_cap: int = opt(1024, "largest max_tokens a request may ask for")
    max_new_tokens: int = opt(256, "token budget of a request that names no max_tokens", old=("default_max_tokens",))
    max_messages: int = opt(64, "most messages in a request")
    max_thinking_tokens: int | None = opt(None, "thinking budget when a request names none (unset = no limit; 0 = no thinking)")
    template: str = opt("auto", "prompt template: chat (the model's chat template), r1_zero (the R1 paper's plain "
                                "template for base models) or auto (a run's or a GGUF's own; r1_zero for gemma3-270m "
                                "and tiny-gemma3, chat otherwise)")
    reasoning_field: str = opt("both", "where chat completions put the thinking: reasoning_content (DeepSeek's), "
                                       "reasoning (vLLM's and Ollama's) or both")
    guard: str = opt("on", "content guard on input and output: on or off")
    guard_policy: str = opt("", "the guard's policy YAML (\"\" = r1lite's own)")
    guard_judge: str = opt("", "an OpenAI-compatible endpoint running Llama Guard, its base URL (\"\" = no judge)")
    guard_judge_model: str = opt("llama-guard", "the judge's model name")
    temperature: float = opt(0.6, "when a request names none (0.6 is R1's)")
    top_p: float = opt(0.95, "when a request names none (0.95 is R1's)")
    log_prompts: bool = opt(False, "print each request's messages (off: prompts are not logged)")
    api_docs: bool = opt(False, "serve /docs, /redoc and /openapi.json (the docs pages load scripts from a CDN)")
    device: str = opt("auto", "PyTorch models: auto, cpu or cuda[:N]")
    dtype: str = opt("auto", "PyTorch models: auto, bf16, fp32 or int8 (CPU: weights as llama.cpp's Q8_0, a quarter of fp32's bytes per token)")

    def __post_init__(self):
        if not self.model:
            raise UsageError("serve needs --model (FILE.gguf, default, gemma3-270m, tiny, tiny-gemma3, a run directory "
                             "or a model directory)")
        for key in ("max_body_bytes", "max_concurrency", "max_tokens_cap", "max_new_tokens", "max_messages"):
            if getattr(self, key) < 1:
                raise UsageError(f"--{key.replace('_', '-')} {getattr(self, key)}: must be >= 1")
        if self.max_queue < 0 or self.request_timeout <= 0 or (self.max_thinking_tokens is not None and self.max_thinking_tokens < 0):
            raise UsageError("--max-queue must be >= 0, --request-timeout > 0 and --max-thinking-tokens >= 0")
        if self.max_new_tokens > self.max_tokens_cap:
            raise UsageError(f"--max-new-tokens {self.max_new_tokens} is over --max-tokens-cap {self.max_tokens_cap}")
        if self.reasoning_field not in REASONING_FIELDS:
            raise UsageError(f"--reasoning-field {self.reasoning_field}: use {', '.join(REASONING_FIELDS[:-1])} or {REASONING_FIELDS[-1]}")
        if self.guard not in ("on", "off"):
            raise UsageError(f"--guard {self.guard}: use on or off")
        if self.template not in ("auto", "chat", "r1_zero"):
            raise UsageError(f"--template {self.template}: use auto, chat or r1_zero")


def api_key(given: str, path: str) -> str | None:
    """The bearer key: ``--api-key``, the first line of ``--api-key-file``, or ``$R1LITE_API_KEY``; None = open."""
    if given and path:
        raise UsageError("--api-key and --api-key-file both given: pass one")
    if path:
        try:
            key = Path(path).expanduser().read_text().splitlines()[:1]
        except OSError as e:
            raise UsageError(f"--api-key-file {path}: cannot read it ({e.strerror})") from None
        if not key or not key[0].strip():
            raise UsageError(f"--api-key-file {path}: the first line is empty; write the key there")
        return key[0].strip()
    return given or os.environ.get("R1LITE_API_KEY") or None


def build(opts: ServeOptions):
    """The app and its config for ``serve``'s options (tests build it in-process)."""
    from r1lite.edge.backends import open_model
    from r1lite.serve.app import ServeConfig, create_app
    from r1lite.serve.guard import DEFAULT_POLICY, Guard, GuardPolicy, Judge
    from r1lite.serve.worker import Worker

    guard = None
    if opts.guard == "on":
        judge = Judge(opts.guard_judge, opts.guard_judge_model) if opts.guard_judge else None
        guard = Guard(GuardPolicy(opts.guard_policy or DEFAULT_POLICY), judge)
        if judge is None:  # AnswerGuard.early reads it: compiled now (~1 s), not in the first answer's wait
            guard.policy.partial
    # the engine's own thread opens the model (see Worker: one thread runs the parallel work)
    worker = Worker(None, opts.max_concurrency, opts.max_queue,
                    load=lambda: open_model(opts.model, opts.device, opts.dtype, max_rows=opts.max_concurrency,
                                            template=opts.template))
    try:
        backend = worker.loaded_backend()
    except BaseException:
        worker.stop()
        raise
    name = opts.served_model_name or (Path(opts.model).name if not named(opts.model) else opts.model)
    cfg = ServeConfig(model_name=name, api_key=api_key(opts.api_key, opts.api_key_file),
                      max_body_bytes=opts.max_body_bytes, max_concurrency=opts.max_concurrency, max_queue=opts.max_queue,
                      request_timeout=opts.request_timeout, max_tokens_cap=opts.max_tokens_cap,
                      default_max_tokens=opts.max_new_tokens, max_messages=opts.max_messages,
                      max_thinking_tokens=opts.max_thinking_tokens, reasoning_field=opts.reasoning_field,
                      temperature=opts.temperature, top_p=opts.top_p, log_prompts=opts.log_prompts,
                      api_docs=opts.api_docs)
    return create_app(backend, cfg, guard, worker), cfg


def uvicorn_config(app, host: str, port: int, header_seconds: float = 10.0, **kw):
    """uvicorn's settings for the app: a request's headers must be whole within ``header_seconds``
    of the connection opening (or of its last response) and within 16 KiB (h11's limit on an
    incomplete event); an idle keep-alive connection closes after 5 s; the body's own deadline is
    ``ServeConfig.body_timeout`` (the app's front door)."""
    from functools import partial

    import uvicorn

    from r1lite.serve.app import HeaderTimeout

    return uvicorn.Config(app, host=host, port=port, http=partial(HeaderTimeout, header_seconds=header_seconds),
                          timeout_keep_alive=5, h11_max_incomplete_event_size=16 * 1024, **kw)


def run(opts: ServeOptions, console) -> int:
    import uvicorn

    app, cfg = build(opts)
    console.print(f"r1lite serve: {cfg.model_name} on http://{opts.host}:{opts.port}  "
                  f"(key {'required' if cfg.api_key else 'not set: open'}, guard {opts.guard})")
    stopped = []
    # uvicorn handles SIGTERM (stop admitting, drain) and then re-raises it to the handler that was
    # there before: this one, so a drained server exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    uvicorn.Server(uvicorn_config(app, opts.host, opts.port, log_level="warning",
                                  timeout_graceful_shutdown=int(opts.request_timeout))).run()
    if stopped:
        console.print("r1lite serve: stopped on SIGTERM after draining")
    return 0
