"""The generation loop: parity with transformers, prefix sharing, rows leaving, stops, sampling."""

import warnings

import pytest
import torch

from r1lite import cpu_kernels
from r1lite.models import cpu_bf16_flags, load_model, resolve_runtime, stop_token_ids
from r1lite.rollout import GenerationStats, HFDecoder, LlamaDecoder, Sampling, encode_prompts, generate, left_pad, make_decoder, render_prompt, sample_next

QUESTIONS = [f"What is {a} + {b}?" for a, b in [(12, 34), (56, 78), (9, 91), (23, 45), (67, 11), (40, 2), (88, 99), (15, 16)]]
FP32 = resolve_runtime("cpu", "fp32")


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny", FP32)


@pytest.fixture(scope="module")
def embedded():
    return load_model("default", FP32)


def prompts_for(tokenizer, questions=QUESTIONS):
    return encode_prompts(tokenizer, [render_prompt(tokenizer, [{"role": "user", "content": q}]) for q in questions])


def reference_greedy(model, tokenizer, prompts, max_new_tokens):
    """transformers generate, greedy, left-padded: the new tokens of each row up to and including eos."""
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    width = ids.shape[1]
    eos = stop_token_ids(tokenizer, model)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    rows = []
    for row in out[:, width:].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


def first_divergence(ours, ref):
    for i, (a, b) in enumerate(zip(ours, ref)):
        if a != b:
            j = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            return f"prompt {i}, token {j}: ours {a[j:j + 5]} vs transformers {b[j:j + 5]}"
    return None


def run_greedy(model, tokenizer, dtype, max_new_tokens=32, batch_size=64):
    prompts = prompts_for(tokenizer)
    decoder = make_decoder(model, dtype)
    out = generate(decoder, tokenizer, prompts, Sampling(max_new_tokens=max_new_tokens, temperature=0),
                   stop_ids=stop_token_ids(tokenizer, model), batch_size=batch_size)
    return prompts, [o[0].token_ids for o in out]


@pytest.mark.parametrize("kernels", ["ours", "torch"])  # torch: the path where our CPU kernel cannot be built
@pytest.mark.parametrize("batch_size", [64, 3])  # 3: small batches (prefill on the kernel; oneDNN without it)
@pytest.mark.parametrize("which", ["tiny", pytest.param("embedded", marks=pytest.mark.slow)])
def test_greedy_tokens_identical_to_transformers_in_fp32(which, batch_size, kernels, request, monkeypatch):
    if kernels == "torch":
        monkeypatch.setattr(cpu_kernels, "load", lambda: None)
    model, tokenizer = request.getfixturevalue(which)
    prompts, ours = run_greedy(model, tokenizer, torch.float32, batch_size=batch_size)
    ref = reference_greedy(model, tokenizer, prompts, 32)
    assert ours == ref, first_divergence(ours, ref)


def test_greedy_agreement_in_bf16(request):
    """bf16 weights on both sides; rounding may flip near-ties, so >= 95% of positions must agree.
    The embedded model is used where bf16 is fast (AVX-512 BF16/AMX, or a GPU), else the tiny one."""
    which = "embedded" if cpu_bf16_flags() else "tiny"
    model, tokenizer = request.getfixturevalue(which)
    bf16 = model.to(torch.bfloat16)
    try:
        prompts, ours = run_greedy(bf16, tokenizer, torch.bfloat16)
        ref = reference_greedy(bf16, tokenizer, prompts, 32)
    finally:
        model.to(torch.float32)
    total = sum(max(len(a), len(b)) for a, b in zip(ours, ref))
    agree = sum(x == y for a, b in zip(ours, ref) for x, y in zip(a, b))
    assert agree / total >= 0.95, f"{which}: {agree}/{total} tokens agree; first divergence: {first_divergence(ours, ref)}"


def test_prefix_sharing_gives_each_sample_the_prompt(tiny):
    model, tokenizer = tiny
    prompts = prompts_for(tokenizer)[:3]
    decoder = make_decoder(model, torch.float32)
    greedy = Sampling(max_new_tokens=12, temperature=0)
    single = generate(decoder, tokenizer, prompts, greedy, n=1)
    shared = generate(decoder, tokenizer, prompts, greedy, n=4)
    for one, four in zip(single, shared):
        assert all(c.token_ids == one[0].token_ids for c in four)


def test_batch_size_does_not_change_greedy_output(tiny):
    model, tokenizer = tiny
    prompts = prompts_for(tokenizer)
    decoder = make_decoder(model, torch.float32)
    greedy = Sampling(max_new_tokens=10, temperature=0)
    big = generate(decoder, tokenizer, prompts, greedy, batch_size=64)
    small = generate(decoder, tokenizer, prompts, greedy, batch_size=3)
    assert [o[0].token_ids for o in big] == [o[0].token_ids for o in small]


@pytest.mark.slow
def test_finished_rows_leave_the_batch(embedded):
    model, tokenizer = embedded
    prompts = prompts_for(tokenizer, ["Reply with the single word: yes"] * 3 + ["Write a long story about a dragon."])
    stats = GenerationStats()
    out = generate(make_decoder(model, torch.float32), tokenizer, prompts, Sampling(max_new_tokens=40, temperature=0),
                   stop_ids=stop_token_ids(tokenizer, model), stats=stats)
    assert out[0][0].finish == "stop" and out[3][0].finish == "length"
    assert stats.row_steps[0] == 4 and stats.row_steps[-1] == 1
    assert stats.new_tokens == sum(len(o[0].token_ids) for o in out)


def test_stop_string_cuts_and_keeps_the_string(embedded):
    model, tokenizer = embedded
    decoder = make_decoder(model, torch.float32)
    prompts = prompts_for(tokenizer)[:2]
    free = generate(decoder, tokenizer, prompts, Sampling(max_new_tokens=20, temperature=0))
    text = free[0][0].text
    stop = "= "
    assert stop in text[:-4], text  # the greedy answer to "What is 12 + 34?" is an equation
    cut = generate(decoder, tokenizer, prompts, Sampling(max_new_tokens=20, temperature=0, stop=(stop,)))
    assert cut[0][0].finish == "stop"
    assert cut[0][0].text.endswith(stop) and text.startswith(cut[0][0].text)
    assert len(cut[0][0].token_ids) < 20


def test_ignore_eos_gives_exactly_max_new_tokens(embedded):
    model, tokenizer = embedded
    prompts = prompts_for(tokenizer, ["Say hi."])
    out = generate(make_decoder(model, torch.float32), tokenizer, prompts,
                   Sampling(max_new_tokens=24, temperature=0, ignore_eos=True), stop_ids=stop_token_ids(tokenizer, model))
    assert len(out[0][0].token_ids) == 24 and out[0][0].finish == "length"


def test_seeded_sampling_is_reproducible(tiny):
    model, tokenizer = tiny
    decoder = make_decoder(model, torch.float32)
    prompts = prompts_for(tokenizer)[:2]
    s = Sampling(max_new_tokens=8, temperature=1.0)
    a = generate(decoder, tokenizer, prompts, s, n=3, seed=7)
    b = generate(decoder, tokenizer, prompts, s, n=3, seed=7)
    c = generate(decoder, tokenizer, prompts, s, n=3, seed=8)
    ids = lambda out: [[x.token_ids for x in o] for o in out]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)


@pytest.fixture(params=["ours", "torch"])
def sampler_path(request, monkeypatch):
    """Sampling on our CPU kernel, and on PyTorch where it cannot be built."""
    if request.param == "torch":
        monkeypatch.setattr(cpu_kernels, "load", lambda: None)
    elif cpu_kernels.load() is None:
        pytest.skip("the CPU kernel cannot be built on this machine")


def test_sample_next_follows_the_distribution(sampler_path):
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2, 0.0]])).expand(20000, 4).contiguous()
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(sample_next(logits, Sampling(temperature=1.0), g), minlength=4).float() / 20000
    assert torch.allclose(counts, torch.tensor([0.5, 0.3, 0.2, 0.0]), atol=0.015)
    top1 = sample_next(logits, Sampling(temperature=1.0, top_k=1), g)
    assert (top1 == 0).all()
    nucleus = torch.bincount(sample_next(logits, Sampling(temperature=1.0, top_p=0.7), g), minlength=4).float() / 20000
    assert nucleus[2] == 0 and nucleus[0] == pytest.approx(0.5 / 0.8, abs=0.015)
    assert (sample_next(logits, Sampling(temperature=0), None) == 0).all()


def test_llama_family_uses_the_fast_decoder_and_others_the_generic_one(tiny):
    from transformers import GPT2Config, GPT2LMHeadModel

    model, tokenizer = tiny
    assert isinstance(make_decoder(model, torch.float32), LlamaDecoder)
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=512)).eval()
    decoder = make_decoder(gpt2, torch.float32)
    assert isinstance(decoder, HFDecoder)
    prompts = prompts_for(tokenizer)[:4]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no argument transformers is about to remove
        out = generate(decoder, tokenizer, prompts, Sampling(max_new_tokens=8, temperature=0), stop_ids=[tokenizer.eos_token_id])
    gpt2.generation_config.eos_token_id = tokenizer.eos_token_id
    ref = reference_greedy(gpt2, tokenizer, prompts, 8)
    assert [o[0].token_ids for o in out] == ref


def test_sampler_never_draws_masked_tokens_and_applies_temperature(sampler_path):
    probs = torch.tensor([0.0, 0.1, 0.0, 0.6, 0.3, 0.0])
    logits = probs.log().expand(40000, 6).contiguous()
    g = torch.Generator().manual_seed(1)
    drawn = sample_next(logits, Sampling(temperature=1.0), g)
    assert set(drawn.tolist()) == {1, 3, 4}  # zero-probability tokens, first and last included, never come
    hot = torch.bincount(sample_next(logits, Sampling(temperature=2.0), g), minlength=6).float() / 40000
    expected = (logits[0] / 2).softmax(-1)
    assert torch.allclose(hot, expected, atol=0.01)
    # a wide vocabulary (the cumulative sum runs over 4096 entries): the most likely tokens come
    # as often as softmax says, within sampling noise
    wide = torch.randn(1, 4096, generator=torch.Generator().manual_seed(2)) * 3
    counts = torch.bincount(sample_next(wide.expand(16000, -1).contiguous(), Sampling(), g), minlength=4096).float() / 16000
    top = wide[0].softmax(-1).topk(5).indices
    assert torch.allclose(counts[top], wide[0].softmax(-1)[top], atol=0.01)


def test_kernel_sampler_draws_what_the_cumulative_sum_draws():
    """Same uniform numbers, same tokens as PyTorch's cumulative sum and binary search, on a real
    vocabulary width (several blocks and a ragged tail) with masked tokens."""
    lib = cpu_kernels.load()
    if lib is None:
        pytest.skip("the CPU kernel cannot be built on this machine")
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(64, 49157, generator=g) * 4
    logits[:, ::7] = float("-inf")
    u = torch.rand(64, generator=g)
    cdf = (logits - logits.amax(-1, keepdim=True)).exp().cumsum(-1)
    ref = torch.searchsorted(cdf, u[:, None] * cdf[:, -1:], right=True).squeeze(-1)
    ours = cpu_kernels.sample(lib, logits, u)
    assert (ours == ref).float().mean() > 0.95  # only float rounding near a boundary may differ
    assert torch.isfinite(logits.gather(1, ours[:, None])).all()
    assert (cpu_kernels.sample(lib, logits, torch.zeros(64)) == (logits > -1e30).float().argmax(-1)).all()
    # u = 1 (past the end, as rounding can leave the target): the last token that can be drawn
    logits[:, -1] = float("-inf")
    assert (cpu_kernels.sample(lib, logits, torch.ones(64)) == 49155).all()
