"""The OpenAI-compatible app: ``POST /v1/chat/completions`` (JSON or SSE), ``POST /v1/responses``
(the Responses API, stateless: :mod:`r1lite.serve.responses`), ``GET /v1/models``, ``GET /health``,
``GET /metrics`` (Prometheus), ``GET /`` (the chat page).

The routes are thin: the app authenticates (bearer key, constant-time compare), limits the body's
size, turns errors into OpenAI's shape, and hands a chat request to the
:class:`~r1lite.serve.service.ChatService`, whose steps are a request's life: check its limits,
redact PII and guard the input, render the prompt as the run renders it, apply the thinking
budget, join the engine's running batch (the worker), split the output into
``reasoning_content`` and ``content``, guard the output a sentence at a time, and answer.
Prompts are not logged unless asked.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import re
import time
from contextlib import asynccontextmanager
from pathlib import Path

import logging

import httpx
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi import Request as HTTPRequest
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from prometheus_client import generate_latest
from starlette.exceptions import HTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from r1lite.edge.backends import Backend
from r1lite.errors import UsageError
from r1lite.serve import responses
from r1lite.serve.guard import Guard
from r1lite.serve.schema import ChatCompletion, ChatRequest, ErrorResponse, Health, ModelList, ResponseObject, ResponsesRequest
from r1lite.serve.service import BadRequest, ChatService, Metrics, ServeConfig, disconnected, invalid
from r1lite.serve.worker import Worker

PAGE = Path(__file__).with_name("page.html")
LINGER_BYTES, LINGER_SECONDS = 16 << 20, 5.0
"""How much of a refused body is read and dropped before the connection closes."""
log = logging.getLogger("r1lite.serve")
SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)
REFUSED = {"4XX": {"model": ErrorResponse, "description": "Refused: a missing or wrong key (401, on /v1/* and /metrics), "
                   "a bad request (400), a body over the limit (413) or too slow (408), a full server (429)"}}
"""The errors a route may answer, as the published schema has them (the front door's come before any route)."""
FAILED = {"5XX": {"model": ErrorResponse, "description": "Generation failed (500), the server is shutting down (503), "
                  "the request took longer than its deadline (504)"}}
SSE_EVENT = {"type": "object", "required": ["data"], "properties": {"data": {
    "type": "string", "pattern": r"^(\{.*\}|\[DONE\])$",
    "description": "a chat.completion.chunk as JSON (an error object where generation failed), then [DONE]"}}}
"""One event of a streamed chat completion."""
CHAT = {200: {"model": ChatCompletion, "description": "The completion; with stream, server-sent events",
              "content": {"text/event-stream": {"itemSchema": SSE_EVENT}}}}
RESPONSE_EVENT = {"type": "object", "required": ["event", "data"], "properties": {
    "event": {"type": "string", "pattern": r"^(response\.[a-z_.]+|error)$"},
    "data": {"type": "string", "pattern": r"^\{.*\}$", "description": "the event as JSON: its type, its fields, its sequence_number"}}}
"""One event of a streamed response."""
RESPONSE = {200: {"model": ResponseObject, "description": "The response; with stream, the Responses API's server-sent events",
                  "content": {"text/event-stream": {"itemSchema": RESPONSE_EVENT}}}}
METRICS = {200: {"description": "Prometheus metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}}

__all__ = ["ServeConfig", "create_app"]


def key_ok(header: bytes, api_key: str | None) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <key>`` (constant-time; any header when no key is set)."""
    if api_key is None:
        return True
    token = header[7:] if header[:7].lower() == b"bearer " else b""
    return hmac.compare_digest(token, api_key.encode())


def protected(path: str) -> bool:
    return path.startswith("/v1/") or path == "/metrics"


class FrontDoor:
    """The first thing a request meets, as ASGI middleware: the API key is checked before any body
    is read (401), the body is read a chunk at a time and refused once over ``limit`` bytes (413)
    or not whole within ``body_seconds`` (408); a refused body is read and dropped up to
    :data:`LINGER_BYTES` (nginx's lingering close) so the client reads the status instead of a
    reset. The accepted body is handed on whole."""

    def __init__(self, app, api_key: str | None, limit: int, body_seconds: float, reject):
        self.app, self.api_key, self.limit, self.body_seconds, self.reject = app, api_key, limit, body_seconds, reject

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        body = Body(receive)
        if protected(scope["path"]) and not key_ok(headers.get(b"authorization", b""), self.api_key):
            error = BadRequest(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                               code="invalid_api_key", type_="authentication_error")
        elif (size := headers.get(b"content-length", b"")).isdigit() and int(size) > self.limit:
            error = BadRequest(413, f"request body of {int(size)} bytes is over the limit of {self.limit}", code="request_too_large")
        else:
            error = await body.read(self.limit, self.body_seconds)
            if error is None and body.gone:
                log.warning("%s %s: the client went away while sending the body", scope["method"], scope["path"])
                return
            if error is None:
                return await self.app(scope, body.replay(), send)
        if error.status != 408:
            await body.drop(LINGER_BYTES, LINGER_SECONDS)
        response = self.reject(error)
        response.headers["connection"] = "close"
        await response(scope, receive, send)


class Body:
    """A request's body as it arrives over ASGI ``receive``."""

    def __init__(self, receive):
        self.receive, self.chunks, self.done, self.gone = receive, [], False, False

    async def read(self, limit: int, seconds: float) -> BadRequest | None:
        """Read it whole (``gone`` when the client left first): the 413 past ``limit`` bytes, the
        408 past ``seconds``."""
        size, deadline = 0, time.monotonic() + seconds
        while not self.done and not self.gone:
            try:
                message = await asyncio.wait_for(self.receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return BadRequest(408, f"the request body did not arrive within {seconds:.0f} s", code="request_timeout")
            if message["type"] == "http.disconnect":
                self.gone = True
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            self.done = not message.get("more_body", False)
            if size > limit:
                return BadRequest(413, f"request body is over the limit of {limit} bytes", code="request_too_large")
            self.chunks.append(chunk)
        return None

    async def drop(self, most: int, seconds: float) -> None:
        """Read and discard what is left of it, up to ``most`` bytes and ``seconds``."""
        deadline = time.monotonic() + seconds
        while not self.done and not self.gone and most > 0:
            try:
                message = await asyncio.wait_for(self.receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return
            self.gone = message["type"] == "http.disconnect"
            self.done = not message.get("more_body", False)
            most -= len(message.get("body", b""))

    def replay(self):
        """An ASGI ``receive`` that gives the whole body once, then waits on the client (its disconnect)."""
        pending = [{"type": "http.request", "body": b"".join(self.chunks), "more_body": False}]

        async def receive():
            return pending.pop() if pending else await self.receive()
        return receive


class HeaderTimeout(H11Protocol):
    """uvicorn's h11 protocol with a deadline on a request's headers: a connection whose next
    request's headers are not whole ``header_seconds`` after it opened (or after its last response)
    is closed (uvicorn itself waits on them forever)."""

    def __init__(self, *args, header_seconds: float, **kw):
        super().__init__(*args, **kw)
        self.header_seconds, self.header_timer = header_seconds, None

    def arm(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
        waiting_after = self.cycle
        self.header_timer = self.loop.call_later(self.header_seconds, self.expire, waiting_after)

    def expire(self, waiting_after) -> None:
        if self.cycle is waiting_after and not self.transport.is_closing():  # no new request began
            log.warning("closed a connection whose request headers took over %.0f s", self.header_seconds)
            self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.arm()

    def connection_lost(self, exc) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
        super().connection_lost(exc)


def chat_page(model_name: str) -> tuple[str, dict[str, str]]:
    """The chat page with the model's name escaped into it, and its headers: a Content-Security-Policy
    that runs the page's own inline script (by its hash) and nothing else, and talks to this server only."""
    text = PAGE.read_text().replace("{{MODEL}}", html.escape(model_name))
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
                      for s in SCRIPT.findall(text))
    csp = (f"default-src 'none'; script-src {hashes}; connect-src 'self'; style-src 'unsafe-inline'; "
           "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return text, {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


def create_app(backend: Backend, cfg: ServeConfig, guard: Guard | None, worker: Worker | None = None) -> FastAPI:
    """The app over ``backend``; ``worker``: the one that opened it (:func:`r1lite.serve.build`), else a new one."""
    worker = worker or Worker(backend.engine, cfg.max_concurrency, cfg.max_queue)
    metrics = Metrics()
    service = ChatService(backend, cfg, guard, worker, metrics)
    responder = responses.Responses(service)

    @asynccontextmanager
    async def lifespan(app):
        service.client = httpx.AsyncClient()
        yield
        worker.drain()  # SIGTERM: uvicorn stops accepting; in-flight requests finish; none are admitted
        while worker.in_flight:
            await asyncio.sleep(0.05)
        worker.stop()
        await service.client.aclose()

    docs = {} if cfg.api_docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="r1lite", version="1", lifespan=lifespan, **docs,
                  description="OpenAI-compatible chat completions and responses with the reasoning returned separately.")

    @app.exception_handler(BadRequest)
    async def on_bad_request(request, e: BadRequest):
        return service.reject(e)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request, e: RequestValidationError):
        tell = responses.invalid if request.url.path == "/v1/responses" else invalid
        return service.reject(tell(e.errors()))

    @app.exception_handler(HTTPException)
    async def on_http(request, e: HTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        response = service.reject(BadRequest(e.status_code, f"{request.method} {request.url.path}: {e.detail}", code=kind))
        response.headers.update(e.headers or {})  # a 405 names the allowed methods (Allow, RFC 9110)
        return response

    @app.exception_handler(UsageError)
    async def on_usage(request, e: UsageError):
        return service.reject(BadRequest(400, str(e)))

    app.add_middleware(FrontDoor, api_key=cfg.api_key, limit=cfg.max_body_bytes, body_seconds=cfg.body_timeout,
                       reject=service.reject)

    page_text, page_headers = chat_page(cfg.model_name)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(page_text, headers=page_headers)

    @app.get("/health", response_model=Health, responses=REFUSED)
    async def health():
        return {"status": "draining" if worker.draining else "ok", "model": cfg.model_name, "backend": backend.kind,
                "in_flight": worker.in_flight}

    @app.get("/v1/models", response_model=ModelList, responses=REFUSED)
    async def models():
        return {"object": "list", "data": [{"id": cfg.model_name, "object": "model", "created": int(time.time()), "owned_by": "r1lite"}]}

    @app.get("/metrics", response_class=Response, responses=METRICS | REFUSED)
    async def prometheus():
        metrics.queue.set(worker.queued)
        metrics.in_flight.set(worker.in_flight)
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions", response_model=None, responses=CHAT | REFUSED | FAILED)
    async def chat(body: ChatRequest, http: HTTPRequest):
        response = await service.create(body, asyncio.ensure_future(disconnected(http.receive)))
        return Response(status_code=499) if response is None else response  # None: the client went away

    @app.post("/v1/responses", response_model=None, responses=RESPONSE | REFUSED | FAILED)
    async def respond(body: ResponsesRequest, http: HTTPRequest):
        response = await responder.create(body, asyncio.ensure_future(disconnected(http.receive)))
        return Response(status_code=499) if response is None else response  # None: the client went away

    app.state.worker, app.state.metrics, app.state.service = worker, metrics, service
    return app
