"""The request body of ``POST /v1/chat/completions`` as pydantic models (they are also the OpenAPI
schema the server publishes), and OpenAI-shaped errors."""

from __future__ import annotations

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


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
