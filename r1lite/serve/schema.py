"""The request body of ``POST /v1/chat/completions`` as pydantic models (they are also the OpenAPI
schema the server publishes), and what goes back: OpenAI-shaped errors, completions, streamed
chunks as server-sent events."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    reasoning_content: str | None = None
    """A past assistant turn's thinking: not sent to the model again (DeepSeek's advice)."""

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
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    thinking: Thinking | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    user: str | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


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
    reasoning_content: str | None
    """The thinking (DeepSeek's field); None when there was none."""
    reasoning: str | None = None
    """The same, under vLLM's and Ollama's name (``--reasoning-field both`` only)."""


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


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def message_fields(reasoning: str | None, content: str | None, both: bool = False) -> dict:
    """A message's (or a delta's) text fields: DeepSeek's ``reasoning_content``, and with ``both``
    vLLM's and Ollama's ``reasoning`` too."""
    out = {"content": content, "reasoning_content": reasoning}
    if both:
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
