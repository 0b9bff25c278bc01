"""Token log-probabilities of completions under a model: what GRPO and SFT train on.

GRPO samples G completions of each prompt. A plain forward over ``[prompt | completion]`` rows
would run every prompt G times; :func:`completion_logprobs` runs each distinct prompt once and
lets its G completions attend to its keys and values, so the prompt's share of a train step drops
by G (its gradient is the sum over the group, exactly as if it had been repeated). In the same way
the token prefix all prompts of a batch share (a task's instructions, a system prompt) runs once
and every prompt attends to it: in the demo's R1 format ~84 of a prompt's ~94 tokens. Llama-family
models take this path, built from the model's own modules (so LoRA adapters and autocast apply);
other architectures take the transformers forward over the concatenated rows.

The vocabulary projection and log-softmax run in chunks of positions inside one autograd
function that keeps no ``[positions, vocabulary]`` tensor for the backward pass (it recomputes
each chunk's logits), so a 49k-token vocabulary costs memory for one chunk, not for the batch.

Log-probs are those of the distribution the rollouts sampled from: logits divided by the sampling
temperature (as TRL and verl do). Training reaches the model only through :class:`Policy`, one
module whose forward is this computation, and each decoder layer through a :class:`LayerPass`
module, so FSDP2 can shard the model layer by layer (:mod:`r1lite.train.distributed`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
import torch.nn.functional as F

from r1lite.errors import UsageError
from r1lite.meter.flops import Weights, train_pass_flops
from r1lite.models import ModelShape, body_weights, gqa_attention, head_dim, left_pad, llama_family, shared_prefix
from r1lite.train.config import OptimConfig
from r1lite.train.distributed import full_tensor

CHUNK_POSITIONS = 128
"""Positions per chunk of the fused vocabulary projection + log-softmax: 128 x 49k fp32 logits are
25 MB, under glibc's largest mmap threshold (32 MB), so chunks reuse heap memory instead of paying
page faults for a fresh mapping each time (a 50 MB chunk spent ~5x longer in elementwise ops)."""


@dataclass
class GroupBatch:
    """Distinct prompts — the prefix they all share, then each one's own tokens (left-padded) — and
    their completions (right-padded)."""

    prompt_ids: torch.Tensor  # [P, Lp] each prompt after the shared prefix
    prompt_valid: torch.Tensor  # [P, Lp] bool
    group: torch.Tensor  # [N] index of each completion's prompt
    completion_ids: torch.Tensor  # [N, Lc]
    completion_mask: torch.Tensor  # [N, Lc] float, 1 = a real completion token
    prefix_ids: torch.Tensor = None  # [Lx] the tokens every prompt starts with (may be none)

    def __post_init__(self):
        if self.prefix_ids is None:
            self.prefix_ids = torch.zeros(0, dtype=torch.long, device=self.prompt_ids.device)

    def rows(self, idx: slice | torch.Tensor) -> GroupBatch:
        """The completions ``idx`` (a slice or an index tensor) with only the prompts they use,
        trimmed to the widths they need."""
        group = self.group[idx]
        used, remap = torch.unique(group, return_inverse=True)
        valid = self.prompt_valid[used]
        first = int(valid.any(0).nonzero()[0])  # leading columns that are padding in every row
        width = max(1, int(self.completion_mask[idx].sum(1).max()))
        return GroupBatch(self.prompt_ids[used, first:], valid[:, first:], remap,
                          self.completion_ids[idx, :width], self.completion_mask[idx, :width], self.prefix_ids)

    def to(self, device) -> GroupBatch:
        return GroupBatch(*(t.to(device) for t in (self.prompt_ids, self.prompt_valid, self.group,
                                                   self.completion_ids, self.completion_mask, self.prefix_ids)))

    @property
    def tokens(self) -> int:
        """Tokens one forward pass processes (the shared prefix once, each prompt once)."""
        return int(self.prefix_ids.numel() + self.prompt_valid.sum() + self.completion_mask.sum())


def make_group_batch(prompts: list[list[int]], group: list[int], completions: list[list[int]], pad_id: int) -> GroupBatch:
    """``prompts`` are the distinct prompts; completion i continues ``prompts[group[i]]``. The
    prefix they all share is split off (leaving each prompt at least one token of its own)."""
    shared = shared_prefix(prompts) if len(prompts) > 1 else 0
    ids, valid = left_pad([p[shared:] for p in prompts], pad_id)
    Lc = max(1, max(len(c) for c in completions))
    cids = torch.full((len(completions), Lc), pad_id, dtype=torch.long)
    cmask = torch.zeros(len(completions), Lc)
    for i, c in enumerate(completions):
        cids[i, :len(c)] = torch.tensor(c, dtype=torch.long)
        cmask[i, :len(c)] = 1
    return GroupBatch(ids, valid.bool(), torch.tensor(group, dtype=torch.long), cids, cmask,
                      torch.tensor(prompts[0][:shared], dtype=torch.long))


class Policy(torch.nn.Module):
    """The model being trained, as one module: ``policy(batch)`` → completion log-probs (and the
    entropy), at the sampling temperature. ``model`` may be a peft model (LoRA).

    A Llama-family model's decoder layers run as :class:`LayerPass` modules (``layers``), one call
    each per pass: the boundary at which FSDP2 gathers and frees a layer's weights."""

    def __init__(self, model, temperature: float = 1.0, checkpointing: bool = False):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature={temperature}: log-probs need a sampling temperature > 0")
        self.model = model
        self.temperature = temperature
        base = _unwrapped(model)
        self.layers = torch.nn.ModuleList(LayerPass(layer, base.config, checkpointing)
                                          for layer in base.model.layers) if llama_family(base) else None
        self.checkpointing = checkpointing
        if checkpointing and self.layers is None:
            checkpoint_hf_layers(base)

    def forward(self, batch: GroupBatch, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probability of each completion token under softmax(logits / temperature), [N, Lc]
        fp32, and optionally that distribution's entropy at each completion position, [N, Lc] (with
        its gradient: an entropy bonus trains through it). Padding positions hold 0."""
        base = _unwrapped(self.model)
        real = batch.completion_mask.bool()
        hidden = self.hidden(batch)  # [M, C]
        logp, entropy = head_logprobs(hidden[None], base.lm_head.weight, batch.completion_ids[real][None], with_entropy,
                                      self.temperature)
        full = logp.new_zeros(real.shape).masked_scatter(real, logp[0])
        return full, None if entropy is None else entropy.new_zeros(real.shape).masked_scatter(real, entropy[0])


    def hidden(self, batch: GroupBatch) -> torch.Tensor:
        """The final-normed states that predict the M real completion tokens, [M, C] in row-major
        order (what the vocabulary head takes; on-policy distillation needs the whole distribution
        there)."""
        with self._uncached_autocast(batch.prompt_ids.device.type):
            if self.layers is not None:
                return _llama_hidden(_unwrapped(self.model), self.layers, batch)
            return _generic_hidden(_unwrapped(self.model), self.model, batch)[batch.completion_mask.bool()]

    def _uncached_autocast(self, device: str) -> contextlib.AbstractContextManager:
        """With gradient checkpointing under autocast: autocast's cache of low-precision weight copies
        would keep every layer's for the whole pass (what checkpointing frees), so each use casts
        anew: the same values, one layer's copies alive at a time."""
        if self.checkpointing and torch.is_grad_enabled() and torch.is_autocast_enabled(device):
            return torch.autocast(device, dtype=torch.get_autocast_dtype(device), cache_enabled=False)
        return contextlib.nullcontext()


def completion_hidden(model, batch: GroupBatch) -> torch.Tensor:
    """:meth:`Policy.hidden` of ``model`` (a frozen teacher, or a student outside a trainer)."""
    return Policy(model).hidden(batch)


def completion_logprobs(model, batch: GroupBatch, with_entropy: bool = False,
                        temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:meth:`Policy.forward` of ``model`` at ``temperature``."""
    return Policy(model, temperature)(batch, with_entropy=with_entropy)


def dummy_batch(pad_id: int) -> GroupBatch:
    """One pad-token prompt and completion: under FSDP every pass is a collective, so a rank with
    fewer micro-batches than the others makes up the difference with passes over this batch, its
    loss weighted 0."""
    return make_group_batch([[pad_id]], [0], [[pad_id]], pad_id)


def _unwrapped(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def pass_flops(model, batch: GroupBatch, backward: bool) -> float:
    """FLOPs of :func:`completion_logprobs` on ``batch`` as it computes them, and of its backward
    (:func:`r1lite.meter.flops.train_pass_flops`, which the estimate uses too)."""
    base = _unwrapped(model)
    P, Lp = batch.prompt_ids.shape
    N, Lc = batch.completion_ids.shape
    M = int(batch.completion_mask.sum())
    return train_pass_flops(model_shape(base), model_weights(base), P, Lp, N, Lc, M, backward,
                            batch.prefix_ids.numel())


def model_shape(base) -> ModelShape:
    """The shape of an unwrapped transformers model, as the FLOP formulas read it."""
    if llama_family(base):
        return ModelShape.from_config(base.config, base.config.model_type)
    return ModelShape.attention_only(base.config, base.config.model_type)


def model_weights(base) -> Weights:
    """The body weights of an unwrapped transformers model (LoRA's adapters included), split by
    whether they train."""
    weights = body_weights(base)
    return Weights(trained=sum(w.numel() for w in weights if w.requires_grad),
                   frozen=sum(w.numel() for w in weights if not w.requires_grad),
                   head_trains=base.get_output_embeddings().weight.requires_grad)


@dataclass
class _Packing:
    """What every layer of one packed pass shares. The pass's T tokens sit in one [T, C] tensor —
    the shared prefix (Lx), the prompts' padded positions (P x Lp), the M real completion tokens —
    so the norms, projections and MLPs run once a layer on all of them; attention takes each level
    apart. Rotary tables per token, attention masks per level, and where the completion tokens sit
    in the padded [N, Lc] layout."""

    cos: torch.Tensor  # [T, D]
    sin: torch.Tensor
    mask_s: torch.Tensor  # [1, 1, Lx, Lx] bool
    mask_p: torch.Tensor  # [P, 1, Lp, Lx + Lp] bool
    mask_c: torch.Tensor  # [N, 1, Lc, Lx + Lp + Lc] bool
    group: torch.Tensor  # [N]
    flat: torch.Tensor  # [M]: each real token's index in [N * Lc]
    rows: int  # N
    width: int  # Lc
    shared: int  # Lx
    prompts: tuple[int, int]  # P, Lp

    def unpack(self, t: torch.Tensor, heads: int, D: int) -> torch.Tensor:
        """[M, heads, D] -> [N, heads, Lc, D], zeros at padding."""
        M = self.flat.numel()
        out = t.new_zeros(self.rows * self.width, heads * D).index_copy(0, self.flat, t.reshape(M, heads * D))
        return out.view(self.rows, self.width, heads, D).transpose(1, 2)


class LayerPass(torch.nn.Module):
    """One decoder layer of :func:`_llama_hidden` as a module: the pass's packed token states
    [T, C] in (shared prefix, prompts, completions), the same out."""

    def __init__(self, layer, config, checkpointing: bool = False):
        super().__init__()
        self.layer = layer
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = head_dim(config)
        self.checkpointing = checkpointing

    def forward(self, x: torch.Tensor, k: _Packing) -> torch.Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            # inside forward, not around the module's call: FSDP2's hooks stay outside the recompute
            return torch.utils.checkpoint.checkpoint(self.run, x, k, use_reentrant=False)
        return self.run(x, k)

    def run(self, x: torch.Tensor, k: _Packing) -> torch.Tensor:
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        layer, att = self.layer, self.layer.self_attn
        H, KV, D = self.heads, self.kv_heads, self.head_dim
        T, Lx, (P, Lp) = x.shape[0], k.shared, k.prompts
        h = layer.input_layernorm(x)
        q, key, v = att.q_proj(h).view(T, H, D), att.k_proj(h).view(T, KV, D), att.v_proj(h).view(T, KV, D)
        if hasattr(att, "q_norm"):  # Qwen3
            q, key = att.q_norm(q), att.k_norm(key)
        q, key = apply_rotary_pos_emb(q, key, k.cos, k.sin, unsqueeze_dim=1)
        sizes = [Lx, P * Lp, T - Lx - P * Lp]
        (qs, qp, qc), (ks, kp, kc), (vs, vp, vc) = (t.split(sizes) for t in (q, key, v))

        def heads_first(t, rows, width):  # [rows * width, heads, D] -> [rows, heads, width, D]
            return t.view(rows, width, t.shape[1], D).transpose(1, 2)

        ks, vs, kp, vp = heads_first(ks, 1, Lx), heads_first(vs, 1, Lx), heads_first(kp, P, Lp), heads_first(vp, P, Lp)
        # each level attends to the shared prefix's keys, then its prompt's, then its own
        prompt_keys = [ks.expand(P, -1, -1, -1), kp], [vs.expand(P, -1, -1, -1), vp]
        op = gqa_attention(heads_first(qp, P, Lp), torch.cat(prompt_keys[0], dim=2), torch.cat(prompt_keys[1], dim=2),
                           k.mask_p)  # [P, H, Lp, D]
        N = k.rows
        keys = torch.cat([ks.expand(N, -1, -1, -1), kp[k.group], k.unpack(kc, KV, D)], dim=2)  # [N, KV, Lx + Lp + Lc, D]
        values = torch.cat([vs.expand(N, -1, -1, -1), vp[k.group], k.unpack(vc, KV, D)], dim=2)
        oc = gqa_attention(k.unpack(qc, H, D), keys, values, k.mask_c)  # [N, H, Lc, D]
        outs = [op.transpose(1, 2).reshape(P * Lp, H * D),
                oc.transpose(1, 2).reshape(N * k.width, H * D).index_select(0, k.flat)]
        if Lx:
            outs.insert(0, gqa_attention(heads_first(qs, 1, Lx), ks, vs, k.mask_s).transpose(1, 2).reshape(Lx, H * D))
        x = x + att.o_proj(torch.cat(outs))
        return x + layer.mlp(layer.post_attention_layernorm(x))


def _llama_hidden(base, layers, b: GroupBatch) -> torch.Tensor:
    """Final-normed states that predict each real completion token, [M, C] in row-major order.

    Completions are packed: norms, projections and MLPs run on the M real tokens only, not on the
    padding after the shorter completions (in a GRPO step of 16 completions of at most 64 tokens,
    a third of the positions were padding). Only attention sees the padded [N, Lc] layout, which
    needs each completion's real tokens to be a prefix of its row (as make_group_batch builds it).
    The shared prefix runs once; prompts attend to it, then to their own tokens.
    """
    m = base.model
    P, Lp = b.prompt_ids.shape
    N, Lc = b.completion_ids.shape
    Lx = b.prefix_ids.numel()
    real = b.completion_mask.bool()
    lengths = real.sum(1)
    if not bool((real == (torch.arange(Lc, device=real.device) < lengths[:, None])).all()):
        raise ValueError("completion_mask must mark a prefix of each row (build batches with make_group_batch)")
    flat = real.reshape(-1).nonzero().squeeze(1)  # [M]: where each real token sits in [N * Lc]
    dev = real.device
    prompt_pos = Lx + (b.prompt_valid.long().cumsum(-1) - 1).clamp(min=0)  # [P, Lp]
    comp_pos = (prompt_pos[b.group, -1:] + 1 + torch.arange(Lc, device=dev)).reshape(-1)[flat]  # [M]
    causal_p = torch.ones(Lp, Lp, dtype=torch.bool, device=dev).tril()
    own_p = (causal_p[None] & b.prompt_valid[:, None, :]) | torch.eye(Lp, dtype=torch.bool, device=dev)
    mask_p = torch.cat([torch.ones(P, Lp, Lx, dtype=torch.bool, device=dev), own_p], dim=-1)
    causal_c = torch.ones(Lc, Lc, dtype=torch.bool, device=dev).tril()
    mask_c = torch.cat([torch.ones(N, Lc, Lx, dtype=torch.bool, device=dev),
                        b.prompt_valid[b.group][:, None, :].expand(N, Lc, Lp), causal_c[None].expand(N, Lc, Lc)], dim=-1)
    x = _embed(base, torch.cat([b.prefix_ids, b.prompt_ids.reshape(-1), b.completion_ids.reshape(-1)[flat]]))  # [T, C]
    positions = torch.cat([torch.arange(Lx, device=dev), prompt_pos.reshape(-1), comp_pos])
    cos, sin = (t[0] for t in m.rotary_emb(x[None], positions[None]))  # [T, D]
    mask_s = torch.ones(Lx, Lx, dtype=torch.bool, device=dev).tril()[None, None]
    packing = _Packing(cos, sin, mask_s, mask_p[:, None], mask_c[:, None], b.group, flat, N, Lc, Lx, (P, Lp))
    for layer in layers:
        x = layer(x, packing)
    # Completion token t is predicted by the state before it (packed: the previous row of the
    # completions' states), and the first token of each completion by its prompt's last state.
    xp, xc = x[Lx:Lx + P * Lp].view(P, Lp, -1), x[Lx + P * Lp:]
    starts = (lengths.cumsum(0) - lengths)[lengths > 0]
    states = torch.cat([xc.new_zeros(1, xc.shape[1]), xc[:-1]]).index_copy(0, starts, xp[b.group[lengths > 0], -1])
    return m.norm(states)


def _embed(base, ids: torch.Tensor) -> torch.Tensor:
    """Token embeddings. When the embedding is tied to the vocabulary head and trained, its gradient
    is taken sparse: the head's dense gradient reaches the shared weight first (the head runs
    last), and the sparse rows are added into it in place, instead of a fresh zero-filled
    [vocabulary, C] tensor per step (113 MB for SmolLM2; ~0.3 s of page faults and fill per step
    on the 2-core machine we measured)."""
    emb = base.model.embed_tokens
    tied = emb.weight is base.lm_head.weight and emb.weight.requires_grad
    if tied and type(emb) is torch.nn.Embedding:
        return F.embedding(ids, emb.weight, emb.padding_idx, sparse=True)
    return emb(ids)


def checkpoint_hf_layers(base) -> None:
    """Gradient checkpointing for the transformers forward (:func:`_generic_hidden`): transformers
    recomputes a decoder layer only in training mode, and the trainer keeps the model in eval mode
    (no dropout), so each decoder layer alone is marked training; the modules inside it stay in eval."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    if not getattr(base, "supports_gradient_checkpointing", False):
        raise UsageError(f"gradient_checkpointing: {type(base).__name__} does not support it; set "
                         "gradient_checkpointing: false")
    enable = getattr(base, "activation_checkpointing_enable", None)  # transformers >= 5.x; the old name before
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for module in base.modules():
        if isinstance(module, GradientCheckpointingLayer):
            module.training = True


def _generic_hidden(base, model, b: GroupBatch) -> torch.Tensor:
    """The transformers forward over ``[shared prefix | prompt | completion]`` rows (every prompt
    repeated)."""
    N = b.completion_ids.shape[0]
    prefix = b.prefix_ids[None].expand(N, -1)
    ids = torch.cat([prefix, b.prompt_ids[b.group], b.completion_ids], dim=1)
    attn = torch.cat([torch.ones_like(prefix), b.prompt_valid[b.group].long(), b.completion_mask.long()], dim=1)
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=attn, position_ids=positions, output_hidden_states=True,
                logits_to_keep=1, use_cache=False)
    Lc = b.completion_ids.shape[1]
    return out.hidden_states[-1][:, -Lc - 1:-1]  # the final norm is applied by the model


class _HeadLogprobs(torch.autograd.Function):
    """log p(target) = z[target] - logsumexp(z), z = h W^T / temperature, chunk by chunk.

    The backward pass recomputes each chunk's logits instead of keeping them. Every pass over a
    chunk works in place in one reused [chunk, V] buffer (and the weight gradient accumulates in
    place, ``addmm(out=)``): on a 2-core CPU, fresh 25-113 MB temporaries per chunk cost more in page faults
    than the matmuls themselves (a GRPO step's head went from 8.2 s to ~3 s).
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, with_entropy, inv_temp):  # hidden [M, C], weight [V, C], targets [M]
        M = hidden.shape[0]
        logp = torch.empty(M, dtype=torch.float32, device=hidden.device)
        lse_all = torch.empty_like(logp)
        entropy = torch.empty_like(logp) if with_entropy else None
        buf = torch.empty(min(M, CHUNK_POSITIONS), weight.shape[0], dtype=torch.float32, device=hidden.device)
        for s in range(0, M, CHUNK_POSITIONS):
            h, t = hidden[s:s + CHUNK_POSITIONS], targets[s:s + CHUNK_POSITIONS]
            z = buf[:h.shape[0]]
            torch.mm(h, weight.t(), out=z) if h.dtype == torch.float32 else z.copy_(h @ weight.t())
            if inv_temp != 1.0:
                z.mul_(inv_temp)
            target_logit = z.gather(1, t[:, None]).squeeze(1)
            top = z.max(dim=1).values
            z.sub_(top[:, None])  # z = logits - max <= 0
            if with_entropy:  # H = log S - sum(e^z z) / S with S = sum(e^z)
                ez_z = torch.empty_like(top)
                ez = torch.exp(z)
                total = ez.sum(dim=1)
                torch.sum(ez.mul_(z), dim=1, out=ez_z)
                entropy[s:s + CHUNK_POSITIONS] = total.log() - ez_z / total
            else:
                total = z.exp_().sum(dim=1)
            lse = top + total.log()
            lse_all[s:s + CHUNK_POSITIONS] = lse
            logp[s:s + CHUNK_POSITIONS] = target_logit - lse
        ctx.save_for_backward(hidden, weight, targets, lse_all, entropy)
        ctx.inv_temp = inv_temp
        ctx.set_materialize_grads(False)  # an unused output's gradient arrives as None: no work for it
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy):
        hidden, weight, targets, lse_all, entropy = ctx.saved_tensors
        M = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        buf = torch.empty(min(M, CHUNK_POSITIONS), weight.shape[0], dtype=torch.float32, device=hidden.device)
        probs = torch.empty_like(buf) if grad_entropy is not None else None
        if grad_logp is None:
            grad_logp = torch.zeros(M, dtype=torch.float32, device=hidden.device)
        w = weight.float()
        for s in range(0, M, CHUNK_POSITIONS):
            h = hidden[s:s + CHUNK_POSITIONS].float()
            g = buf[:h.shape[0]]
            gl = grad_logp[s:s + CHUNK_POSITIONS, None]
            torch.mm(h, w.t(), out=g)
            if ctx.inv_temp != 1.0:
                g.mul_(ctx.inv_temp)
            g.sub_(lse_all[s:s + CHUNK_POSITIONS, None])  # log softmax(z), z = h W^T / T
            if probs is None:
                # d logp / d (h W^T) = (onehot(target) - softmax(z)) / T, times the incoming gradient
                g.exp_().neg_()
                g.scatter_add_(1, targets[s:s + CHUNK_POSITIONS, None], torch.ones(h.shape[0], 1, device=g.device))
                g.mul_(gl * ctx.inv_temp)
            else:
                # with the entropy's gradient too: dH/dz_j = -p_j (log p_j + H), so
                # d/dz = gl (onehot - p) - gh p (log p + H) = gl onehot - p (gl + gh (log p + H))
                p = torch.exp(g, out=probs[:h.shape[0]])
                g.add_(entropy[s:s + CHUNK_POSITIONS, None]).mul_(grad_entropy[s:s + CHUNK_POSITIONS, None]).add_(gl)
                g.mul_(p).neg_()
                g.scatter_add_(1, targets[s:s + CHUNK_POSITIONS, None], gl)
                g.mul_(ctx.inv_temp)
            if grad_hidden is not None:
                grad_hidden[s:s + CHUNK_POSITIONS] = (g @ w).to(hidden.dtype)
            if grad_weight is not None:
                torch.addmm(grad_weight, g.t(), h, out=grad_weight)  # = addmm_, which FlopCounterMode does not see
        return grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype), None, None, None


def head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, with_entropy: bool = False,
                  temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
    """hidden [N, T, C] (after the final norm), targets [N, T] → log-probs [N, T] under
    softmax(hidden W^T / temperature) (and that distribution's entropy)."""
    N, T, C = hidden.shape
    if torch.is_autocast_enabled(hidden.device.type):  # run the projection in the autocast dtype
        dtype = torch.get_autocast_dtype(hidden.device.type)
        hidden, weight_used = hidden.to(dtype), weight.to(dtype)
    else:
        weight_used = weight
    with torch.autocast(hidden.device.type, enabled=False):
        logp, entropy = _HeadLogprobs.apply(hidden.reshape(N * T, C), weight_used, targets.reshape(-1), with_entropy,
                                            1.0 / temperature)
    return logp.view(N, T), None if entropy is None else entropy.view(N, T)


def adamw(params: list[torch.nn.Parameter], lr: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW with the fused kernel (one pass over each parameter, CPU and CUDA): an update of the
    135M model takes 0.08 s on a 2-core CPU against 0.38 s for the default multi-tensor AdamW."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def apply_update(params: list[torch.nn.Parameter], optimizer, max_grad_norm: float, world=None, scheduler=None) -> float:
    """One optimizer update from the gradients the passes accumulated: summed over the ranks
    (``world``), clipped to ``max_grad_norm`` (0 = no clipping), a step of the optimizer and of its
    ``scheduler``, the gradients cleared. Returns the gradient norm before clipping."""
    if world is not None:
        world.sum_grads(params)
    norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm if max_grad_norm > 0 else float("inf"))
    grad_norm = float(full_tensor(norm))
    if not math.isfinite(grad_norm):  # a NaN or infinite loss upstream: stepping would break every weight
        optimizer.zero_grad(set_to_none=True)
        raise UsageError(f"the gradient norm is {grad_norm} (the loss went NaN or infinite): the update was not "
                         "applied and the run stops; the last checkpoint is intact. Lower the learning rate (lr) "
                         "or check the data, then resume")
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def lr_schedule(cfg: OptimConfig):
    """The learning rate's factor at each optimizer update: linear warmup, then constant, linear or
    cosine decay to the last of ``max_steps x mu`` updates (for ``LambdaLR``)."""
    total = cfg.max_steps * cfg.mu

    def factor(update: int) -> float:
        if update < cfg.warmup_steps:
            return (update + 1) / cfg.warmup_steps
        progress = (update - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        if cfg.lr_schedule == "linear":
            return max(0.0, 1 - progress)
        if cfg.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0
    return factor
