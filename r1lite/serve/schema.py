"""The request bodies of ``POST /v1/chat/completions`` and ``POST /v1/responses`` as pydantic models
(they are also the OpenAPI schema the server publishes), and what goes back: OpenAI-shaped errors,
completions, streamed chunks as server-sent events, responses (built in :mod:`r1lite.serve.responses`)."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

Effort = Literal["none", "minimal", "low", "medium", "high"]
"""OpenAI's ``reasoning_effort`` (chat) and ``reasoning.effort`` (responses): :data:`r1lite.serve.reasoning.EFFORT_BUDGETS`."""


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    reasoning_content: str | None = None
    """A past assistant turn's thinking: not sent to the model again (DeepSeek's advice)."""
    reasoning: str | None = None
    """The same under vLLM's and Ollama's name: not sent to the model again either."""

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = False


class Thinking(BaseModel):
    type: Literal["enabled", "disabled"]


SCHEMA_NAME = r"^[A-Za-z0-9_-]+$"
"""OpenAI's rule for a structured output schema's ``name``."""


class ChatJsonSchema(BaseModel):
    """``response_format.json_schema``: the schema the answer must fit (:mod:`r1lite.engine.grammar`)."""

    model_config = ConfigDict(populate_by_name=True)

    name: str = Field(max_length=64, pattern=SCHEMA_NAME)
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    """A JSON schema (absent: any JSON value)."""
    description: str | None = None
    strict: bool | None = None
    """Accepted; the schema is enforced either way."""


class ResponseFormat(BaseModel):
    """Structured output: ``{"type": "json_schema", "json_schema": {...}}``, ``{"type": "json_object"}``
    or ``{"type": "text"}`` (free text, the default). Only the answer is constrained: the thinking
    runs free."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: ChatJsonSchema | None = None

    def spec(self) -> dict | None:
        """As :meth:`r1lite.engine.Engine.compile` takes it (None: free text)."""
        if self.type == "text":
            return None
        out: dict = {"type": self.type}
        if self.json_schema is not None:
            out["json_schema"] = {"name": self.json_schema.name, "schema": self.json_schema.schema_ or {}}
        return out


class ChatRequest(BaseModel):
    """OpenAI's chat completion request, with the thinking controls clients send today."""

    model_config = ConfigDict(extra="allow")

    model: str
    messages: list[Message] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int | None = Field(default=None, ge=1)
    tools: Any = None
    tool_choice: Any = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    max_thinking_tokens: int | None = Field(default=None, ge=-1)
    thinking_budget_tokens: int | None = Field(default=None, ge=-1)
    thinking_token_budget: int | None = Field(default=None, ge=-1)
    reasoning_effort: Effort | None = None
    thinking: Thinking | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    ignore_eos: bool | None = None
    """Generate past end-of-turn tokens up to the token budget (vLLM's and llama-server's
    extension; benchmarks that need a fixed number of new tokens on every side)."""

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


# -- the Responses API's request (stateless: r1lite.serve.responses makes it a chat request) ---------------


def tagged(*tags: str, error: str, pick) -> Discriminator:
    """A union told apart by ``pick(value)`` → one of ``tags`` (None: ``error``). A tag has a
    space in it, so it is never a field's name, and :func:`r1lite.serve.responses.invalid` leaves
    it out of the parameter an error names."""
    def tag(value) -> str | None:
        found = pick(value)
        return found if found in tags else None

    return Discriminator(tag, custom_error_type="invalid_type", custom_error_message=error)


def kind(value) -> str | None:
    return value.get("type") if isinstance(value, dict) else getattr(value, "type", None)


class InputText(BaseModel):
    """A message's text part: ``input_text``, or an earlier answer's ``output_text`` sent back."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class InputMessage(BaseModel):
    """A message in ``input``: ``{"role", "content": "…"}`` or OpenAI's message item
    ``{"type": "message", "role", "content": [{"type": "input_text", "text"}]}``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["message"] = "message"
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[InputText]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: Literal["commentary", "final_answer"] | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class InputReasoning(BaseModel):
    """An earlier response's reasoning item sent back: accepted, and not sent to the model again
    (as ``reasoning_content`` is not on chat completions)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[Any] = []
    content: list[Any] | None = None
    encrypted_content: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


InputItem = Annotated[Union[Annotated[InputMessage, Tag("as message")], Annotated[InputReasoning, Tag("as reasoning")]],
                      tagged("as message", "as reasoning", error="an input item is a message or a reasoning item",
                             pick=lambda v: "as reasoning" if kind(v) == "reasoning" else "as message")]
Input = Annotated[Union[Annotated[str, Tag("as text")], Annotated[list[InputItem], Field(min_length=1), Tag("as list")]],
                  tagged("as text", "as list", error="must be a string or a list of messages",
                         pick=lambda v: "as text" if isinstance(v, str) else "as list" if isinstance(v, list) else None)]


class Reasoning(BaseModel):
    model_config = ConfigDict(extra="forbid")

    effort: Effort | None = None
    """The thinking budget, as chat completions' ``reasoning_effort``."""
    summary: Literal["auto", "concise", "detailed"] | None = None
    """Accepted; no summary is written (``summary`` comes back empty)."""


class PlainText(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]


class JsonObject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["json_object"]


class JsonSchema(BaseModel):
    """OpenAI's flat ``text.format`` of type ``json_schema`` (chat completions nest it under ``json_schema``)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["json_schema"]
    name: str = Field(max_length=64, pattern=SCHEMA_NAME)
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


TextFormat = Annotated[Union[Annotated[PlainText, Tag("as text")], Annotated[JsonObject, Tag("as json_object")],
                             Annotated[JsonSchema, Tag("as json_schema")]],
                       tagged("as text", "as json_object", "as json_schema",
                              error="'type' must be text, json_schema or json_object", pick=lambda v: f"as {kind(v)}")]


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    format: TextFormat | None = None


MetadataKey = Annotated[str, Field(max_length=64)]
MetadataValue = Annotated[str, Field(max_length=512)]


class ResponsesRequest(BaseModel):
    """OpenAI's Responses API request, stateless: the whole conversation comes in ``input``. Unknown
    fields are refused (400); so are the ones that need state or tools, set to anything but
    "nothing" (:data:`r1lite.serve.responses.NOT_HERE` says why)."""

    model_config = ConfigDict(extra="forbid")

    model: str
    input: Input
    """The whole conversation: this server keeps none."""
    instructions: str | None = None
    """A system message before ``input``."""
    max_output_tokens: int | None = Field(default=None, ge=1)
    reasoning: Reasoning | None = None
    text: TextConfig | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stream: bool | None = False
    user: str | None = None
    metadata: dict[MetadataKey, MetadataValue] | None = Field(default=None, max_length=16)
    # what needs state or tools: only "nothing" is valid (anything else: a 400 saying why)
    previous_response_id: None = None
    store: Literal[False] | None = None
    tools: list[Any] | None = Field(default=None, max_length=0)
    tool_choice: Literal["none", "auto"] | None = None
    background: Literal[False] | None = None
    conversation: None = None


# -- what goes back: the shapes below are the published OpenAPI schema; the functions build them -------


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """Every error the server answers, 4xx and 5xx (OpenAI's shape: :func:`error_body`)."""

    error: ErrorDetail


class AnswerMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None = None
    """A request with ``response_format`` that the guard blocked: the refusal, with ``content`` null
    (OpenAI's shape for structured outputs; other requests carry the refusal in ``content``)."""
    reasoning_content: str | None = None
    """The thinking (DeepSeek's field); None when there was none (``--reasoning-field`` reasoning_content or both)."""
    reasoning: str | None = None
    """The same, under vLLM's and Ollama's name (``--reasoning-field`` reasoning or both)."""


class Choice(BaseModel):
    index: int
    message: AnswerMessage
    finish_reason: Literal["stop", "length", "cancelled", "content_filter"]


class TokenDetails(BaseModel):
    reasoning_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: TokenDetails


class ContentFilter(BaseModel):
    """Why the guard refused: on the way in (``input``) or out (``output``), the category, by whom."""

    blocked: Literal[True]
    side: Literal["input", "output"]
    category: str
    """``S1``..``S14``, or ``judge_error`` (the judge failed: the guard fails closed)."""
    name: str
    by: Literal["policy", "judge"]


class ChatCompletion(BaseModel):
    """A whole chat completion (:func:`completion`); with ``stream`` the same as server-sent events
    of ``chat.completion.chunk`` s (:func:`chunk`)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    content_filter: ContentFilter | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok", "draining"]
    model: str
    backend: str
    """``torch`` or ``llama.cpp``."""
    in_flight: int
    """Requests admitted (decoding or waiting)."""


class OutputText(BaseModel):
    type: Literal["output_text"]
    text: str
    annotations: list[Any]


class ReasoningText(BaseModel):
    type: Literal["reasoning_text"]
    text: str


class ReasoningItem(BaseModel):
    """The thinking, when there was any: its text in ``content``; ``summary`` is always empty."""

    type: Literal["reasoning"]
    id: str
    summary: list[Any]
    content: list[ReasoningText]


class OutputMessage(BaseModel):
    """The answer (for a request the guard blocked, the refusal)."""

    type: Literal["message"]
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    role: Literal["assistant"]
    content: list[OutputText]


class InputTokens(BaseModel):
    cached_tokens: int
    cache_write_tokens: int


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokens
    output_tokens: int
    output_tokens_details: TokenDetails
    total_tokens: int


class Incomplete(BaseModel):
    reason: Literal["max_output_tokens", "content_filter"]


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    """A response (:mod:`r1lite.serve.responses`); with ``stream`` the Responses API's events, the
    last of them carrying the whole response."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed", "cancelled"]
    model: str
    output: list[Annotated[Union[ReasoningItem, OutputMessage], Field(discriminator="type")]]
    usage: ResponseUsage | None
    incomplete_details: Incomplete | None
    error: ResponseError | None
    instructions: str | None
    max_output_tokens: int | None
    temperature: float
    top_p: float
    reasoning: dict[str, Any]
    text: dict[str, Any]
    tools: list[Any]
    tool_choice: Literal["none"]
    parallel_tool_calls: bool
    store: bool
    background: bool
    previous_response_id: None
    metadata: dict[str, str]
    user: str | None
    content_filter: ContentFilter | None = None
    """As on a chat completion: why the guard refused."""


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def message_fields(reasoning: str | None, content: str | None, field: str = "both") -> dict:
    """A message's (or a delta's) text fields: the answer, and the thinking under DeepSeek's
    ``reasoning_content``, vLLM's and Ollama's ``reasoning``, or ``both`` (``--reasoning-field``).

    >>> message_fields("so", "42", "reasoning")
    {'content': '42', 'reasoning': 'so'}
    """
    out = {"content": content}
    if field in ("reasoning_content", "both"):
        out["reasoning_content"] = reasoning
    if field in ("reasoning", "both"):
        out["reasoning"] = reasoning
    return out


def usage(prompt_tokens: int, completion_tokens: int, reasoning_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": reasoning_tokens}}


def completion(base: dict, fields: dict, finish: str, tokens: dict, content_filter: dict | None = None) -> dict:
    """A whole chat completion (``base``: its id, created and model; ``fields``: :func:`message_fields`)."""
    out = {**base, "object": "chat.completion",
           "choices": [{"index": 0, "message": {"role": "assistant", **fields}, "finish_reason": finish}], "usage": tokens}
    if content_filter is not None:
        out["content_filter"] = content_filter
    return out


def chunk(base: dict, delta: dict, finish: str | None = None, extra: dict | None = None) -> dict:
    """One streamed chunk of a chat completion."""
    return {**base, "object": "chat.completion.chunk", **(extra or {}),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def usage_chunk(base: dict, tokens: dict) -> dict:
    """The last chunk of a stream that asked for ``stream_options.include_usage``."""
    return {**base, "object": "chat.completion.chunk", "choices": [], "usage": tokens}


def sse(data: dict) -> str:
    """One server-sent event.

    >>> sse({"a": 1})
    'data: {"a": 1}\\n\\n'
    """
    return f"data: {json.dumps(data)}\n\n"


DONE = "data: [DONE]\n\n"
"""The event that ends a stream."""
