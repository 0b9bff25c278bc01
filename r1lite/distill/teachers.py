"""Teachers for distillation: an OpenAI-compatible endpoint, or a local model through the engine.

A teacher answers :class:`Ask` s (one prompt, one seed) with :class:`Answer` s, or gives up on one
with a :class:`Failure`, calling ``on_result`` as each finishes, so the caller can write every
result down before the next one arrives. Two kinds, one interface (``identity``, ``preflight()``,
``run(asks, on_result)``):

- :class:`EndpointTeacher` — any OpenAI-compatible ``/chat/completions``: the DeepSeek API, vLLM,
  SGLang, llama.cpp's server, Ollama, ``r1lite serve``. One pre-flight request first, never
  retried: a refused connection, a DNS failure, a refused key or an unknown model stops the run
  before anything is written. Then requests run ``concurrency`` at a time, each within ``timeout``
  seconds from sending to the answer's last byte (a teacher that trickles bytes cannot hold one
  longer); timeouts, 429 and 5xx answers and dropped connections are retried with exponential
  backoff (``backoff · 2^attempt`` seconds, or the server's ``Retry-After`` when it sends one, at
  most :data:`MAX_WAIT_SECONDS`); an answer that is not the expected JSON is retried too. After
  ``max_retries`` retries the ask is a failure for that prompt. Other 4xx answers (a prompt too
  long, say) are failures at once: asking again cannot help; so is an answer over
  :data:`MAX_ANSWER_BYTES`, of which no more is read.
- :class:`LocalTeacher` — a model ``--model`` takes (``default``, a run directory, a Hugging Face
  directory, a GGUF file on llama.cpp) through :mod:`r1lite.engine`: each ask's tokens depend only
  on its seed, so a local teacher's traces can be reproduced exactly.

Both send the messages as they are: the teacher's own chat template renders them (for a local
model, its tokenizer's template; a local base model whose template is r1_zero, the R1 paper's plain
template: :func:`r1lite.prompts.resolve_template`, with ``</answer>`` as a stop). A GGUF that ``r1lite export`` made from a run applies the run's
prompt format in its template, so give such a teacher ``--format`` prompts without that format
(or export the run's ``final/`` directory, whose template adds nothing).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from urllib.parse import urlsplit, urlunsplit

from r1lite.errors import UsageError

MAX_WAIT_SECONDS = 60.0
"""The longest a retry waits: a ``Retry-After`` header asking for more is capped at 60 s, so a
teacher cannot park a run for ten minutes per request (a prompt refused through every retry fails)."""
MAX_ANSWER_BYTES = 4 * 2**20
"""The most an answer's body may take, 4 MiB (the text of a 64k-token answer is about 0.25 MiB): a
longer one fails its request as ``too_large`` at once, the rest never read."""


@dataclass(frozen=True)
class TeacherSampling:
    """What every ask is sampled with."""

    temperature: float
    top_p: float
    max_tokens: int
    """Token budget of the whole answer, thinking included (as the DeepSeek API counts it)."""


@dataclass(frozen=True)
class Ask:
    """One request: a prompt's messages and the seed of this sample."""

    key: tuple[str, int]
    """(prompt id, sample index): what resuming skips once it has an answer."""
    messages: list[dict]
    seed: int


@dataclass
class Answer:
    """What the teacher said, as it said it."""

    key: tuple[str, int]
    content: str
    """The message's ``content`` ("" when the endpoint sent null)."""
    fields: dict
    """The reasoning fields the message carried: ``reasoning_content``, ``reasoning`` (str or None)."""
    finish_reason: str
    usage: dict
    """prompt_tokens, completion_tokens, total_tokens, and reasoning_tokens where given."""
    reported: dict
    """What the endpoint reported back about itself (model id, response id, fingerprint, engine)."""
    attempts: int
    timestamp: str = field(default_factory=lambda: now())


@dataclass
class Failure:
    """An ask the teacher never answered usably."""

    key: tuple[str, int]
    kind: str
    """timeout, connection, http_<status>, malformed or too_large."""
    error: str
    """The last error, one line."""
    attempts: int
    timestamp: str = field(default_factory=lambda: now())


class TooLarge(Exception):
    """An answer over :data:`MAX_ANSWER_BYTES`."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def public_url(url: str) -> str:
    """A URL without credentials: no user or password, no query string (keys travel there too).

    >>> public_url("https://user:secret@api.example.com/v1?key=abc")
    'https://api.example.com/v1'
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def retry_after_seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (delay-seconds or an HTTP date), None when absent or unreadable.

    >>> retry_after_seconds("3"), retry_after_seconds(None), retry_after_seconds("soon")
    (3.0, None, None)
    """
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def backoff_seconds(attempt: int, base: float, retry_after: float | None) -> float:
    """Seconds to wait before retry ``attempt`` (0 = the first retry): the server's Retry-After when
    it sent one, else ``base · 2^attempt``; at most :data:`MAX_WAIT_SECONDS`.

    >>> backoff_seconds(0, 1.0, None), backoff_seconds(3, 1.0, None), backoff_seconds(0, 1.0, 7.0)
    (1.0, 8.0, 7.0)
    """
    wait = retry_after if retry_after is not None else base * 2 ** attempt
    return min(MAX_WAIT_SECONDS, wait)


def parse_choice(body: object) -> tuple[str, dict, str, dict, dict]:
    """(content, reasoning fields, finish_reason, usage, reported) of a chat completion body.

    Raises ValueError when the body is not a chat completion (retried as a malformed answer).

    >>> parse_choice({"model": "m", "choices": [{"message": {"content": "4", "reasoning_content": "2+2"},
    ...   "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8,
    ...   "completion_tokens_details": {"reasoning_tokens": 2}}})[:4]
    ('4', {'reasoning_content': '2+2', 'reasoning': None}, 'stop', {'prompt_tokens': 5, 'completion_tokens': 3, 'total_tokens': 8, 'reasoning_tokens': 2})
    """
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list) or not body["choices"]:
        raise ValueError("no 'choices' in the answer")
    choice = body["choices"][0]
    message = choice.get("message") if isinstance(choice, dict) else None
    if not isinstance(message, dict):
        raise ValueError("the first choice has no 'message'")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise ValueError(f"'content' is a {type(content).__name__}, not a string")
    fields = {}
    for name in ("reasoning_content", "reasoning"):
        value = message.get(name)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"'{name}' is a {type(value).__name__}, not a string")
        fields[name] = value
    finish = choice.get("finish_reason")
    if not isinstance(finish, str):
        raise ValueError("the first choice has no 'finish_reason'")
    raw_usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    usage = {k: raw_usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens") if isinstance(raw_usage.get(k), int)}
    details = raw_usage.get("completion_tokens_details")
    if isinstance(details, dict) and isinstance(details.get("reasoning_tokens"), int):
        usage["reasoning_tokens"] = details["reasoning_tokens"]
    reported = {k: body[k] for k in ("model", "id", "system_fingerprint", "created") if body.get(k) is not None}
    return content or "", fields, finish, usage, reported


# ---------------------------------------------------------------------------------------------
# An OpenAI-compatible endpoint


@dataclass(frozen=True)
class EndpointConfig:
    url: str
    """Base URL: requests go to ``<url>/chat/completions`` and ``<url>/models``."""
    model: str
    """Model id to ask for; "" = the one model the endpoint lists."""
    api_key: str | None
    key_source: str
    """Where the key came from (``$NAME``), for error messages."""
    timeout: float
    """Seconds one request may take, from sending it to the answer's last byte, before it is retried."""
    max_retries: int
    backoff: float
    """Seconds before the first retry; doubled for each further one."""
    concurrency: int


class EndpointTeacher:
    """An OpenAI-compatible chat completions endpoint; see the module docstring."""

    def __init__(self, cfg: EndpointConfig, sampling: TeacherSampling):
        self.cfg, self.sampling = cfg, sampling
        self.base = cfg.url.rstrip("/")
        self.model = cfg.model
        self.headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}

    @property
    def identity(self) -> dict:
        return {"model": self.model, "kind": "openai-compatible", "url": public_url(self.cfg.url)}

    def _refused(self, status: int, what: str) -> UsageError:
        fix = (f"set a valid key in {self.cfg.key_source}" if self.cfg.api_key
               else "the endpoint needs a key: name the variable that holds it with --api-key-env NAME")
        return UsageError(f"--teacher {public_url(self.cfg.url)}: {what} was refused ({status}); {fix}")

    def preflight(self) -> None:
        """One request before any other, not retried: ``GET /models`` (or, where that is not
        served, a 1-token chat call). Fixes the model id when none was given."""
        import httpx

        where = public_url(self.cfg.url)
        try:
            r = httpx.get(f"{self.base}/models", headers=self.headers, timeout=self.cfg.timeout)
            if r.status_code in (404, 405):
                return self._preflight_chat()
        except httpx.ConnectError as e:
            raise UsageError(f"--teacher {where}: cannot connect ({reason(e)}); start the server or fix the URL") from None
        except httpx.TimeoutException:
            raise UsageError(f"--teacher {where}: no answer within {self.cfg.timeout:g} s (--timeout); "
                             "is the server up?") from None
        except httpx.HTTPError as e:
            raise UsageError(f"--teacher {where}: {reason(e)}; fix the URL") from None
        if r.status_code in (401, 403):
            raise self._refused(r.status_code, "the key")
        if r.status_code != 200:
            raise UsageError(f"--teacher {where}: GET /models answered {r.status_code}; is this an OpenAI-compatible base URL "
                             "(vLLM, llama.cpp and r1lite serve it under /v1)?")
        try:
            ids = [m["id"] for m in r.json()["data"]]
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"--teacher {where}: GET /models did not list models; pass an OpenAI-compatible base URL") from None
        if self.model and self.model not in ids:
            raise UsageError(f"--teacher {where} serves {', '.join(ids) or 'no model'}, not '{self.model}'; "
                             f"pass --teacher-model with one of them")
        if not self.model:
            if len(ids) != 1:
                raise UsageError(f"--teacher {where} serves {len(ids)} models ({', '.join(ids[:8])}); "
                                 "name one with --teacher-model")
            self.model = ids[0]

    def _preflight_chat(self) -> None:
        import httpx

        where = public_url(self.cfg.url)
        if not self.model:
            raise UsageError(f"--teacher {where} lists no models (GET /models: 404); name the model with --teacher-model")
        body = {"model": self.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
        r = httpx.post(f"{self.base}/chat/completions", json=body, headers=self.headers, timeout=self.cfg.timeout)
        if r.status_code in (401, 403):
            raise self._refused(r.status_code, "the key")
        if r.status_code == 404:
            raise UsageError(f"--teacher {where}: no /chat/completions there, or no model '{self.model}' (404); "
                             "check the URL (OpenAI-compatible servers serve under /v1) and --teacher-model")
        if r.status_code != 200:
            raise UsageError(f"--teacher {where}: a 1-token test call answered {r.status_code}: {r.text[:200]!r}")

    def run(self, asks: Iterable[Ask], on_result: Callable[[Answer | Failure], None]) -> None:
        """Ask everything, ``concurrency`` at a time; ``on_result`` gets each result as it comes."""
        asyncio.run(self._run(iter(asks), on_result))

    async def _run(self, asks, on_result) -> None:
        import httpx

        limits = httpx.Limits(max_connections=self.cfg.concurrency, max_keepalive_connections=self.cfg.concurrency)
        async with httpx.AsyncClient(headers=self.headers, limits=limits, timeout=self.cfg.timeout) as client:
            async def worker() -> None:
                for ask in asks:  # one iterator shared by the workers: each ask is taken once
                    on_result(await self._ask(client, ask))

            await asyncio.gather(*(worker() for _ in range(self.cfg.concurrency)))

    def body(self, ask: Ask) -> dict:
        s = self.sampling
        return {"model": self.model, "messages": ask.messages, "temperature": s.temperature, "top_p": s.top_p,
                "max_tokens": s.max_tokens, "seed": ask.seed, "stream": False}

    async def _ask(self, client, ask: Ask) -> Answer | Failure:
        import httpx

        body = self.body(ask)
        kind, error = "", ""
        for attempt in range(self.cfg.max_retries + 1):
            retry_after = None
            try:  # the deadline is the whole request's: httpx's own timeout bounds each read only
                status, headers, data = await asyncio.wait_for(self._post(client, body), self.cfg.timeout)
            except (TimeoutError, httpx.TimeoutException):
                kind, error = "timeout", f"no whole answer within {self.cfg.timeout:g} s"
            except TooLarge as e:
                return Failure(ask.key, "too_large", str(e), attempt + 1)
            except httpx.TransportError as e:
                kind, error = "connection", reason(e)
            else:
                if status == 200:
                    try:
                        content, fields, finish, usage, reported = parse_choice(json.loads(data))
                        return Answer(ask.key, content, fields, finish, usage, reported, attempt + 1)
                    except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
                        kind, error = "malformed", f"malformed answer: {str(e).splitlines()[0][:160]}"
                else:
                    text = data.decode(errors="replace")
                    kind, error = f"http_{status}", f"HTTP {status}: {' '.join(text.split())[:160]}"
                    if status != 429 and status < 500:
                        return Failure(ask.key, kind, error, attempt + 1)
                    retry_after = retry_after_seconds(headers.get("retry-after"))
            if attempt < self.cfg.max_retries:
                await asyncio.sleep(backoff_seconds(attempt, self.cfg.backoff, retry_after))
        return Failure(ask.key, kind, error, self.cfg.max_retries + 1)

    async def _post(self, client, body: dict) -> tuple[int, Mapping[str, str], bytes]:
        """One chat request: its status, headers and body, read as it streams in and given up
        (:class:`TooLarge`) past :data:`MAX_ANSWER_BYTES`, declared or sent."""
        async with client.stream("POST", f"{self.base}/chat/completions", json=body) as r:
            declared = r.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
                raise TooLarge(f"the answer declares {int(declared):,} bytes, over the {MAX_ANSWER_BYTES // 2**20} MiB "
                               "an answer may take; not read")
            data = bytearray()
            async for chunk in r.aiter_bytes():
                data += chunk
                if len(data) > MAX_ANSWER_BYTES:
                    raise TooLarge(f"the answer is over the {MAX_ANSWER_BYTES // 2**20} MiB an answer may take; "
                                   "stopped reading it")
            return r.status_code, r.headers, bytes(data)


def reason(e: Exception) -> str:
    """The innermost cause of a transport error, one line (``[Errno 111] Connection refused``)."""
    while e.__cause__ is not None or e.__context__ is not None:
        e = e.__cause__ or e.__context__
    return " ".join(str(e).split())[:160] or type(e).__name__


# ---------------------------------------------------------------------------------------------
# A local model through the engine


class LocalTeacher:
    """A model ``--model`` takes, through the engine (PyTorch, or llama.cpp for a GGUF)."""

    def __init__(self, spec: str, sampling: TeacherSampling, concurrency: int, device: str, dtype: str,
                 template: str = "chat", fmt: str = "r1"):
        from r1lite.edge.backends import open_model
        from r1lite.engine.sampling import check_budget
        from r1lite.prompts import stop_strings

        self.spec, self.sampling = spec, sampling
        self.template, self.stop = template, stop_strings(template, fmt)  # how an ask's messages become its prompt
        self.backend = open_model(spec, device, dtype, max_rows=concurrency)
        check_budget(sampling.max_tokens, self.backend.context)

    @property
    def identity(self) -> dict:
        return {"model": self.spec, "kind": f"local:{self.backend.kind}", "url": None}

    def preflight(self) -> None:
        """Nothing to ask first: loading the model was the check."""

    @property
    def stats(self):
        """The engine's counters: tokens, FLOPs and seconds the teacher spent."""
        return self.backend.engine.stats

    def run(self, asks: Iterable[Ask], on_result: Callable[[Answer | Failure], None]) -> None:
        """Every ask joins the engine's running batch; each result is handed on as its sequence ends.
        The longest prompt and the token budget must fit the model's context, checked before any is asked."""
        from r1lite.engine import Request, Sampling
        from r1lite.engine.sampling import check_budget
        from r1lite.prompts import encode_messages

        engine, tokenizer = self.backend.engine, self.backend.tokenizer
        s = self.sampling
        sampling = Sampling(max_new_tokens=s.max_tokens, temperature=s.temperature, top_p=s.top_p, stop=self.stop)
        encoded = [(ask, encode_messages(tokenizer, ask.messages, template=self.template)) for ask in asks]
        check_budget(s.max_tokens, self.backend.context, max((len(ids) for _, ids in encoded), default=0))
        pending: dict[str, tuple[Ask, int]] = {}
        for ask, ids in encoded:
            pending[engine.add(Request(ids, sampling, n=1, seed=ask.seed))] = (ask, len(ids))
        saved, engine.join_at = engine.join_at, max(1, engine.max_rows // 4)  # as generate() batches
        try:
            while engine.has_work:
                for delta in engine.step():
                    if delta.completion is not None and delta.request_id in pending:
                        ask, prompt_tokens = pending.pop(delta.request_id)
                        on_result(self._answer(ask, prompt_tokens, delta.completion))
        finally:
            engine.join_at = saved

    def _answer(self, ask: Ask, prompt_tokens: int, completion) -> Answer:
        from r1lite.rewards import THINK_CLOSE, THINK_OPEN

        text = completion.text
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(completion.token_ids),
                 "total_tokens": prompt_tokens + len(completion.token_ids)}
        if THINK_OPEN in text and THINK_CLOSE in text:
            inside = text[text.find(THINK_OPEN) + len(THINK_OPEN):text.find(THINK_CLOSE)]
            usage["reasoning_tokens"] = len(self.backend.tokenizer.encode(inside, add_special_tokens=False))
        return Answer(ask.key, text, {"reasoning_content": None, "reasoning": None}, completion.finish, usage,
                      {"engine": self.backend.kind, "model": self.backend.name}, 1)
