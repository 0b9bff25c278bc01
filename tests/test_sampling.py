"""The draw of the next token: the distribution, temperature, top-k/top-p, masked tokens, and the
per-sequence random numbers."""

import pytest
import torch

from r1lite.engine import kernels
from r1lite.engine.sampling import (
    Sampling,
    derive_seed,
    nucleus,
    sample_categorical,
    sample_next,
    sample_rows,
    sequence_key,
    uniform,
)


def uniforms(n, seed=0):
    return torch.tensor([uniform(sequence_key(seed, i), 0) for i in range(n)])


def test_sample_next_follows_the_distribution(cpu_path):
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0]])).expand(20000, 4).contiguous()
    counts = torch.bincount(sample_next(logits, Sampling(temperature=1.0), uniforms(20000)), minlength=4).float() / 20000
    assert torch.allclose(counts, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.015)
    top1 = sample_next(logits, Sampling(temperature=1.0, top_k=1), uniforms(20000, 1))
    assert (top1 == 0).all()
    nucleus = torch.bincount(sample_next(logits, Sampling(temperature=1.0, top_p=0.7), uniforms(20000, 2)), minlength=4).float() / 20000
    assert nucleus[2] == 0 and nucleus[0] == pytest.approx(0.5 / 0.8, abs=0.015)
    assert (sample_next(logits, Sampling(temperature=0), None) == 0).all()


def test_the_nucleus_is_the_sorted_rows_prefix_also_where_the_first_64_tokens_fall_short():
    """Against a full sort of each row: peaked rows (the nucleus within the first 64), flat rows
    (thousands of tokens: the top k widened), masked tokens, top_p near 1."""
    g = torch.Generator().manual_seed(0)
    V = 5000
    logits = torch.cat([torch.randn(6, V, generator=g) * 8, torch.randn(6, V, generator=g) * 0.1])
    logits[::3, ::7] = -float("inf")
    for top_p in (0.3, 0.9, 0.95, 0.999):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = logits.softmax(-1).gather(-1, order)  # the row's own softmax: a sorted row's sums round differently
        drop = probs.cumsum(-1, dtype=torch.float64) - probs.double() >= top_p
        expected = logits.scatter(-1, order, sorted_logits.masked_fill(drop, -float("inf")))
        ours = nucleus(logits, top_p)
        kept = torch.isfinite(ours)
        assert torch.equal(kept, torch.isfinite(expected)), top_p
        assert torch.equal(ours[kept], logits[kept])
        assert kept[6:].sum(-1).min() > 64 * (top_p > 0.5)  # the flat rows needed more than the first 64


def test_sampler_never_draws_masked_tokens_and_applies_temperature(cpu_path):
    probs = torch.tensor([0.0, 0.1, 0.0, 0.6, 0.3, 0.0])
    logits = probs.log().expand(40000, 6).contiguous()
    drawn = sample_next(logits, Sampling(temperature=1.0), uniforms(40000))
    assert set(drawn.tolist()) == {1, 3, 4}  # zero-probability tokens, first and last included, never come
    hot = torch.bincount(sample_next(logits, Sampling(temperature=2.0), uniforms(40000, 1)), minlength=6).float() / 40000
    assert torch.allclose(hot, (logits[0] / 2).softmax(-1), atol=0.01)
    # a wide vocabulary (the cumulative sum runs over 4096 entries): the most likely tokens come
    # as often as softmax says, within sampling noise
    wide = torch.randn(1, 4096, generator=torch.Generator().manual_seed(2)) * 3
    counts = torch.bincount(sample_categorical(wide.expand(16000, -1).contiguous(), uniforms(16000, 3)), minlength=4096).float() / 16000
    top = wide[0].softmax(-1).topk(5).indices
    assert torch.allclose(counts[top], wide[0].softmax(-1)[top], atol=0.01)


def test_kernel_sampler_draws_what_the_cumulative_sum_draws():
    """Same uniform numbers, same tokens as PyTorch's cumulative sum and binary search, on a real
    vocabulary width (several blocks and a ragged tail) with masked tokens."""
    lib = kernels.load()
    if lib is None:
        pytest.skip("the CPU kernel cannot be built on this machine")
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(64, 49157, generator=g) * 4
    logits[:, ::7] = float("-inf")
    u = torch.rand(64, generator=g)
    cdf = (logits - logits.amax(-1, keepdim=True)).exp().cumsum(-1)
    ref = torch.searchsorted(cdf, u[:, None] * cdf[:, -1:], right=True).squeeze(-1)
    ours = kernels.sample(lib, logits, u)
    assert (ours == ref).float().mean() > 0.95  # only float rounding near a boundary may differ
    assert torch.isfinite(logits.gather(1, ours[:, None])).all()
    assert (kernels.sample(lib, logits, torch.zeros(64)) == (logits > -1e30).float().argmax(-1)).all()
    # u = 1 (past the end, as rounding can leave the target): the last token that can be drawn
    logits[:, -1] = float("-inf")
    assert (kernels.sample(lib, logits, torch.ones(64)) == 49155).all()


def test_per_sequence_numbers_are_uniform_and_independent():
    u = torch.tensor([uniform(sequence_key(s, i), t) for s in range(20) for i in range(10) for t in range(50)])
    assert 0 <= float(u.min()) and float(u.max()) < 1
    assert float(u.mean()) == pytest.approx(0.5, abs=0.01) and float(u.var()) == pytest.approx(1 / 12, abs=0.005)
    hist = torch.histc(u, bins=10, min=0, max=1) / len(u)
    assert torch.allclose(hist, torch.full((10,), 0.1), atol=0.01)
    a = u.view(200, 50)
    assert abs(float(torch.corrcoef(torch.stack([a[:, :-1].reshape(-1), a[:, 1:].reshape(-1)]))[0, 1])) < 0.03  # successive draws
    assert len({sequence_key(s, i) for s in range(100) for i in range(100)}) == 10000
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3) != derive_seed(1, 3, 2)


def test_rows_draw_with_their_own_settings_and_numbers():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    settings = [Sampling(temperature=0), Sampling(temperature=1.0), Sampling(temperature=0), Sampling(temperature=1.0, top_k=1)]
    keys, steps = [sequence_key(0, i) for i in range(4)], [0, 5, 0, 3]
    out = sample_rows(logits, settings, keys, steps)
    assert out[0] == int(logits[0].argmax()) and out[2] == int(logits[2].argmax()) and out[3] == int(logits[3].argmax())
    alone = sample_rows(logits[1:2], settings[1:2], keys[1:2], steps[1:2])  # a row's draw does not depend on the others
    assert out[1] == alone[0]
