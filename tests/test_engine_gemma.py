"""Gemma 3 on r1lite's own decoder (:mod:`r1lite.engine.gemma`): logits and greedy tokens as
transformers', local layers' sliding window included, on left-padded batches and on the engine's
own cache layout (a shared prefix, then padding); a sequence independent of its batch; the
step-level form, budget forcing; the decoder chosen without a fallback; FLOPs with the window.

The tiny random Gemma 3 (3 local layers with a window of 8, then a global one) with every weight
perturbed, its norm weights (zero at initialisation: Gemma weighs by 1 + w) most."""

import pytest
import torch

from r1lite.engine import Engine, GemmaDecoder, HFDecoder, Request, Sampling, kernels, make_decoder, make_engine
from r1lite.engine.thinking import CLOSE_SENTENCE, CLOSE_THINKING
from r1lite.meter.flops import decode_flops
from r1lite.models import ModelShape, left_pad, llama_family, load_model, resolve_runtime
from r1lite.packaged import TINY_GEMMA_WINDOW, stop_token_ids
from r1lite.prompts import encode_messages
from tests.test_engine import check_step_level_form, record_logits

FP32 = resolve_runtime("cpu", "fp32")
QUESTIONS = [f"What is {a} + {b}?" for a, b in [(12, 34), (56, 78), (9, 91), (23, 45), (67, 11), (40, 2)]]
LONG_QUESTIONS = [
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did she sell altogether?",
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    "Betty is saving money for a new wallet which costs $100. How much more money does Betty need?",
]
# no shared first token: the engine prefills them as one left-padded batch (no shared prefix)
RAW = ["Tell me about the sea and the fish in it, please.", "Why is the sky blue on a clear summer day, and red at dusk?", "Count: one, two, three, four, five, six, seven",
       "A train leaves at noon and travels 60 miles an hour for three hours. How far does it go?"]


@pytest.fixture(scope="module")
def gemma():
    model, tokenizer = load_model("tiny-gemma3", FP32)
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn(p.shape, generator=g) * (0.5 if "norm" in name else 0.02))
    return model, tokenizer


def chat_prompts(tokenizer, questions):
    return [encode_messages(tokenizer, [{"role": "user", "content": q}]) for q in questions]


def reference_greedy(model, tokenizer, prompts, max_new_tokens):
    """transformers generate, greedy, left-padded: the new tokens of each row up to and including eos."""
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    eos = stop_token_ids(tokenizer, model)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    rows = []
    for row in out[:, ids.shape[1]:].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    return rows


def greedy(engine, prompts, max_new_tokens):
    out = engine.generate([Request(p, Sampling(max_new_tokens=max_new_tokens, temperature=0)) for p in prompts])
    return [o[0].token_ids for o in out]


@pytest.mark.parametrize("layout", ["left-padded", "shared-prefix"])
def test_logits_match_transformers_through_prefill_and_decode(gemma, layout, cpu_path):
    """Prompts longer than the window, then 24 fed tokens (positions far past the window, where
    local layers drop keys): every next-token distribution within 1e-4 of transformers' fp32
    forward on the left-padded batch, as max |difference| over a row's logits, relative to the
    row's largest |logit| where that exceeds 1. ``shared-prefix``: the engine's prefill, a chat
    prefix once and then each prompt's own tokens left-padded, so a row's positions are not its
    cache columns less a constant (a window over columns would be wrong there)."""
    model, tokenizer = gemma
    prompts = chat_prompts(tokenizer, LONG_QUESTIONS) if layout == "shared-prefix" else [tokenizer.encode(t) for t in RAW]
    steps = 24
    engine = make_engine(model, tokenizer, torch.float32, max_rows=8)
    assert isinstance(engine.decoder, GemmaDecoder)
    for p in prompts:
        engine.add(Request(p, Sampling(max_new_tokens=steps + 1)))
    engine._admit()
    b = engine.batch
    assert (b.shared > 0) == (layout == "shared-prefix") and not bool(b.valid[:, :b.col].all())  # padding, inside or not
    assert min(map(len, prompts)) > TINY_GEMMA_WINDOW
    fed = torch.randint(0, len(tokenizer), (len(prompts), steps), generator=torch.Generator().manual_seed(0))
    ours = [b.logits]
    for j in range(steps):
        ours.append(engine.decoder.forward(b.cache, fed[:, j:j + 1], b.pos[:, None] + j, b.col + j, b.valid, b.shared))
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    full = torch.cat([ids, fed], 1)
    full_mask = torch.cat([mask, torch.ones_like(fed)], 1)
    with torch.no_grad():
        ref = model(input_ids=full, attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0)).logits
    ref = ref[:, ids.shape[1] - 1:]  # the last prompt token's and each fed token's
    ours = torch.stack(ours, 1)
    error = (ours - ref).abs().amax(-1) / ref.abs().amax(-1).clamp(min=1)  # [rows, steps + 1]
    assert error.max() < 1e-4, f"worst row error {error.max():.2e} at (row, step) {divmod(int(error.argmax()), steps + 1)}"


@pytest.mark.parametrize(("questions", "max_rows"), [(QUESTIONS, 64), (LONG_QUESTIONS, 2)],  # 2: requests join as rows leave
                         ids=["short", "longer-than-prefix"])
def test_greedy_tokens_identical_to_transformers_generate(gemma, questions, max_rows, cpu_path):
    model, tokenizer = gemma
    prompts = chat_prompts(tokenizer, questions)
    engine = make_engine(model, tokenizer, torch.float32, stop_token_ids(tokenizer, model), max_rows)
    ours = greedy(engine, prompts, 24)
    ref = reference_greedy(model, tokenizer, prompts, 24)
    assert ours == ref


def test_a_sequence_gets_the_same_tokens_and_logits_in_any_batch(gemma, cpu_path, monkeypatch):
    """Sampled at temperature 1 with per-request seeds: each sequence's tokens and every logit it
    draws from are the same bits alone, among other prompts (a shared prefix and left padding
    move its keys to other cache columns and other window slices) and joining a running batch."""
    model, tokenizer = gemma
    prompts = chat_prompts(tokenizer, QUESTIONS[:3] + LONG_QUESTIONS[:2])
    s = Sampling(max_new_tokens=10, temperature=1.0)
    stops = stop_token_ids(tokenizer, model)
    seen, mismatched = record_logits(monkeypatch)

    def run(max_rows, order):
        out = make_engine(model, tokenizer, torch.float32, stops, max_rows).generate(
            [Request(prompts[i], s, n=2, seed=100 + i) for i in order])
        return {i: [c.token_ids for c in o] for i, o in zip(order, out)}

    together = run(64, range(5))
    alone = {i: run(2, [i])[i] for i in range(5)}
    reordered = run(3, [4, 2, 0, 1, 3])  # 3 rows: requests join as others finish
    assert together == alone == reordered
    assert len(seen) == 5 * 2 * 10 and not mismatched, f"{len(set(mismatched))} of {len(seen)} (sequence, step) logits differ"


def test_step_level_form_joins_and_cancels(gemma):
    """A request added while a batch decodes joins at the next step with the tokens it would get
    alone; streamed text adds up to the completion's; a cancelled request leaves. The second and
    the cancelled request are prefilled together, the second's own tokens left-padded after their
    shared prefix: its window must count tokens, not cache columns."""
    model, tokenizer = gemma
    check_step_level_form(model, tokenizer, chat_prompts(tokenizer, QUESTIONS[:2] + LONG_QUESTIONS[:1]), 12)


def test_budget_forcing_keeps_the_thinking_within_the_budget(gemma):
    """As for Llama (tests/test_export.py): forced tokens count, the thinking with its close is at
    most the budget, and a budget shorter than the closing sentence gets the close alone."""
    model, tokenizer = gemma
    engine = make_engine(model, tokenizer, torch.float32, stop_token_ids(tokenizer, model))
    ids = encode_messages(tokenizer, [{"role": "user", "content": "Hi"}], "<think>")
    close = len(tokenizer.encode(CLOSE_THINKING, add_special_tokens=False))
    sentence = len(tokenizer.encode(CLOSE_SENTENCE, add_special_tokens=False))
    for budget in (sentence + close + 5, sentence + close - 1, 0):
        out = engine.generate([Request(ids, Sampling(max_new_tokens=32, temperature=0), max_thinking_tokens=budget,
                                       thinking=True)])[0][0]
        thought = out.text[:out.text.index("</think>") + len("</think>")]
        n = len(tokenizer.encode(thought, add_special_tokens=False))
        assert n <= max(budget, close) + 1, (budget, n, thought)
        assert (CLOSE_SENTENCE.strip() in thought) == (budget >= sentence + close)


def test_make_decoder_picks_the_gemma_decoder_without_a_fallback(gemma, capsys):
    """Gemma 3 runs on r1lite's decoder, silently; training keeps transformers' forward (not the
    Llama layout); a Gemma 3 with logit softcapping falls back to transformers, and says so."""
    from transformers import Gemma3ForCausalLM

    model, _ = gemma
    decoder = make_decoder(model, torch.float32)
    assert type(decoder) is GemmaDecoder
    assert "transformers forward" not in "".join(capsys.readouterr())
    assert not llama_family(model) and not ModelShape.from_config(model.config, "g").llama_layout
    capped = Gemma3ForCausalLM(model.config.__class__(**{**model.config.to_dict(), "final_logit_softcapping": 30.0})).eval()
    assert isinstance(make_decoder(capped, torch.float32), HFDecoder)
    assert "final_logit_softcapping=30.0" in capsys.readouterr().out


def test_flops_count_local_layers_over_the_window(gemma, monkeypatch):
    """By hand: one decode step of one row after 100 columns on the PyTorch path (products padded
    to 16 columns) is the body and the head on 16 columns plus attention, 4 heads x 16 x 4 (QKᵀ
    and AV) = 256 FLOPs a (query, key) pair: the global layer's 101 keys, each local layer's 8 —
    the count, and what PyTorch counts the step computing. And over a whole generation the
    engine's count agrees with PyTorch's, prompts past the window."""
    from torch.utils.flop_counter import FlopCounterMode

    monkeypatch.setattr(kernels, "load", lambda: None)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)  # plain matmuls, which the counter sees
    model, tokenizer = gemma
    decoder = make_decoder(model, torch.float32)
    assert decoder.shape.sliding_window == 8 and decoder.shape.local_layers == (0, 1, 2)
    body = 2 * decoder.body_params * 16
    head = 2 * len(tokenizer) * 64 * 16
    by_hand = body + head + 256 * (101 + 3 * 8)
    assert decoder.flops(1, 1, 100) == by_hand
    assert decode_flops(decoder.shape, decoder.body_params, 1, 1, 100, body_columns=16, head_columns=16,
                        causal_only=True) == by_hand
    cache, valid = decoder.new_cache(1, 101), torch.ones(1, 101, dtype=torch.bool)
    decoder.forward(cache, torch.arange(100)[None] + 500, torch.arange(100)[None], 0, valid)
    with FlopCounterMode(display=False) as counter:
        decoder.forward(cache, torch.tensor([[7]]), torch.tensor([[100]]), 100, valid)
    assert counter.get_total_flops() == by_hand
    engine = Engine(decoder, tokenizer, [tokenizer.eos_token_id], max_rows=4)
    prompts = [tokenizer.encode(t) for t in RAW[:3]]
    with FlopCounterMode(display=False) as counter:
        engine.generate([Request(p, Sampling(max_new_tokens=20, temperature=1.0), seed=i) for i, p in enumerate(prompts)])
    assert engine.stats.flops == pytest.approx(counter.get_total_flops(), rel=0.02), (engine.stats.flops, counter.get_total_flops())


@pytest.mark.skipif(kernels.load() is None, reason="int8 weights need the CPU kernels")
def test_int8_weights_give_the_logits_of_their_q8_0_weights(gemma):
    """Gemma's decoder on int8 weights (serve, chat --dtype int8): the logits of the fp32 decoder on
    a copy whose projections and head (tied: the embedding too) hold their Q8_0 weights."""
    import copy

    from tests.test_kernels import q8_0

    model, tokenizer = gemma
    quantized = copy.deepcopy(model)
    with torch.no_grad():
        for module in quantized.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(q8_0(module.weight))
    ours, ref = GemmaDecoder(model, torch.float32, int8=True), GemmaDecoder(quantized, torch.float32)
    assert ours.weights == "int8" and ours.embed is None
    tokens, valid = left_pad([tokenizer.encode(t) for t in RAW], tokenizer.pad_token_id)
    valid = valid.bool()
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    B, T = tokens.shape
    caches = [d.new_cache(B, T + 3) for d in (ours, ref)]
    full = torch.cat([valid, torch.ones(B, 3, dtype=torch.bool)], 1)
    for start, end in ((0, T), (T, T + 1), (T + 1, T + 2)):
        step = tokens[:, start:end] if end <= T else tokens[:, -1:]
        pos = positions[:, start:end] if end <= T else positions[:, -1:] + end - T
        a, b = (d.forward(c, step, pos, start, full) for d, c in zip((ours, ref), caches))
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
