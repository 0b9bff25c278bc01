"""FLOP counting: the formulas the meter and the estimate share.

Two kinds of formula:

- the textbook ones (:func:`forward_flops`, :func:`train_flops`): 2·N per token for the matmul
  weights plus attention, backward ≈ 2× forward — for published arithmetic and quick checks;
- the as-computed ones (:func:`decode_flops`, :func:`train_pass_flops`): what r1lite's decode
  step and training forward actually compute, padding included. The decoders
  (:mod:`r1lite.engine.decoders`) and :func:`r1lite.train.policy.pass_flops` meter a run with them, and
  :mod:`r1lite.cost.estimate` predicts a run with the very same functions, so an estimate and the
  meter cannot drift apart.

``N`` in the textbook formulas is the number of *matmul parameters* (:func:`matmul_params`): all
but the input embedding table (a lookup), with the LM head counted once even when tied to it.
Kaplan et al.'s 6N rule uses non-embedding parameters; for small models with big vocabularies that
undercounts badly (SmolLM2-135M's LM head is 28M of its 134.5M parameters). Not counted anywhere:
norms, softmax, activations, rotary embeddings and the optimizer step (a few percent).

:data:`SHAPES` holds the shapes of models that need not be on this machine (SmolLM2, Qwen2.5,
Qwen3), copied from their Hugging Face ``config.json`` files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from r1lite.errors import UsageError
from r1lite.models import ModelShape, llama_config


@dataclass(frozen=True)
class Weights:
    """How many body weights (:attr:`ModelShape.body_params`, LoRA's adapters included) a run
    trains and how many it keeps frozen, and whether the vocabulary head trains."""

    trained: int
    frozen: int
    head_trains: bool

    @property
    def total(self) -> int:
        return self.trained + self.frozen


def full_weights(shape: ModelShape) -> Weights:
    """Full fine-tuning: every weight trains."""
    return Weights(shape.body_params, 0, True)


def lora_weights(shape: ModelShape, rank: int, targets: list[str]) -> Weights:
    """LoRA on ``targets``: the base frozen, A (r x in) and B (out x r) per targeted product trained.

    >>> lora_weights(SHAPES["SmolLM2-135M"], 16, ["q_proj", "v_proj"]).trained  # 30 x 16 x ((576 + 576) + (576 + 192))
    921600
    """
    h, q, kv, ff = shape.hidden_size, shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim, shape.intermediate_size
    dims = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, ff), "up_proj": (h, ff), "down_proj": (ff, h)}
    unknown = sorted(set(targets) - set(dims))
    if unknown:
        raise UsageError(f"lora_targets {unknown}: use some of {', '.join(dims)}")
    adapters = shape.n_layers * sum(rank * sum(dims[t]) for t in targets)
    return Weights(adapters, shape.body_params, False)


# ---------------------------------------------------------------------------------------------
# As computed


def _capped_sum(first: int, last: int, cap: int) -> int:
    """``sum(min(k, cap) for k in range(first, last + 1))``, in closed form.

    >>> _capped_sum(3, 10, 6), sum(min(k, 6) for k in range(3, 11))  # 3 + 4 + 5 + 6 x 5
    (42, 42)
    """
    if last < first:
        return 0
    below = max(0, min(last, cap) - first + 1)  # terms first.. up to cap, each k
    low = first + below - 1
    return (first + low) * below // 2 + cap * (last - first + 1 - below)


def attention_flops(shape: ModelShape, rows: int, T: int, start: int, causal_only: bool) -> float:
    """QKᵀ and AV of ``T`` new queries per row after ``start`` cached columns: over every column
    (masked ones are computed too, the PyTorch path), or the causal ones only (r1lite's kernel).

    Local layers (:attr:`ModelShape.local_layers`) see at most ``sliding_window`` keys: causal,
    query t over min(start + t + 1, W) keys; every column, over the columns the window of the
    batch's first query reaches, min(start + T, W - 1 + T) (the Gemma decoder's slice of the cache).

    The tiny Gemma 3's shape (4 layers, 3 local with W = 8; 4 heads of 16): one decode step of one
    row after 100 columns, global 101 pairs, local 8: 4 x 4 x 16 x (101 + 3 x 8) = 32,000.

    >>> from types import SimpleNamespace as C
    >>> g = ModelShape.from_config(C(model_type="gemma3_text", num_hidden_layers=4, hidden_size=64, num_attention_heads=4,
    ...     num_key_value_heads=2, head_dim=16, intermediate_size=128, vocab_size=100, sliding_window=8,
    ...     layer_types=["sliding_attention"] * 3 + ["full_attention"]), "g")
    >>> attention_flops(g, 1, 1, 100, causal_only=False), attention_flops(g, 1, 1, 100, causal_only=True)
    (32000.0, 32000.0)
    >>> # a prefill of 4 after 6: global 7 + 8 + 9 + 10 keys, local 7 + 8 + 8 + 8; 256 x (34 + 3 x 31)
    >>> attention_flops(g, 1, 4, 6, causal_only=True)
    32512.0
    """
    total = T * start + T * (T + 1) // 2 if causal_only else T * (start + T)
    n_local = len(shape.local_layers) if shape.sliding_window else 0
    W = shape.sliding_window
    local = (_capped_sum(start + 1, start + T, W) if causal_only else T * min(start + T, W - 1 + T)) if n_local else 0
    pairs = rows * ((shape.n_layers - n_local) * total + n_local * local)
    return float(4 * shape.n_heads * shape.head_dim * pairs)


def decode_flops(shape: ModelShape, body_params: int, rows: int, T: int, start: int, *, body_columns: int,
                 head_columns: int, causal_only: bool) -> float:
    """One forward of the inference decoder on ``rows`` x ``T`` tokens at column ``start``: the
    layers' products on ``body_columns`` columns (padding included), the head on
    ``head_columns`` (each row's last token, padded), attention.

    >>> s = SHAPES["SmolLM2-135M"]
    >>> round(decode_flops(s, s.body_params, 64, 1, 100, body_columns=64, head_columns=64, causal_only=True) / 1e9, 2)
    17.66
    """
    body = 2 * body_params * body_columns
    head = 2 * shape.vocab_size * shape.hidden_size * head_columns
    return float(body + head) + attention_flops(shape, rows, T, start, causal_only)


def train_pass_flops(shape: ModelShape, weights: Weights, P: int, Lp: int, N: int, Lc: int, M: int,
                     backward: bool, Lx: int = 0) -> float:
    """FLOPs of r1lite's training forward (:func:`r1lite.train.policy.completion_logprobs`) on a shared
    prefix of ``Lx`` tokens, ``P`` prompts of width ``Lp`` after it and ``N`` completions of width
    ``Lc`` holding ``M`` real tokens, and of its backward.

    Forward: the layers' products on the prefix once, on every prompt position (padding included,
    each prompt once) and on the real completion tokens; attention over the full score matrices
    (prefix: Lx x Lx, prompts: Lp x (Lx + Lp), completions: Lc x (Lx + Lp + Lc), masked entries
    included); the vocabulary head on the real
    completion tokens. Backward: twice the forward for products with trainable weights (input
    and weight gradients), once for frozen ones (LoRA's base); attention twice; the head three
    times (its logits recomputed, then both gradients; the weight gradient only if it trains).
    The transformers path (not :attr:`ModelShape.llama_layout`) runs every prompt per completion.
    Local attention layers (:attr:`ModelShape.local_layers`) count each query over at most
    ``sliding_window`` keys: the pairs the window attends (transformers' SDPA on a CPU computes the
    masked scores beyond it as well; flash attention on a GPU skips them).

    >>> from types import SimpleNamespace as C
    >>> g = ModelShape.from_config(C(model_type="gemma3_text", num_hidden_layers=4, hidden_size=64, num_attention_heads=4,
    ...     num_key_value_heads=2, head_dim=16, intermediate_size=128, vocab_size=100, sliding_window=8,
    ...     layer_types=["sliding_attention"] * 3 + ["full_attention"]), "g")
    >>> w = Weights(1000, 0, True)
    >>> # 1 completion of 20 tokens after a 10-token prompt: 30 positions; attention global 30 x 30,
    >>> # local 30 x 8 per head: 4 x 16 x 4 x (900 + 3 x 240) = 414,720; layers 2 x 1000 x 30; head 2 x 100 x 64 x 20
    >>> train_pass_flops(g, w, 1, 10, 1, 20, 20, backward=False)
    730720.0
    """
    H, D = shape.n_heads, shape.head_dim
    W = shape.sliding_window or None
    n_local = len(shape.local_layers) if W else 0

    def keys(n: int) -> int:  # keys a local layer's query sees out of n
        return min(n, W) if W else n

    if shape.llama_layout:
        positions = Lx + P * Lp + M
        full = H * (Lx * Lx + P * Lp * (Lx + Lp) + N * Lc * (Lx + Lp + Lc))
        windowed = H * (Lx * keys(Lx) + P * Lp * keys(Lx + Lp) + N * Lc * keys(Lx + Lp + Lc))
    else:
        positions, full = N * (Lx + Lp + Lc), N * H * (Lx + Lp + Lc) ** 2
        windowed = N * H * (Lx + Lp + Lc) * keys(Lx + Lp + Lc)
    layers = 2 * weights.total * positions
    attention = 4 * D * ((shape.n_layers - n_local) * full + n_local * windowed)
    head = 2 * shape.vocab_size * shape.hidden_size * M
    if not backward:
        return float(layers + attention + head)
    backward_flops = 2 * (2 * weights.trained + weights.frozen) * positions + 2 * attention + head * (2 + weights.head_trains)
    return float(layers + attention + head + backward_flops)


# ---------------------------------------------------------------------------------------------
# Textbook


def matmul_params(total_params: int, vocab_size: int, d_model: int, tied_embeddings: bool) -> int:
    """N for the textbook formulas: all parameters but the input embedding lookup, the LM head once.

    >>> matmul_params(134_515_008, 49_152, 576, tied_embeddings=True)
    134515008
    >>> matmul_params(134_515_008 + 49_152 * 576, 49_152, 576, tied_embeddings=False)
    134515008
    """
    return total_params if tied_embeddings else total_params - vocab_size * d_model


def forward_flops(n_params: int, tokens: float, n_layers: int, d_model: int, context: float) -> float:
    """FLOPs of a forward pass over ``tokens`` tokens that each attend to ``context`` positions on average:
    ``2·N·tokens`` for the matmul weights plus ``4·n_layers·context·d_model·tokens`` for QKᵀ and AV.

    >>> forward_flops(n_params=100, tokens=10, n_layers=2, d_model=4, context=8)
    4560.0
    """
    return float(2 * n_params * tokens + 4 * n_layers * context * d_model * tokens)


def train_flops(n_params: int, tokens: float, n_layers: int, d_model: int, context: float) -> float:
    """A forward and backward pass: 3× :func:`forward_flops` (the 6N rule plus attention).

    >>> train_flops(100, 10, 2, 4, 8)
    13680.0
    """
    return 3 * forward_flops(n_params, tokens, n_layers, d_model, context)


# ---------------------------------------------------------------------------------------------
# Shapes of models that need not be here


def _shape(name: str, layers: int, hidden: int, heads: int, kv: int, ff: int, vocab: int, tied: bool, context: int,
           head_dim: int | None = None) -> ModelShape:
    return ModelShape(name, layers, hidden, heads, kv, head_dim or hidden // heads, ff, vocab, tied, context=context)


SHAPES: dict[str, ModelShape] = {s.name: s for s in [
    _shape("SmolLM2-135M", 30, 576, 9, 3, 1536, 49152, True, 8192),
    _shape("SmolLM2-360M", 32, 960, 15, 5, 2560, 49152, True, 8192),
    _shape("SmolLM2-1.7B", 24, 2048, 32, 32, 8192, 49152, True, 8192),
    _shape("Qwen2.5-0.5B", 24, 896, 14, 2, 4864, 151936, True, 32768),
    _shape("Qwen2.5-1.5B", 28, 1536, 12, 2, 8960, 151936, True, 32768),
    _shape("Qwen2.5-7B", 28, 3584, 28, 4, 18944, 152064, False, 32768),
    _shape("Qwen3-0.6B", 28, 1024, 16, 8, 3072, 151936, True, 40960, head_dim=128),
    _shape("Qwen3-1.7B", 28, 2048, 16, 8, 6144, 151936, True, 40960, head_dim=128),
    _shape("Qwen3-8B", 36, 4096, 32, 8, 12288, 151936, False, 40960, head_dim=128),
]}
"""Built-in shapes, from each model's ``config.json`` on the Hugging Face hub (the -Instruct
variants share their base's shape). The context is the -Instruct config's ``max_position_embeddings``
(Qwen2.5: 32,768, where some base configs say 131,072)."""


def table_shape(spec: str) -> ModelShape | None:
    """The built-in shape a model spec names, or None: ``Qwen/Qwen2.5-7B-Instruct``, ``qwen2.5-7b``
    and ``HuggingFaceTB/SmolLM2-135M-Instruct`` all name a row.

    >>> table_shape("Qwen/Qwen2.5-7B-Instruct").name, table_shape("smollm2-360m").name, table_shape("gpt2")
    ('Qwen2.5-7B', 'SmolLM2-360M', None)
    """
    key = spec.rsplit("/", 1)[-1].lower().removesuffix("-instruct").removesuffix("-base")
    return next((s for name, s in SHAPES.items() if name.lower() == key), None)


def config_shape(path: Path) -> ModelShape:
    """The shape in a local ``config.json`` (a file, or a directory holding one)."""
    from types import SimpleNamespace

    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"--model {path}: no config.json there; pass a model directory or its config.json")
    try:
        cfg = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{file}: not valid JSON ({e.msg}, line {e.lineno})") from None
    missing = [k for k in ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads",
                           "intermediate_size", "vocab_size") if k not in cfg]
    if "hidden_act" not in cfg and "hidden_activation" not in cfg:  # Gemma names it hidden_activation
        missing.insert(1, "hidden_act")
    if missing:
        raise UsageError(f"{file}: missing {', '.join(missing)}; the estimate needs a decoder's config.json")

    return ModelShape.from_config(SimpleNamespace(**cfg), file.parent.name, llama_layout=llama_config(SimpleNamespace(**cfg)))
