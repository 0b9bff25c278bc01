"""The OpenAI-compatible app: ``POST /v1/chat/completions`` (JSON or SSE), ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus), ``GET /`` (the chat page).

A request's life: authenticate (bearer key, constant-time compare), check limits (body size, caps
on ``max_tokens`` and messages, unsupported parameters), redact PII and guard the input, render the
prompt as the run renders it, apply the thinking budget, join the engine's running batch (the
worker), split the output into ``reasoning_content`` and ``content``, guard the output a sentence
at a time, and answer. Prompts are not logged unless asked.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    StreamingResponse,
)
from prometheus_client import generate_latest

from r1lite.engine import Request, Sampling
from r1lite.engine.engine import CLOSE_THINKING
from r1lite.errors import UsageError
from r1lite.serve.guard import SAFE, Guard, Verdict
from r1lite.serve.reasoning import Split, thinking_budget
from r1lite.serve.schema import ChatRequest, error_body
from r1lite.serve.worker import Busy, Draining, Worker

PAGE = Path(__file__).with_name("page.html")
SENTENCE_END = re.compile(r"[.!?\n]")


@dataclass
class ServeConfig:
    model_name: str
    api_key: str | None
    max_body_bytes: int = 1 << 20
    max_concurrency: int = 32
    max_queue: int = 64
    request_timeout: float = 300.0
    max_tokens_cap: int = 1024
    default_max_tokens: int = 256
    max_messages: int = 64
    max_thinking_tokens: int | None = None
    reasoning_field: str = "reasoning_content"
    temperature: float = 0.6
    top_p: float = 0.95
    log_prompts: bool = False


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("r1lite_requests", "chat completion requests by outcome", ["outcome"], registry=r)
        self.tokens = Counter("r1lite_tokens", "tokens by kind", ["kind"], registry=r)
        self.latency = Histogram("r1lite_request_seconds", "request latency", registry=r,
                                 buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
        self.ttft = Histogram("r1lite_time_to_first_token_seconds", "time to first token", registry=r,
                              buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.queue = Gauge("r1lite_queue_depth", "requests waiting for a generation slot", registry=r)
        self.in_flight = Gauge("r1lite_in_flight", "requests admitted (decoding or waiting)", registry=r)
        self.blocks = Counter("r1lite_guard_blocks", "content guard blocks by category and side", ["category", "side"], registry=r)


class BadRequest(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_


def create_app(backend, cfg: ServeConfig, guard: Guard | None):
    worker = Worker(backend.engine, cfg.max_concurrency, cfg.max_queue)
    metrics = Metrics()
    tokenizer = backend.tokenizer
    answer_tags = backend.format_name == "r1"
    state = {"client": None}

    @asynccontextmanager
    async def lifespan(app):
        state["client"] = httpx.AsyncClient()
        yield
        worker.drain()  # SIGTERM: uvicorn stops accepting; in-flight requests finish; none are admitted
        while worker.in_flight:
            await asyncio.sleep(0.05)
        worker.stop()
        await state["client"].aclose()

    app = FastAPI(title="r1lite", version="1", lifespan=lifespan,
                  description="OpenAI-compatible chat completions with the reasoning returned separately.")

    def fail(e: BadRequest) -> JSONResponse:
        metrics.requests.labels(str(e.status)).inc()
        return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status)

    @app.exception_handler(BadRequest)
    async def on_bad_request(request, e: BadRequest):
        return fail(e)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(x) for x in first.get("loc", ())[1:]) or None
        return fail(BadRequest(400, f"{param or 'body'}: {first.get('msg')}", param))

    @app.middleware("http")
    async def limit_body(request: HTTPRequest, call_next):
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > cfg.max_body_bytes:
            return fail(BadRequest(413, f"request body of {size} bytes is over the limit of {cfg.max_body_bytes}",
                                   code="request_too_large"))
        if request.method == "POST":
            body = await request.body()  # read (and cache) it: a chunked body has no length header
            if len(body) > cfg.max_body_bytes:
                return fail(BadRequest(413, f"request body is over the limit of {cfg.max_body_bytes} bytes", code="request_too_large"))
        return await call_next(request)

    def authorize(request: HTTPRequest) -> None:
        if cfg.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), cfg.api_key.encode()):
            raise BadRequest(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                             code="invalid_api_key", type_="authentication_error")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return PAGE.read_text().replace("{{MODEL}}", cfg.model_name)

    @app.get("/health")
    async def health():
        return {"status": "draining" if worker.draining else "ok", "model": cfg.model_name, "backend": backend.kind,
                "in_flight": worker.in_flight}

    @app.get("/v1/models")
    async def models(request: HTTPRequest):
        authorize(request)
        return {"object": "list", "data": [{"id": cfg.model_name, "object": "model", "created": int(time.time()), "owned_by": "r1lite"}]}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus(request: HTTPRequest):
        authorize(request)
        metrics.queue.set(worker.queued)
        metrics.in_flight.set(worker.in_flight)
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4")

    def check(body: ChatRequest) -> None:
        if body.model != cfg.model_name:
            raise BadRequest(404, f"model '{body.model}' is not served here; this server serves '{cfg.model_name}'",
                             "model", "model_not_found")
        for name in ("tools", "tool_choice", "logprobs", "top_logprobs"):
            if getattr(body, name) not in (None, False):
                raise BadRequest(400, f"'{name}' is not supported by r1lite serve", name, "unsupported_parameter")
        if (body.n or 1) > 1:
            raise BadRequest(400, "'n' > 1 is not supported: send n requests with different seeds", "n", "unsupported_parameter")
        for name in ("max_tokens", "max_completion_tokens"):
            value = getattr(body, name)
            if value is not None and value > cfg.max_tokens_cap:
                raise BadRequest(400, f"'{name}' {value} is over this server's cap of {cfg.max_tokens_cap}", name)
        if len(body.messages) > cfg.max_messages:
            raise BadRequest(400, f"{len(body.messages)} messages is over this server's cap of {cfg.max_messages}", "messages")
        if body.messages[-1].role == "assistant":
            raise BadRequest(400, "the last message must not be the assistant's", "messages")
        stops = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise BadRequest(400, "'stop' takes up to 4 non-empty strings", "stop")

    async def guard_text(text: str, side: str, prompt: str = "") -> Verdict:
        """The guard's verdict on the user's text (input) or on the model's reply to ``prompt``
        (output: a judge sees the exchange and rates the assistant's turn, as Llama Guard does)."""
        if guard is None:
            return SAFE
        conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": text}] if side == "output" else None
        verdict = await guard.check(state["client"], text, conversation)
        if not verdict.safe:
            metrics.blocks.labels(verdict.code, side).inc()
        return verdict

    def prepare(body: ChatRequest) -> tuple[Request, list[dict], Split, int]:
        messages = []
        for m in body.messages:
            text = m.text()
            if guard is not None and m.role == "user":
                text, _ = guard.policy.redact(text)
            messages.append({"role": "system" if m.role == "developer" else m.role, "content": text})
        budget = thinking_budget(body.model_dump(exclude_none=True), cfg.max_thinking_tokens)
        ids, thinking = backend.prompt(messages)
        split = Split(thinking=thinking, answer_tags=answer_tags)
        if budget.tokens == 0 and (thinking or answer_tags):  # no thinking at all: an empty, closed block
            opener = [] if thinking else tokenizer.encode("<think>", add_special_tokens=False)
            ids = ids + opener + tokenizer.encode(CLOSE_THINKING, add_special_tokens=False)
            split = Split(thinking=False, answer_tags=answer_tags, opened=True, closed=True)
        limit = body.max_completion_tokens or body.max_tokens or cfg.default_max_tokens
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        sampling = Sampling(max_new_tokens=limit, stop=tuple(stops),
                            temperature=cfg.temperature if body.temperature is None else body.temperature,
                            top_p=cfg.top_p if body.top_p is None else body.top_p)
        request = Request(ids, sampling, seed=body.seed, stream=True, thinking=split.thinking,
                          max_thinking_tokens=budget.tokens if budget.tokens else None, id=f"chatcmpl-{uuid.uuid4().hex[:24]}")
        return request, messages, split, len(ids)

    def message_fields(reasoning: str | None, content: str | None) -> dict:
        out = {"content": content, "reasoning_content": reasoning}
        if cfg.reasoning_field == "both":
            out["reasoning"] = reasoning
        return out

    def usage(prompt_tokens: int, completion_tokens: int, reasoning: str) -> dict:
        thought = len(tokenizer.encode(reasoning, add_special_tokens=False)) if reasoning else 0
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens, "completion_tokens_details": {"reasoning_tokens": thought}}

    def refusal(verdict: Verdict, side: str) -> tuple[str, dict]:
        text = guard.policy.refusal_text(verdict)
        return text, {"blocked": True, "side": side, "category": verdict.code, "name": verdict.name, "by": verdict.by}

    async def generation(request: Request, split: Split, started: float, prompt: str):
        """Yield (reasoning, content, finish, completion) increments; the output guard holds text
        back to the end of a sentence and stops the generation when it turns unsafe."""
        try:
            ticket = worker.submit(request)
        except Busy:
            raise BadRequest(429, f"the server is at capacity ({cfg.max_concurrency} generating, {cfg.max_queue} waiting); "
                             "retry later", code="rate_limit_exceeded", type_="rate_limit_error") from None
        except Draining:
            raise BadRequest(503, "the server is shutting down", code="shutting_down", type_="server_error") from None
        held_r = held_c = ""
        first = True
        done = False
        try:
            while not done:
                remaining = cfg.request_timeout - (time.monotonic() - started)
                try:
                    delta = await asyncio.wait_for(ticket.queue.get(), timeout=max(0.01, remaining))
                except asyncio.TimeoutError:
                    worker.cancel(request.id)
                    raise BadRequest(504, f"generation took longer than {cfg.request_timeout:.0f} s", code="timeout",
                                     type_="server_error") from None
                if isinstance(delta, BaseException):
                    raise BadRequest(500, f"generation failed: {type(delta).__name__}: {delta}", type_="server_error")
                if first:
                    metrics.ttft.observe(time.monotonic() - started)
                    first = False
                done = delta.completion is not None or delta.finish is not None
                r, c = split.feed(delta.text, final=done)
                if done:
                    c += split.finish()  # a thinking block that never closed is the answer
                held_r, held_c = held_r + r, held_c + c
                if guard is not None and not done and not SENTENCE_END.search(held_r + held_c):
                    continue  # hold back to the end of a sentence
                if (held_r or held_c) and guard is not None:
                    verdict = await guard_text(split.reasoning + split.content, "output", prompt)
                    if not verdict.safe:
                        worker.cancel(request.id)
                        yield None, None, ("content_filter", verdict), delta.completion
                        return
                yield held_r or None, held_c or None, (delta.finish, None) if done else None, delta.completion
                held_r = held_c = ""
        except (asyncio.CancelledError, GeneratorExit):
            worker.cancel(request.id)  # the client went away
            raise

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, http: HTTPRequest):
        authorize(http)
        check(body)
        started = time.monotonic()
        created = int(time.time())
        request, messages, split, prompt_tokens = prepare(body)
        if cfg.log_prompts:
            print(json.dumps({"request": request.id, "messages": messages}), flush=True)
        last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        verdict = await guard_text(last_user, "input")
        base = {"id": request.id, "created": created, "model": cfg.model_name}
        if not verdict.safe:
            text, info = refusal(verdict, "input")
            metrics.requests.labels("content_filter").inc()
            result = {**base, "object": "chat.completion", "content_filter": info,
                      "choices": [{"index": 0, "message": {"role": "assistant", **message_fields(None, text)},
                                   "finish_reason": "content_filter"}], "usage": usage(prompt_tokens, 0, "")}
            if not body.stream:
                return result
            chunk = {**base, "object": "chat.completion.chunk", "content_filter": info,
                     "choices": [{"index": 0, "delta": {"role": "assistant", **message_fields(None, text)}, "finish_reason": "content_filter"}]}
            return StreamingResponse(iter([f"data: {json.dumps(chunk)}\n\n", "data: [DONE]\n\n"]), media_type="text/event-stream")

        if not body.stream:
            reasoning, content, finish, completion, info = "", "", "stop", None, None
            async for r, c, end, comp in generation(request, split, started, last_user):
                reasoning += r or ""
                content += c or ""
                completion = comp or completion
                if end is not None:
                    finish, blocked = end
                    if blocked is not None:
                        content, info = refusal(blocked, "output")
                        reasoning = ""
            if info is None:  # the split's final word: a block that never closed is the answer
                reasoning, content = split.reasoning, split.content
            completion_tokens = len(completion.token_ids) if completion else 0
            metrics.requests.labels(finish or "stop").inc()
            metrics.tokens.labels("prompt").inc(prompt_tokens)
            metrics.tokens.labels("completion").inc(completion_tokens)
            metrics.latency.observe(time.monotonic() - started)
            result = {**base, "object": "chat.completion",
                      "choices": [{"index": 0, "message": {"role": "assistant", **message_fields(reasoning or None, content)},
                                   "finish_reason": finish or "stop"}],
                      "usage": usage(prompt_tokens, completion_tokens, reasoning)}
            if info:
                result["content_filter"] = info
            return result

        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = generation(request, split, started, last_user)
        try:  # the first increment before answering: capacity errors become a proper HTTP status
            head = await stream.__anext__()
        except StopAsyncIteration:
            head = None

        async def events():
            def chunk(delta: dict, finish: str | None = None, extra: dict | None = None) -> str:
                return "data: " + json.dumps({**base, "object": "chat.completion.chunk", **(extra or {}),
                                              "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n"

            yield chunk({"role": "assistant", **message_fields(None, "")})
            reasoning, completion, finish = "", None, "stop"
            pending = [head] if head is not None else []
            try:
                while True:
                    item = pending.pop() if pending else await stream.__anext__()
                    r, c, end, comp = item
                    completion = comp or completion
                    reasoning += r or ""
                    if r or c:
                        yield chunk(message_fields(r, c))
                    if end is not None:
                        finish, blocked = end
                        if blocked is not None:
                            text, info = refusal(blocked, "output")
                            yield chunk(message_fields(None, text), "content_filter", {"content_filter": info})
                            finish = None
                        break
            except StopAsyncIteration:
                pass
            except BadRequest as e:
                yield "data: " + json.dumps(error_body(e.message, e.type, e.param, e.code)) + "\n\n"
                finish = None
            finally:
                await stream.aclose()  # a client that went away cancels its generation
            if finish is not None:
                yield chunk({}, finish or "stop")
            completion_tokens = len(completion.token_ids) if completion else 0
            metrics.requests.labels(finish or "content_filter").inc()
            metrics.tokens.labels("completion").inc(completion_tokens)
            metrics.latency.observe(time.monotonic() - started)
            if include_usage:
                thought = split.reasoning if finish is not None else reasoning
                yield "data: " + json.dumps({**base, "object": "chat.completion.chunk", "choices": [],
                                             "usage": usage(prompt_tokens, completion_tokens, thought)}) + "\n\n"
            yield "data: [DONE]\n\n"

        metrics.tokens.labels("prompt").inc(prompt_tokens)
        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.exception_handler(UsageError)
    async def on_usage(request, e: UsageError):
        return fail(BadRequest(400, str(e)))

    app.state.worker, app.state.metrics = worker, metrics
    return app
