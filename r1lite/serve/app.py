"""The OpenAI-compatible app: ``POST /v1/chat/completions`` (JSON or SSE), ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (Prometheus), ``GET /`` (the chat page).

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
import hmac
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI
from fastapi import Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse
from prometheus_client import generate_latest

from r1lite.edge.backends import Backend
from r1lite.errors import UsageError
from r1lite.serve.guard import Guard
from r1lite.serve.schema import ChatRequest
from r1lite.serve.service import BadRequest, ChatService, Metrics, ServeConfig, invalid
from r1lite.serve.worker import Worker

PAGE = Path(__file__).with_name("page.html")

__all__ = ["ServeConfig", "create_app"]


def authorize(request: HTTPRequest, api_key: str | None) -> None:
    """Pass a request that carries ``Authorization: Bearer <key>`` (any request when no key is set)."""
    if api_key is None:
        return
    given = request.headers.get("authorization", "")
    token = given[7:] if given.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(token.encode(), api_key.encode()):
        raise BadRequest(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                         code="invalid_api_key", type_="authentication_error")


async def oversize(request: HTTPRequest, limit: int) -> BadRequest | None:
    """The 413 for a body over ``limit`` bytes, by its length header or, chunked, as read."""
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        return BadRequest(413, f"request body of {size} bytes is over the limit of {limit}", code="request_too_large")
    if request.method == "POST":
        body = await request.body()  # read (and cache) it: a chunked body has no length header
        if len(body) > limit:
            return BadRequest(413, f"request body is over the limit of {limit} bytes", code="request_too_large")
    return None


def create_app(backend: Backend, cfg: ServeConfig, guard: Guard | None) -> FastAPI:
    worker = Worker(backend.engine, cfg.max_concurrency, cfg.max_queue)
    metrics = Metrics()
    service = ChatService(backend, cfg, guard, worker, metrics)

    @asynccontextmanager
    async def lifespan(app):
        service.client = httpx.AsyncClient()
        yield
        worker.drain()  # SIGTERM: uvicorn stops accepting; in-flight requests finish; none are admitted
        while worker.in_flight:
            await asyncio.sleep(0.05)
        worker.stop()
        await service.client.aclose()

    app = FastAPI(title="r1lite", version="1", lifespan=lifespan,
                  description="OpenAI-compatible chat completions with the reasoning returned separately.")

    @app.exception_handler(BadRequest)
    async def on_bad_request(request, e: BadRequest):
        return service.reject(e)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request, e: RequestValidationError):
        return service.reject(invalid(e.errors()))

    @app.exception_handler(UsageError)
    async def on_usage(request, e: UsageError):
        return service.reject(BadRequest(400, str(e)))

    @app.middleware("http")
    async def limit_body(request: HTTPRequest, call_next):
        error = await oversize(request, cfg.max_body_bytes)
        return service.reject(error) if error is not None else await call_next(request)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return PAGE.read_text().replace("{{MODEL}}", cfg.model_name)

    @app.get("/health")
    async def health():
        return {"status": "draining" if worker.draining else "ok", "model": cfg.model_name, "backend": backend.kind,
                "in_flight": worker.in_flight}

    @app.get("/v1/models")
    async def models(request: HTTPRequest):
        authorize(request, cfg.api_key)
        return {"object": "list", "data": [{"id": cfg.model_name, "object": "model", "created": int(time.time()), "owned_by": "r1lite"}]}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def prometheus(request: HTTPRequest):
        authorize(request, cfg.api_key)
        metrics.queue.set(worker.queued)
        metrics.in_flight.set(worker.in_flight)
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4")

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest, http: HTTPRequest):
        authorize(http, cfg.api_key)
        return await service.create(body)

    app.state.worker, app.state.metrics, app.state.service = worker, metrics, service
    return app
