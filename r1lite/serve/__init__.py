"""``r1lite serve``: any r1lite model — a PyTorch model or a GGUF — behind an OpenAI-compatible API
with the reasoning returned separately, a thinking budget, a content guard, limits, and a web chat
page. Modules: ``app`` (routes, limits, the request's life), ``worker`` (the engine's step loop in
a thread), ``reasoning`` (the reasoning/answer split, the budget controls), ``guard`` (policy,
PII redaction, judge), ``schema`` (the request body), ``page.html``, ``guard_policy.yaml``.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from r1lite.errors import UsageError


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="an OpenAI-compatible server with reasoning_content, a thinking budget and a guard",
                       description="Serve a model (FILE.gguf on llama.cpp, or default, tiny, a run directory, a model "
                                   "directory on PyTorch) at /v1/chat/completions, with a chat page at /.")
    p.add_argument("--model", required=True, help="FILE.gguf, default, tiny, a run directory or a model directory")
    p.add_argument("--served-model-name", help="the name clients send as 'model' (default: the model's name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="bearer key for /v1/* and /metrics (default: $R1LITE_API_KEY; none = open)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body (default: 1 MiB; larger: 413)")
    p.add_argument("--max-concurrency", type=int, default=32, help="requests decoding at once, one batch (default: 32)")
    p.add_argument("--max-queue", type=int, default=64, help="requests waiting beyond those (default: 64; more: 429)")
    p.add_argument("--request-timeout", type=float, default=300.0, help="seconds a request may take (default: 300; then 504)")
    p.add_argument("--max-tokens-cap", type=int, default=1024, help="largest max_tokens a request may ask for (default: 1024)")
    p.add_argument("--default-max-tokens", type=int, default=256, help="max_tokens when a request names none (default: 256)")
    p.add_argument("--max-messages", type=int, default=64, help="most messages in a request (default: 64)")
    p.add_argument("--max-thinking-tokens", type=int, default=None,
                   help="thinking budget when a request names none (default: no limit; 0 = no thinking)")
    p.add_argument("--reasoning-field", choices=("reasoning_content", "both"), default="reasoning_content",
                   help="'both' adds vLLM's and Ollama's 'reasoning' beside DeepSeek's 'reasoning_content'")
    p.add_argument("--guard", choices=("on", "off"), default="on", help="content guard on input and output (default: on)")
    p.add_argument("--guard-policy", type=Path, default=None, help="the guard's policy YAML (default: r1lite's own)")
    p.add_argument("--guard-judge", default=None, help="an OpenAI-compatible endpoint running Llama Guard (base URL)")
    p.add_argument("--guard-judge-model", default="llama-guard", help="the judge's model name (default: llama-guard)")
    p.add_argument("--temperature", type=float, default=0.6, help="when a request names none (default: 0.6, R1's)")
    p.add_argument("--top-p", type=float, default=0.95, help="when a request names none (default: 0.95, R1's)")
    p.add_argument("--log-prompts", action="store_true", help="print each request's messages (default: prompts are not logged)")
    p.add_argument("--device", default="auto", help="PyTorch models: auto, cpu or cuda[:N]")
    p.add_argument("--dtype", default="auto", help="PyTorch models: auto, bf16 or fp32")


def build(args):
    """The app for parsed ``serve`` flags (tests build it in-process)."""
    from r1lite.edge.backends import open_model
    from r1lite.serve.app import ServeConfig, create_app
    from r1lite.serve.guard import DEFAULT_POLICY, Guard, Judge, Policy

    for flag in ("max_body_bytes", "max_concurrency", "max_tokens_cap", "default_max_tokens", "max_messages"):
        if getattr(args, flag) < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be >= 1")
    if args.max_queue < 0 or args.request_timeout <= 0 or (args.max_thinking_tokens is not None and args.max_thinking_tokens < 0):
        raise UsageError("--max-queue must be >= 0, --request-timeout > 0 and --max-thinking-tokens >= 0")
    if args.default_max_tokens > args.max_tokens_cap:
        raise UsageError(f"--default-max-tokens {args.default_max_tokens} is over --max-tokens-cap {args.max_tokens_cap}")
    guard = None
    if args.guard == "on":
        judge = Judge(args.guard_judge, args.guard_judge_model) if args.guard_judge else None
        guard = Guard(Policy(args.guard_policy or DEFAULT_POLICY), judge)
    backend = open_model(args.model, args.device, args.dtype, max_rows=args.max_concurrency)
    name = args.served_model_name or (Path(args.model).name if args.model not in ("default", "tiny") else args.model)
    cfg = ServeConfig(model_name=name, api_key=args.api_key or os.environ.get("R1LITE_API_KEY") or None,
                      max_body_bytes=args.max_body_bytes, max_concurrency=args.max_concurrency, max_queue=args.max_queue,
                      request_timeout=args.request_timeout, max_tokens_cap=args.max_tokens_cap,
                      default_max_tokens=args.default_max_tokens, max_messages=args.max_messages,
                      max_thinking_tokens=args.max_thinking_tokens, reasoning_field=args.reasoning_field,
                      temperature=args.temperature, top_p=args.top_p, log_prompts=args.log_prompts)
    return create_app(backend, cfg, guard), cfg


def run(args, console) -> int:
    import uvicorn

    app, cfg = build(args)
    console.print(f"r1lite serve: {cfg.model_name} on http://{args.host}:{args.port}  "
                  f"(key {'required' if cfg.api_key else 'not set: open'}, guard {args.guard})")
    stopped = []
    # uvicorn handles SIGTERM (stop admitting, drain) and then re-raises it to the handler that was
    # there before: this one, so a drained server exits 0 instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda signum, frame: stopped.append(signum))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=int(args.request_timeout))
    if stopped:
        console.print("r1lite serve: stopped on SIGTERM after draining")
    return 0
