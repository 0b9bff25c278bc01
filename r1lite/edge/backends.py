"""What ``--model`` names, opened as an engine: a PyTorch model on r1lite's decoders, or a GGUF file
on llama.cpp (:mod:`r1lite.engine.llamacpp`) — the same interface either way, for ``chat``,
``serve``, evaluation and distillation with a local teacher.

A run directory brings its prompt format (the instruction around a question, a ``<think>``
prefill: :func:`r1lite.edge.chat_format.prompt_format`); a GGUF exported by r1lite has that format in
its own chat template already.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from r1lite import prompts, tasks
from r1lite.config import read_yaml
from r1lite.edge.chat_format import PromptFormat, prompt_format
from r1lite.engine import Engine, make_engine
from r1lite.engine.engine import THINK_CLOSE, THINK_OPEN
from r1lite.errors import UsageError
from r1lite.models import (
    check_special_tokens,
    load_model,
    resolve_runtime,
    stop_token_ids,
)
from r1lite.prompts import encode_messages


@dataclass
class Backend:
    engine: Engine
    tokenizer: object
    fmt: PromptFormat
    """Applied to each user message before the chat template (none for a GGUF: its template does it)."""
    kind: str
    """``torch`` or ``llama.cpp``."""
    name: str
    format_name: str = ""
    """The run's prompt format (r1, plain, ...; "" for a plain model): for a GGUF, as its export recorded it."""
    context: int = 0
    """Tokens a sequence may span, prompt and answer (the model's trained context; 0 = not known)."""

    def prompt(self, messages: list[dict]) -> tuple[list[int], bool]:
        """Token ids for a conversation with the assistant turn opened, and whether the prompt
        leaves a ``<think>`` block open (a prefill)."""
        wrapped = [dict(m, content=self.fmt.prefix + m["content"] + self.fmt.suffix) if m["role"] == "user" else m
                   for m in messages]
        ids = encode_messages(self.tokenizer, wrapped, self.fmt.prefill)
        text = self.tokenizer.decode(ids[-16:])
        return ids, text.rfind(THINK_OPEN) > text.rfind(THINK_CLOSE)


def run_config(run_dir: Path) -> dict:
    """A run directory's config.yaml, or one line naming it when it is not a run's config."""
    config = read_yaml(run_dir / "config.yaml")
    if "task" not in config:
        raise UsageError(f"{run_dir / 'config.yaml'}: no 'task' key, so not a run's config; restore it from a copy of "
                         "the run, or point --model at the run's final/ directory")
    return config


def config_format(config: dict) -> PromptFormat:
    """The prompt format a run's config names (its task, format and prefill)."""
    task = tasks.load_task(config["task"], config.get("task_options"))
    return prompt_format(task, config.get("format", "r1"), bool(config.get("prefill_think")))


def run_format(spec: str) -> PromptFormat:
    """The prompt format of a run directory (its config.yaml), or none."""
    run_dir = Path(spec).expanduser()
    if not (run_dir / "config.yaml").exists():
        return PromptFormat("", "", "", "")
    return config_format(run_config(run_dir))


def gguf_format(path: Path) -> str:
    """The prompt format an r1lite export recorded in a GGUF's metadata ("" for other GGUFs)."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("r1lite.prompt_format")
    if field is None:
        return ""
    name = bytes(field.parts[field.data[0]]).decode()
    return name if name in prompts.FORMATS else ""


def gguf_tokenizer(path: Path):
    """The tokenizer a GGUF file carries (vocabulary, merges, special tokens, chat template)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    check_special_tokens(tokenizer)
    return tokenizer


def open_model(spec: str, device: str = "auto", dtype: str = "auto", max_rows: int = 64) -> Backend:
    """An engine for ``spec``: ``FILE.gguf`` on llama.cpp, anything else ``--model`` takes on PyTorch."""
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        from r1lite.engine.llamacpp import LlamaCppDecoder, check_gguf

        check_gguf(path)
        tokenizer = gguf_tokenizer(path)
        decoder = LlamaCppDecoder(path, max_rows=max_rows)
        stops = sorted(set(stop_token_ids(tokenizer)))
        return Backend(Engine(decoder, tokenizer, stops, max_rows), tokenizer, PromptFormat("", "", "", ""), "llama.cpp",
                       path.name, gguf_format(path), decoder.lib.llama_model_n_ctx_train(decoder.model))
    if path.exists() and path.is_file():
        raise UsageError(f"--model {spec}: a file that is not .gguf; pass a GGUF file, a run directory or a model directory")
    runtime = resolve_runtime(device, dtype)
    model, tokenizer = load_model(spec, runtime)
    engine = make_engine(model, tokenizer, runtime.dtype, stop_token_ids(tokenizer, model), max_rows)
    fmt = run_format(spec)
    return Backend(engine, tokenizer, fmt, "torch", spec, fmt.name, model.config.max_position_embeddings)
