"""GRPO math against hand computations, and config validation."""

import math

import pytest
import torch

from r1lite.errors import UsageError

# A fixed batch: 2 groups of G=2 completions, up to 3 tokens each.
from r1lite.config import build
from r1lite.train.config import GRPOConfig, LossConfig
from r1lite.train.grpo import (
    cispo_surrogate,
    group_advantages,
    informative_groups,
    policy_loss,
    token_weights,
)

# A fixed batch: 2 groups of G=2 completions, up to 3 tokens each.
MASK = torch.tensor([[1., 1., 1.], [1., 1., 0.], [1., 0., 0.], [1., 1., 1.]])
LOGP = torch.tensor([[-1.0, -0.5, -2.0], [-0.3, -1.2, 0.0], [-0.7, 0.0, 0.0], [-1.5, -0.2, -0.9]])
OLD = torch.tensor([[-1.2, -0.5, -1.7], [-0.3, -1.0, 0.0], [-0.4, 0.0, 0.0], [-1.5, -0.6, -0.9]])
ADV = torch.tensor([1.0, -1.0, 0.5, -0.5])
G, L_MAX = 2, 3


def hand_token_loss(i, t, eps_low, eps_high):
    ratio = math.exp(LOGP[i, t].item() - OLD[i, t].item())
    a = ADV[i].item()
    clipped = min(max(ratio, 1 - eps_low), 1 + eps_high)
    return -min(ratio * a, clipped * a)


def hand_loss(loss_type, eps_low=0.2, eps_high=0.2):
    per_seq = []
    lengths = []
    for i in range(4):
        toks = [hand_token_loss(i, t, eps_low, eps_high) for t in range(3) if MASK[i, t] == 1]
        per_seq.append(toks)
        lengths.append(len(toks))
    if loss_type == "grpo":
        return sum(sum(s) / len(s) for s in per_seq) / 4
    if loss_type == "dapo":
        return sum(sum(s) for s in per_seq) / sum(lengths)
    if loss_type == "dr_grpo":  # per group: sum / (G * L_max); summed over groups
        return sum(sum(sum(per_seq[i]) for i in (g * G, g * G + 1)) / (G * L_MAX) for g in range(2))
    raise AssertionError


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("eps_high", [0.2, 0.28])
def test_loss_matches_hand_computation(loss_type, eps_high):
    cfg = LossConfig(loss_type=loss_type, epsilon=0.2, epsilon_high=eps_high)
    weights = token_weights(MASK, loss_type, G, L_MAX)
    loss, _ = policy_loss(LOGP, OLD, None, ADV, weights, cfg)
    assert loss.item() == pytest.approx(hand_loss(loss_type, 0.2, eps_high), rel=1e-6)


def test_clip_higher_changes_the_loss_only_where_the_ratio_exceeds_1_plus_epsilon():
    # token (0, 2): ratio = exp(-0.3) < 1 with A > 0 → unclipped; token (0, 0): ratio = exp(0.2) = 1.22 > 1.2, A > 0
    low = policy_loss(LOGP, OLD, None, ADV, token_weights(MASK, "dapo", G, L_MAX), LossConfig(epsilon_high=0.2))[0]
    high = policy_loss(LOGP, OLD, None, ADV, token_weights(MASK, "dapo", G, L_MAX), LossConfig(epsilon_high=0.28))[0]
    ratio = math.exp(0.2)
    expected_gap = (-(1.2) - -(ratio)) * 1.0 / MASK.sum().item()  # only token (0,0) differs: min(r, 1.2) vs min(r, 1.28)
    assert (low - high).item() == pytest.approx(expected_gap, rel=1e-5)


def test_entropy_bonus_subtracts_coef_times_weighted_entropy():
    logp, old, adv = LOGP.double(), OLD.double(), ADV.double()  # the difference cancels digits in fp32
    weights = token_weights(MASK.double(), "dapo", G, L_MAX)
    entropy = torch.rand(logp.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    plain, _ = policy_loss(logp, old, None, adv, weights, LossConfig())
    bonus, _ = policy_loss(logp, old, None, adv, weights, LossConfig(entropy_coef=0.05), entropy)
    assert (plain - bonus).item() == pytest.approx(0.05 * (weights * entropy).sum().item(), rel=1e-9)


def test_kl_term_adds_beta_times_k3():
    logp, old, adv = LOGP.double(), OLD.double(), ADV.double()  # k3 cancels digits in fp32
    ref = logp + 0.1
    cfg = LossConfig(beta=0.04)
    w = token_weights(MASK.double(), "dapo", G, L_MAX)
    with_kl, stats = policy_loss(logp, old, ref, adv, w, cfg)
    without, _ = policy_loss(logp, old, None, adv, w, cfg)
    k3 = math.exp(0.1) - 0.1 - 1
    assert (with_kl - without).item() == pytest.approx(0.04 * k3, rel=1e-5)
    assert stats["kl_sum"] == pytest.approx(k3 * MASK.sum().item(), rel=1e-5)


def test_micro_batches_sum_to_the_full_loss():
    cfg = LossConfig(loss_type="grpo")
    w = token_weights(MASK, "grpo", G, L_MAX)
    full = policy_loss(LOGP, OLD, None, ADV, w, cfg)[0]
    parts = sum(policy_loss(LOGP[s], OLD[s], None, ADV[s], w[s], cfg)[0] for s in (slice(0, 1), slice(1, 4)))
    assert parts.item() == pytest.approx(full.item(), rel=1e-6)


def test_mu_1_gradient_is_advantage_weighted_logprob_gradient():
    logp = LOGP.clone().requires_grad_(True)
    w = token_weights(MASK, "dapo", G, L_MAX)
    loss, _ = policy_loss(logp, logp.detach(), None, ADV, w, LossConfig())
    loss.backward()
    assert torch.allclose(logp.grad, -ADV[:, None] * w)


def hand_gspo_loss(eps_low, eps_high):
    """GSPO by hand: s_i = exp(mean over o_i's tokens of log ρ), -min(s A, clip(s) A) per sequence, mean."""
    total = 0.0
    for i in range(4):
        toks = [t for t in range(3) if MASK[i, t] == 1]
        s = math.exp(sum(LOGP[i, t].item() - OLD[i, t].item() for t in toks) / len(toks))
        a = ADV[i].item()
        total += -min(s * a, min(max(s, 1 - eps_low), 1 + eps_high) * a)
    return total / 4


@pytest.mark.parametrize("eps", [(3e-4, 4e-4), (0.2, 0.28)])
def test_gspo_loss_matches_hand_computation(eps):
    cfg = LossConfig(loss_type="grpo", importance_sampling_level="sequence", epsilon=eps[0], epsilon_high=eps[1])
    loss, _ = policy_loss(LOGP, OLD, None, ADV, token_weights(MASK, "grpo", G, L_MAX), cfg)
    assert loss.item() == pytest.approx(hand_gspo_loss(*eps), rel=1e-6)
    token_level = policy_loss(LOGP, OLD, None, ADV, token_weights(MASK, "grpo", G, L_MAX), LossConfig(
        loss_type="grpo", epsilon=eps[0], epsilon_high=eps[1]))[0]
    assert abs(loss.item() - token_level.item()) > 1e-3  # the sequence ratio is not the token one here


def test_cispo_loss_matches_hand_computation_and_keeps_every_tokens_gradient():
    cfg = LossConfig(loss_type="dapo", surrogate="cispo", epsilon=0.05, epsilon_high=0.1)
    logp = LOGP.clone().requires_grad_(True)
    w = token_weights(MASK, "dapo", G, L_MAX)
    loss, stats = policy_loss(logp, OLD, None, ADV, w, cfg)
    hand, capped, grad = 0.0, 0, torch.zeros_like(LOGP)
    for i in range(4):
        for t in range(3):
            if MASK[i, t] == 1:
                weight = min(math.exp(LOGP[i, t].item() - OLD[i, t].item()), 1.1)
                capped += math.exp(LOGP[i, t].item() - OLD[i, t].item()) > 1.1
                hand += -weight * ADV[i].item() * LOGP[i, t].item()
                grad[i, t] = -weight * ADV[i].item()
    assert loss.item() == pytest.approx(hand / MASK.sum().item(), rel=1e-6)
    assert stats["clipped"] == capped == 2  # tokens (0, 0) and (3, 1): ratio e^0.2 and e^0.4
    loss.backward()  # a capped token still has its gradient (the clipped ratio would give it none)
    assert torch.allclose(logp.grad, grad / MASK.sum())
    assert cispo_surrogate(LOGP, OLD, ADV, 0.1)[1].sum() == 2


@pytest.mark.parametrize("variant", [dict(loss_type="grpo", importance_sampling_level="sequence"),
                                     dict(loss_type="dapo", surrogate="cispo", epsilon_high=4.0)])
def test_gspo_and_cispo_have_grpos_gradient_when_the_ratio_is_1(variant):
    """mu = 1: old = logp in value, so every variant's gradient is -A ∇log π per counted token."""
    grads = []
    for cfg in (LossConfig(loss_type=variant["loss_type"]), LossConfig(**variant)):
        logp = LOGP.clone().requires_grad_(True)
        policy_loss(logp, logp.detach(), None, ADV, token_weights(MASK, cfg.loss_type, G, L_MAX), cfg)[0].backward()
        grads.append(logp.grad)
    assert torch.allclose(grads[0], grads[1], atol=1e-7)


def test_group_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(r, 4, "group")
    std = torch.tensor([1.0, 0.0, 0.0, 0.0]).std().item()
    assert adv[0].item() == pytest.approx(0.75 / (std + 1e-4))
    assert adv[4:].abs().max().item() == 0
    batch = group_advantages(r, 4, "batch")
    assert batch[0].item() == pytest.approx(0.75 / (r.std().item() + 1e-4))
    assert group_advantages(r, 4, "none")[1].item() == pytest.approx(-0.25)


def test_informative_groups_drop_zero_variance():
    r = torch.tensor([0.0, 0.0, 1.0, 0.0, 1.0, 1.0])
    assert informative_groups(r, 2).tolist() == [False, True, False]


def test_truncated_rows_get_no_weight():
    mask = MASK.clone()
    mask[1] = 0
    for lt in ("grpo", "dapo", "dr_grpo"):
        w = token_weights(mask, lt, G, L_MAX)
        assert w[1].sum() == 0
    assert token_weights(mask, "grpo", G, L_MAX).sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("kwargs, needle", [
    ({"group_size": 1, "batch_size": 4}, "group_size=1"),
    ({"epsilon": 0.2, "epsilon_high": 0.1}, "epsilon_high"),
    ({"loss_type": "ppo"}, "loss_type 'ppo'"),
    ({"batch_size": 10, "group_size": 4}, "not divisible"),
    ({"scale_rewards": "max"}, "scale_rewards"),
    ({"rewards": {"speed": 1.0}}, "unknown reward"),
    ({"entropy_coef": -0.01}, "entropy_coef"),
    ({"importance_sampling_level": "group"}, "importance_sampling_level 'group'"),
    ({"surrogate": "ppo"}, "surrogate 'ppo'"),
    ({"surrogate": "cispo", "importance_sampling_level": "sequence"}, "set importance_sampling_level token"),
])
def test_invalid_configs_are_rejected(kwargs, needle):
    with pytest.raises(UsageError, match=needle):
        build(GRPOConfig, kwargs)
