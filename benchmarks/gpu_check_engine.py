"""The GPU check's ``engine`` section: r1lite's generation engine against transformers on the device.

For each shape, on random weights (:mod:`gpu_check_models`), as ``tests/test_engine.py`` does on
the CPU:

- fp32: greedy tokens identical to transformers ``generate`` (left-padded prompts of different
  lengths after a shared chat prefix), all rows at once and with rows leaving and joining;
- bf16: token by token on the fp32 greedy text, how often our bf16 decoder and transformers' bf16
  forward pick fp32's next token, and each other's; and free-running greedy agreement of the two
  in bf16 (one near-tie decided differently changes the rest of a sequence, so this counts luck as
  much as numerics; kernels chosen by shape make bf16 differ between the two in the last bits);
- on the first shape: the step-level form (a request joining a running batch gets the tokens it
  gets alone, streamed text adds up to the completion, a cancel ends a request) and budget
  forcing (the thinking, the forced close included, stays within its budget).
"""

from __future__ import annotations

import copy

import torch
from gpu_check_models import QWEN3, QWEN25, SMOLLM2

from r1lite.engine import LlamaDecoder, Request, Sampling, make_engine
from r1lite.engine.thinking import CLOSE_SENTENCE, CLOSE_THINKING
from r1lite.models import left_pad
from r1lite.packaged import stop_token_ids
from r1lite.prompts import encode_messages

SHAPES = (SMOLLM2, QWEN25, QWEN3)
QUESTIONS = ["What is 12 + 34?", "What is 56 + 78?", "What is 9 + 91?", "What is 23 + 45?",
             ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
              "How many clips did she sell altogether?"),
             ("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
              "How much did she earn?"),
             "Betty is saving money for a new wallet which costs $100. How much more money does Betty need?",
             "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?"]
"""Short and long questions alike: the long ones' own tokens outrun the prefix they share."""


def run(record: dict, ctx) -> str | None:
    tokenizer, sizes = ctx.tokenizer, ctx.sizes
    half = sizes.engine_prompts // 2
    questions = QUESTIONS[:half] + QUESTIONS[4:4 + half]
    prompts = [encode_messages(tokenizer, [{"role": "user", "content": q}]) for q in questions]
    record["prompts"], record["new_tokens"] = len(prompts), sizes.engine_new_tokens
    record["shapes"] = {}
    for name in SHAPES:
        if ctx.left() < ctx.cap() / 6:
            record["shapes"][name] = {"skipped": "the section's time cap is near"}
            continue
        shape = record["shapes"][name] = {}
        model = ctx.model(name)
        parity(shape, ctx, model, prompts)
        ctx.save()
        if name == SMOLLM2:
            record["step_level"] = {}
            step_level(record["step_level"], ctx, model, prompts)
            record["budget_forcing"] = {}
            budget_forcing(record["budget_forcing"], ctx, model)
            ctx.save()
    return None


def parity(record: dict, ctx, model, prompts: list[list[int]]) -> None:
    tokenizer, new = ctx.tokenizer, ctx.sizes.engine_new_tokens
    stops = stop_token_ids(tokenizer, model)
    reference = reference_greedy(model, tokenizer, prompts, new, stops)
    for rows, key in ((len(prompts), "fp32_greedy_identical"), (3, "fp32_greedy_identical_rows_joining")):
        ours = greedy(make_engine(model, tokenizer, torch.float32, stops, rows), prompts, new)
        ctx.expect(record, key, ours == reference, max_rows=rows, first_divergence=first_divergence(ours, reference))

    seqs = [p + c for p, c in zip(prompts, reference)]
    fp32 = hf_logits(model, prompts, seqs)
    theirs_model = copy.deepcopy(model).to(torch.bfloat16)
    theirs = hf_logits(theirs_model, prompts, seqs)
    ours = teacher_forced_logits(LlamaDecoder(model, torch.bfloat16), prompts, seqs)
    agree_ours, agree_theirs = agreement(ours, fp32), agreement(theirs, fp32)
    record["bf16_teacher_forced"] = {
        "positions": sum(len(x) for x in fp32), "r1lite_picks_fp32_token": agree_ours,
        "transformers_picks_fp32_token": agree_theirs, "r1lite_and_transformers_pick_the_same": agreement(ours, theirs)}
    ctx.expect(record, "bf16_as_close_to_fp32_as_transformers", agree_ours >= agree_theirs - 0.02,
               rule="r1lite's bf16 picks fp32's token at no fewer positions than transformers' bf16, less 2 points")
    ours_free = greedy(make_engine(model, tokenizer, torch.bfloat16, stops, len(prompts)), prompts, ctx.sizes.engine_new_tokens)
    theirs_free = reference_greedy(theirs_model, tokenizer, prompts, ctx.sizes.engine_new_tokens, stops)
    record["bf16_free_running"] = {
        "identical_sequences": sum(a == b for a, b in zip(ours_free, theirs_free)), "sequences": len(prompts),
        "tokens_before_first_divergence": sum(common_prefix(a, b) for a, b in zip(ours_free, theirs_free)),
        "tokens": sum(len(b) for b in theirs_free), "first_divergence": first_divergence(ours_free, theirs_free)}
    del theirs_model


def step_level(record: dict, ctx, model, prompts: list[list[int]]) -> None:
    """The serving form: a request joins a running batch, streamed text adds up, a cancel ends one."""
    tokenizer = ctx.tokenizer
    stops = stop_token_ids(tokenizer, model)
    s = Sampling(max_new_tokens=ctx.sizes.engine_new_tokens, temperature=0)
    alone = [make_engine(model, tokenizer, torch.float32, stops).generate([Request(p, s, seed=i)])[0][0]
             for i, p in enumerate(prompts[:2])]
    engine = make_engine(model, tokenizer, torch.float32, stops)
    first = engine.add(Request(prompts[0], s, seed=0, stream=True))
    texts: dict[str, str] = {}
    done = {}
    for _ in range(2):
        for d in engine.step():
            texts[d.request_id] = texts.get(d.request_id, "") + d.text
    second = engine.add(Request(prompts[1], s, seed=1, stream=True))
    doomed = engine.add(Request(prompts[2], Sampling(max_new_tokens=10 * s.max_new_tokens, temperature=0), seed=2))
    steps, together = 0, 0
    while engine.has_work:
        deltas = engine.step()
        steps += 1
        if steps == 2:
            together = len(engine.batch.seqs) if engine.batch is not None else 0
            engine.cancel(doomed)
        for d in deltas:
            texts[d.request_id] = texts.get(d.request_id, "") + d.text
            if d.completion is not None:
                done[d.request_id] = d.completion
    ours = [done[first].token_ids, done[second].token_ids]
    reference = [alone[0].token_ids, alone[1].token_ids]
    ctx.expect(record, "joined_requests_get_their_tokens_alone", ours == reference,
               first_divergence=first_divergence(ours, reference))
    ctx.expect(record, "streamed_text_adds_up", texts[first] == done[first].text and texts[second] == done[second].text)
    ctx.expect(record, "three_rows_decode_together", together == 3, rows=together)
    ctx.expect(record, "cancel_ends_a_request", done[doomed].finish == "cancelled", finish=done[doomed].finish,
               tokens=len(done[doomed].token_ids))


def budget_forcing(record: dict, ctx, model) -> None:
    """A model that never closes its thinking (random weights) is made to, within the budget."""
    tokenizer = ctx.tokenizer
    engine = make_engine(model, tokenizer, torch.float32, stop_token_ids(tokenizer, model))
    prompt = encode_messages(tokenizer, [{"role": "user", "content": "Hi"}], "<think>")
    close = len(tokenizer.encode(CLOSE_THINKING, add_special_tokens=False))
    sentence = len(tokenizer.encode(CLOSE_SENTENCE, add_special_tokens=False))
    for budget in (sentence + close + 5, 0):
        out = engine.generate([Request(prompt, Sampling(max_new_tokens=sentence + close + 20, temperature=0),
                                       max_thinking_tokens=budget, thinking=True)])[0][0]
        used = tokens_to_close(tokenizer, out.token_ids)
        ctx.expect(record, f"budget_{budget}", used is not None and used <= max(budget, close)
                   and (CLOSE_SENTENCE.strip() in out.text) == (budget >= sentence + close),
                   thinking_tokens=used, budget=budget)


# -- helpers (those of tests/test_engine.py, on the model's device) ------------------------------------


def greedy(engine, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    out = engine.generate([Request(p, Sampling(max_new_tokens=new_tokens, temperature=0)) for p in prompts])
    return [o[0].token_ids for o in out]


def reference_greedy(model, tokenizer, prompts: list[list[int]], new_tokens: int, stops: list[int]) -> list[list[int]]:
    """transformers ``generate``, greedy, left-padded: each row's new tokens up to and including a stop."""
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    width = ids.shape[1]
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=new_tokens,
                             do_sample=False, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id)
    rows = []
    for row in out[:, width:].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in stops), len(row))
        rows.append(row[:cut])
    return rows


def hf_logits(model, prompts, seqs) -> list[torch.Tensor]:
    """transformers' next-token logits at every position after the prompt (the head on those alone)."""
    device = next(model.parameters()).device
    with torch.no_grad():
        return [model(torch.tensor([s], device=device), logits_to_keep=len(s) - len(p) + 1).logits[0, :-1].float().cpu()
                for p, s in zip(prompts, seqs)]


def teacher_forced_logits(decoder, prompts, seqs) -> list[torch.Tensor]:
    """Next-token logits at every position after the prompt, feeding the given tokens."""
    device = decoder.device
    out = []
    for p, s in zip(prompts, seqs):
        cache = decoder.new_cache(1, len(s))
        valid = torch.ones(1, len(s), dtype=torch.bool, device=device)
        rows = [decoder.forward(cache, torch.tensor([p], device=device), torch.arange(len(p), device=device)[None], 0, valid)]
        for j in range(len(p), len(s) - 1):
            rows.append(decoder.forward(cache, torch.tensor([[s[j]]], device=device), torch.tensor([[j]], device=device),
                                        j, valid))
        out.append(torch.cat(rows).cpu())
    return out


def agreement(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> float:
    """The share of positions where the two pick the same next token."""
    return torch.cat([(a.argmax(-1) == b.argmax(-1)).float() for a, b in zip(xs, ys)]).mean().item()


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def first_divergence(ours: list[list[int]], ref: list[list[int]]) -> str | None:
    for i, (a, b) in enumerate(zip(ours, ref)):
        if a != b:
            j = common_prefix(a, b)
            return f"prompt {i}, token {j}: r1lite {a[j:j + 5]} vs transformers {b[j:j + 5]}"
    return None


def tokens_to_close(tokenizer, ids: list[int]) -> int | None:
    """Tokens up to and including the one that completes ``</think>`` (None: it never does)."""
    return next((k for k in range(1, len(ids) + 1) if "</think>" in tokenizer.decode(ids[:k])), None)
