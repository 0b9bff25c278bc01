"""The one prompt pipeline: task items → chat messages → rendered text → token ids, and back to a score.

Evaluation, GRPO rollouts, the cold start, SFT data and the benchmarks all build their prompts
here, so a prompt is the same tokens wherever it is used. The prompt formats (:data:`FORMATS`),
the one answer extractor (:func:`extract_answer`) and the scoring of a completion (:func:`score`,
both the eval metric and the training reward) live here too.
"""

from __future__ import annotations

from dataclasses import dataclass

from r1lite import rewards, tasks
from r1lite.errors import UsageError


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
    """The prompts of task items in a format (:func:`build_messages`)."""
    out = []
    for item in items:
        messages, prefill = build_messages(item, task, fmt, prefill_think=prefill_think)
        out.append(Prompt(encode_messages(tokenizer, messages, prefill), prefill, messages))
    return out


FORMATS = ("r1", "plain", "plain:1", "plain:2")
"""Prompt formats: R1's think/answer tags, or one of three plain phrasings (``plain`` is the first)."""


def base_eval_key(phrasing: str) -> str:
    """The summary key of the base model's evaluation with a plain phrasing.

    >>> base_eval_key("plain:2")
    'eval_base_phrasing2'
    """
    return f"eval_base_phrasing{FORMATS.index(phrasing) - 1}"


R1_INSTRUCTION = ("Think through the problem inside <think> </think> tags, then give the final answer "
                  "inside <answer> </answer> tags, like this: <think> reasoning </think> <answer> answer </answer>.")


def build_messages(item: tasks.Item, task: tasks.Task, fmt: str, *, prefill_think: bool = False) -> tuple[list[dict], str]:
    """(chat messages, assistant prefill) for one item: one user message, no system message.

    ``prefill_think`` (r1 only) starts the assistant turn with ``<think>``.

    >>> task = tasks.load_task("arithmetic")
    >>> item = tasks.make_item("What is 2 + 2?", 4, {})
    >>> build_messages(item, task, "plain")
    ([{'role': 'user', 'content': 'What is 2 + 2? Give the answer as a single number.'}], '')
    >>> build_messages(item, task, "r1", prefill_think=True)[1]
    '<think>'
    """
    hint = task.answer_hint
    if fmt == "r1":
        # Instructions first, as in R1-Zero's template: every prompt of a batch then shares them as
        # one token prefix, which the rollout engine prefills once.
        content = f"{R1_INSTRUCTION} {hint}".rstrip() + f"\n\n{item.question}"
        return [{"role": "user", "content": content}], "<think>" if prefill_think else ""
    if prefill_think:
        raise UsageError(f"prefill_think applies to the r1 format only, not '{fmt}'")
    plain = {
        "plain": f"{item.question} {hint}",
        "plain:1": f"{item.question}\n\nThink step by step, then state the final answer. {hint}",
        "plain:2": f"Solve the following problem. {hint}\n\n{item.question}",
    }
    if fmt not in plain:
        raise UsageError(f"unknown prompt format '{fmt}'; use one of {', '.join(FORMATS)}")
    return [{"role": "user", "content": plain[fmt].strip()}], ""


def extract_answer(completion: str, task: tasks.Task, fmt: str, prefill: str = "") -> str | None:
    """The response a task checks, from ``prefill + completion``; None when there is none.

    r1: the one ``<answer>`` block (:func:`r1lite.rewards.r1_answer`). Plain: the last number
    (numeric tasks) or the whole text without end-of-turn tokens.

    >>> extract_answer("so 2 + 2 = 4.<|im_end|>", tasks.load_task("arithmetic"), "plain")
    '4'
    """
    text = prefill + completion
    if fmt == "r1":
        return rewards.r1_answer(text)
    if fmt not in FORMATS:
        raise UsageError(f"unknown prompt format '{fmt}'; use one of {', '.join(FORMATS)}")
    return rewards.last_number(text) if task.numeric else rewards.strip_end(text).strip() or None


def score(completion: str, item: tasks.Item, task: tasks.Task, fmt: str, prefill: str = "") -> dict:
    """``{"accuracy": float | None, "format": float}`` for one completion: the eval metric and the reward.

    The text scored is ``prefill + completion``. Accuracy is ``task.check`` of the extracted response
    (:func:`extract_answer`), 0.0 when there is none, None when the item's gold is unusable (the
    caller skips the item). Format: :func:`r1lite.rewards.r1_format` for r1; for plain formats 1.0
    when a response was found.

    >>> task = tasks.load_task("arithmetic")
    >>> item = tasks.make_item("What is 40 + 38?", 78, {})
    >>> score("40 + 38 = 78.</think> <answer>78</answer>", item, task, "r1", prefill="<think>")
    {'accuracy': 1.0, 'format': 1.0}
    >>> score("It is 78, I think. Or 79", item, task, "plain")
    {'accuracy': 0.0, 'format': 1.0}
    """
    response = extract_answer(completion, task, fmt, prefill)
    accuracy = 0.0 if response is None else task.check(response, item.answer)
    if fmt == "r1":
        return {"accuracy": accuracy, "format": rewards.r1_format(prefill + completion)}
    return {"accuracy": accuracy, "format": 0.0 if response is None else 1.0}
