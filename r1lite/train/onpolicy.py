"""On-policy distillation: the student samples, the teacher scores every sampled token, and the loss
is the reverse KL per token (the Qwen3 report's on-policy distillation, which aligns the student's
logits with the teacher's on the student's own sequences; TRL's GKD with on-policy data only and
the reverse KL).

For a prompt q the student samples o ~ π_θ (the GRPO rollout, unchanged). At every position t of
o the teacher, run on the same tokens, gives its whole next-token distribution, and the loss is
the reverse KL between the two there::

    l_t = KL(π_θ(· | q, o_<t) || π_T(· | q, o_<t)) = Σ_v π_θ(v | ·) (log π_θ(v | ·) − log π_T(v | ·))

aggregated over positions by the run's ``loss_type`` weights (:func:`r1lite.train.grpo.token_weights`;
``dapo``'s token mean by default). ``reverse_kl`` in the metrics is the mean l_t over the counted
positions. Reverse KL is mode-seeking: the student is pushed off what the teacher finds unlikely
rather than made to cover everything the teacher might say.

Departures: the gradient flows through each position's distribution with its context held fixed,
not through the sampling of the later tokens (as in GKD; the sequences are the data); the student's
distribution is the one it samples (logits / temperature), the teacher's its own (temperature 1);
one update per batch (``mu`` 1), no KL to a reference. Scoring only the sampled token (k = log π_θ
− log π_T as a per-token reward) would be cheaper to send over an API but, from a student whose
distribution is far from the teacher's, moves it by pushing down one sampled token of a 49k
vocabulary at a time: too slow to be useful here.
"""

from __future__ import annotations

import torch

from r1lite.errors import UsageError
from r1lite.models import load_model
from r1lite.train.config import GRPOConfig
from r1lite.train.grpo import token_weights
from r1lite.train.policy import (
    apply_update,
    completion_hidden,
    make_group_batch,
    pass_flops,
)

CHUNK_POSITIONS = 128
"""Positions whose [positions, vocabulary] logits are held at once (25 MB each for a 49k vocabulary)."""


class Teacher:
    """A frozen local model with the student's tokenizer, scoring the student's tokens."""

    def __init__(self, spec: str, runtime, student_tokenizer):
        self.model, tokenizer = load_model(spec, runtime)
        if tokenizer.get_vocab() != student_tokenizer.get_vocab():
            raise UsageError(f"teacher {spec}: its tokenizer is not the student's ({len(tokenizer)} vs "
                             f"{len(student_tokenizer)} tokens); on-policy distillation scores the student's tokens, so "
                             "both need one tokenizer: use r1lite distill (text traces) and cold_start_data for this teacher")
        self.model.requires_grad_(False).eval()

    @torch.no_grad()
    def hidden(self, batch) -> torch.Tensor:
        """The teacher's states before its vocabulary head at the completion positions, [M, C]."""
        return completion_hidden(self.model, batch)

    @property
    def head(self) -> torch.Tensor:
        return self.model.lm_head.weight  # [V, C]


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(softmax(student) || softmax(teacher)) per row and the student's entropy per row.

    student_logits, teacher_logits [M, V] → ([M], [M]).

    >>> kl, h = reverse_kl(torch.tensor([[0.0, 0.0]]), torch.log(torch.tensor([[0.9, 0.1]])))
    >>> round(float(kl), 4), round(float(h), 4)  # 0.5 log(0.5/0.9) + 0.5 log(0.5/0.1)
    (0.5108, 0.6931)
    """
    s = torch.log_softmax(student_logits.float(), dim=-1)
    t = torch.log_softmax(teacher_logits.float(), dim=-1)
    p = s.exp()
    return (p * (s - t)).sum(-1), -(p * s).sum(-1)


def distill_loss(hidden: torch.Tensor, head: torch.Tensor, teacher_hidden: torch.Tensor, teacher_head: torch.Tensor,
                 weights: torch.Tensor, temperature: float) -> tuple[float, float, float]:
    """``Σ weights · KL`` over positions, back-propagated into ``hidden`` and ``head`` a chunk of
    positions at a time (one chunk's logits in memory); returns (loss, Σ KL, Σ entropy) over the
    positions with a weight.

    hidden, teacher_hidden [M, C]; head [V, C], teacher_head [V, C]; weights [M].
    The caller back-propagates ``hidden``'s gradient (``hidden.grad`` of the detached leaf) into
    the layers once."""
    loss = kl_sum = entropy_sum = 0.0
    counted = weights > 0
    for s in range(0, hidden.shape[0], CHUNK_POSITIONS):
        h, w = hidden[s:s + CHUNK_POSITIONS], weights[s:s + CHUNK_POSITIONS]
        with torch.no_grad():
            teacher_logits = teacher_hidden[s:s + CHUNK_POSITIONS] @ teacher_head.t()  # [c, V]
        kl, entropy = reverse_kl((h @ head.t()) / temperature, teacher_logits)  # [c]
        chunk = (w * kl).sum()
        chunk.backward()
        loss += float(chunk.detach())
        kl_sum += float((kl.detach() * counted[s:s + CHUNK_POSITIONS]).sum())
        entropy_sum += float((entropy.detach() * counted[s:s + CHUNK_POSITIONS]).sum())
    return loss, kl_sum, entropy_sum


def train_step(model, teacher: Teacher, optimizer, scheduler, params, groups: list[dict], cfg: GRPOConfig,
               autocast, pad_id: int, device) -> tuple[dict, float, float]:
    """One update on a batch of rollout groups: (metrics, student FLOPs, teacher FLOPs).

    Micro-batches of whole groups as in GRPO's step; the weights come from the whole batch, so the
    gradient does not depend on the micro-batch size."""
    G = cfg.optim.group_size
    completions = [c for g in groups for c in g["completions"]]
    batch = make_group_batch([g["prompt"] for g in groups], [i // G for i in range(len(completions))],
                             [c.token_ids for c in completions], pad_id).to(device)
    mask = batch.completion_mask.clone()  # [N, C]
    if cfg.loss.mask_truncated:
        mask[torch.tensor([c.finish == "length" for c in completions])] = 0
    weights = token_weights(mask, cfg.loss.loss_type, G, cfg.sampling.max_new_tokens)  # [N, C]
    n = len(completions)
    per_chunk = max(1, cfg.optim.micro_batch_size // G) * G
    head = (model.get_base_model() if cfg.optim.lora else model).lm_head.weight  # [V, C]
    student_flops = teacher_flops = 0.0
    loss = kl_sum = entropy_sum = 0.0
    for c in [slice(i, min(n, i + per_chunk)) for i in range(0, n, per_chunk)]:
        part = batch.rows(c)
        real = part.completion_mask.bool()
        with autocast():
            teacher_hidden = teacher.hidden(part)  # [M, C]
            hidden = completion_hidden(model, part)  # [M, C]
            leaf = hidden.detach().requires_grad_()
            part_loss, part_kl, part_entropy = distill_loss(leaf, head, teacher_hidden, teacher.head,
                                                            weights[c, :real.shape[1]][real], cfg.sampling.temperature)
        hidden.backward(leaf.grad)  # through the layers once, after every chunk's head
        M, vocab = int(real.sum()), head.shape[0]
        teacher_flops += pass_flops(teacher.model, part, backward=False)
        # pass_flops counts the head's logits again in the backward (the fused log-prob head
        # recomputes them); this loss keeps each chunk's logits for its backward instead.
        student_flops += pass_flops(model, part, backward=True) - 2 * vocab * head.shape[1] * M
        loss, kl_sum, entropy_sum = loss + part_loss, kl_sum + part_kl, entropy_sum + part_entropy
    grad_norm = apply_update(params, optimizer, cfg.optim.max_grad_norm, scheduler=scheduler)
    counted = max(1.0, float((weights > 0).sum()))
    metrics = {"loss": loss, "reverse_kl": kl_sum / counted, "clip_frac": None, "kl": None,
               "entropy": entropy_sum / counted, "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0],
               "loss_tokens": int((weights > 0).sum()), "train_tokens": batch.tokens}
    return metrics, student_flops, teacher_flops
