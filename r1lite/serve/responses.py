"""``POST /v1/responses``: OpenAI's Responses API, stateless, over the chat completion's steps.

A request becomes a chat request (:func:`chat_request`): ``instructions`` a system message, ``input``
the conversation, ``max_output_tokens`` its ``max_tokens``, ``reasoning.effort`` its
``reasoning_effort`` (the same thinking budgets), ``text.format`` its ``response_format`` (structured
output: :func:`response_format`). It then goes through every step of
:class:`~r1lite.serve.service.ChatService` (limits, the guard on input and output, the budget, the
running batch, the metrics), and its chat completion comes back as a response
(:func:`response_body`) or, streamed, chunk by chunk as the Responses API's events
(:class:`Events`). Nothing is kept: the fields that need state or tools get a 400 (:data:`NOT_HERE`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from r1lite.serve.schema import ChatRequest, InputMessage, ResponsesRequest, TextConfig
from r1lite.serve.service import SSE_HEADERS, BadRequest, ChatService, ServeConfig
from r1lite.serve.service import invalid as chat_invalid

NOT_HERE = {
    "previous_response_id": "this server keeps no responses: send the whole conversation in 'input'",
    "conversation": "this server keeps no conversations: send the whole conversation in 'input'",
    "store": "this server stores no responses: leave 'store' out or send false",
    "background": "a background response needs stored state, which this server does not keep",
    "tools": "tools (function calling) are not supported by r1lite serve",
    "tool_choice": "tools (function calling) are not supported by r1lite serve",
}
"""The fields this server cannot honour, and why: set to anything but what asks for nothing (absent,
null, false, an empty list, a ``tool_choice`` of ``none`` or ``auto``: the schema's
:class:`~r1lite.serve.schema.ResponsesRequest`), a 400 naming the field (:func:`invalid`)."""
FINISH = {"stop": ("completed", None), "length": ("incomplete", "max_output_tokens"),
          "content_filter": ("incomplete", "content_filter"), "cancelled": ("cancelled", None)}
"""A chat completion's ``finish_reason`` → the response's ``status`` and ``incomplete_details.reason``."""
RENAMED = {"max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens",
           "reasoning_effort": "reasoning.effort", "messages": "input", "response_format": "text.format"}
"""A chat request's parameter → the response request's, in the errors the service's steps raise."""


# -- the request --------------------------------------------------------------------------------------


def response_format(text: TextConfig | None) -> dict | None:
    """``text.format`` as chat completions' ``response_format`` (None: plain text): the one place the
    two meet. The Responses API's ``json_schema`` is flat (``name``, ``schema``, ``strict`` beside
    ``type``); chat completions nest it under ``json_schema``."""
    fmt = text.format if text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    schema = {"name": fmt.name, "schema": fmt.schema_}
    schema.update({key: value for key, value in (("description", fmt.description), ("strict", fmt.strict)) if value is not None})
    return {"type": "json_schema", "json_schema": schema}


def chat_request(body: ResponsesRequest) -> ChatRequest:
    """The chat request a response request asks for (:class:`BadRequest` for what this server cannot do)."""
    if isinstance(body.input, str):
        turns = [{"role": "user", "content": body.input}]
    else:  # reasoning items sent back are left out, as reasoning_content is on chat completions
        turns = [{"role": m.role, "content": m.text()} for m in body.input if isinstance(m, InputMessage)]
    if not turns:
        raise BadRequest(400, "'input' has no message", "input")
    system = [{"role": "system", "content": body.instructions}] if body.instructions is not None else []
    fields = {"model": body.model, "messages": system + turns, "stream": bool(body.stream), "max_tokens": body.max_output_tokens,
              "temperature": body.temperature, "top_p": body.top_p, "user": body.user,
              "reasoning_effort": body.reasoning.effort if body.reasoning is not None else None,
              "response_format": response_format(body.text)}
    if body.stream:
        fields["stream_options"] = {"include_usage": True}
    try:
        return ChatRequest.model_validate(fields)
    except ValidationError as e:  # the same bounds as the request's own: not expected
        raise renamed(chat_invalid([{**err, "loc": ("body", *err["loc"])} for err in e.errors()]),
                      bool(system)) from None


def renamed(e: BadRequest, instructions: bool) -> BadRequest:
    """An error of the chat service's steps, naming the response request's parameter (``messages.0``
    is ``instructions`` when they were given)."""
    if e.param is None or (head := e.param.split(".")[0]) not in RENAMED:
        return e
    param = RENAMED[head]
    if head == "messages" and instructions and e.param.startswith("messages.0."):
        param = "instructions"
    if head == "response_format" and e.param.endswith(".schema"):  # flat here: text.format.schema
        param = "text.format.schema"
    message = e.message.replace(e.param, param) if "." in e.param else e.message.replace(f"'{head}'", f"'{param}'")
    return BadRequest(e.status, message, param, e.code, e.type)


def invalid(errors: Sequence[dict]) -> BadRequest:
    """The 400 for a body that does not fit :class:`ResponsesRequest`: a field that needs state or
    tools first (:data:`NOT_HERE`), else its first error, the parameter named without the union's
    tags (:func:`r1lite.serve.schema.tagged`); an unknown field as OpenAI names one.

    >>> e = invalid([{"loc": ("body", "colour"), "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}])
    >>> e.param, e.code, e.message
    ('colour', 'unknown_parameter', "Unknown parameter: 'colour'.")
    """
    for error in errors:
        if len(error["loc"]) > 1 and (name := error["loc"][1]) in NOT_HERE:
            return BadRequest(400, f"'{name}': {NOT_HERE[name]}", name, "unsupported_parameter")
    first = dict(errors[0]) if errors else {"loc": (), "msg": "invalid request"}
    first["loc"] = tuple(x for x in first["loc"] if not (isinstance(x, str) and " " in x))
    if first.get("type") == "extra_forbidden":
        param = ".".join(str(x) for x in first["loc"][1:])
        return BadRequest(400, f"Unknown parameter: '{param}'.", param, "unknown_parameter")
    return chat_invalid([first])


# -- the response -------------------------------------------------------------------------------------


def reasoning_item(item_id: str, text: str | None) -> dict:
    """A reasoning item (``text`` None: as it is added, before its text)."""
    return {"type": "reasoning", "id": item_id, "summary": [], "content": [] if text is None else [part("reasoning", text)]}


def message_item(item_id: str, text: str | None, status: str) -> dict:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [] if text is None else [part("message", text)]}


def part(kind: str, text: str) -> dict:
    return {"type": "reasoning_text", "text": text} if kind == "reasoning" else {"type": "output_text", "text": text, "annotations": []}


def response_usage(usage: dict) -> dict:
    """A chat completion's usage in the Responses API's names (no prompt cache: nothing is cached)."""
    return {"input_tokens": usage["prompt_tokens"], "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": usage["completion_tokens_details"]["reasoning_tokens"]},
            "total_tokens": usage["total_tokens"]}


class Shell:
    """What every response carries: its id (the chat completion's, as ``resp_…``), and the request's
    settings as they were applied."""

    def __init__(self, body: ResponsesRequest, cfg: ServeConfig):
        self.model, self.id, self.hex, self.created = cfg.model_name, "", "", 0
        reasoning = body.reasoning.model_dump() if body.reasoning is not None else {"effort": None, "summary": None}
        self.echo = {"instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
                     "temperature": cfg.temperature if body.temperature is None else body.temperature,
                     "top_p": cfg.top_p if body.top_p is None else body.top_p, "reasoning": reasoning,
                     "text": {"format": body.text.format.model_dump(by_alias=True, exclude_none=True)
                              if body.text is not None and body.text.format is not None else {"type": "text"}},
                     "tools": [], "tool_choice": "none", "parallel_tool_calls": False,
                     "store": False, "background": False, "previous_response_id": None, "metadata": body.metadata or {},
                     "user": body.user}

    def start(self, chunk: dict) -> None:
        """Take the id and time from the chat completion (or its first chunk)."""
        self.hex = chunk.get("id", f"chatcmpl-{uuid.uuid4().hex[:24]}").removeprefix("chatcmpl-")
        self.id, self.created = f"resp_{self.hex}", chunk.get("created", int(time.time()))

    def item_id(self, kind: str, index: int) -> str:
        return f"{'rs' if kind == 'reasoning' else 'msg'}_{self.hex}{index}"

    def response(self, status: str, output: list[dict], usage: dict | None = None, finish: str | None = None,
                 error: dict | None = None, content_filter: dict | None = None) -> dict:
        reason = FINISH.get(finish, (None, None))[1] if status == "incomplete" else None
        out = {"id": self.id, "object": "response", "created_at": self.created, "status": status, "model": self.model,
               "output": output, "usage": response_usage(usage) if usage else None,
               "incomplete_details": {"reason": reason} if reason else None, "error": error, **self.echo}
        if content_filter is not None:
            out["content_filter"] = content_filter
        return out


def status_of(finish: str | None) -> str:
    return FINISH.get(finish, ("incomplete", None))[0]


def response_body(shell: Shell, completion: dict) -> dict:
    """A whole chat completion as a response: the reasoning item (when there was thinking), the message."""
    shell.start(completion)
    choice = completion["choices"][0]
    message, status = choice["message"], status_of(choice["finish_reason"])
    thinking = message.get("reasoning_content") or message.get("reasoning")
    output = [reasoning_item(shell.item_id("reasoning", 0), thinking)] if thinking else []
    text = message.get("content") if message.get("content") is not None else message.get("refusal")  # a structured refusal
    output.append(message_item(shell.item_id("message", len(output)), text or "",
                               "completed" if status == "completed" else "incomplete"))
    return shell.response(status, output, completion["usage"], choice["finish_reason"],
                          content_filter=completion.get("content_filter"))


@dataclass
class Item:
    """An output item as it streams."""

    kind: str
    """``reasoning`` or ``message``."""
    id: str
    index: int
    text: str = ""
    open: bool = True


class Events:
    """A streamed chat completion's chunks (its server-sent events) → the Responses API's events:
    ``response.created``, ``response.in_progress``; per output item ``response.output_item.added``,
    ``response.content_part.added``, the text's ``.delta`` s and ``.done``,
    ``response.content_part.done``, ``response.output_item.done`` (the reasoning item is done when
    the answer starts); then ``response.completed`` or ``response.incomplete`` with the whole
    response (an error: ``error``, then ``response.failed``). Each numbered by ``sequence_number``."""

    def __init__(self, shell: Shell):
        self.shell, self.sequence, self.items = shell, 0, []
        self.finish = self.usage = self.error = self.content_filter = None

    def event(self, kind: str, **fields) -> str:
        data = {"type": kind, **fields, "sequence_number": self.sequence}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data)}\n\n"

    def feed(self, sse: str) -> list[str]:
        """The events for one of the chat completion's server-sent events."""
        data = sse.removeprefix("data: ").strip()
        if data == "[DONE]":
            return self.end()
        chunk = json.loads(data)
        out = [] if self.shell.id else self.begin(chunk)
        if "error" in chunk:
            self.error = chunk["error"]
            return out + [self.event("error", code=self.error["code"], message=self.error["message"], param=self.error["param"])]
        self.usage = chunk.get("usage") or self.usage
        self.content_filter = chunk.get("content_filter") or self.content_filter
        for choice in chunk.get("choices", []):
            delta = choice.get("delta") or {}
            if thinking := delta.get("reasoning_content") or delta.get("reasoning"):
                out += self.text("reasoning", thinking)
            if delta.get("content") or delta.get("refusal"):  # a structured request's refusal is its message
                out += self.text("message", delta.get("content") or delta["refusal"])
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]
                out += self.close_all()
        return out

    def begin(self, chunk: dict) -> list[str]:
        self.shell.start(chunk)
        head = self.shell.response("in_progress", [])
        return [self.event("response.created", response=head), self.event("response.in_progress", response=head)]

    def text(self, kind: str, delta: str) -> list[str]:
        out = []
        if kind == "message":  # the thinking is over when the answer starts
            out += [event for item in self.items if item.kind == "reasoning" and item.open for event in self.close(item)]
        item = next((item for item in self.items if item.kind == kind and item.open), None)
        if item is None:
            item = self.open(kind, out)
        item.text += delta
        if kind == "reasoning":
            return out + [self.event("response.reasoning_text.delta", item_id=item.id, output_index=item.index,
                                     content_index=0, delta=delta)]
        return out + [self.event("response.output_text.delta", item_id=item.id, output_index=item.index, content_index=0,
                                 delta=delta, logprobs=[])]

    def open(self, kind: str, out: list[str]) -> Item:
        item = Item(kind, self.shell.item_id(kind, len(self.items)), len(self.items))
        self.items.append(item)
        added = reasoning_item(item.id, None) if kind == "reasoning" else message_item(item.id, None, "in_progress")
        out += [self.event("response.output_item.added", output_index=item.index, item=added),
                self.event("response.content_part.added", item_id=item.id, output_index=item.index, content_index=0,
                           part=part(kind, ""))]
        return item

    def shape(self, item: Item) -> dict:
        if item.kind == "reasoning":
            return reasoning_item(item.id, item.text)
        return message_item(item.id, item.text, "completed" if status_of(self.finish) == "completed" else "incomplete")

    def close(self, item: Item) -> list[str]:
        item.open = False
        where = {"item_id": item.id, "output_index": item.index, "content_index": 0}
        done = (self.event("response.reasoning_text.done", **where, text=item.text) if item.kind == "reasoning" else
                self.event("response.output_text.done", **where, text=item.text, logprobs=[]))
        return [done, self.event("response.content_part.done", **where, part=part(item.kind, item.text)),
                self.event("response.output_item.done", output_index=item.index, item=self.shape(item))]

    def close_all(self) -> list[str]:
        """At the end: every open item done, and a message even when the answer was empty."""
        out = []
        if not any(item.kind == "message" for item in self.items):
            self.open("message", out)
        return out + [event for item in self.items if item.open for event in self.close(item)]

    def end(self) -> list[str]:
        output = [self.shape(item) for item in self.items]
        if self.error is not None:
            error = {"code": self.error.get("code") or "server_error", "message": self.error["message"]}
            return [self.event("response.failed", response=self.shell.response("failed", output, self.usage, error=error))]
        status = status_of(self.finish)
        final = self.shell.response(status, output, self.usage, self.finish, content_filter=self.content_filter)
        return [self.event("response.completed" if status == "completed" else "response.incomplete", response=final)]


class Responses:
    """``POST /v1/responses`` over a :class:`ChatService`: see the module docstring."""

    def __init__(self, service: ChatService):
        self.service = service

    async def create(self, body: ResponsesRequest, gone=None) -> dict | StreamingResponse | None:
        """A response, or its events; None when the client went away (as :meth:`ChatService.create`)."""
        try:
            chat = chat_request(body)
        except BadRequest:
            if gone is not None:
                gone.cancel()
            raise
        try:
            result = await self.service.create(chat, gone)
        except BadRequest as e:
            raise renamed(e, body.instructions is not None) from None
        shell = Shell(body, self.service.cfg)
        if result is None or isinstance(result, dict):
            return None if result is None else response_body(shell, result)
        return StreamingResponse(self.events(Events(shell), result.body_iterator), media_type="text/event-stream",
                                 headers=SSE_HEADERS)

    @staticmethod
    async def events(events: Events, chunks: AsyncIterator) -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                for event in events.feed(chunk if isinstance(chunk, str) else chunk.decode()):
                    yield event
        finally:
            await chunks.aclose()  # the chat stream's own end: a client that left cancels its generation
