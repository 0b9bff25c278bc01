"""The server's front door and its limits, over a scripted engine on 127.0.0.1: the chat page's
escaping and Content-Security-Policy, the API docs off by default, the key checked before the
body, streamed body limits, errors in OpenAI's shape, cancellation, prompt and stop bounds."""

import base64
import hashlib
import re
import socket
import threading
import time

import httpx
import pytest

from r1lite.engine import Completion, Delta
from r1lite.serve.app import create_app
from r1lite.serve.guard import Guard, GuardPolicy
from r1lite.serve.service import ServeConfig

KEY = "safety-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


class SlowEngine:
    """Answers every request with ``"w "`` a step, ``step_s`` seconds a step, until its
    max_new_tokens; records every request it was given and every one it dropped."""

    def __init__(self, step_s: float = 0.02):
        self.step_s, self.running, self.cancelled, self.added = step_s, {}, set(), []
        self.failed = {}  # requests whose prefill failed (none here)

    @property
    def has_work(self) -> bool:
        return bool(self.running)

    def add(self, request) -> str:
        self.running[request.id] = [request, 0]
        self.added.append(request)
        return request.id

    def cancel(self, request_id: str) -> None:
        if request_id in self.running:
            self.cancelled.add(request_id)

    def clear(self) -> None:
        self.running.clear()

    def step(self) -> list[Delta]:
        time.sleep(self.step_s)
        deltas = []
        for rid, (request, i) in list(self.running.items()):
            cancelled = rid in self.cancelled
            last = i + 1 >= request.sampling.max_new_tokens
            finish = "cancelled" if cancelled else "length" if last else None
            ids = [] if cancelled else [i]
            done = Completion(list(range(i + len(ids))), "w " * (i + len(ids)), finish) if finish else None
            deltas.append(Delta(rid, 0, ids, "" if cancelled else "w ", finish, done))
            if finish:
                del self.running[rid]
            else:
                self.running[rid][1] = i + 1
        return deltas


class Tokenizer:
    def encode(self, text, add_special_tokens=False):
        return list(range(len(text.split())))


class ScriptedBackend:
    kind, format_name = "scripted", ""

    def __init__(self, engine, context: int = 4096):
        self.engine, self.tokenizer, self.context = engine, Tokenizer(), context

    def prompt(self, messages):
        return [1] * sum(len(m["content"].split()) + 1 for m in messages), False


class Served:
    """A scripted app on uvicorn in a thread on a free loopback port; stops by itself."""

    def __init__(self, port: int, engine=None, guard: bool = False, **config):
        import uvicorn

        from r1lite.serve import uvicorn_config

        self.engine = engine or SlowEngine()
        cfg = ServeConfig(model_name=config.pop("model_name", "m"), api_key=config.pop("api_key", KEY),
                          **{"max_tokens_cap": 1024, "default_max_tokens": 16, **config})
        self.app = create_app(ScriptedBackend(self.engine), cfg, Guard(GuardPolicy()) if guard else None)
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn_config(self.app, "127.0.0.1", port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        assert self.server.started

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def served(free_port):
    servers = []

    def make(**kw) -> Served:
        servers.append(Served(free_port(), **kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def chat(**kw) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **kw}


# ------------------------------------------------------------------------------ the page


def test_the_page_escapes_the_model_name_and_runs_only_its_own_script(served):
    server = served(model_name="<img src=x onerror=alert(1)>")
    r = httpx.get(server.url + "/", timeout=10)
    assert "<img src=x" not in r.text and "&lt;img src=x onerror=alert(1)&gt;" in r.text
    csp = dict(part.strip().split(" ", 1) for part in r.headers["content-security-policy"].split(";"))
    script = re.search(r"<script>(.*?)</script>", r.text, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert csp["script-src"] == f"'sha256-{digest}'" and csp["default-src"] == "'none'"
    assert csp["connect-src"] == "'self'" and csp["frame-ancestors"] == "'none'" and csp["form-action"] == "'none'"
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("api_docs", [False, True])
def test_the_api_docs_are_off_unless_asked_for(served, api_docs):
    server = served(api_docs=api_docs)
    for path in ("/docs", "/redoc", "/openapi.json"):
        assert httpx.get(server.url + path, timeout=10).status_code == (200 if api_docs else 404), path


# ------------------------------------------------------------------------------ the front door


def raw(port: int, data: bytes, wait: float = 10.0, drip: float = 0.0) -> bytes:
    """Send ``data`` on a loopback socket (a byte every ``drip`` seconds when set); what comes back
    until the server closes (or ``wait`` passes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        try:
            for piece in ([bytes([b]) for b in data] if drip else [data]):
                s.sendall(piece)
                time.sleep(drip)
        except (BrokenPipeError, ConnectionResetError):
            return b""  # closed on us while sending
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return out


def test_the_key_is_checked_before_the_body(served):
    server = served(max_body_bytes=1000)
    url = server.url + "/v1/chat/completions"
    for body in (b"{not json", b"x" * 5000):
        r = httpx.post(url, content=body, headers={"Content-Type": "application/json"}, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", r.text
    chunked = httpx.post(url, content=iter([b"x" * 4096] * 500), timeout=10)  # 2 MB, no length, no key
    assert chunked.status_code == 401
    assert httpx.get(server.url + "/metrics", timeout=10).status_code == 401
    assert httpx.post(url, content=b"{not json", headers=AUTH, timeout=10).status_code == 400


def test_an_oversize_body_is_refused_as_it_streams_with_a_clean_413(served, monkeypatch):
    from r1lite.serve import app

    server = served(max_body_bytes=1 << 20)
    url = server.url + "/v1/chat/completions"
    r = httpx.post(url, content=b"x" * (5 << 20), headers=AUTH, timeout=30)  # by its length: read and dropped, then 413
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.post(url, content=iter([b"x" * 65536] * 40), headers=AUTH, timeout=30)  # 2.6 MB chunked: no length to go by
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    monkeypatch.setattr(app, "LINGER_BYTES", 1 << 20, raising=False)
    seen = []

    def endless():
        while len(seen) < 2000:  # 128 MB offered; read: the 1 MiB limit and 1 MiB dropped, then the door closes
            seen.append(1)
            yield b"x" * 65536

    try:
        r = httpx.post(url, content=endless(), headers=AUTH, timeout=30)
        assert r.status_code == 413
    except httpx.TransportError:
        pass  # closed while the client was still sending: it may not read the 413
    assert len(seen) < 200, len(seen)
    assert httpx.post(url, json=chat(), headers=AUTH, timeout=10).status_code == 200  # still serving


@pytest.mark.parametrize("method, path, body, status", [
    ("GET", "/nowhere", None, 404),
    ("GET", "/v1/chat/completions", None, 405),
    ("POST", "/v1/chat/completions", b'{"model": "m", "messages": [{"role": "user", "content": "a \\ud800 b"}]}', 400),
    ("POST", "/v1/chat/completions", b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stop": "\\udfff"}', 400),
])
def test_every_4xx_is_an_openai_error(served, method, path, body, status):
    server = served()
    r = httpx.request(method, server.url + path, content=body, headers={**AUTH, "Content-Type": "application/json"}, timeout=10)
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_a_half_sent_body_then_a_disconnect_leaves_no_traceback(served, capfd, caplog):
    server = served()
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
            b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(head + b'{"model": "m", "mess')
        time.sleep(0.3)
    time.sleep(0.5)
    assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    err = capfd.readouterr().err + caplog.text
    assert "Traceback" not in err and "went away while sending the body" in caplog.text


def test_a_slow_client_cannot_hold_a_connection(served, monkeypatch):
    import r1lite.serve as serve

    config = serve.uvicorn_config
    monkeypatch.setattr(serve, "uvicorn_config", lambda *a, **kw: config(*a, header_seconds=1.0, **kw))
    server = served(body_timeout=1.0)
    started = time.monotonic()
    assert raw(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n", wait=10) == b""  # headers never end: closed
    assert time.monotonic() - started < 5
    started = time.monotonic()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() + b"\r\nContent-Length: 100\r\n\r\n"
    out = raw(server.port, head + b'{"model"', wait=10)  # a body that never ends: 408
    assert out.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 5
    started = time.monotonic()
    assert raw(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", wait=20, drip=0.2) == b""  # a byte at a time
    assert time.monotonic() - started < 8


# ------------------------------------------------------------------------------ cancellation


def post_and_leave(server, body: bytes, stay: float = 0.3) -> None:
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
            b"\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(head + body)
        time.sleep(stay)


@pytest.mark.parametrize("stream, guard", [(False, False), (False, True), (True, True), (True, False)])
def test_a_client_that_leaves_cancels_its_generation_and_is_counted_once(served, stream, guard):
    """1,000 steps of 20 ms asked for; the client leaves after 0.3 s: the engine drops the request
    within a step or so (with the guard on, "w w w …" has no sentence end: the stream holds it all)."""
    import json

    server = served(guard=guard, engine=SlowEngine(0.02))
    post_and_leave(server, json.dumps(chat(max_tokens=1000, stream=stream)).encode())
    left = time.monotonic()
    while server.app.state.worker.in_flight and time.monotonic() - left < 5:
        time.sleep(0.01)
    assert server.app.state.worker.in_flight == 0 and not server.engine.running
    assert time.monotonic() - left < 1.0
    assert len(server.engine.cancelled) == 1
    time.sleep(0.2)
    samples = {s.labels["outcome"]: s.value for m in server.app.state.metrics.registry.collect()
               if m.name == "r1lite_requests" for s in m.samples if s.name.endswith("_total")}
    assert samples == {"cancelled": 1.0}, samples


# ------------------------------------------------------------------------------ bounds


def test_a_prompt_or_max_tokens_over_the_context_is_refused_naming_it(served):
    server = served()
    server.app.state.service.backend.context = 64
    url = server.url + "/v1/chat/completions"
    long = chat(messages=[{"role": "user", "content": "word " * 100}])
    r = httpx.post(url, json=long, headers=AUTH, timeout=10)
    assert r.status_code == 400 and "64 tokens" in r.json()["error"]["message"], r.text
    assert r.json()["error"]["code"] == "context_length_exceeded" and not server.engine.added
    r = httpx.post(url, json=chat(max_tokens=100), headers=AUTH, timeout=10)
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens", r.text
    assert httpx.post(url, json=chat(max_tokens=50), headers=AUTH, timeout=10).status_code == 200


def test_stop_strings_are_bounded(served):
    server = served()
    url = server.url + "/v1/chat/completions"
    for stop in (["s"] * 5, ["x" * 257], "x" * 900_000):
        r = httpx.post(url, json=chat(stop=stop), headers=AUTH, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == "stop", r.text
    assert httpx.post(url, json=chat(stop=["x" * 256] * 4), headers=AUTH, timeout=10).status_code == 200


def test_the_engine_tokenizes_stop_strings_once_per_sequence(tiny_model):
    from r1lite.engine import Request, Sampling, make_engine
    from r1lite.packaged import stop_token_ids

    model, tokenizer = tiny_model()
    engine = make_engine(model, tokenizer, model.dtype, stop_token_ids(tokenizer, model), 4)
    calls = []
    encode = tokenizer.encode
    tokenizer.encode = lambda *a, **kw: calls.append(a) or encode(*a, **kw)
    sampling = Sampling(max_new_tokens=24, stop=("never in this text " * 10,), ignore_eos=True)
    engine.generate([Request(encode("Hi", add_special_tokens=False), sampling, seed=0)])
    assert len(calls) <= 1, len(calls)


# ------------------------------------------------------------------------------ small ones


def test_a_prompt_that_fails_its_prefill_fails_alone(tiny_model):
    """A prompt with a token id past the vocabulary joins a running batch: it gets the error, the
    request already decoding finishes."""
    import asyncio

    from r1lite.engine import Request, Sampling, make_engine
    from r1lite.packaged import stop_token_ids
    from r1lite.serve.worker import Worker

    model, tokenizer = tiny_model()
    engine = make_engine(model, tokenizer, model.dtype, stop_token_ids(tokenizer, model), 4)
    worker = Worker(engine, 4, 4)

    async def run():
        good = worker.submit(Request([1, 2, 3], Sampling(max_new_tokens=40, ignore_eos=True), seed=0, id="good"))
        await good.queue.get()  # decoding
        bad = worker.submit(Request([1, 10 ** 7], Sampling(max_new_tokens=4), seed=0, id="bad"))
        failure = await asyncio.wait_for(bad.queue.get(), 30)
        last = await asyncio.wait_for(good.queue.get(), 30)
        while last.completion is None:
            last = await asyncio.wait_for(good.queue.get(), 30)
        return failure, last

    try:
        failure, last = asyncio.run(run())
    finally:
        worker.stop()
    assert isinstance(failure, Exception) and last.finish == "length" and len(last.completion.token_ids) == 40


def test_the_api_key_can_come_from_a_file(tmp_path):
    from r1lite.errors import UsageError
    from r1lite.serve import api_key

    key_file = tmp_path / "key"
    key_file.write_text("from-a-file\n")
    assert api_key("", str(key_file)) == "from-a-file"
    assert api_key("given", "") == "given"
    for given, path in (("given", str(key_file)), ("", str(tmp_path / "missing"))):
        with pytest.raises(UsageError):
            api_key(given, path)
    key_file.write_text("\n")
    with pytest.raises(UsageError):
        api_key("", str(key_file))
