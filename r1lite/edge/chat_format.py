"""A run's prompt format as chat templates that other runtimes apply with no flags: Jinja for
llama.cpp (and transformers), Go ``text/template`` for Ollama.

r1lite renders a prompt as ``build_messages`` (the task's instruction around the question, an
optional ``<think>`` prefill) through the model's own chat template. The exported templates do the
same to a raw user message: the instruction's text before and after the question, the model's
default system turn when none is given, and the prefill after the assistant turn opens. ChatML
models only (SmolLM2, Qwen2/2.5, Qwen3): others are refused with the reason, unless the run's
template is ``r1_zero`` (the R1 paper's plain template, :func:`r1lite.prompts.r1_zero_text`), which
any model takes: a base model such as Gemma 3 270M has no chat template to follow.

Under r1_zero the Jinja template starts with ``bos_token`` (as Gemma's own does; llama.cpp drops it
where the file says to add a bos itself, so there is one), and the Ollama template does not (Ollama
adds the bos the file asks for).

Thinking control: ``enable_thinking: false`` (llama.cpp's ``chat_template_kwargs``) and Ollama's
``think: false`` open the assistant turn with an empty ``<think></think>`` block, so the model
answers at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from r1lite import prompts, tasks
from r1lite.errors import UsageError
from r1lite.packaged import TURN_END, TURN_START

_SENTINEL = "\u2063Q\u2063"  # a question no task writes, to find the instruction around it


@dataclass(frozen=True)
class PromptFormat:
    """What a run adds around a user's question."""

    name: str
    """The run's format: r1, plain, plain:1 or plain:2 ("" = none: the model's own template)."""
    prefix: str
    """Text before the question in the user turn."""
    suffix: str
    """Text after the question in the user turn."""
    prefill: str
    """Text the assistant turn starts with (``<think>``) or ""."""
    template: str = "chat"
    """How the wrapped conversation becomes text (:data:`r1lite.prompts.TEMPLATES`): the model's chat
    template, or ``r1_zero``, the R1 paper's plain template (:func:`r1lite.prompts.r1_zero_text`:
    the user's text, wrapped in prefix and suffix, after ``User:``; a space and the prefill after
    ``Assistant:``; the tokenizer's bos first; generation also stops at :data:`r1lite.prompts.R1_ZERO_STOP`)."""

    @property
    def stop(self) -> tuple[str, ...]:
        """Stop strings a completion in this format needs besides end-of-text (``</answer>`` under r1_zero)."""
        return prompts.stop_strings(self.template, self.name)


def prompt_format(task: tasks.Task | None, fmt: str, prefill_think: bool, template: str = "chat") -> PromptFormat:
    """The format a run used (from its task's answer hint), or none for a plain model: under
    r1_zero, with no task, the r1 format with nothing around the question.

    >>> f = prompt_format(tasks.load_task("arithmetic"), "plain", False)
    >>> f.prefix, f.suffix
    ('', ' Give the answer as a single number.')
    >>> prompt_format(tasks.load_task("arithmetic"), "r1", True, "r1_zero")
    PromptFormat(name='r1', prefix='', suffix=' Give the answer as a single number.', prefill='<think>', template='r1_zero')
    """
    if task is None:
        prompts.check_template(template, fmt)
        if template == "r1_zero":
            return PromptFormat("r1", "", "", "<think>" if prefill_think else "", template)
        return PromptFormat("", "", "", "")
    item = tasks.Item("x", _SENTINEL, None, {})
    messages, prefill = prompts.build_messages(item, task, fmt, prefill_think=prefill_think, template=template)
    prefix, _, suffix = messages[-1]["content"].partition(_SENTINEL)
    return PromptFormat(fmt, prefix, suffix, prefill, template)


def default_system(tokenizer) -> str:
    """The system turn the model's template adds when a conversation has none ("" if none)."""
    _require_chatml(tokenizer)
    text = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=False)
    return text[:text.index(f"{TURN_START}user")]


def _require_chatml(tokenizer) -> None:
    if TURN_START not in (tokenizer.chat_template or "") or TURN_END not in tokenizer.get_vocab():
        raise UsageError("export: the chat template applies the run's prompt format for ChatML models (<|im_start|>/<|im_end|>: "
                         "SmolLM2, Qwen2/2.5, Qwen3); this model's template is not ChatML")


def _jinja_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def jinja_template(tokenizer, fmt: PromptFormat) -> str:
    """The model's ChatML template with the run's format applied to every user turn (or the r1_zero
    text, :func:`_r1_zero_jinja`).

    Rendering ``[{"role": "user", "content": question}]`` with it gives exactly the prompt r1lite
    builds for that question (tested)."""
    if fmt.template == "r1_zero":
        return _r1_zero_jinja(fmt)
    system = default_system(tokenizer)
    return (
        "{%- if messages[0]['role'] != 'system' %}{{ " + _jinja_string(system) + " }}{%- endif %}"
        "{%- for message in messages %}"
        "{%- if message['role'] == 'user' %}"
        "{{ '" + TURN_START + "user\\n' + " + _jinja_string(fmt.prefix) + " + message['content'] + "
        + _jinja_string(fmt.suffix) + " + '" + TURN_END + "\\n' }}"
        "{%- else %}{{ '" + TURN_START + "' + message['role'] + '\\n' + message['content'] + '" + TURN_END + "\\n' }}"
        "{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ '" + TURN_START + "assistant\\n' }}"
        "{%- if enable_thinking is defined and not enable_thinking %}{{ '<think>\\n</think>\\n\\n' }}"
        "{%- else %}{{ " + _jinja_string(fmt.prefill) + " }}{%- endif %}"
        "{%- endif %}"
    )


def _r1_zero_jinja(fmt: PromptFormat) -> str:
    """:func:`r1lite.prompts.r1_zero_text` in Jinja: system messages first, a line each; the
    template's text; each user turn after `` User:`` (wrapped in the format, stripped, a full stop
    unless it ends a sentence), each answer after `` Assistant:``; the prefill after a space."""
    ends = " or ".join(f"q.endswith('{e}')" for e in prompts.SENTENCE_END)
    return (
        "{{ bos_token }}"
        "{%- for message in messages %}{%- if message['role'] == 'system' and message['content'] | trim %}"
        "{{ message['content'] | trim + '\n' }}{%- endif %}{%- endfor %}"
        "{{ " + _jinja_string(prompts.R1_ZERO) + " }}"
        "{%- for message in messages %}"
        "{%- if message['role'] == 'assistant' %}{{ ' Assistant:' }}"
        "{%- if message['content'] | trim %}{{ ' ' + message['content'] | trim }}{%- endif %}"
        "{%- elif message['role'] != 'system' %}"
        "{%- set q = (" + _jinja_string(fmt.prefix) + " + message['content'] + " + _jinja_string(fmt.suffix) + ") | trim %}"
        "{{ ' User: ' + q }}{%- if not (" + ends + ") %}{{ '.' }}{%- endif %}"
        "{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ ' Assistant:' }}"
        "{%- if enable_thinking is defined and not enable_thinking %}{{ ' <think> </think>' }}"
        "{%- elif " + _jinja_string(fmt.prefill) + " %}{{ ' ' + " + _jinja_string(fmt.prefill) + " }}{%- endif %}"
        "{%- endif %}"
    )


def _r1_zero_ollama(fmt: PromptFormat) -> str:
    """The r1_zero text as an Ollama TEMPLATE. Go templates cannot strip or test a suffix, so a user
    turn is written as the format wraps it followed by ``.`` unless the format's suffix itself ends a
    sentence (a task's answer hint does); the system prompt comes as ``.System``."""
    suffix = fmt.suffix if fmt.suffix.strip().endswith(prompts.SENTENCE_END) else fmt.suffix + "."
    return (
        "{{ if .System }}{{ .System }}\n{{ end }}" + _go_string(prompts.R1_ZERO)
        + "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        f'{{{{ if eq .Role "user" }}}} User: {_go_string(fmt.prefix)}{{{{ .Content }}}}{_go_string(suffix)}'
        '{{ else if eq .Role "assistant" }} Assistant:{{ if .Thinking }} <think>{{ .Thinking }}</think>{{ end }}'
        "{{ if .Content }} {{ .Content }}{{ end }}{{ end }}"
        '{{ if and $last (ne .Role "assistant") }} Assistant:'
        "{{ if and $.IsThinkSet (not $.Think) }} <think> </think>"
        + ("{{ else }} " + _go_string(fmt.prefill) if fmt.prefill else "") + "{{ end }}{{ end }}"
        "{{ end }}"
    )


def _go_string(text: str) -> str:
    """Text a Go template writes as it is (``{{`` would open an action)."""
    return text.replace("{{", '{{ "{{" }}')


def ollama_template(tokenizer, fmt: PromptFormat) -> str:
    """The same format as an Ollama TEMPLATE (Go text/template), with thinking as Ollama's own
    reasoning models handle it: a past assistant turn's ``.Thinking`` inside ``<think>``, and
    ``$.IsThinkSet``/``$.Think`` choosing between the run's prefill and an empty thinking block.
    The system prompt comes as ``.System`` (Ollama's), so system messages are not repeated. One
    line: every character outside the actions is output."""
    if fmt.template == "r1_zero":
        return _r1_zero_ollama(fmt)
    system = default_system(tokenizer)
    start, end = TURN_START, TURN_END
    return (
        f"{{{{ if .System }}}}{start}system\n{{{{ .System }}}}{end}\n{{{{ else }}}}{_go_string(system)}{{{{ end }}}}"
        "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        f'{{{{ if eq .Role "user" }}}}{start}user\n{_go_string(fmt.prefix)}{{{{ .Content }}}}{_go_string(fmt.suffix)}{end}\n'
        f'{{{{ else if eq .Role "assistant" }}}}{start}assistant\n{{{{ if .Thinking }}}}<think>{{{{ .Thinking }}}}</think>\n{{{{ end }}}}'
        f"{{{{ .Content }}}}{{{{ if not $last }}}}{end}\n{{{{ end }}}}{{{{ end }}}}"
        f'{{{{ if and $last (ne .Role "assistant") }}}}{start}assistant\n'
        f"{{{{ if and $.IsThinkSet (not $.Think) }}}}<think>\n</think>\n\n{{{{ else }}}}{_go_string(fmt.prefill)}{{{{ end }}}}{{{{ end }}}}"
        "{{ end }}"
    )


def modelfile(gguf_name: str, tokenizer, fmt: PromptFormat, temperature: float = 0.6, top_p: float = 0.95) -> str:
    """An Ollama Modelfile for the GGUF beside it: its template, the end-of-turn stop, R1's
    sampling settings. (No ``PARAMETER think``: Ollama rejects it; thinking is a request option.)"""
    stops = turn_stops(tokenizer)
    if fmt.template == "r1_zero":  # a base model's end of text, and the closed answer
        stops = [*fmt.stop, *dict.fromkeys(t for t in (tokenizer.eos_token, "<end_of_turn>") if t in tokenizer.get_vocab())]
    return (f"FROM ./{gguf_name}\n"
            f'TEMPLATE """{ollama_template(tokenizer, fmt)}"""\n'
            + "".join(f'PARAMETER stop "{s}"\n' for s in stops) +
            f"PARAMETER temperature {temperature}\n"
            f"PARAMETER top_p {top_p}\n")


def turn_stops(tokenizer) -> list[str]:
    """Where a chat turn ends in this vocabulary: ChatML's ``<|im_end|>``, or for a model without it
    (Gemma) its own end of turn and end of text."""
    vocab = tokenizer.get_vocab()
    return [TURN_END] if TURN_END in vocab else [t for t in ("<end_of_turn>", "<eos>") if t in vocab]
