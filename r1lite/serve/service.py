"""A chat completion in named steps, each testable alone (the way vLLM's ``serving_chat`` splits a
request); the route in :mod:`r1lite.serve.app` authenticates and calls :meth:`ChatService.create`:

1. :meth:`~ChatService.check` the request against the server's limits (:class:`BadRequest`);
2. :meth:`~ChatService.messages`: the conversation, PII redacted from the user's turns;
3. :meth:`~ChatService.structure`: a ``response_format`` compiled to the grammar the answer is
   held to (structured output: the thinking runs free, the answer is masked to the schema);
   :meth:`~ChatService.render` the prompt as the run renders it, the thinking budget, the sampling
   settings: a :class:`Turn`;
4. :meth:`~ChatService.guard_input`: the guard's verdict on the user's turns, each alone and all
   joined (:meth:`r1lite.serve.guard.Guard.check_input`);
5. :meth:`~ChatService.generate`: the engine's deltas from the worker, split into reasoning and
   answer (:class:`r1lite.serve.reasoning.Split`), held back to the end of a sentence, each new
   sentence guarded once (:class:`r1lite.serve.guard.AnswerGuard`): :class:`Piece` s;
6. :meth:`~ChatService.account`: the Prometheus metrics;
7. :meth:`~ChatService.full` or :meth:`~ChatService.stream`: one JSON body, or server-sent events
   (the shapes: :mod:`r1lite.serve.schema`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

import httpx
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from r1lite.edge.backends import Backend
from r1lite.engine import Completion, Delta, Request, Sampling
from r1lite.engine.grammar import Grammar, GrammarError
from r1lite.engine.grammar import check as check_format
from r1lite.engine.sampling import over_context
from r1lite.engine.thinking import CLOSE_THINKING, THINK_OPEN
from r1lite.errors import UsageError
from r1lite.serve.guard import SAFE, AnswerGuard, Guard, Verdict
from r1lite.serve.reasoning import Split, thinking_budget
from r1lite.serve.schema import (
    DONE,
    ChatRequest,
    chunk,
    completion,
    error_body,
    message_fields,
    sse,
    usage,
    usage_chunk,
)
from r1lite.serve.worker import Busy, Draining, Ticket, Worker

SENTENCE_END = re.compile(r"[.!?\n]")
MAX_STOPS, MAX_STOP_CHARS = 4, 256
"""Bounds on a request's stop strings (OpenAI's: up to 4)."""
UNSUPPORTED = ("tools", "tool_choice", "logprobs", "top_logprobs")
log = logging.getLogger("r1lite.serve")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@dataclass
class ServeConfig:
    """The server's settings (``r1lite serve``'s flags)."""

    model_name: str
    """The name clients send as ``model``."""
    api_key: str | None
    """Bearer key for /v1/* and /metrics; None = open."""
    max_body_bytes: int = 1 << 20
    """Largest request body (larger: 413)."""
    max_concurrency: int = 32
    """Requests decoding at once, in one batch."""
    max_queue: int = 64
    """Requests waiting beyond those (more: 429)."""
    request_timeout: float = 300.0
    """Seconds a request may take (then 504)."""
    max_tokens_cap: int = 1024
    """Largest ``max_tokens`` a request may ask for."""
    default_max_tokens: int = 256
    """``max_tokens`` of a request that names none."""
    max_messages: int = 64
    """Most messages in a request."""
    max_thinking_tokens: int | None = None
    """Thinking budget of a request that names none (None = no limit; 0 = no thinking)."""
    reasoning_field: str = "both"
    """Where the thinking goes: ``reasoning_content`` (DeepSeek's), ``reasoning`` (vLLM's and Ollama's) or ``both``."""
    temperature: float = 0.6
    top_p: float = 0.95
    log_prompts: bool = False
    """Print each request's messages."""
    api_docs: bool = False
    """Serve ``/docs``, ``/redoc`` and ``/openapi.json``."""
    body_timeout: float = 30.0
    """Seconds a request's body may take to arrive (then 408)."""


class Metrics:
    """The server's Prometheus metrics, in a registry of its own."""

    def __init__(self):
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


class ClientGone(Exception):
    """The client went away before its answer was whole."""


async def disconnected(receive) -> None:
    """Return once the client has gone away (ASGI ``receive``, after the body was read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class BadRequest(Exception):
    """A request the server answers with an OpenAI-shaped error (:func:`r1lite.serve.schema.error_body`)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_


def invalid(errors: Sequence[dict]) -> BadRequest:
    """The 400 for a body that does not parse or fit the schema: pydantic's first error, its
    location without the leading ``body`` as the parameter.

    >>> e = invalid([{"loc": ("body", "messages", 0, "role"), "msg": "Input should be 'user'"}])
    >>> e.status, e.param, e.message
    (400, 'messages.0.role', "messages.0.role: Input should be 'user'")
    """
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = ".".join(str(x) for x in first["loc"][1:]) or None
    return BadRequest(400, f"{param or 'body'}: {first['msg']}", param)


def encodable(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (JSON's ``\\ud800`` escape gives a lone surrogate that cannot).

    >>> encodable("ok é"), encodable("a \\ud800 b")
    (True, False)
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class Turn:
    """One request on its way through the service."""

    request: Request
    """The engine's request; its id is the completion's."""
    split: Split
    messages: list[dict]
    """The conversation as the model sees it (PII redacted)."""
    prompt_tokens: int
    base: dict
    """What every response body starts with: id, created, model."""
    started: float
    """``time.monotonic()`` when the request arrived."""
    stream: bool
    include_usage: bool
    gone: asyncio.Future | None = None
    """Done when the client has gone away (:func:`disconnected`)."""
    structured: bool = False
    """The request asked for a ``response_format``: its answer is JSON (a refusal is ``refusal``)."""

    @property
    def question(self) -> str:
        """The last user message: what the answer replies to (the output guard's judge reads it)."""
        return next((m["content"] for m in reversed(self.messages) if m["role"] == "user"), "")


@dataclass
class Piece:
    """What the client gets next: reasoning and answer text; the last piece says how it ended."""

    reasoning: str | None = None
    content: str | None = None
    done: bool = False
    finish: str | None = None
    """On the last piece: ``stop``, ``length``, ``cancelled``, or ``content_filter`` (``blocked``)."""
    blocked: Verdict | None = None
    """The output guard's verdict when it stopped the answer."""
    completion: Completion | None = None
    """The engine's completion, on the last piece when the last delta carried it."""

    @property
    def completion_tokens(self) -> int:
        return len(self.completion.token_ids) if self.completion is not None else 0


class ChatService:
    """``POST /v1/chat/completions`` over a :class:`Worker`; see the module docstring for the steps."""

    def __init__(self, backend: Backend, cfg: ServeConfig, guard: Guard | None, worker: Worker, metrics: Metrics):
        self.backend, self.cfg, self.guard, self.worker, self.metrics = backend, cfg, guard, worker, metrics
        self.client: httpx.AsyncClient | None = None
        """The HTTP client the guard's judge is called with (the app opens it at startup)."""

    async def create(self, body: ChatRequest, gone: asyncio.Future | None = None) -> dict | StreamingResponse | None:
        """A chat completion: every step, in order. ``gone``: done when the client goes away; its
        generation is then cancelled (None comes back: there is no one to answer)."""
        streaming = False
        try:
            self.check(body)
            grammar = await self.structure(body)
            turn = self.render(body, self.messages(body), grammar)
            turn.gone = gone
            if self.cfg.log_prompts:
                print(json.dumps({"request": turn.request.id, "messages": turn.messages}), flush=True)
            verdict = await self.guard_input(turn)
            if not verdict.safe:
                return self.refuse_input(turn, verdict)
            if turn.stream:
                response = await self.stream(turn)
                streaming = True  # the stream's events own ``gone`` from here
                return response
            return await self.full(turn)
        except ClientGone:
            return None
        finally:
            if gone is not None and not streaming:
                gone.cancel()

    # -- 1-4: the request ----------------------------------------------------------------------------

    def check(self, body: ChatRequest) -> None:
        """The server's limits on a request that fits the schema (:class:`BadRequest` otherwise)."""
        cfg = self.cfg
        if body.model != cfg.model_name:
            raise BadRequest(404, f"model '{body.model}' is not served here; this server serves '{cfg.model_name}'",
                             "model", "model_not_found")
        for name in UNSUPPORTED:
            if getattr(body, name) not in (None, False):
                raise BadRequest(400, f"'{name}' is not supported by r1lite serve", name, "unsupported_parameter")
        if (body.n or 1) > 1:
            raise BadRequest(400, "'n' > 1 is not supported: send n requests with different seeds", "n", "unsupported_parameter")
        for name, value in (("max_tokens", body.max_tokens), ("max_completion_tokens", body.max_completion_tokens)):
            if value is not None and value > cfg.max_tokens_cap:
                raise BadRequest(400, f"'{name}' {value} is over this server's cap of {cfg.max_tokens_cap}", name)
        if len(body.messages) > cfg.max_messages:
            raise BadRequest(400, f"{len(body.messages)} messages is over this server's cap of {cfg.max_messages}", "messages")
        if body.messages[-1].role == "assistant":
            raise BadRequest(400, "the last message must not be the assistant's", "messages")
        stops = body.stops()
        if len(stops) > MAX_STOPS or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise BadRequest(400, f"'stop' takes up to {MAX_STOPS} non-empty strings of at most {MAX_STOP_CHARS} characters", "stop")
        texts = [(f"messages.{i}.content", m.text()) for i, m in enumerate(body.messages)] + [("stop", s) for s in stops]
        for param, text in texts:
            if not encodable(text):
                raise BadRequest(400, f"{param}: not valid Unicode (a lone surrogate such as \\ud800)", param)

    def messages(self, body: ChatRequest) -> list[dict]:
        """The conversation for the prompt (``developer`` is ``system``); with the guard on, PII in
        the user's turns is redacted."""
        out = []
        for m in body.messages:
            text = m.text()
            if self.guard is not None and m.role == "user":
                text, _ = self.guard.policy.redact(text)
            out.append({"role": "system" if m.role == "developer" else m.role, "content": text})
        return out

    async def structure(self, body: ChatRequest) -> Grammar | None:
        """The grammar a ``response_format`` asks for (None: free text), compiled off the event loop:
        a 400 naming a schema that is invalid or that the grammar library cannot honour."""
        spec = body.response_format.spec() if body.response_format is not None else None
        if spec is None:
            return None
        if spec["type"] == "json_schema" and "json_schema" not in spec:
            raise BadRequest(400, "'response_format' of type json_schema needs 'json_schema': {\"name\", \"schema\"}",
                             "response_format.json_schema")
        try:
            check_format(spec)  # the schema itself, whatever the backend
        except GrammarError as e:
            raise BadRequest(400, str(e), e.param, "invalid_response_format") from None
        compile_ = getattr(self.backend.engine, "compile", None)
        if compile_ is None:
            raise BadRequest(400, "'response_format': structured output is not supported by this backend",
                             "response_format", "unsupported_parameter")
        try:
            return await asyncio.to_thread(compile_, spec, self.backend.format_name == "r1")
        except GrammarError as e:
            raise BadRequest(400, str(e), e.param, "invalid_response_format") from None
        except UsageError as e:  # no llguidance, a tokenizer it cannot read
            raise BadRequest(400, str(e), "response_format", "unsupported_parameter") from None
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # noqa: BLE001 - the library's own failure (a Rust panic is a BaseException): the schema's fault, never a 5xx
            name = spec.get("json_schema", {}).get("name", "json_object")
            raise BadRequest(400, f"'response_format' schema '{name}' could not be compiled: {type(e).__name__}: {str(e)[:200]}",
                             "response_format", "invalid_response_format") from None

    def render(self, body: ChatRequest, messages: list[dict], grammar: Grammar | None = None) -> Turn:
        """The prompt as the run renders it, with the request's thinking budget and sampling; a
        budget of 0 closes an empty thinking block in the prompt itself. A structured request
        (``grammar``) with a budget other than 0 thinks first: ``<think>`` is opened in the prompt
        when the prompt does not open it; its answer is masked from ``</think>`` on (from the first
        token with a budget of 0)."""
        started, created = time.monotonic(), int(time.time())
        budget = thinking_budget(body.model_dump(exclude_none=True), self.cfg.max_thinking_tokens)
        ids, thinking = self.backend.prompt(messages)
        context = self.backend.context
        named = body.max_completion_tokens or body.max_tokens
        if context and len(ids) >= context:
            raise BadRequest(400, f"the prompt is {len(ids)} tokens; this model's context is {context} tokens",
                             "messages", "context_length_exceeded")
        if named and (problem := over_context(named, context, len(ids))):  # the check chat, eval and distill make
            raise BadRequest(400, f"'max_tokens' {named}: {problem}", "max_tokens", "context_length_exceeded")
        answer_tags, structured = self.backend.format_name == "r1", grammar is not None
        split = Split(thinking=thinking, answer_tags=answer_tags, structured=structured)
        if budget.tokens == 0 and (thinking or answer_tags):
            ids = ids + self.empty_thinking(thinking)
            split = Split(answer_tags=answer_tags, opened=True, closed=True, structured=structured)
        elif structured and budget.tokens != 0 and not thinking:  # think first, then answer to the grammar
            ids = ids + self.backend.tokenizer.encode(THINK_OPEN, add_special_tokens=False)
            split = Split(thinking=True, answer_tags=answer_tags, structured=True)
        sampling = self.sampling(body)
        if context and sampling.max_new_tokens > context - len(ids):  # the default budget, cut to fit
            sampling = replace(sampling, max_new_tokens=context - len(ids))
        request = Request(ids, sampling, seed=body.seed, stream=True, thinking=split.thinking,
                          max_thinking_tokens=budget.tokens or None, id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
                          grammar=grammar)
        base = {"id": request.id, "created": created, "model": self.cfg.model_name}
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return Turn(request, split, messages, len(ids), base, started, body.stream, include_usage, structured=structured)

    def empty_thinking(self, opened: bool) -> list[int]:
        """The tokens of an empty, closed thinking block (without the opener when the prompt has it)."""
        encode = self.backend.tokenizer.encode
        return ([] if opened else encode(THINK_OPEN, add_special_tokens=False)) + encode(CLOSE_THINKING, add_special_tokens=False)

    def sampling(self, body: ChatRequest) -> Sampling:
        cfg = self.cfg
        return Sampling(max_new_tokens=body.max_completion_tokens or body.max_tokens or cfg.default_max_tokens,
                        stop=tuple(dict.fromkeys([*body.stops(), *getattr(self.backend, "stop", ())])),  # r1_zero's </answer>
                        temperature=cfg.temperature if body.temperature is None else body.temperature,
                        top_p=cfg.top_p if body.top_p is None else body.top_p, ignore_eos=bool(body.ignore_eos))

    async def guard_input(self, turn: Turn) -> Verdict:
        """The guard's verdict on the conversation's user turns, each alone and all joined, so a
        request split across turns is read whole (safe with the guard off)."""
        if self.guard is None:
            return SAFE
        return self.tally(await self.guard.check_input(self.client, turn.messages), "input")

    def tally(self, verdict: Verdict, side: str) -> Verdict:
        if not verdict.safe:
            self.metrics.blocks.labels(verdict.code, side).inc()
        return verdict

    def refusal(self, verdict: Verdict, side: str) -> tuple[str, dict]:
        """The refusal's text and the ``content_filter`` object that names the category."""
        text = self.guard.policy.refusal_text(verdict)
        return text, {"blocked": True, "side": side, "category": verdict.code, "name": verdict.name, "by": verdict.by}

    def refused(self, turn: Turn, text: str) -> dict:
        """A refusal's message fields: in ``content``, or, for a structured request, in ``refusal``
        with ``content`` null (OpenAI's shape for structured outputs)."""
        return {**self.fields(None, None), "refusal": text} if turn.structured else self.fields(None, text)

    def refuse_input(self, turn: Turn, verdict: Verdict) -> dict | StreamingResponse:
        text, info = self.refusal(verdict, "input")
        self.metrics.requests.labels("content_filter").inc()
        if not turn.stream:
            return completion(turn.base, self.refused(turn, text), "content_filter", usage(turn.prompt_tokens, 0, 0), info)
        first = chunk(turn.base, {"role": "assistant", **self.refused(turn, text)}, "content_filter", {"content_filter": info})
        return StreamingResponse(iter([sse(first), DONE]), media_type="text/event-stream")

    # -- 5: generation -------------------------------------------------------------------------------

    async def generate(self, turn: Turn) -> AsyncIterator[Piece]:
        """The answer as it becomes certain. With the guard on, text is held back to the end of a
        sentence and each new sentence is guarded once; a verdict of unsafe stops the generation.
        Within the first sentence, the text no block pattern can reach whatever follows goes out
        at once (:meth:`AnswerGuard.early`), so the first words do not wait for the sentence."""
        ticket = self.submit(turn.request)
        answer = AnswerGuard(self.guard, self.client, turn.question) if self.guard is not None else None
        held_r = held_c = ""
        first = True
        try:
            while True:
                delta = await self.next_delta(ticket, turn)
                if first:
                    self.metrics.ttft.observe(time.monotonic() - turn.started)
                    first = False
                done = delta.completion is not None or delta.finish is not None
                r, c = turn.split.feed(delta.text, final=done, tokens=len(delta.token_ids))
                moved = turn.split.finish() if done else ""  # a thinking block that never closed is the answer
                held_r, held_c = held_r + r, held_c + c
                if answer is not None and not done and not SENTENCE_END.search(held_r + held_c):
                    n = answer.early(held_r + held_c)  # the first words at once: text no block pattern can reach
                    if n:
                        out_r, out_c = held_r[:n], held_c[:max(0, n - len(held_r))]
                        held_r, held_c = held_r[len(out_r):], held_c[len(out_c):]
                        answer.released(out_r + out_c)
                        yield Piece(out_r or None, out_c or None)
                    continue  # hold back the rest to the end of a sentence
                if answer is not None and (held_r or held_c):
                    verdict = self.tally(await answer.check(held_r + held_c), "output")
                    if not verdict.safe:
                        self.worker.cancel(turn.request.id)
                        yield Piece(done=True, finish="content_filter", blocked=verdict, completion=delta.completion)
                        return
                yield Piece(held_r or None, (held_c + moved) or None, done=done, finish=delta.finish if done else None,
                            completion=delta.completion)
                held_r = held_c = ""
                if done:
                    return
        except (asyncio.CancelledError, GeneratorExit):
            self.worker.cancel(turn.request.id)  # the client went away
            raise

    def submit(self, request: Request) -> Ticket:
        """The request joins the worker's batch (429 when it is full, 503 while draining)."""
        try:
            return self.worker.submit(request)
        except Busy:
            raise BadRequest(429, f"the server is at capacity ({self.cfg.max_concurrency} generating, {self.cfg.max_queue} "
                             "waiting); retry later", code="rate_limit_exceeded", type_="rate_limit_error") from None
        except Draining:
            raise BadRequest(503, "the server is shutting down", code="shutting_down", type_="server_error") from None

    async def next_delta(self, ticket: Ticket, turn: Turn) -> Delta:
        """The request's next delta within its deadline (504 past it; 500 when a step failed)."""
        remaining = self.cfg.request_timeout - (time.monotonic() - turn.started)
        get = asyncio.ensure_future(ticket.queue.get())
        done, _ = await asyncio.wait([get] + ([turn.gone] if turn.gone is not None else []), timeout=max(0.01, remaining),
                                     return_when=asyncio.FIRST_COMPLETED)
        if get not in done:
            get.cancel()
            self.worker.cancel(turn.request.id)
            if turn.gone is not None and turn.gone.done():
                self.account(turn, "cancelled", 0)
                raise ClientGone()
            raise BadRequest(504, f"generation took longer than {self.cfg.request_timeout:.0f} s", code="timeout",
                             type_="server_error") from None
        delta = get.result()
        if isinstance(delta, BaseException):
            raise BadRequest(500, f"generation failed: {type(delta).__name__}: {delta}", type_="server_error")
        return delta

    # -- 6-7: accounting and the answer ----------------------------------------------------------------

    def account(self, turn: Turn, outcome: str, completion_tokens: int) -> None:
        """A finished request in the metrics (its prompt tokens are counted as generation starts)."""
        self.metrics.requests.labels(outcome).inc()
        self.metrics.tokens.labels("completion").inc(completion_tokens)
        self.metrics.latency.observe(time.monotonic() - turn.started)

    def fields(self, reasoning: str | None, content: str | None) -> dict:
        return message_fields(reasoning, content, self.cfg.reasoning_field)

    async def full(self, turn: Turn) -> dict:
        """The whole answer as one chat completion."""
        last = Piece()
        async for piece in self.generate(turn):
            last = piece
        self.metrics.tokens.labels("prompt").inc(turn.prompt_tokens)
        self.account(turn, last.finish, last.completion_tokens)
        if last.blocked is not None:
            text, info = self.refusal(last.blocked, "output")
            return completion(turn.base, self.refused(turn, text), last.finish,
                              usage(turn.prompt_tokens, last.completion_tokens, 0), info)
        fields = self.fields(turn.split.reasoning or None, turn.split.content)
        return completion(turn.base, {**fields, "refusal": None} if turn.structured else fields, last.finish,
                          usage(turn.prompt_tokens, last.completion_tokens, turn.split.reasoning_tokens))

    async def stream(self, turn: Turn) -> StreamingResponse:
        """The answer as server-sent events. The first piece comes before the response starts, so a
        full server or a failed start answers with its HTTP status."""
        pieces = self.generate(turn)
        head = await anext(pieces)
        self.metrics.tokens.labels("prompt").inc(turn.prompt_tokens)
        return StreamingResponse(self.events(turn, head, pieces), media_type="text/event-stream", headers=SSE_HEADERS)

    async def events(self, turn: Turn, head: Piece, pieces: AsyncIterator[Piece]) -> AsyncIterator[str]:
        """The events of a stream: the role, the text as it comes, how it ended, the usage, ``[DONE]``.
        A stream the client left is counted once, as ``cancelled``."""
        counted = False
        try:
            async for event in self.stream_events(turn, head, pieces):
                if event is None:
                    counted = True
                else:
                    yield event
        except ClientGone:
            counted = True  # next_delta counted it
        finally:
            if turn.gone is not None:
                turn.gone.cancel()
            if not counted:
                self.account(turn, "cancelled", 0)

    async def stream_events(self, turn: Turn, head: Piece, pieces: AsyncIterator[Piece]) -> AsyncIterator[str | None]:
        """:meth:`events`, with None where the request was counted."""
        yield sse(chunk(turn.base, {"role": "assistant", **self.fields(None, "")}))
        piece, error = head, None
        try:
            while True:
                if piece.reasoning or piece.content:
                    yield sse(chunk(turn.base, self.fields(piece.reasoning, piece.content)))
                if piece.done:
                    break
                piece = await anext(pieces)
        except BadRequest as e:
            error = e
        finally:
            await pieces.aclose()  # a client that went away cancels its generation
        if error is not None:
            yield sse(error_body(error.message, error.type, error.param, error.code))
        elif piece.blocked is not None:
            text, info = self.refusal(piece.blocked, "output")
            yield sse(chunk(turn.base, self.refused(turn, text), "content_filter", {"content_filter": info}))
        else:
            yield sse(chunk(turn.base, {}, piece.finish))
        completion_tokens = 0 if error is not None else piece.completion_tokens
        self.account(turn, "content_filter" if error is not None else piece.finish, completion_tokens)
        yield None
        if turn.include_usage:
            yield sse(usage_chunk(turn.base, usage(turn.prompt_tokens, completion_tokens, turn.split.reasoning_tokens)))
        yield DONE

    def reject(self, e: BadRequest) -> JSONResponse:
        """A request that ends in an error: counted by its status, answered in OpenAI's shape."""
        self.metrics.requests.labels(str(e.status)).inc()
        log.warning("rejected %d %s: %s", e.status, e.code or e.type, e.message)
        return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status)
