"""GRPO: group-relative advantages and the clipped policy loss, with the variants practitioners use.

For a prompt q the policy samples a group of G completions o_1..o_G with rewards r_1..r_G.

Advantage (every token of o_i gets the same one)::

    A_i = (r_i - mean(r_1..r_G)) / (s + 1e-4)

with ``s`` = the group's std (``scale_rewards="group"``, GRPO), the whole batch's std
(``"batch"``), or 1 (``"none"``, Dr. GRPO). std is the unbiased one, as in TRL.

Per-token objective, with ratio ρ_t = π_θ(o_t | q, o_<t) / π_old(o_t | q, o_<t)::

    l_t = -min(ρ_t A, clip(ρ_t, 1 - ε, 1 + ε_high) A) + β · KL_t
    KL_t = exp(ref_t - logp_t) - (ref_t - logp_t) - 1           (the k3 estimator, always ≥ 0)

``ε_high > ε`` is DAPO's clip-higher. Two other policy terms (``importance_sampling_level``,
``surrogate``): GSPO takes one ratio per sequence, s_i = exp(1/|o_i| Σ_t log ρ_t), clipped per
sequence in the same min; CISPO replaces the min by ``-sg(min(ρ_t, 1 + ε_high)) · A · log π_θ(o_t)``,
a REINFORCE term weighted by the capped, detached ratio. With ρ = 1 in value (``mu=1``) all three
have the same gradient, -A ∇log π per counted token; they differ only on a batch's later updates.
π_old is the policy that sampled the batch: with ``mu=1`` it equals π_θ, so ρ_t = 1 in value and
only its gradient matters (no extra forward pass is made).
With ``beta=0`` no reference model is held.

Aggregation over the N = (groups · G) completions of a batch, |o_i| = counted tokens of o_i:

- ``grpo``:    L = 1/N Σ_i 1/|o_i| Σ_t l_i,t            (per-sequence mean, then mean; DeepSeekMath)
- ``dapo``:    L = Σ_i Σ_t l_i,t / Σ_i |o_i|             (token-level mean; DAPO)
- ``dr_grpo``: L = Σ_groups Σ_{i∈g} Σ_t l_i,t / (G · L_max) (Dr. GRPO), L_max = the configured max
  new tokens. Departure: the Dr. GRPO paper and TRL divide by N · L_max (a mean over groups);
  r1lite normalises each group by G · L_max and sums over groups, so a batch with more prompts
  carries proportionally more gradient.

Each aggregation is a fixed weight per token (:func:`token_weights`), so splitting a batch into
micro-batches for memory gives exactly the same loss and gradient; :func:`step_passes` lays out a
step's micro-batches with the whole batch's advantages and weights.

Other departures from the GRPO paper: completions that hit the token budget can be left out of the
loss (``mask_truncated``, DAPO's overlong filtering); DAPO's soft overlong punishment is a reward
term; dynamic sampling drops groups whose rewards are all equal (their advantages are all zero) and
samples new prompts to refill the batch.
"""

from __future__ import annotations

import torch

from r1lite.errors import UsageError
from r1lite.train.config import LOSS_TYPES, GRPOConfig, LossConfig
from r1lite.train.distributed import World
from r1lite.train.policy import make_group_batch

# ---------------------------------------------------------------------------------------------
# Pure tensor functions (tested against hand computations)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group") -> torch.Tensor:
    """Mean-centred rewards within each group, optionally divided by a std. rewards [N] → [N].

    >>> group_advantages(torch.tensor([1., 0., 0., 0.]), 4, "none")
    tensor([ 0.7500, -0.2500, -0.2500, -0.2500])
    >>> group_advantages(torch.tensor([1., 1., 0., 0.]), 2, "group")
    tensor([0., 0., 0., 0.])
    """
    grouped = rewards.view(-1, group_size)  # [groups, G]
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale == "group":
        centred = centred / (grouped.std(dim=1, keepdim=True) + 1e-4)
    elif scale == "batch":
        centred = centred / (rewards.std() + 1e-4)
    return centred.reshape(-1)


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Boolean [groups]: groups whose rewards are not all equal (DAPO dynamic sampling keeps these).

    >>> informative_groups(torch.tensor([1., 1., 0., 1., 0., 0.]), 2)
    tensor([False,  True, False])
    """
    grouped = rewards.view(-1, group_size)
    return (grouped.max(dim=1).values - grouped.min(dim=1).values) > 0


def loss_count(mask: torch.Tensor, loss_type: str) -> float:
    """What the aggregation divides by, counted on ``mask`` [N, C]: completions with a counted
    token (grpo), counted tokens (dapo), nothing (dr_grpo: 0). Summed over the ranks of a
    distributed run, it is the whole batch's.

    >>> loss_count(torch.tensor([[1., 1.], [0., 0.]]), "grpo"), loss_count(torch.tensor([[1., 1.], [1., 0.]]), "dapo")
    (1.0, 3.0)
    """
    if loss_type == "grpo":
        return float((mask.sum(dim=1) > 0).sum())
    if loss_type == "dapo":
        return float(mask.sum())
    return 0.0


def token_weights(mask: torch.Tensor, loss_type: str, group_size: int, max_len: int,
                  count: float | None = None) -> torch.Tensor:
    """The weight of each token's loss so that ``L = Σ weights · l`` for the chosen aggregation.

    mask [N, C] (1 = counted token) → weights [N, C]. Rows with no counted token get weight 0.
    ``count``: :func:`loss_count` of the whole batch when ``mask`` is one rank's share of it
    (None: this mask's own).

    >>> m = torch.tensor([[1., 1., 0.], [1., 0., 0.]])
    >>> token_weights(m, "grpo", 2, 3)
    tensor([[0.2500, 0.2500, 0.0000],
            [0.5000, 0.0000, 0.0000]])
    >>> token_weights(m, "dapo", 2, 3)
    tensor([[0.3333, 0.3333, 0.0000],
            [0.3333, 0.0000, 0.0000]])
    >>> token_weights(m, "dr_grpo", 2, 3)
    tensor([[0.1667, 0.1667, 0.0000],
            [0.1667, 0.0000, 0.0000]])
    """
    total = max(1.0, loss_count(mask, loss_type) if count is None else count)
    if loss_type == "grpo":
        return mask / mask.sum(dim=1, keepdim=True).clamp(min=1) / total
    if loss_type == "dapo":
        return mask / total
    if loss_type == "dr_grpo":
        return mask / (group_size * max_len)
    raise UsageError(f"loss_type '{loss_type}' is unknown; use one of {', '.join(LOSS_TYPES)}")


def log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, counted: torch.Tensor, level: str) -> torch.Tensor:
    """log ρ per token [N, C]: ``token`` (GRPO/PPO) logp - old_logp; ``sequence`` (GSPO) the mean of
    that over the sequence's counted tokens, log s_i = 1/|o_i| Σ_t (logp - old_logp), the same on
    each of its tokens (its gradient reaches every token of the sequence).

    >>> log_ratio(torch.tensor([[-1.0, -2.0]]), torch.tensor([[-1.5, -1.5]]), torch.tensor([[1., 1.]]), "sequence")
    tensor([[0., 0.]])
    """
    diff = logp - old_logp
    if level == "token":
        return diff
    per_sequence = (diff * counted).sum(dim=1) / counted.sum(dim=1).clamp(min=1)
    return per_sequence[:, None].expand_as(diff)


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      epsilon: float, epsilon_high: float, counted: torch.Tensor | None = None,
                      level: str = "token") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token ``-min(ρ A, clip(ρ, 1-ε, 1+ε_high) A)`` and a mask of clipped tokens; ρ per token or
    (``level`` sequence, GSPO) per sequence (:func:`log_ratio`; ``counted`` [N, C] marks the tokens).

    logp, old_logp [N, C]; advantages [N] → (loss [N, C], clipped [N, C] bool).
    """
    ratio = torch.exp(log_ratio(logp, old_logp, torch.ones_like(logp) if counted is None else counted, level))
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - epsilon, 1 + epsilon_high) * adv
    was_clipped = ((ratio < 1 - epsilon) & (adv < 0)) | ((ratio > 1 + epsilon_high) & (adv > 0))
    return -torch.minimum(unclipped, clipped), was_clipped


def cispo_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                    epsilon_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """CISPO (MiniMax-M1): per-token ``-sg(min(ρ, 1+ε_high)) · A · logp``. The importance weight is
    clipped from above only and detached, so no token's gradient is dropped (the clipped ratio of
    PPO/GRPO gives a token outside the range no gradient at all); returns the loss and a mask of
    tokens whose weight was capped.

    >>> loss, capped = cispo_surrogate(torch.tensor([[-1.0]]), torch.tensor([[-2.0]]), torch.tensor([2.0]), 0.5)
    >>> round(loss.item(), 4), capped.item()
    (3.0, True)
    """
    ratio = torch.exp(logp - old_logp).detach()
    weight = ratio.clamp(max=1 + epsilon_high)
    return -weight * advantages[:, None] * logp, ratio > 1 + epsilon_high


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(π_θ || π_ref) by the k3 estimator: exp(ref - logp) - (ref - logp) - 1 ≥ 0.

    >>> k3_kl(torch.tensor([-1.0]), torch.tensor([-1.0]))
    tensor([0.])
    """
    diff = ref_logp - logp
    return torch.exp(diff) - diff - 1


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor | None,
                advantages: torch.Tensor, weights: torch.Tensor, cfg: LossConfig,
                entropy: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The GRPO loss of a (micro-)batch: ``Σ weights · (surrogate + β KL - entropy_coef · H)``, and
    its statistics. ``entropy`` [N, C] (with its gradient) is needed when ``entropy_coef`` > 0."""
    if cfg.surrogate == "cispo":
        per_token, was_clipped = cispo_surrogate(logp, old_logp, advantages, cfg.epsilon_high)
    else:
        per_token, was_clipped = clipped_surrogate(logp, old_logp, advantages, cfg.epsilon, cfg.epsilon_high,
                                                   (weights > 0).to(logp.dtype), cfg.importance_sampling_level)
    if cfg.entropy_coef:
        per_token = per_token - cfg.entropy_coef * entropy
    stats = {"clipped": (was_clipped.float() * (weights > 0)).sum().item(), "kl_sum": 0.0}
    if ref_logp is not None:
        kl = k3_kl(logp, ref_logp)
        per_token = per_token + cfg.beta * kl
        stats["kl_sum"] = (kl.detach() * (weights > 0)).sum().item()
    return (per_token * weights).sum(), stats


def step_passes(groups: list[dict], cfg: GRPOConfig, world: World, device, pad_token_id: int,
                skip_alike: bool) -> tuple[list[tuple], float]:
    """This rank's passes of a step, ``(micro-batch, its token weights, its advantages)``, whole
    groups each, and the tokens whose loss they count. The advantages and the loss normaliser
    are the whole batch's: rewards gathered and counts summed over the ranks. ``skip_alike`` (no KL
    term): leave out the groups whose rewards are all equal."""
    G = cfg.optim.group_size
    local = torch.cat([g["reward"] for g in groups]) if groups else torch.zeros(0)  # [n]
    shares = world.gather(local)
    start = sum(len(r) for r in shares[:world.rank])
    advantages = group_advantages(torch.cat(shares), G, cfg.loss.scale_rewards)
    advantages = advantages[start:start + len(local)].to(device)
    if groups:
        completions = [c for g in groups for c in g["completions"]]
        batch = make_group_batch([g["prompt"] for g in groups], [i // G for i in range(len(completions))],
                                 [c.token_ids for c in completions], pad_token_id).to(device)
        mask = batch.completion_mask.clone()
        if cfg.loss.mask_truncated:
            mask[torch.tensor([c.finish == "length" for c in completions])] = 0
    count = world.sum([loss_count(mask, cfg.loss.loss_type) if groups else 0.0])[0]
    if not groups:
        return [], 0.0
    weights = token_weights(mask, cfg.loss.loss_type, G, cfg.sampling.max_new_tokens, count)
    if skip_alike:
        # A group whose rewards are all equal has advantage 0 on every token, so with no KL term
        # its loss and gradient are exactly 0: leave it out of the forward and backward passes.
        # The weights above were computed on the whole batch, so the gradient is unchanged
        # (typically a third to a half of the groups, and of the train step, on arithmetic).
        # Departure: an entropy bonus (entropy_coef) acts on the trained groups' tokens only.
        # When no group is informative the whole gradient is 0: no forward or backward at all,
        # but the optimizer still steps on zero gradients (Adam's moments keep moving the
        # weights, exactly as after a computed zero gradient).
        keep = informative_groups(local, G)
        if not bool(keep.any()):
            advantages = advantages[:0]
        elif not bool(keep.all()):
            rows = keep.repeat_interleave(G).nonzero().squeeze(1).to(device)
            batch, advantages, weights = batch.rows(rows), advantages[rows], weights[rows]
    n = len(advantages)
    per_chunk = max(1, cfg.optim.micro_batch_size // G) * G  # whole groups: each prompt runs once per chunk
    parts = []
    for i in range(0, n, per_chunk):
        part = batch.rows(slice(i, min(n, i + per_chunk)))  # trimmed to the widths it needs
        parts.append((part, weights[i:i + per_chunk, :part.completion_ids.shape[1]], advantages[i:i + per_chunk]))
    return parts, float((weights > 0).sum())
