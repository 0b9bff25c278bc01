"""Gemma 3 (``gemma3_text``, transformers' ``Gemma3ForCausalLM``) on r1lite's own decoder path.

:class:`GemmaDecoder` keeps :class:`~r1lite.engine.decoders.LlamaDecoder`'s cache (layout, select,
merge, release) and its products (:class:`~r1lite.engine.decoders.Projection`: our fp32 kernels on
x86-64 CPUs); what differs follows transformers' ``modeling_gemma3.py``:

- RMS norms weigh by ``1 + w``, in fp32. Four per layer: the input and pre-feedforward norms
  precede a projection (the kernels' "rmsnorm" prologue, with ``1 + w`` as its weight), the
  post-attention and post-feedforward norms follow one (in torch, before the residual add); q and
  k are normed per head before RoPE;
- scores are scaled by ``query_pre_attn_scalar ** -0.5``, not by the head width;
- local layers (``layer_types`` "sliding_attention") see the last ``sliding_window`` tokens, their
  own included; global layers see every token. The two kinds have their own RoPE base (the
  model's rotary module's ``<kind>_inv_freq``);
- a GELU-tanh gated MLP, ``gelu_tanh(gate) * up``, then the down projection;
- the embedding is scaled by ``sqrt(hidden_size)`` in the weights' dtype (transformers'
  ``Gemma3TextScaledWordEmbedding``); the vocabulary head is tied to it; no logit softcapping
  (:func:`unsupported` sends a config that has it to the transformers forward).

The window counts real tokens: a query at position p sees the keys at positions p - W + 1 .. p.
transformers slides it over cache columns, which is the same thing for a left-padded batch (the
pads of a row come before all its tokens); the engine's cache also has pads between a prompt
prefix prefilled once and each prompt's own tokens, and rows merged from other batches, so the
decoder reads each column's position from the real columns before it (``valid``), never from the
column number. A local layer computes its scores over the columns the batch's windows reach,
not over the whole cache: ``W - 1 + T`` columns for T new tokens, what
:func:`r1lite.meter.flops.attention_flops` counts, more while a row's window spans the pads after a
shared prefix (those pad columns are computed, masked, and not counted).

The fused decode step (:class:`r1lite.engine.kernels.DecodeStep`) and the kernels' attention are
Llama's: a decode step runs layer by layer, attention in torch (:func:`r1lite.models.gqa_attention`,
in fp64 on an fp32 CPU, as the Llama decoder's torch path does, so a sequence's tokens do not
depend on its batch). The GELU is computed in fp64 there too: PyTorch's vectorized and scalar
tanh differ in the last bit, and which one an element gets depends on the batch's size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from r1lite.engine.decoders import LlamaDecoder, _unwrapped
from r1lite.models import gqa_attention

STATIC_ROPE = ("default", "linear", "llama3", "yarn")
"""RoPE types whose frequencies do not change with the sequence length (the decoder reads them once)."""


def unsupported(cfg) -> str | None:
    """Why :class:`GemmaDecoder` cannot run a ``gemma3_text`` config (the engine then uses the
    transformers forward), or None."""
    softcaps = {k: getattr(cfg, k, None) for k in ("final_logit_softcapping", "attn_logit_softcapping")}
    if any(v is not None for v in softcaps.values()):
        return f"has logit softcapping ({', '.join(f'{k}={v}' for k, v in softcaps.items() if v is not None)})"
    if getattr(cfg, "hidden_activation", None) != "gelu_pytorch_tanh":
        return f"uses the {getattr(cfg, 'hidden_activation', None)} activation, not gelu_pytorch_tanh"
    if getattr(cfg, "use_bidirectional_attention", False):
        return "uses bidirectional attention"
    kinds = set(cfg.layer_types) - {"sliding_attention", "full_attention"}
    if kinds:
        return f"has {sorted(kinds)} attention layers"
    rope = getattr(cfg, "rope_parameters", None) or {}
    types = sorted({(rope.get(k) or {}).get("rope_type", "default") for k in set(cfg.layer_types)} - set(STATIC_ROPE))
    if types:
        return f"uses {types} RoPE"
    return None


class GemmaDecoder(LlamaDecoder):
    """Inference forward for Gemma 3 text models with a static KV cache (see the module
    docstring); the interface, the cache and the precision rules are :class:`LlamaDecoder`'s."""

    def __init__(self, model, dtype: torch.dtype, own_weights: bool = False, discard_model: bool = False,
                 int8: bool = False):
        cfg = _unwrapped(model).config
        why = unsupported(cfg)
        if why is not None:
            raise ValueError(f"GemmaDecoder: this model {why}")
        self.window = int(cfg.sliding_window)
        self.kinds = list(cfg.layer_types)
        self.scale = float(cfg.query_pre_attn_scalar) ** -0.5
        super().__init__(model, dtype, own_weights, discard_model, int8)

    def _load(self, model) -> None:
        b, proj = self._bias, self._projection

        def gain(norm) -> torch.Tensor:  # Gemma's 1 + w, in fp32, of w as the rollout weights hold it
            return 1.0 + norm.weight.detach().to(self.dtype).float()

        layers = []
        for i, layer in enumerate(model.model.layers):
            att, mlp = layer.self_attn, layer.mlp
            layers.append(dict(
                kind=self.kinds[i],
                ln1=gain(layer.input_layernorm).to(self.compute),  # prologue weights: in the products' dtype
                wqkv=proj(i, "wqkv", att.q_proj, att.k_proj, att.v_proj), bqkv=b(att.q_proj, att.k_proj, att.v_proj),
                q_norm=gain(att.q_norm), k_norm=gain(att.k_norm),
                wo=proj(i, "wo", att.o_proj), bo=b(att.o_proj), post_attn=gain(layer.post_attention_layernorm),
                ln2=gain(layer.pre_feedforward_layernorm).to(self.compute),
                wgu=proj(i, "wgu", mlp.gate_proj, mlp.up_proj), bgu=b(mlp.gate_proj, mlp.up_proj),
                wd=proj(i, "wd", mlp.down_proj), bd=b(mlp.down_proj), post_ff=gain(layer.post_feedforward_layernorm),
            ))
            self._discard(layer)
        self.layers = layers
        embed = model.model.embed_tokens
        # Gemma3TextScaledWordEmbedding: weight * embed_scale.to(weight.dtype), in the weights' dtype
        self.embed_scale = embed.embed_scale.detach().to(self.device, self.dtype)
        self.norm = gain(model.model.norm).to(self.compute)
        self.head = proj(-1, "head", model.lm_head)
        self.embed = self._embedding(model)
        self._discard(model)
        self._step = None  # Llama's fused step does not apply (see the module docstring)
        rotary = model.model.rotary_emb
        self.rope = {kind: (getattr(rotary, f"{kind}_inv_freq").detach().float().to(self.device),
                            float(getattr(rotary, f"{kind}_attention_scaling", 1.0))) for kind in set(self.kinds)}
        self.intermediate = model.config.intermediate_size

    # -- forward ---------------------------------------------------------------------------------

    @torch.no_grad()
    def forward(self, cache: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor, start: int,
                valid: torch.Tensor, shared: int = 0) -> torch.Tensor:
        """As :meth:`LlamaDecoder.forward` (``shared`` is not needed: every row holds its own copy
        of a shared prefix, which attention in torch reads)."""
        B, T = tokens.shape
        rope = {kind: self._cos_sin_of(positions, *freqs) for kind, freqs in self.rope.items()}
        masks = {"full_attention": (self._mask(valid, start, T), 0)}
        if "sliding_attention" in self.rope:
            masks["sliding_attention"] = self._window_mask(valid, start, T)
        x = (self.embed_rows(tokens.reshape(-1)).to(self.dtype) * self.embed_scale).to(self.compute)
        x = x.t().contiguous()  # [C, B*T], feature-major
        I = self.intermediate
        for i, ly in enumerate(self.layers):
            qkv = ly["wqkv"](x, "rmsnorm", ly["ln1"], self.eps, ly["bqkv"])  # [(H + 2 KV) * D, B*T]
            o = self._attend(ly, qkv, cache[i], B, T, *rope[ly["kind"]], start, *masks[ly["kind"]])
            x += self._norm(ly["wo"](o, bias=ly["bo"]), ly["post_attn"])
            gate, up = ly["wgu"](x, "rmsnorm", ly["ln2"], self.eps, ly["bgu"]).split([I, I])
            x += self._norm(ly["wd"](self._gelu(gate) * up, bias=ly["bd"]), ly["post_ff"])
        last = x.view(-1, B, T)[:, :, -1].contiguous()  # [C, B]
        return self.head(last, "rmsnorm", self.norm, self.eps, transposed=True).float()  # [B, V]

    def _cos_sin_of(self, positions: torch.Tensor, inv_freq: torch.Tensor, scaling: float):
        """cos, sin [B, 1, T, D] of one RoPE base, computed as transformers' rotary module does."""
        freqs = positions.float()[..., None] * inv_freq  # [B, T, D/2]
        emb = torch.cat([freqs, freqs], dim=-1)
        return (emb.cos() * scaling).to(self.compute)[:, None], (emb.sin() * scaling).to(self.compute)[:, None]

    def _norm(self, y: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """Gemma's RMS norm of feature-major y [C, N] (one token a column), in fp32; [C, N] back."""
        rows = y.t().float().contiguous()  # one token's features contiguous: each row reduced alike in any batch
        rows = rows * torch.rsqrt(rows.pow(2).mean(-1, keepdim=True) + self.eps) * gain
        return rows.to(self.compute).t()

    def _head_norm(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        """q or k [B, heads, T, D] normed over each head's D features."""
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps) * gain).to(self.compute)

    def _gelu(self, gate: torch.Tensor) -> torch.Tensor:
        if self.attention_accumulate is None:
            return F.gelu(gate, approximate="tanh")
        return F.gelu(gate.to(self.attention_accumulate), approximate="tanh").to(self.compute)  # module docstring

    def _attend(self, ly, qkv, cache, B, T, cos, sin, start, mask, first):
        """qkv [(H + 2 KV) * D, B*T] -> attention output [H*D, B*T]; keys and values written to
        ``cache`` [2, B, KV, columns, D] at columns start .. start+T; scores over columns
        ``first`` .. start+T (``mask`` [B, 1, T, those columns] or None)."""
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        end = start + T
        # token-major and contiguous: each head's D features adjacent, so the q/k norms reduce
        # every row alike in any batch (a strided reduction sums in another order)
        qkv = qkv.t().contiguous().view(B, T, H + 2 * KV, D).transpose(1, 2)  # [B, H + 2 KV, T, D]
        q, k, v = qkv.split([H, KV, KV], dim=1)
        q, k = self._head_norm(q, ly["q_norm"]), self._head_norm(k, ly["k_norm"])
        q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        cache[0, :, :, start:end] = k
        cache[1, :, :, start:end] = v
        o = gqa_attention(q, cache[0, :, :, first:end], cache[1, :, :, first:end], mask, self.attention_accumulate,
                          self.scale)  # [B, H, T, D]
        return o.transpose(1, 2).reshape(B * T, H * D).t().contiguous()

    def _window_mask(self, valid: torch.Tensor, start: int, T: int) -> tuple[torch.Tensor | None, int]:
        """A local layer's mask and first column: ``(mask [B, 1, T, end - first] or None, first)``.

        Causal and pads hidden as :meth:`LlamaDecoder._mask`, and a query at position p sees no key
        before position p - W + 1, positions counted over the real columns. ``first`` is the first
        column any query of the batch may see, and at most where the window of a row without pads
        inside it would start (``end - (W - 1 + T)``, what :func:`r1lite.meter.flops.attention_flops`
        counts); pads inside a window (after a shared prefix) widen it by their number.
        """
        end = start + T
        cols = torch.arange(end, device=valid.device)
        position = valid[:, :end].long().cumsum(-1) - 1  # [B, end]: real tokens before each column, less one
        mask = position[:, None, :] > position[:, start:end, None] - self.window  # [B, T, end]
        mask &= cols[None, None, :] <= (start + torch.arange(T, device=valid.device))[None, :, None]  # causal
        mask &= valid[:, None, :end]
        mask |= (cols[None] == start + torch.arange(T, device=valid.device)[:, None])[None]  # a pad query sees itself
        seen = mask.any(1).any(0)  # [end]
        first = min(int(seen.nonzero()[0]), max(0, end - (self.window - 1 + T)))
        mask = mask[:, None, :, first:]
        return (None if bool(mask.all()) else mask), first
