"""The one prompt pipeline: task items → chat messages → rendered text → token ids.

Evaluation, GRPO rollouts, the cold start, SFT data and the benchmarks all build their prompts
here, so a prompt is the same tokens wherever it is used.
"""

from __future__ import annotations

from dataclasses import dataclass

from r1lite import tasks


@dataclass(frozen=True)
class Prompt:
    """One item's prompt, ready for the engine."""

    ids: list[int]
    """Token ids: the chat template with the assistant turn opened, plus the prefill."""
    prefill: str
    """Text the assistant turn starts with (``<think>`` or ""); the scored text is prefill + completion."""
    messages: list[dict]
    """The chat messages the ids render."""


def render_prompt(tokenizer, messages: list[dict], prefill: str = "") -> str:
    """The text the model continues: the chat template with the assistant turn opened, plus any
    prefill. A tokenizer without a chat template gets the user text followed by a newline."""
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "\n\n".join(m["content"] for m in messages) + "\n"
    return text + prefill


def encode_prompts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of rendered prompts (the chat template already holds any special tokens)."""
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


def encode_messages(tokenizer, messages: list[dict], prefill: str = "") -> list[int]:
    """Token ids of one conversation with the assistant turn opened (and prefilled)."""
    return encode_prompts(tokenizer, [render_prompt(tokenizer, messages, prefill)])[0]


def item_prompts(tokenizer, task: tasks.Task, items: list[tasks.Item], fmt: str, prefill_think: bool = False) -> list[Prompt]:
    """The prompts of task items in a format (:func:`r1lite.tasks.build_messages`)."""
    out = []
    for item in items:
        messages, prefill = tasks.build_messages(item, task, fmt, prefill_think=prefill_think)
        out.append(Prompt(encode_messages(tokenizer, messages, prefill), prefill, messages))
    return out
