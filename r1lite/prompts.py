"""The one prompt pipeline: task items → chat messages → rendered text → token ids, and back to a score.

Evaluation, GRPO rollouts, the cold start, SFT data and the benchmarks all build their prompts
here, so a prompt is the same tokens wherever it is used. The prompt formats (:data:`FORMATS`),
the one answer extractor (:func:`extract_answer`) and the scoring of a completion (:func:`score`,
both the eval metric and the training reward) live here too.

Two prompt templates (:data:`TEMPLATES`) turn messages into text: ``chat``, the model's own chat
template (the R1 instruction in the user turn, :data:`R1_INSTRUCTION`), and ``r1_zero``, the plain
template of the R1 paper (Table 1, :data:`R1_ZERO`) for base models, which have no chat template to
follow. :func:`resolve_template` decides ``auto`` from the model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from r1lite import rewards, tasks
from r1lite.config import read_yaml
from r1lite.errors import UsageError


@dataclass(frozen=True)
class Prompt:
    """One item's prompt, ready for the engine."""

    ids: list[int]
    """Token ids: the chat template (or r1_zero's) with the assistant turn opened, plus the prefill."""
    prefill: str
    """Text the assistant turn starts with (``<think>`` or ""); the scored text is prefill + completion."""
    messages: list[dict]
    """The chat messages the ids render."""


def render_prompt(tokenizer, messages: list[dict], prefill: str = "", template: str = "chat") -> str:
    """The text the model continues: the chat template with the assistant turn opened, plus any
    prefill. A tokenizer without a chat template gets the user text followed by a newline.
    ``template`` r1_zero: :func:`r1_zero_text` instead, then a space and the prefill (if any)."""
    if template == "r1_zero":
        return r1_zero_text(messages) + (f" {prefill}" if prefill else "")
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "\n\n".join(m["content"] for m in messages) + "\n"
    return text + prefill


def encode_prompts(tokenizer, texts: list[str], plain: bool = False) -> list[list[int]]:
    """Token ids of rendered prompts. A chat template already holds any special tokens; ``plain``
    text (no chat template: r1_zero, or a tokenizer without one) starts with the tokenizer's bos,
    exactly once (:func:`with_bos`)."""
    ids = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    return [with_bos(tokenizer, i) for i in ids] if plain else ids


def with_bos(tokenizer, ids: list[int]) -> list[int]:
    """``ids`` with the tokenizer's bos first, exactly once (unchanged when it has none).

    A base model was trained on documents that start with its bos (Gemma's ``<bos>``: without it
    the model writes nonsense); a chat template writes it itself, plain text does not. The bos is
    prepended rather than left to ``add_special_tokens``, which adds none for some tokenizers (the
    embedded SmolLM2's, whose bos is ``<|im_start|>``) and would double one typed in the text."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return ids
    start = 0
    while start < len(ids) and ids[start] == bos:
        start += 1
    return [bos] + ids[start:]


def encode_messages(tokenizer, messages: list[dict], prefill: str = "", template: str = "chat") -> list[int]:
    """Token ids of one conversation with the assistant turn opened (and prefilled)."""
    plain = template == "r1_zero" or not tokenizer.chat_template
    return encode_prompts(tokenizer, [render_prompt(tokenizer, messages, prefill, template)], plain)[0]


def item_prompts(tokenizer, task: tasks.Task, items: list[tasks.Item], fmt: str, prefill_think: bool = False,
                 template: str = "chat") -> list[Prompt]:
    """The prompts of task items in a format and template (:func:`build_messages`)."""
    out = []
    for item in items:
        messages, prefill = build_messages(item, task, fmt, prefill_think=prefill_think, template=template)
        out.append(Prompt(encode_messages(tokenizer, messages, prefill, template), prefill, messages))
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


TEMPLATES = ("chat", "r1_zero")
"""Prompt templates: the model's chat template, or R1-Zero's plain one (``auto`` picks: :func:`resolve_template`)."""

TEMPLATE_HELP = ("prompt template: chat (the model's chat template), r1_zero (the R1 paper's plain template for "
                 "base models; r1 format only) or auto (r1_zero for gemma3-270m, tiny-gemma3 and runs trained with "
                 "it, chat otherwise)")
"""The help of every command's ``template`` key."""

PREFILL_HELP = "open the assistant turn with <think> (unset = on under template r1_zero, off under chat)"

R1_ZERO = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
           "The assistant first thinks about the reasoning process in the mind and then provides the user with the "
           "answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
           "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>.")
"""The R1 paper's template for DeepSeek-R1-Zero (Table 1), up to its ``User: prompt. Assistant:``."""

R1_ZERO_STOP = "</answer>"
"""Where an r1_zero completion ends: a base model rarely writes its end-of-text token after the answer."""

SENTENCE_END = (".", "?", "!")


def r1_zero_question(text: str) -> str:
    """A user's text as it goes after ``User:``: stripped, and ending in the template's full stop
    unless it already ends a sentence (``.``, ``?`` or ``!``: no ``?.``).

    >>> r1_zero_question("What is 2 + 2? Give the answer as a single number."), r1_zero_question(" Add 2 and 2 ")
    ('What is 2 + 2? Give the answer as a single number.', 'Add 2 and 2.')
    """
    text = text.strip()
    return text if text.endswith(SENTENCE_END) else text + "."


def r1_zero_text(messages: list[dict]) -> str:
    """A conversation in the R1 paper's template, as plain text ending at ``Assistant:`` (no chat
    template, no special tokens: :func:`encode_messages` puts the bos first).

    One question: ``{R1_ZERO} User: {question}. Assistant:``. More turns go on the same line, each
    past answer after its ``Assistant:`` (``… User: q1. Assistant: a1 User: q2. Assistant:``).
    System messages, wherever they are, come first, each on its own line, before the template's
    text (an OpenAI client may send one; refusing it would refuse the client). Any other role is
    the user's.

    >>> r1_zero_text([{"role": "user", "content": "What is 2 + 2?"}]).endswith("</answer>. User: What is 2 + 2? Assistant:")
    True
    """
    system = "".join(f"{m['content'].strip()}\n" for m in messages if m["role"] == "system" and m["content"].strip())
    text = system + R1_ZERO
    for m in messages:
        if m["role"] == "assistant":
            answer = m["content"].strip()
            text += " Assistant:" + (f" {answer}" if answer else "")
        elif m["role"] != "system":
            text += f" User: {r1_zero_question(m['content'])}"
    return text + " Assistant:"


def check_template(template: str, fmt: str) -> None:
    """Refuse an unknown template, and r1_zero with a plain format (its text asks for the tags)."""
    if template not in TEMPLATES:
        raise UsageError(f"template '{template}' is unknown; use auto, {' or '.join(TEMPLATES)}")
    if template == "r1_zero" and fmt != "r1":
        raise UsageError(f"template r1_zero with format {fmt}: R1-Zero's template asks for <think> and <answer> tags, "
                         "so it takes the r1 format only; drop the format (r1 is the default) or use template chat")


def resolve_template(template: str, model: str, fmt: str = "r1") -> str:
    """The template a command uses: ``template`` itself unless it is ``auto`` (checked against the
    format either way), and for ``auto`` with the r1 format the model's own (:func:`model_template`);
    a plain format is rendered with the chat template (r1_zero has no plain phrasing).

    >>> resolve_template("auto", "gemma3-270m"), resolve_template("auto", "default"), resolve_template("auto", "gemma3-270m", "plain")
    ('r1_zero', 'chat', 'chat')
    """
    if template == "auto":
        return model_template(model) if fmt == "r1" and model else "chat"
    check_template(template, fmt)
    return template


def model_template(spec: str) -> str:
    """r1_zero for a base model, chat otherwise, read from the spec without loading anything:

    - ``gemma3-270m`` and ``tiny-gemma3`` (base models): r1_zero; the other names: chat;
    - a run directory (``config.yaml``; also its ``final/``): the template the run recorded (chat for
      a run from before templates);
    - a model directory: r1_zero when its ``config.json`` says Gemma 3 (``model_type`` gemma3_text)
      and it has no chat template (Gemma 3 270M as Google published the base model; an instruct
      Gemma carries one); chat for any other model, base or not (pass ``template r1_zero`` for those);
    - a LoRA adapter directory: its base's; ``FILE.gguf``: the template an r1lite export recorded in
      it (``r1lite.template``), else chat; a hub id: chat.
    """
    from r1lite.packaged import GEMMA, NAMED  # here: it imports torch, which a command's flags need not

    if spec in NAMED:
        return "r1_zero" if spec in (GEMMA, "tiny-gemma3") else "chat"  # the base models
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        return gguf_template(path)
    for run_dir in (path, path.parent if path.name == "final" else None):
        if run_dir is not None and (run_dir / "config.yaml").is_file():
            try:
                config = read_yaml(run_dir / "config.yaml")
            except UsageError:  # damaged: what reads the run for more than its template says so
                config = {}
            if "task" in config:  # a run's config
                recorded = config.get("template", "chat")
                return recorded if recorded in TEMPLATES else "chat"
    model_dir = path / "final" if (path / "final" / "config.json").is_file() else path
    try:
        if (model_dir / "adapter_config.json").is_file():
            base = json.loads((model_dir / "adapter_config.json").read_text()).get("base_model_name_or_path")
            return model_template(base) if isinstance(base, str) and base else "chat"
        if (model_dir / "config.json").is_file():
            config = json.loads((model_dir / "config.json").read_text())
            if config.get("model_type") in ("gemma3_text", "gemma3") and not has_chat_template(model_dir):
                return "r1_zero"
    except (OSError, ValueError, AttributeError):
        pass  # a damaged directory: loading it says what is wrong
    return "chat"


def has_chat_template(model_dir: Path) -> bool:
    """Whether a model directory's tokenizer carries a chat template (``chat_template.jinja``, or
    ``chat_template`` in ``tokenizer_config.json``)."""
    if (model_dir / "chat_template.jinja").is_file() or (model_dir / "chat_template.json").is_file():
        return True
    config = model_dir / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))


def gguf_template(path: Path) -> str:
    """The template an r1lite export recorded in a GGUF file's metadata (``r1lite.template``), else chat."""
    from r1lite.gguf_header import metadata

    try:
        name = metadata(path).get("r1lite.template", "chat")
    except Exception:  # noqa: BLE001 - damaged or not a GGUF: opening it says why
        return "chat"
    return name if name in TEMPLATES else "chat"


def default_prefill(template: str, fmt: str) -> bool:
    """Whether ``<think>`` is pre-filled when ``prefill_think`` is unset: under r1_zero, yes.

    The R1 paper's R1-Zero prompt ends at ``Assistant:``, but DeepSeek's base model was 671B: a
    270M base model rarely opens ``<think>`` by itself, and even pre-filled its format rate is
    1-8%; without the prefill nearly every reward of a group is 0 and GRPO has no signal. The
    prefill is the smallest departure that gives one (``--no-prefill-think`` restores the paper's
    prompt). Under chat, no: the instruction asks for the tags, and an instruct model writes them.
    """
    return template == "r1_zero" and fmt == "r1"


def stop_strings(template: str, fmt: str) -> tuple[str, ...]:
    """Stop strings a completion needs besides the end-of-text tokens: ``</answer>`` under r1_zero."""
    return (R1_ZERO_STOP,) if template == "r1_zero" and fmt == "r1" else ()


def stopped_text(text: str, stops: tuple[str, ...] | list[str]) -> str:
    """A completion's text cut right after the first stop string it holds (as OpenAI's ``stop``
    ends it): the token that completed the stop string may carry a character or two past it
    (``>.``), which would make an r1 answer malformed. The reward reads this text; the tokens
    trained on are the completion's own.

    >>> stopped_text("<think>x</think> <answer>4</answer>.", ("</answer>",))
    '<think>x</think> <answer>4</answer>'
    """
    ends = [text.find(s) + len(s) for s in stops if s in text]
    return text[:min(ends)] if ends else text


def completion_start(template: str, prefill: str) -> str:
    """What joins an r1_zero prompt and a completion written for it (SFT data): the space after
    ``Assistant:`` that the model writes itself when nothing is pre-filled; "" otherwise."""
    return " " if template == "r1_zero" and not prefill else ""


def build_messages(item: tasks.Item, task: tasks.Task, fmt: str, *, prefill_think: bool = False,
                   template: str = "chat") -> tuple[list[dict], str]:
    """(chat messages, assistant prefill) for one item: one user message, no system message.

    ``prefill_think`` (r1 only) starts the assistant turn with ``<think>``. ``template`` r1_zero
    (r1 only): the user message is the question and its answer hint, which :func:`r1_zero_text`
    puts into the paper's template (the template itself asks for the tags).

    >>> task = tasks.load_task("arithmetic")
    >>> item = tasks.make_item("What is 2 + 2?", 4, {})
    >>> build_messages(item, task, "plain")
    ([{'role': 'user', 'content': 'What is 2 + 2? Give the answer as a single number.'}], '')
    >>> build_messages(item, task, "r1", prefill_think=True)[1]
    '<think>'
    >>> build_messages(item, task, "r1", template="r1_zero")[0][0]["content"]
    'What is 2 + 2? Give the answer as a single number.'
    """
    hint = task.answer_hint
    check_template(template, fmt if fmt in FORMATS else "r1")
    if fmt == "r1" and template == "r1_zero":
        return [{"role": "user", "content": f"{item.question.strip()} {hint}".strip()}], "<think>" if prefill_think else ""
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


def answer_checkable(completion: str, task: tasks.Task, fmt: str, prefill: str = "") -> float:
    """1.0 when the response is of the kind the task checks, right or wrong: one number for a numeric
    task, any non-empty text otherwise; else 0.0. The ``answer_format`` reward: a format reward that
    a template's placeholder (``<answer> answer </answer>``) does not earn.

    >>> task = tasks.load_task("arithmetic")
    >>> [answer_checkable(t, task, "r1", "<think>") for t in ("x</think> <answer>79</answer>", "x</think> <answer> answer </answer>")]
    [1.0, 0.0]
    """
    response = extract_answer(completion, task, fmt, prefill)
    if response is None or not response.strip():
        return 0.0
    return 1.0 if not task.numeric or rewards.parse_number(response) is not None else 0.0


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
