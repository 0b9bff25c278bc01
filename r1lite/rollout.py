"""The one generation loop: evaluation, GRPO rollouts, distillation with a local teacher, serving.

``generate`` samples ``n`` completions for each prompt in batches:

1. prompts are sorted by length and batched, at most ``batch_size`` rows per batch;
2. the token prefix all prompts of a batch share (system prompt, instructions) is prefilled once,
   then each distinct prompt's own tokens, and its KV cache is copied into its ``n`` rows
   (GRPO's G continuations of one prompt share the prompt's prefill);
3. tokens are decoded one step at a time into a static KV cache; rows that finish (eos, a stop
   string or the token budget) leave the batch once a quarter of it is done, so the remaining
   rows stop paying for them.

Llama-family models (Llama, Mistral, Qwen2, Qwen3, SmolLM) run on :class:`LlamaDecoder`, r1lite's
own inference forward; any other architecture runs the same loop on the transformers forward
(:class:`HFDecoder`), which is slower, and says so.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from r1lite import cpu_kernels
from r1lite.errors import UsageError


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens. The defaults sample from the model's own distribution."""

    max_new_tokens: int = 256
    """Token budget per completion; a completion that reaches it finishes with ``length``."""
    temperature: float = 1.0
    """Softmax temperature; 0 = greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p; 1 = off."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 = off."""
    stop: tuple[str, ...] = ()
    """Strings that end a completion; the text keeps the stop string (verifiers need closing tags)."""
    ignore_eos: bool = False
    """Keep going past end-of-turn tokens (benchmarks that need exactly max_new_tokens)."""

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise UsageError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.top_k < 0:
            raise UsageError(f"top_k must be >= 0 (0 = off), got {self.top_k}")


@dataclass
class Completion:
    """One sampled continuation of a prompt."""

    token_ids: list[int]
    """Generated tokens, including the end-of-turn token or the token that completed a stop string."""
    text: str
    """Decoded text without the end-of-turn token, cut just after a stop string."""
    finish: str
    """``stop`` (end-of-turn token or stop string) or ``length`` (hit max_new_tokens)."""


@dataclass
class GenerationStats:
    """What one ``generate`` call did, for tokens/s and the cost meter."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    decode_steps: int = 0
    row_steps: list[int] = field(default_factory=list)
    """Rows in the batch at each decode step (shows rows leaving)."""

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0


# ---------------------------------------------------------------------------------------------
# Decoders: a forward pass with a KV cache, over rows that can be dropped


def gqa_attention(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Grouped-query attention without expanding keys and values to every query head.

    q [B, H, T, D]; keys, values [B, KV, S, D] (may be strided views of a cache); mask [B, 1, T, S]
    bool, True = attend. PyTorch's SDPA with ``enable_gqa`` and a mask falls back on CPU to a path
    that copies the keys to all H heads and scales them with strided loops: 40% of a batch-64
    decode step on the 2-core machine we measured, against ~5% here.
    """
    B, H, T, D = q.shape
    KV, S = keys.shape[1], keys.shape[2]
    G = H // KV
    scores = torch.matmul(q.reshape(B, KV, G * T, D), keys.transpose(-1, -2)) * D ** -0.5  # [B, KV, G*T, S]
    if mask is not None:
        scores = scores.view(B, KV, G, T, S).masked_fill(~mask[:, :, None], float("-inf")).view(B, KV, G * T, S)
    probs = scores.float().softmax(-1).to(values.dtype)
    return torch.matmul(probs, values).view(B, H, T, D)


class Projection:
    """One weight of the decoder (several stacked: q/k/v, gate/up): ``weight @ f(x) + bias`` for
    feature-major activations x [K, N], with the fastest product this machine has for it. f is the
    identity, an RMS norm (a layer's input norm, fused into the product) or SwiGLU (x holds gate
    and up).

    fp32 on x86-64 CPUs: our kernel (:mod:`r1lite.cpu_kernels`) on a copy of the weights packed at
    each sync (into the previous sync's memory, ``reuse``). Where it cannot be built: oneDNN's
    linear on a copy reordered for it below ``SMALL_BATCH`` columns and for the vocabulary head
    (decode step of the 135M model 37.6 vs 45.8 ms at batch 1 against MKL, head 13.7 vs 20.4 ms
    at 16; 2-core EPYC); otherwise MKL, with 2..15 columns padded to 16 (its kernels for fewer
    run slower: 1.3 vs 0.8 ms for a 3072x576 weight). Other dtypes and devices: ``weight @ x``.
    """

    SMALL_BATCH = 8

    def __init__(self, parts: list[torch.Tensor], lib, onednn: bool, reuse: Projection | None = None):
        if lib is not None:
            self.weight = None
            self.packed = cpu_kernels.PackedWeight(parts, lib, reuse.packed if reuse is not None else None)
        else:
            self.weight = torch.cat(parts) if len(parts) > 1 else parts[0]
            self.packed = None
        self.onednn = onednn
        self._reordered: torch.Tensor | None = None  # oneDNN's layout, made on first use

    def __call__(self, x: torch.Tensor, prologue: str = "plain", norm: torch.Tensor | None = None, eps: float = 0.0,
                 bias: torch.Tensor | None = None, into: torch.Tensor | None = None, transposed: bool = False) -> torch.Tensor:
        """[O, N], or [N, O] with ``transposed``; added into ``into`` in place when given (see
        :meth:`r1lite.cpu_kernels.PackedWeight.linear`, whose meaning this keeps on every path)."""
        if self.packed is not None:
            return self.packed.linear(x, prologue, norm, eps, bias, into, transposed)
        n = x.shape[1]
        if prologue == "rmsnorm":
            xf = x.float()
            x = (xf * torch.rsqrt(xf.pow(2).mean(0, keepdim=True) + eps)).to(x.dtype) * norm[:, None]
        elif prologue == "swiglu":
            gate, up = x.chunk(2, dim=0)
            x = F.silu(gate) * up
        if self.onednn and (n < self.SMALL_BATCH or transposed):
            if self._reordered is None:
                self._reordered = torch.ops.mkldnn._reorder_linear_weight(self.weight, 16)
            out = torch.ops.mkldnn._linear_pointwise(x.t(), self._reordered, None, "none", [], "")
            out = out if transposed else out.t()
        else:
            if self.weight.device.type == "cpu" and 1 < n < 16:
                out = (self.weight @ F.pad(x, (0, 16 - n)))[:, :n]
            else:
                out = self.weight @ x
            out = out.t().contiguous() if transposed else out
        if bias is not None:
            out = out + (bias if transposed else bias[:, None])
        if into is None:
            return out
        return into.add_(out)


class LlamaDecoder:
    """Inference forward for Llama-family models with a static KV cache, reading the weights of a
    transformers model (LoRA adapters merged in).

    Activations are kept feature-major, ``[C, B]``, so every projection is ``W @ X`` with the
    weight as the left operand: on small batches this runs ~1.4x faster than ``X @ W.T`` on the
    2-core CPUs we measured (MKL picks a better kernel for tall-skinny products). q/k/v and
    gate/up projections are fused into one matmul each. Weights are copied once per :meth:`sync`
    in the rollout dtype (bf16 on machines where bf16 is fast), so training can keep fp32 masters.
    """

    ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")

    def __init__(self, model, dtype: torch.dtype):
        cfg = model.config
        self.dtype = dtype
        self.device = next(model.parameters()).device
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = cfg.rms_norm_eps
        self.sync(model)
        self.cache: torch.Tensor | None = None

    @classmethod
    def supports(cls, model) -> bool:
        cfg = model.config
        sliding = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
        return cfg.model_type in cls.ARCHITECTURES and not sliding and cfg.hidden_act == "silu"

    @torch.no_grad()
    def sync(self, model) -> None:
        """Copy the current weights (after an optimizer step) into the decoder."""
        merged = hasattr(model, "merge_adapter")  # a peft model: fold LoRA into the weights first
        if merged:
            model.merge_adapter()
        try:
            base = model.get_base_model() if merged else model
            self._load(base)
        finally:
            if merged:
                model.unmerge_adapter()

    def _load(self, model) -> None:
        def w(linear):
            return linear.weight.detach().to(self.dtype)

        def b(*linears):
            if all(lin.bias is None for lin in linears):
                return None
            return torch.cat([lin.bias.detach() if lin.bias is not None else
                              torch.zeros(lin.out_features, device=self.device) for lin in linears]).to(self.dtype)

        on_cpu32 = self.device.type == "cpu" and self.dtype == torch.float32
        lib = cpu_kernels.load() if on_cpu32 else None
        onednn = on_cpu32 and lib is None and torch.backends.mkldnn.is_available()

        old = getattr(self, "layers", None)  # the previous sync's projections, whose memory is reused

        def proj(i, name, *linears):
            if i < 0:
                reuse = getattr(self, "head", None)
            else:
                reuse = old[i][name] if old and i < len(old) else None
            return Projection([w(lin) for lin in linears], lib, onednn, reuse)

        layers = []
        for i, layer in enumerate(model.model.layers):
            att, mlp = layer.self_attn, layer.mlp
            layers.append(dict(
                ln1=layer.input_layernorm.weight.detach().to(self.dtype),
                wqkv=proj(i, "wqkv", att.q_proj, att.k_proj, att.v_proj), bqkv=b(att.q_proj, att.k_proj, att.v_proj),
                wo=proj(i, "wo", att.o_proj), bo=b(att.o_proj),
                q_norm=att.q_norm.weight.detach().to(self.dtype) if hasattr(att, "q_norm") else None,
                k_norm=att.k_norm.weight.detach().to(self.dtype) if hasattr(att, "k_norm") else None,
                ln2=layer.post_attention_layernorm.weight.detach().to(self.dtype),
                wgu=proj(i, "wgu", mlp.gate_proj, mlp.up_proj), bgu=b(mlp.gate_proj, mlp.up_proj),
                wd=proj(i, "wd", mlp.down_proj), bd=b(mlp.down_proj),
            ))
        self.layers = layers
        self.embed = model.model.embed_tokens.weight.detach().to(self.dtype)
        self.norm = model.model.norm.weight.detach().to(self.dtype)
        self.head = proj(-1, "head", model.lm_head)
        # a decode step in one call of our kernels (every layer and the head), and prefill's
        # attention in one call per layer (fp32 CPU; not with Qwen3's q/k norms)
        self._step = None
        if lib is not None and self.layers[0]["q_norm"] is None and self.head_dim % 8 == 0:
            self._step = cpu_kernels.DecodeStep(
                lib, [((ly["wqkv"].packed, ly["wo"].packed, ly["wgu"].packed, ly["wd"].packed),
                       (ly["ln1"], ly["ln2"], ly["bqkv"], ly["bo"], ly["bgu"], ly["bd"])) for ly in layers],
                self.head.packed, self.norm, self.n_heads, self.n_kv, self.head_dim, self.eps)
        rotary = model.model.rotary_emb
        self.inv_freq = rotary.inv_freq.detach().float().to(self.device)
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))

    # -- cache bookkeeping ---------------------------------------------------------------------

    def start(self, rows: int, max_len: int) -> None:
        """Allocate the static KV cache: [layers, 2 (k, v), rows, kv heads, max_len, head dim]."""
        self.cache = torch.zeros(self.n_layers, 2, rows, self.n_kv, max_len, self.head_dim,
                                 dtype=self.dtype, device=self.device)
        self.shared = 0

    def share_prefix(self, columns: int) -> None:
        """Cache columns 0..columns hold the same tokens in every row (a prompt prefix prefilled
        once and copied into each row): decode steps may read them from one row."""
        self.shared = columns

    def select(self, rows: torch.Tensor) -> None:
        """Rebuild the cache from these rows: drops finished sequences, or copies a shared prefix
        into several rows (indices may repeat)."""
        self.cache = self.cache.index_select(2, rows)

    def stop(self) -> None:
        self.cache = None

    # -- forward ---------------------------------------------------------------------------------

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def _cos_sin(self, positions: torch.Tensor):  # positions [B, T] -> cos, sin [B, 1, T, D]
        freqs = positions.float()[..., None] * self.inv_freq  # [B, T, D/2]
        emb = torch.cat([freqs, freqs], dim=-1)
        cos = (emb.cos() * self.rope_scale).to(self.dtype)[:, None]
        sin = (emb.sin() * self.rope_scale).to(self.dtype)[:, None]
        return cos, sin

    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, start: int, key_valid: torch.Tensor) -> torch.Tensor:
        """Run ``tokens`` [B, T] at cache columns ``start .. start+T`` and return the logits of the
        last position, [B, V] in fp32.

        ``positions`` [B, T] are RoPE positions (padding makes them differ per row);
        ``key_valid`` [B, start+T] marks real (non-pad) cache columns.
        """
        B, T = tokens.shape
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        cos, sin = self._cos_sin(positions)
        x = self.embed[tokens.reshape(-1)].t().contiguous()  # [C, B*T], row-major
        if self._step is not None and T == 1:  # a decode step on an fp32 CPU: one call of our kernels
            return self._step(x, cos.reshape(B, D).contiguous(), sin.reshape(B, D).contiguous(), self.cache, start,
                              key_valid, self.shared)
        mask = None if self._step is not None else self._mask(key_valid, start, T)  # [B, 1, T, end] or None
        for i, ly in enumerate(self.layers):
            qkv = ly["wqkv"](x, "rmsnorm", ly["ln1"], self.eps, ly["bqkv"])  # [(H + 2 KV) * D, B*T]
            o = self._attention(ly, qkv, self.cache[i], B, T, cos, sin, start, mask, key_valid)
            ly["wo"](o, bias=ly["bo"], into=x)  # the residual stream, updated in place
            gu = ly["wgu"](x, "rmsnorm", ly["ln2"], self.eps, ly["bgu"])
            ly["wd"](gu, "swiglu", bias=ly["bd"], into=x)
        last = x.view(-1, B, T)[:, :, -1].contiguous()  # [C, B]
        return self.head(last, "rmsnorm", self.norm, self.eps, transposed=True).float()  # [B, V]

    def _attention(self, ly, qkv, cache, B, T, cos, sin, start, mask, key_valid):
        """qkv [(H + 2 KV) * D, B*T] -> attention output [H*D, B*T], keys and values written to
        ``cache`` [2, B, KV, max_len, D] at columns start .. start+T."""
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        if self._step is not None:
            return cpu_kernels.attend(self._step.lib, qkv, H, KV, cos.reshape(B * T, D).contiguous(),
                                      sin.reshape(B * T, D).contiguous(), cache, start, key_valid, self.shared)
        end = start + T
        qkv = qkv.t().reshape(B, T, H + 2 * KV, D).transpose(1, 2)  # [B, H + 2 KV, T, D]
        q, k, v = qkv.split([H, KV, KV], dim=1)
        if ly["q_norm"] is not None:
            q = F.rms_norm(q.float(), (D,), ly["q_norm"].float(), self.eps).to(self.dtype)
            k = F.rms_norm(k.float(), (D,), ly["k_norm"].float(), self.eps).to(self.dtype)
        q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        cache[0, :, :, start:end] = k
        cache[1, :, :, start:end] = v
        o = gqa_attention(q, cache[0, :, :, :end], cache[1, :, :, :end], mask)  # [B, H, T, D]
        return o.transpose(1, 2).reshape(B * T, H * D).t().contiguous()

    def _mask(self, key_valid: torch.Tensor, start: int, T: int) -> torch.Tensor | None:
        """Boolean attention mask [B, 1, T, start+T]: causal, pads hidden; None when not needed."""
        end = start + T
        if T == 1:
            return None if bool(key_valid[:, :end].all()) else key_valid[:, None, None, :end]
        causal = torch.ones(T, end, dtype=torch.bool, device=key_valid.device).tril(start)
        mask = causal[None] & key_valid[:, None, :end]
        # A pad query sees no key at all; let it see itself so softmax stays finite.
        mask |= torch.eye(T, end, dtype=torch.bool, device=key_valid.device)[None]
        return mask[:, None]


class HFDecoder:
    """The same interface on top of the transformers forward, for architectures LlamaDecoder
    does not cover. Slower: the generic forward and its dynamic cache."""

    def __init__(self, model, dtype: torch.dtype):
        self.model, self.dtype, self.cache = model, dtype, None
        self.device = next(model.parameters()).device
        # transformers 5 renames the forward's past_key_values to cache (the old name goes in 5.40)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._cache_name = "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"

    def sync(self, model) -> None:
        self.model = model

    def start(self, rows: int, max_len: int) -> None:
        self.cache = None

    def select(self, rows: torch.Tensor) -> None:
        self.cache.reorder_cache(rows)

    def share_prefix(self, columns: int) -> None:
        pass

    def stop(self) -> None:
        self.cache = None

    @torch.no_grad()
    def forward(self, tokens, positions, start, key_valid):
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = self.model(input_ids=tokens, position_ids=positions, attention_mask=key_valid[:, :start + tokens.shape[1]].long(),
                             use_cache=True, **{self._cache_name: self.cache})
        self.cache = getattr(out, self._cache_name)
        return out.logits[:, -1].float()


def make_decoder(model, dtype: torch.dtype):
    if LlamaDecoder.supports(model if not hasattr(model, "get_base_model") else model.get_base_model()):
        return LlamaDecoder(model, dtype)
    print(f"r1lite: {model.config.model_type} is not a Llama-family architecture; "
          "generating with the transformers forward (slower)", flush=True)
    return HFDecoder(model, dtype)


# ---------------------------------------------------------------------------------------------
# Sampling


def sample_next(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """Pick one token per row from logits [B, V] (fp32)."""
    if s.temperature == 0:
        return logits.argmax(-1)
    if s.temperature != 1:
        logits = logits / s.temperature
    if s.top_k:
        kth = torch.topk(logits, min(s.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if s.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= s.top_p  # keep the token that crosses top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -math.inf))
    return sample_categorical(logits, generator)


def sample_categorical(logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row from softmax(logits) by inverting the cumulative distribution: one uniform
    number per row, a cumulative sum and a binary search.

    ``torch.multinomial`` draws one exponential number per vocabulary entry instead: 24 ms per
    step for 16 rows x 49k tokens on the 2-core CPU we measured, against 1.4 ms here, and 94 ms
    against 6 ms for 64 rows, more than a whole decode step of the layers at batch 16.
    Tokens with probability 0 (masked to -inf) are never drawn. fp32 logits on a CPU where our
    kernels run take :func:`r1lite.cpu_kernels.sample`, the same draw in one pass over block sums
    (0.3 vs 1.4 ms for 16 x 49k logits).
    """
    u = torch.rand(logits.shape[0], 1, generator=generator, device=logits.device)
    lib = cpu_kernels.load() if logits.device.type == "cpu" and logits.dtype == torch.float32 else None
    if lib is not None:
        return cpu_kernels.sample(lib, logits, u[:, 0])
    weights = (logits - logits.amax(-1, keepdim=True)).exp_()  # unnormalised: u is scaled instead
    cdf = weights.cumsum_(-1)
    return torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=cdf.shape[-1] - 1).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# The loop


def generate(
    decoder,
    tokenizer,
    prompts: list[list[int]],
    sampling: Sampling,
    n: int = 1,
    seed: int | None = None,
    batch_size: int = 64,
    stop_ids: list[int] | None = None,
    stats: GenerationStats | None = None,
) -> list[list[Completion]]:
    """Sample ``n`` completions for each tokenized prompt; returns ``[prompt][sample]``.

    ``batch_size`` caps the rows (prompt x sample) decoded together; a prompt's ``n`` samples always
    share one batch, so ``batch_size`` must be at least ``n``.
    """
    if n > batch_size:
        raise UsageError(f"batch_size ({batch_size}) must be at least the samples per prompt ({n})")
    stop_ids = stop_ids if stop_ids is not None else [tokenizer.eos_token_id]
    generator = None
    if seed is not None:
        generator = torch.Generator(device=decoder.device).manual_seed(seed)
    stats = stats if stats is not None else GenerationStats()
    t0 = time.perf_counter()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[list[Completion] | None] = [None] * len(prompts)
    most = max(1, batch_size // n)
    per_batch = math.ceil(len(order) / math.ceil(len(order) / most))  # equal batches: no small tail batch
    for b in range(0, len(order), per_batch):
        chunk = order[b:b + per_batch]
        done = _generate_batch(decoder, tokenizer, [prompts[i] for i in chunk], sampling, n,
                               generator, stop_ids, stats)
        for i, completions in zip(chunk, done):
            results[i] = completions
    stats.seconds += time.perf_counter() - t0
    return results


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


def _generate_batch(decoder, tokenizer, prompts, s: Sampling, n, generator, stop_ids, stats):
    """One batch: prefill the shared prefix once, then each prompt's own tokens, copy each
    prompt's cache into its n rows, and decode until every row is done."""
    device = decoder.device
    B = len(prompts)
    L = shared_prefix(prompts) if B > 1 else 0
    S = max(len(p) for p in prompts) - L  # suffix width: [shared prefix | left pad | own tokens]
    width = L + S + s.max_new_tokens
    suffix, own = left_pad([p[L:] for p in prompts], tokenizer.pad_token_id)  # [B, S]
    valid = torch.ones(B, width, dtype=torch.bool)
    valid[:, L:L + S] = own.bool()
    positions = valid[:, :L + S].long().cumsum(-1) - 1  # RoPE positions count real tokens only
    suffix, valid, positions = suffix.to(device), valid.to(device), positions.to(device)
    stats.prompt_tokens += sum(len(p) for p in prompts)

    decoder.start(1 if L else B, width)
    try:
        if L:
            decoder.forward(torch.tensor([prompts[0][:L]], device=device), positions[:1, :L], 0, valid[:1])
            decoder.select(torch.zeros(B, dtype=torch.long, device=device))
            decoder.share_prefix(L)
        logits = decoder.forward(suffix, positions[:, L:].clamp(min=0), L, valid)  # [B, V]
        if n > 1:
            expand = torch.arange(B, device=device).repeat_interleave(n)
            decoder.select(expand)
            logits, valid, positions = logits[expand], valid[expand], positions[expand]
        return _decode(decoder, tokenizer, logits, valid, positions[:, -1] + 1, L + S, s, B, n, generator, stop_ids, stats)
    finally:
        decoder.stop()


def _decode(decoder, tokenizer, logits, key_valid, next_pos, first_col, s: Sampling, B, n, generator, stop_ids, stats):
    device = decoder.device
    rows = B * n
    stop_set = set(stop_ids)
    longest_stop = max((len(tokenizer.encode(t, add_special_tokens=False)) for t in s.stop), default=0) + 2
    generated: list[list[int]] = [[] for _ in range(rows)]
    finish: list[str | None] = [None] * rows
    live = list(range(rows))  # the original row of each cache row
    step = 0
    while True:
        nxt = sample_next(logits, s, generator).tolist()
        for j, tok in enumerate(nxt):
            r = live[j]
            if finish[r] is not None:  # done, waiting to leave the batch
                continue
            generated[r].append(tok)
            if tok in stop_set and not s.ignore_eos:
                finish[r] = "stop"
            elif s.stop and any(t in tokenizer.decode(generated[r][-longest_stop:]) for t in s.stop):
                finish[r] = "stop"
            elif len(generated[r]) >= s.max_new_tokens:
                finish[r] = "length"
        stats.new_tokens += sum(len(generated[r]) == step + 1 for r in live)
        step += 1
        still = [j for j, r in enumerate(live) if finish[r] is None]
        if not still:
            break
        # Finished rows leave once they are a quarter of the batch: each leave copies the cache.
        if len(still) <= 0.75 * len(live):
            idx = torch.tensor(still, device=device)
            decoder.select(idx)
            key_valid, next_pos = key_valid[idx], next_pos[idx]
            live = [live[j] for j in still]
            nxt = [nxt[j] for j in still]
        stats.row_steps.append(len(live))
        logits = decoder.forward(torch.tensor(nxt, device=device)[:, None], next_pos[:, None],
                                 first_col + step - 1, key_valid)
        next_pos = next_pos + 1
    stats.decode_steps += step
    return [[_completion(tokenizer, generated[r], finish[r], s, stop_set) for r in range(p * n, (p + 1) * n)]
            for p in range(B)]


def _completion(tokenizer, ids: list[int], finish: str, s: Sampling, stop_set: set[int]) -> Completion:
    body = ids[:-1] if ids and ids[-1] in stop_set and not s.ignore_eos else ids
    text = tokenizer.decode(body)
    if s.stop:
        cuts = [text.find(t) + len(t) for t in s.stop if t in text]
        if cuts:
            text = text[:min(cuts)]
    return Completion(token_ids=ids, text=text, finish=finish)


# ---------------------------------------------------------------------------------------------
# Prompts


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
