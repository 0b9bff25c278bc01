"""Token log-probabilities of completions under a model: what GRPO and SFT train on.

Sequences are laid out as ``[left-padded prompt | right-padded completion]`` so every completion
starts at the same column P; the model is asked for logits of the last C+1 positions only
(``logits_to_keep``), so the 49k-wide vocabulary projection never runs over prompt tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    """Prompt + completion token ids, ready for a training forward."""

    input_ids: torch.Tensor  # [N, P + C]
    attention_mask: torch.Tensor  # [N, P + C], 1 = real token
    position_ids: torch.Tensor  # [N, P + C], counts real tokens only (left padding shifts nothing)
    completion_mask: torch.Tensor  # [N, C] float, 1 = completion token that counts in the loss

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1] - self.completion_mask.shape[1]

    def rows(self, idx: slice | torch.Tensor) -> Batch:
        return Batch(self.input_ids[idx], self.attention_mask[idx], self.position_ids[idx], self.completion_mask[idx])

    def to(self, device) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids, self.completion_mask)))


def make_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int) -> Batch:
    """Lay out N (prompt, completion) pairs; the completion mask covers each completion's tokens."""
    P = max(len(p) for p in prompts)
    C = max(1, max(len(c) for c in completions))
    N = len(prompts)
    ids = torch.full((N, P + C), pad_id, dtype=torch.long)
    attn = torch.zeros(N, P + C, dtype=torch.long)
    cmask = torch.zeros(N, C)
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids[i, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        ids[i, P:P + len(c)] = torch.tensor(c, dtype=torch.long)
        attn[i, P - len(p):P + len(c)] = 1
        cmask[i, :len(c)] = 1
    positions = (attn.cumsum(-1) - 1).clamp(min=0)
    return Batch(ids, attn, positions, cmask)


def completion_logprobs(model, batch: Batch, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probability of each completion token, [N, C] fp32, and optionally the policy's entropy at
    each completion position, [N, C] (no gradient).

    ``log p(token) = logit[token] - logsumexp(logits)``: the full ``log_softmax`` over the
    vocabulary is never materialised.
    """
    C = batch.completion_mask.shape[1]
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                position_ids=batch.position_ids, logits_to_keep=C + 1, use_cache=False)
    logits = out.logits[:, :-1].float()  # [N, C, V]: position P-1+t predicts completion token t
    targets = batch.input_ids[:, -C:]  # [N, C]
    lse = torch.logsumexp(logits, dim=-1)  # [N, C]
    logp = logits.gather(-1, targets[..., None]).squeeze(-1) - lse
    entropy = None
    if with_entropy:
        with torch.no_grad():
            probs = (logits - lse[..., None]).exp()
            entropy = lse - (probs * logits).sum(-1)
    return logp, entropy
