"""Decoders: a model's forward pass over a KV cache, for the engine.

A decoder holds a copy of the model's weights (refreshed by :meth:`sync` after each optimizer
step) and runs ``forward(cache, tokens, positions, start, valid)``: T new tokens per row, written
at cache columns ``start .. start+T``, returning the logits of each row's last token. The cache
is the engine's: decoders create, select, shift and merge it, so requests can join and leave a
running batch.

Llama-family models (Llama, Mistral, Qwen2, Qwen3, SmolLM) run on :class:`LlamaDecoder`, r1lite's
own inference forward, and Gemma 3 text models (``gemma3_text``: local and global attention
layers) on its subclass :class:`r1lite.engine.gemma.GemmaDecoder`, which runs a decode step layer
by layer (Llama's fused step does not apply). Any other architecture, or a Gemma 3 variant the
Gemma decoder does not cover (logit softcapping), runs on the transformers forward
(:class:`HFDecoder`), which is slower, and says so. :func:`r1lite.engine.make_decoder` picks one.

Precision: ``dtype`` is the precision of the rollout weights, copied from the fp32 master weights
at every sync (never accumulated in low precision). On an x86-64 CPU where our kernels build, the
activations, the attention and the cache are fp32 whatever ``dtype`` is. bf16 weights run as bf16
products with fp32 sums where the CPU has AVX-512 BF16 (each product's input rounded to bf16, as
bf16 autocast rounds it in training; ``benchmarks/bench_rollout.py`` has the speed), and as fp32
products of the bf16-rounded weights where it has not (the emulation of that path on AVX2 CPUs).
Elsewhere (GPUs, other CPUs) the PyTorch path computes in ``dtype``. ``int8`` (serving and chat,
where our kernels build): the products' weights quantized per block of 32 as llama.cpp's Q8_0 does,
a quarter of fp32's bytes to read at each decode step; activations and sums stay fp32.
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from r1lite.engine import kernels
from r1lite.meter.flops import decode_flops
from r1lite.models import ModelShape, body_weights, gqa_attention, head_dim


class Projection:
    """One weight of the decoder (several stacked: q/k/v, gate/up): ``weight @ f(x) + bias`` for
    feature-major activations x [K, N], with the fastest product this machine has for it. f is the
    identity, an RMS norm (a layer's input norm, fused into the product) or SwiGLU (x holds gate
    and up).

    fp32 on x86-64 CPUs: our kernel (:mod:`r1lite.engine.kernels`) on a copy of the weights packed
    at each sync (into the previous sync's memory, ``reuse``). Other CPUs (no compiler, other
    architectures, bf16 compute): products of exactly ``CHUNK`` columns each, the last padded,
    with oneDNN's linear on a copy of the weight reordered for it where it runs fp32, else
    PyTorch's matmul. MKL and oneDNN choose kernels, and so the order of a sum, by the shape of a
    product: a column computed among 3 and among 18 columns differs in its last bits, and a
    sequence's tokens would depend on its batch. With one shape every column is computed alike,
    wherever it sits (attention: :meth:`LlamaDecoder._attention`). GPUs: ``weight @ x`` (cuBLAS
    chooses kernels by shape too: there a sequence's tokens can depend on its batch).
    """

    CHUNK = 16

    def __init__(self, parts: list[torch.Tensor], lib, onednn: bool, reuse: Projection | None = None,
                 kind: str = "fp32"):
        if lib is not None:
            self.weight = None
            self.packed = kernels.PackedWeight(parts, lib, reuse.packed if reuse is not None else None, kind)
        else:
            self.weight = torch.cat(parts) if len(parts) > 1 else parts[0]
            self.packed = None
        self.out_features = sum(p.shape[0] for p in parts)
        self.onednn = onednn
        self._reordered: torch.Tensor | None = None  # oneDNN's layout, made on first use

    def columns(self, n: int, transposed: bool = False) -> int:
        """Columns a product with n columns of x computes (padding included): what FLOPs count."""
        if self.packed is not None:
            return self.packed.columns(n)
        if self.weight.device.type == "cpu":
            return -(-n // self.CHUNK) * self.CHUNK
        return n

    def __call__(self, x: torch.Tensor, prologue: str = "plain", norm: torch.Tensor | None = None, eps: float = 0.0,
                 bias: torch.Tensor | None = None, into: torch.Tensor | None = None, transposed: bool = False) -> torch.Tensor:
        """[O, N], or [N, O] with ``transposed``; added into ``into`` in place when given (see
        :meth:`r1lite.engine.kernels.PackedWeight.linear`, whose meaning this keeps on every path)."""
        if self.packed is not None:
            return self.packed.linear(x, prologue, norm, eps, bias, into, transposed)
        rows = x.t().contiguous()  # [N, K]: f and the products work on one token's features at a time
        if prologue == "rmsnorm":
            xf = rows.float()
            rows = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * norm
        elif prologue == "swiglu":
            gate, up = rows.chunk(2, dim=-1)
            rows = F.silu(gate) * up
        out = self._rows(rows)  # [N, O]
        if bias is not None:
            out = out + bias
        if not transposed:
            out = out.t()
        if into is None:
            return out.contiguous()
        return into.add_(out)

    def _rows(self, rows: torch.Tensor) -> torch.Tensor:
        """rows [N, K] -> rows @ weight.T [N, O]; on a CPU in products of CHUNK rows."""
        if self.weight.device.type != "cpu":
            return rows @ self.weight.t()
        n, C = rows.shape[0], self.CHUNK
        if n % C:
            rows = F.pad(rows, (0, 0, 0, C - n % C))
        if self.onednn:
            if self._reordered is None:
                self._reordered = torch.ops.mkldnn._reorder_linear_weight(self.weight, C)
            parts = [torch.ops.mkldnn._linear_pointwise(rows[c:c + C], self._reordered, None, "none", [], "")
                     for c in range(0, rows.shape[0], C)]
        else:
            parts = [rows[c:c + C] @ self.weight.t() for c in range(0, rows.shape[0], C)]
        return (torch.cat(parts) if len(parts) > 1 else parts[0])[:n]


def _unwrapped(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


class LlamaDecoder:
    """Inference forward for Llama-family models with a static KV cache, reading the weights of a
    transformers model (LoRA adapters merged in).

    Activations are kept feature-major, ``[C, B]``, so every projection is ``W @ X`` with the
    weight as the left operand: on small batches this runs ~1.4x faster than ``X @ W.T`` on the
    2-core CPUs we measured (MKL picks a better kernel for tall-skinny products). q/k/v and
    gate/up projections are fused into one product each.

    The cache is a tensor [layers, 2 (k, v), rows, kv heads, columns, head dim]. ``select`` and
    ``merge`` make a new one from it (the engine no longer uses the old one); ``release`` marks the
    end of one.
    """

    def __init__(self, model, dtype: torch.dtype, own_weights: bool = False, discard_model: bool = False,
                 int8: bool = False):
        cfg = _unwrapped(model).config
        self.config = cfg
        self.shape = ModelShape.from_config(cfg, cfg.model_type)
        self.dtype = dtype
        # copy every weight at each sync, also where the rollout dtype is the model's (otherwise
        # those are read in place): FSDP frees the full weights it gathered for the sync
        # the model is dropped once the decoder is built (serving): every weight is copied, and each
        # source weight's memory is handed back to the OS once packed, so a model read from a file
        # map does not hold the file's pages beside the packed copy (the load's peak)
        self.discard_model = discard_model
        self.own_weights = own_weights or discard_model
        self.device = next(model.parameters()).device
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = head_dim(cfg)
        self.eps = cfg.rms_norm_eps
        lib = kernels.load() if self.device.type == "cpu" else None
        self.lib = lib
        self.compute = torch.float32 if lib is not None else dtype  # see the module docstring
        inputs = (cfg.hidden_size, self.n_heads * self.head_dim, cfg.intermediate_size)  # K of each product
        self.bf16_products = dtype == torch.bfloat16 and kernels.bf16_products(lib) and all(k % 2 == 0 for k in inputs)
        if int8 and (lib is None or dtype != torch.float32 or any(k % kernels.Q8_BLOCK for k in inputs)):
            raise ValueError(f"int8 weights need r1lite's CPU kernels, fp32 activations and products whose inputs "
                             f"{inputs} are multiples of {kernels.Q8_BLOCK}")
        self.weights = "int8" if int8 else "bf16" if self.bf16_products else "fp32"  # how the products' weights are packed
        self.onednn = self.device.type == "cpu" and self.compute == torch.float32 and lib is None and torch.backends.mkldnn.is_available()
        # fp32 attention on a CPU in fp64, rounded to fp32: in another batch a row's keys sit at
        # other cache columns (padding), and fp32 sums over them would round differently (see
        # gqa_attention). bf16 compute keeps bf16's products, as transformers' bf16 does: there, as
        # on GPUs, a sequence's last bits can depend on its batch.
        self.attention_accumulate = torch.float64 if self.device.type == "cpu" and self.compute == torch.float32 else None
        self.body_params = sum(w.numel() for w in body_weights(_unwrapped(model)))
        self.sync(model)

    @torch.no_grad()
    def sync(self, model) -> None:
        """Copy the current weights (after an optimizer step) into the decoder."""
        merged = hasattr(model, "merge_adapter")  # a peft model: fold LoRA into the weights first
        if merged:
            model.merge_adapter()
        try:
            self._load(_unwrapped(model))
        finally:
            if merged:
                model.unmerge_adapter()

    def unload(self) -> None:
        """Drop the decoder's copy of the weights until the next :meth:`sync` (a trainer's passes
        and updates run without it beside them)."""
        self.layers = self.head = self.embed = self.norm = self._step = None

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        """A weight in the rollout precision, held in the compute dtype."""
        return t.detach().to(self.dtype).to(self.compute, copy=self.own_weights)

    def _bias(self, *linears) -> torch.Tensor | None:
        """The biases of stacked linears (zeros for one without), or None where none has one."""
        if all(lin.bias is None for lin in linears):
            return None
        return self._cast(torch.cat([lin.bias.detach() if lin.bias is not None else
                                     torch.zeros(lin.out_features, device=self.device) for lin in linears]))

    def _projection(self, i: int, name: str, *linears) -> Projection:
        """Layer i's projection ``name`` of stacked linears (i < 0: the head), packed into the
        memory of the previous sync's (``self.layers`` and ``self.head`` until ``_load`` replaces them)."""
        old = getattr(self, "layers", None)
        reuse = getattr(self, "head", None) if i < 0 else (old[i][name] if old and i < len(old) else None)
        return Projection([self._packing_source(lin.weight) for lin in linears], self.lib, self.onednn, reuse, self.weights)

    def _packing_source(self, weight: torch.Tensor) -> torch.Tensor:
        """What a projection's weight is built from: the fp32 weight itself where our kernels pack it
        into their own memory and round it as the rollout precision does (bf16 packing rounds to
        nearest even, as ``.to(torch.bfloat16)``; fp32 and int8 packing read fp32), else its cast.
        A cast would be a whole second copy of the weight beside the packed one: the vocabulary
        head's was the highest point of loading a model to serve."""
        packs_itself = self.lib is not None and (self.weights != "fp32" or self.dtype == torch.float32)
        return weight.detach() if packs_itself and weight.dtype == torch.float32 else self._cast(weight)

    def _embedding(self, model) -> torch.Tensor | None:
        """The embedding in the rollout precision, or None where it is the head's own weight (tied)
        and the head is packed: lookups then read the packed head (:meth:`embed_rows`), one copy."""
        weight = model.model.embed_tokens.weight
        if self.head.packed is not None and weight.data_ptr() == model.lm_head.weight.data_ptr():
            return None
        return self._cast(weight)

    def embed_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """The embedding rows of token ids [N] in the compute precision, [N, C]."""
        return self.head.packed.rows(ids) if self.embed is None else self.embed[ids]

    def _discard(self, module) -> None:
        """With ``discard_model``: drop the pages of a module's CPU weights, once the decoder holds
        its copies (a model read from a file map would otherwise keep the whole file resident beside
        them). The module is never read again: a dropped page of a file map reads back as the
        file's, an anonymous one as zeros."""
        if self.discard_model:
            for t in module.parameters():
                if t.device.type == "cpu":
                    kernels.drop_pages(t)

    def _load(self, model) -> None:
        cast, b, proj = self._cast, self._bias, self._projection
        layers = []
        for i, layer in enumerate(model.model.layers):
            att, mlp = layer.self_attn, layer.mlp
            layers.append(dict(
                ln1=cast(layer.input_layernorm.weight),
                wqkv=proj(i, "wqkv", att.q_proj, att.k_proj, att.v_proj), bqkv=b(att.q_proj, att.k_proj, att.v_proj),
                wo=proj(i, "wo", att.o_proj), bo=b(att.o_proj),
                q_norm=cast(att.q_norm.weight) if hasattr(att, "q_norm") else None,
                k_norm=cast(att.k_norm.weight) if hasattr(att, "k_norm") else None,
                ln2=cast(layer.post_attention_layernorm.weight),
                wgu=proj(i, "wgu", mlp.gate_proj, mlp.up_proj), bgu=b(mlp.gate_proj, mlp.up_proj),
                wd=proj(i, "wd", mlp.down_proj), bd=b(mlp.down_proj),
            ))
            self._discard(layer)
        self.layers = layers
        self.head = proj(-1, "head", model.lm_head)
        self.embed = self._embedding(model)
        self.norm = cast(model.model.norm.weight)
        self._discard(model)
        # a decode step in one call of our kernels (every layer and the head), and prefill's
        # attention in one call per layer (not with Qwen3's q/k norms)
        self._step = None
        if self.lib is not None and self.layers[0]["q_norm"] is None and self.head_dim % 8 == 0:
            self._step = kernels.DecodeStep(
                self.lib, [((ly["wqkv"].packed, ly["wo"].packed, ly["wgu"].packed, ly["wd"].packed),
                            (ly["ln1"], ly["ln2"], ly["bqkv"], ly["bo"], ly["bgu"], ly["bd"])) for ly in layers],
                self.head.packed, self.norm, self.n_heads, self.n_kv, self.head_dim, self.eps)
        rotary = model.model.rotary_emb
        self.inv_freq = rotary.inv_freq.detach().float().to(self.device)
        self.rope_scale = float(getattr(rotary, "attention_scaling", 1.0))

    # -- the cache -------------------------------------------------------------------------------

    def new_cache(self, rows: int, columns: int) -> torch.Tensor:
        shape = (self.n_layers, 2, rows, self.n_kv, columns, self.head_dim)
        if self.device.type == "cpu":  # resident as columns fill, not at once
            return kernels.untouched_zeros(shape, self.compute)
        return torch.zeros(shape, dtype=self.compute, device=self.device)

    def select(self, cache: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The cache of these rows (indices may repeat: a prompt's cache copied into its samples)."""
        return cache.index_select(2, rows)

    def compact(self, cache: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The cache of ``rows`` (ascending, none twice) moved to the front of the cache's own memory,
        a contiguous cache of those rows (the engine drops finished rows so, and reads the old one no
        more). :meth:`select` would build it beside the old one: a 128-row rollout's cache and its
        three-quarter copy were its highest memory."""
        layers, two, total = cache.shape[:3]
        if len(rows) == total:
            return cache
        blocks = cache.view(layers * two, total, -1)  # [layer x (k, v), rows, a row's keys or values]
        out = cache.view(-1)[:layers * two * len(rows) * blocks.shape[-1]].view(layers * two, len(rows), -1)
        for b in range(layers * two):  # out[b] ends at or before block b + 1's rows begin: each is read before it is written over
            out[b] = blocks[b].index_select(0, rows)  # through a copy: out[b] may overlap block b's own rows
        return out.view(layers, two, len(rows), *cache.shape[3:])

    def merge(self, parts: list[tuple[torch.Tensor, torch.Tensor | None, int, int, int]], columns: int) -> torch.Tensor:
        """One cache of ``columns`` columns from ``(cache, rows or None = all, first, end, dest)``
        parts: each part's rows, its columns first..end moved to dest.., parts' rows one after
        another (zeros elsewhere). The parts' caches are read no more: their memory is handed back
        as the new one fills (a serving batch's merge held both whole at once)."""
        total = sum(c.shape[2] if r is None else len(r) for c, r, *_ in parts)
        out = self.new_cache(total, columns)  # zeros: its pages are taken as a layer is written
        on_cpu = [c for c in {c.data_ptr(): c for c, *_ in parts}.values() if c.device.type == "cpu"]
        for layer in range(self.n_layers):  # a layer at a time, each part's layer dropped once copied:
            at = 0                          # the old caches and the new one never stand whole side by side
            for cache, rows, first, end, dest in parts:
                part = cache[layer] if rows is None else cache[layer].index_select(1, rows)
                n = part.shape[1]
                out[layer, :, at:at + n, :, dest:dest + end - first] = part[:, :, :, first:end]
                at += n
            for cache in on_cpu:
                kernels.drop_pages(cache[layer])
        return out

    def release(self, cache) -> None:
        """The engine is done with this cache (garbage collection frees a tensor)."""

    def flops(self, rows: int, T: int, start: int) -> float:
        """FLOPs of ``forward`` on ``rows`` x ``T`` tokens at column ``start``, as computed: every
        layer's products (padded columns included), the head on each row's last token, attention
        (:func:`r1lite.meter.flops.decode_flops`)."""
        return decode_flops(self.shape, self.body_params, rows, T, start,
                            body_columns=self.layers[0]["wqkv"].columns(rows * T),
                            head_columns=self.head.columns(rows, transposed=True), causal_only=self._step is not None)

    # -- forward ---------------------------------------------------------------------------------

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def _cos_sin(self, positions: torch.Tensor):  # positions [B, T] -> cos, sin [B, 1, T, D]
        freqs = positions.float()[..., None] * self.inv_freq  # [B, T, D/2]
        emb = torch.cat([freqs, freqs], dim=-1)
        cos = (emb.cos() * self.rope_scale).to(self.compute)[:, None]
        sin = (emb.sin() * self.rope_scale).to(self.compute)[:, None]
        return cos, sin

    @torch.no_grad()
    def forward(self, cache: torch.Tensor, tokens: torch.Tensor, positions: torch.Tensor, start: int,
                valid: torch.Tensor, shared: int = 0) -> torch.Tensor:
        """Run ``tokens`` [B, T] at cache columns ``start .. start+T`` and return the logits of the
        last position, [B, V] in fp32.

        ``positions`` [B, T] are RoPE positions (padding makes them differ per row); ``valid``
        [B, >= start+T] marks real (non-pad) cache columns; columns 0..``shared`` hold the same
        keys and values in every row (a prompt prefix prefilled once), which the kernel reads from
        row 0.
        """
        B, T = tokens.shape
        D = self.head_dim
        cos, sin = self._cos_sin(positions)
        x = self.embed_rows(tokens.reshape(-1)).t().contiguous()  # [C, B*T], row-major
        if self._step is not None and T == 1:  # a decode step on an fp32 CPU: one call of our kernels
            return self._step(x, cos.reshape(B, D).contiguous(), sin.reshape(B, D).contiguous(), cache, start,
                              valid, shared)
        mask = None if self._step is not None else self._mask(valid, start, T)  # [B, 1, T, end] or None
        for i, ly in enumerate(self.layers):
            qkv = ly["wqkv"](x, "rmsnorm", ly["ln1"], self.eps, ly["bqkv"])  # [(H + 2 KV) * D, B*T]
            o = self._attention(ly, qkv, cache[i], B, T, cos, sin, start, mask, valid, shared)
            ly["wo"](o, bias=ly["bo"], into=x)  # the residual stream, updated in place
            gu = ly["wgu"](x, "rmsnorm", ly["ln2"], self.eps, ly["bgu"])
            ly["wd"](gu, "swiglu", bias=ly["bd"], into=x)
        last = x.view(-1, B, T)[:, :, -1].contiguous()  # [C, B]
        return self.head(last, "rmsnorm", self.norm, self.eps, transposed=True).float()  # [B, V]

    def _attention(self, ly, qkv, cache, B, T, cos, sin, start, mask, valid, shared):
        """qkv [(H + 2 KV) * D, B*T] -> attention output [H*D, B*T], keys and values written to
        ``cache`` [2, B, KV, columns, D] at columns start .. start+T."""
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        if self._step is not None:
            return kernels.attend(self.lib, qkv, H, KV, cos.reshape(B * T, D).contiguous(),
                                  sin.reshape(B * T, D).contiguous(), cache, start, valid, shared)
        end = start + T
        qkv = qkv.t().reshape(B, T, H + 2 * KV, D).transpose(1, 2)  # [B, H + 2 KV, T, D]
        q, k, v = qkv.split([H, KV, KV], dim=1)
        if ly["q_norm"] is not None:
            q = F.rms_norm(q.float(), (D,), ly["q_norm"].float(), self.eps).to(self.compute)
            k = F.rms_norm(k.float(), (D,), ly["k_norm"].float(), self.eps).to(self.compute)
        q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
        cache[0, :, :, start:end] = k
        cache[1, :, :, start:end] = v
        o = gqa_attention(q, cache[0, :, :, :end], cache[1, :, :, :end], mask, self.attention_accumulate)  # [B, H, T, D]
        return o.transpose(1, 2).reshape(B * T, H * D).t().contiguous()

    def _mask(self, valid: torch.Tensor, start: int, T: int) -> torch.Tensor | None:
        """Boolean attention mask [B, 1, T, start+T]: causal, pads hidden; None when not needed.

        A pad query (left padding inside the new tokens) sees no real key before it; it sees
        itself — its own column, ``start + t`` — so its softmax stays finite. Its output is never
        read, and no real query sees a pad key.
        """
        end = start + T
        if T == 1:
            return None if bool(valid[:, :end].all()) else valid[:, None, None, :end]
        causal = torch.ones(T, end, dtype=torch.bool, device=valid.device).tril(start)
        mask = causal[None] & valid[:, None, :end]
        mask |= (torch.arange(end, device=valid.device)[None] == start + torch.arange(T, device=valid.device)[:, None])[None]
        return mask[:, None]


class HFDecoder:
    """The same interface on top of the transformers forward, for architectures LlamaDecoder
    does not cover. Slower: the generic forward and its dynamic cache, which grows by appending,
    so ``start`` is always its length. The cache is a transformers ``DynamicCache``."""

    def __init__(self, model, dtype: torch.dtype):
        self.model, self.dtype = model, dtype
        self.config = _unwrapped(model).config
        self.shape = ModelShape.attention_only(self.config, self.config.model_type)
        self.device = next(model.parameters()).device
        # transformers 5 renames the forward's past_key_values to cache (the old name goes in 5.40)
        self._cache_name = "cache" if "cache" in inspect.signature(_unwrapped(model).forward).parameters else "past_key_values"
        self.body_params = sum(w.numel() for w in body_weights(_unwrapped(model)))

    def sync(self, model) -> None:
        self.model = model

    def unload(self) -> None:
        """Nothing to drop: the transformers forward reads the model's own weights."""

    def new_cache(self, rows: int, columns: int):
        from transformers import DynamicCache

        return DynamicCache()

    def select(self, cache, rows: torch.Tensor):
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys.index_select(0, rows), layer.values.index_select(0, rows)
        return cache

    def compact(self, cache, rows: torch.Tensor):
        return self.select(cache, rows)  # layer by layer: one layer's copy at a time

    def merge(self, parts, columns: int):
        """As :meth:`LlamaDecoder.merge`; the merged cache is as long as its last written column."""
        from transformers import DynamicCache

        out = DynamicCache()
        width = max(dest + end - first for _, _, first, end, dest in parts)
        for i in range(len(parts[0][0].layers)):
            keys, values = [], []
            for cache, rows, first, end, dest in parts:
                k, v = cache.layers[i].keys[:, :, first:end], cache.layers[i].values[:, :, first:end]
                if rows is not None:
                    k, v = k.index_select(0, rows), v.index_select(0, rows)
                pad = (0, 0, dest, width - dest - (end - first))  # zeros where pads and shifts are
                keys.append(F.pad(k, pad))
                values.append(F.pad(v, pad))
            out.update(torch.cat(keys), torch.cat(values), i)
        return out

    def release(self, cache) -> None:
        pass

    def flops(self, rows: int, T: int, start: int) -> float:
        """As :meth:`LlamaDecoder.flops` (no padded columns; the head on the last token only)."""
        return decode_flops(self.shape, self.body_params, rows, T, start, body_columns=rows * T, head_columns=rows,
                            causal_only=False)

    @torch.no_grad()
    def forward(self, cache, tokens, positions, start, valid, shared: int = 0):
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            out = self.model(input_ids=tokens, position_ids=positions, attention_mask=valid[:, :start + tokens.shape[1]].long(),
                             use_cache=True, logits_to_keep=1, **{self._cache_name: cache})
        return out.logits[:, -1].float()

