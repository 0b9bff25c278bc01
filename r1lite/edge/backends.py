"""What ``--model`` names, opened as an engine: a PyTorch model on r1lite's decoders, or a GGUF file
on llama.cpp (:mod:`r1lite.engine.llamacpp`) — the same interface either way, for ``chat``,
``serve``, evaluation and distillation with a local teacher.

A run directory brings its prompt format (the instruction around a question, a ``<think>``
prefill, its template: :func:`r1lite.edge.chat_format.prompt_format`); a GGUF exported by r1lite has
that format in its own chat template already. ``template`` (``auto``: :func:`r1lite.prompts.resolve_template`)
decides between the model's chat template and the R1 paper's plain one (r1_zero, for base models).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from r1lite import prompts, tasks
from r1lite.config import read_yaml
from r1lite.edge.chat_format import PromptFormat, prompt_format
from r1lite.engine import Engine, make_engine
from r1lite.engine.thinking import THINK_CLOSE, THINK_OPEN
from r1lite.errors import UsageError
from r1lite.models import load_model, resolve_runtime
from r1lite.packaged import check_special_tokens, stop_token_ids
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
    stop: tuple[str, ...] = ()
    """Stop strings every completion needs besides end-of-text (``</answer>`` under r1_zero)."""

    def prompt(self, messages: list[dict]) -> tuple[list[int], bool]:
        """Token ids for a conversation with the assistant turn opened, and whether the prompt
        leaves a ``<think>`` block open (a prefill)."""
        wrapped = [dict(m, content=self.fmt.prefix + m["content"] + self.fmt.suffix) if m["role"] == "user" else m
                   for m in messages]
        ids = encode_messages(self.tokenizer, wrapped, self.fmt.prefill, self.fmt.template)
        text = self.tokenizer.decode(ids[-16:])
        return ids, text.rfind(THINK_OPEN) > text.rfind(THINK_CLOSE)


def run_config(run_dir: Path) -> dict:
    """A run directory's config.yaml, or one line naming it when it is not a run's config."""
    config = read_yaml(run_dir / "config.yaml")
    if "task" not in config:
        raise UsageError(f"{run_dir / 'config.yaml'}: no 'task' key, so not a run's config; restore it from a copy of "
                         "the run, or point --model at the run's final/ directory")
    return config


def config_format(config: dict, template: str = "auto") -> PromptFormat:
    """The prompt format a run's config names (its task, format, prefill and template; a run from
    before templates used chat). ``template`` other than ``auto`` replaces the run's."""
    task = tasks.load_task(config["task"], config.get("task_options"))
    fmt = config.get("format", "r1")
    template = config.get("template", "chat") if template == "auto" else template
    prompts.check_template(template, fmt)
    return prompt_format(task, fmt, bool(config.get("prefill_think")), template)


def run_format(spec: str, template: str = "auto") -> PromptFormat:
    """The prompt format of a run directory (its config.yaml); for another model, none under the
    chat template, or r1_zero's (r1 format, <think> pre-filled: :func:`r1lite.prompts.default_prefill`)."""
    run_dir = Path(spec).expanduser()
    if (run_dir / "config.yaml").exists():
        return config_format(run_config(run_dir), template)
    template = prompts.resolve_template(template, spec)
    return prompt_format(None, "r1", prompts.default_prefill(template, "r1"), template)


def gguf_format(path: Path) -> str:
    """The prompt format an r1lite export recorded in a GGUF's metadata ("" for other GGUFs)."""
    from r1lite.gguf_header import metadata

    name = metadata(path).get("r1lite.prompt_format", "")
    return name if name in prompts.FORMATS else ""


def gguf_tokenizer(path: Path):
    """The tokenizer a GGUF file carries (vocabulary, merges, special tokens, chat template)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    check_special_tokens(tokenizer)
    return tokenizer


def check_int8(runtime) -> None:
    """``--dtype int8`` decodes with r1lite's CPU kernels: one line where they cannot run."""
    from r1lite.engine import kernels

    if runtime.device.type != "cpu":
        raise UsageError("--dtype int8: int8 weights decode on a CPU, with r1lite's kernels; on a GPU use --dtype bf16 or fp32")
    if kernels.load() is None:
        raise UsageError("--dtype int8 needs r1lite's CPU kernels, which cannot be used here (the line above says why); "
                         "use --dtype fp32")


def open_model(spec: str, device: str = "auto", dtype: str = "auto", max_rows: int = 64,
               template: str = "auto") -> Backend:
    """An engine for ``spec``: ``FILE.gguf`` on llama.cpp, anything else ``--model`` takes on PyTorch.

    ``dtype``: auto, bf16, fp32, or int8 (PyTorch models on a CPU: the products' weights in blocks of
    32 int8 values with a scale, as llama.cpp's Q8_0; :mod:`r1lite.engine.decoders`).
    ``template``: ``auto`` keeps a run's (or a GGUF's own chat template, with the stop its export
    recorded); chat or r1_zero replace it (a GGUF under r1_zero is rendered here, not by its template)."""
    path = Path(spec).expanduser()
    if template not in ("auto", *prompts.TEMPLATES):
        prompts.check_template(template, "r1")  # the one line naming the values
    if spec.endswith(".gguf"):
        from r1lite.engine.llamacpp import LlamaCppDecoder, check_gguf

        check_gguf(path)
        tokenizer = gguf_tokenizer(path)
        decoder = LlamaCppDecoder(path, max_rows=max_rows)
        stops = sorted(set(stop_token_ids(tokenizer)))
        name = gguf_format(path)
        fmt = PromptFormat("", "", "", "")
        if template == "r1_zero":
            fmt = prompt_format(None, "r1", prompts.default_prefill(template, "r1"), template)
        stop = fmt.stop or prompts.stop_strings(prompts.gguf_template(path) if template == "auto" else template, name)
        return Backend(Engine(decoder, tokenizer, stops, max_rows), tokenizer, fmt, "llama.cpp",
                       path.name, fmt.name or name, decoder.lib.llama_model_n_ctx_train(decoder.model), stop)
    if path.exists() and path.is_file():
        raise UsageError(f"--model {spec}: a file that is not .gguf; pass a GGUF file, a run directory or a model directory")
    fmt = run_format(spec, template)  # before the weights load: a bad template is one line, at once
    if dtype not in ("auto", "bf16", "bfloat16", "fp32", "float32", "int8"):
        raise UsageError(f"--dtype {dtype}: use auto, bf16, fp32 or int8")
    int8 = dtype == "int8"
    runtime = resolve_runtime(device, "fp32" if int8 else dtype)
    if int8:
        check_int8(runtime)
    model, tokenizer = load_model(spec, runtime)
    try:
        engine = make_engine(model, tokenizer, runtime.dtype, stop_token_ids(tokenizer, model), max_rows,
                             discard_model=True, int8=int8)
    except ValueError as e:
        if not int8:
            raise
        raise UsageError(f"--dtype int8: {e}; use --dtype fp32") from None
    return Backend(engine, tokenizer, fmt, "torch", spec, fmt.name, model.config.max_position_embeddings, fmt.stop)
