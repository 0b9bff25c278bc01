"""Greedy parity of r1lite's Gemma 3 decoder (:mod:`r1lite.engine.gemma`) with transformers
``generate`` on the real Gemma 3 270M base model, in fp32.

The first --new-tokens greedy tokens of --prompts arithmetic and word-problem prompts in the R1-Zero
plain template (what a base model is prompted with), r1lite's engine against transformers
``generate`` on the same left-padded batch (both stop at an end token). Counted: identical token
sequences, and per prompt the first divergence with transformers' top-2 logit margin there (a
near-tie flipped by rounding has a margin of ~1e-4 or less; a bug has large ones). As a control,
transformers against itself: each prompt alone (no padding) against the batch.

    python benchmarks/parity_gemma.py    # writes benchmarks/results/parity-gemma3-270m-<cpu kind>.json

Run it on a committed tree: the result carries the bare commit.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import RESULTS, add_allow_dirty, commit_fields, machine

from r1lite.engine import Request, Sampling, make_engine
from r1lite.models import cpu_kind, left_pad, load_model, resolve_runtime
from r1lite.packaged import stop_token_ids
from r1lite.prompts import r1_zero_text

QUESTIONS = [
    "What is 37 + 48?", "What is 126 - 59?", "What is 17 * 6?", "What is 144 / 12?", "What is 23 + 19 + 41?",
    "What is 9 * 9 - 17?", "What is 305 - 128?", "What is 56 + 77?", "What is 13 * 14?", "What is 1000 - 357?",
    ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
     "How many clips did she sell altogether?"),
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?",
    ("Betty is saving money for a new wallet which costs $100. She has only half of the money she needs. "
     "Her parents give her $15 and her grandparents twice as much. How much more money does Betty need?"),
    "James writes a 3-page letter to 2 different friends twice a week. How many pages does he write a year?",
    "A baker makes 24 muffins and sells them in boxes of 4. How many boxes does he fill?",
    "Tom has 5 apples. He buys 3 more bags with 6 apples each. How many apples does he have now?",
    "A train travels 60 miles an hour for 3 hours, then 40 miles an hour for 2 hours. How far does it go?",
    "Sara reads 15 pages a day. How many days does she need for a 210-page book?",
    "A farmer has 7 cows and 4 times as many chickens. How many animals does he have?",
    "Lena had $50. She spent $18 on a book and $7 on lunch. How much money is left?",
]


def prompt_text(question: str) -> str:
    """The R1 paper's template for R1-Zero (Table 1), the assistant turn opened with <think>."""
    return r1_zero_text([{"role": "user", "content": question}]) + " <think>"


def hf_greedy(model, tokenizer, prompts: list[list[int]], new_tokens: int, eos: list[int]):
    """transformers generate on one left-padded batch: each row's new tokens up to and including
    an end token, and the step logits (to read margins at divergences)."""
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                             eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, output_scores=True,
                             return_dict_in_generate=True)
    rows = []
    for row in out.sequences[:, ids.shape[1]:].tolist():
        cut = next((j + 1 for j, t in enumerate(row) if t in eos), len(row))
        rows.append(row[:cut])
    scores = torch.stack(out.scores, 1).float()  # [B, steps, V]
    return rows, scores


def first_divergence(a: list[int], b: list[int]) -> int | None:
    if a == b:
        return None
    return next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def margin(scores: torch.Tensor, row: int, step: int) -> float | None:
    """transformers' top-1 minus top-2 logit at a step of a row (None past its last step)."""
    if step >= scores.shape[1]:
        return None
    top = scores[row, step].topk(2).values
    return float(top[0] - top[1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--prompts", type=int, default=20, help=f"how many of the {len(QUESTIONS)} questions")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--no-control", action="store_true", help="skip transformers' prompt-alone control run")
    p.add_argument("--out", type=Path, help="default: benchmarks/results/parity-<model>-<cpu kind>.json")
    add_allow_dirty(p)
    args = p.parse_args()
    commit = commit_fields("parity_gemma", args.allow_dirty)

    runtime = resolve_runtime("cpu", "fp32")
    model, tokenizer = load_model(args.model, runtime)
    eos = stop_token_ids(tokenizer, model)
    questions = QUESTIONS[:args.prompts]
    prompts = [tokenizer.encode(prompt_text(q)) for q in questions]
    assert all(pr[0] == tokenizer.bos_token_id for pr in prompts), "the prompts must start with the bos token"

    t = time.perf_counter()
    ref, scores = hf_greedy(model, tokenizer, prompts, args.new_tokens, eos)
    hf_seconds = time.perf_counter() - t
    engine = make_engine(model, tokenizer, torch.float32, eos, max_rows=len(prompts))
    t = time.perf_counter()
    out = engine.generate([Request(pr, Sampling(max_new_tokens=args.new_tokens, temperature=0)) for pr in prompts])
    ours_seconds = time.perf_counter() - t
    ours = [o[0].token_ids for o in out]
    decoder = type(engine.decoder).__name__
    print(f"{args.model}: r1lite ({decoder}, {'our kernels' if getattr(engine.decoder, 'lib', None) else 'PyTorch'}) "
          f"{ours_seconds:.1f} s, transformers {hf_seconds:.1f} s", flush=True)

    control = None
    if not args.no_control:
        alone = [hf_greedy(model, tokenizer, [pr], args.new_tokens, eos)[0][0] for pr in prompts]
        control = {"identical": sum(a == r for a, r in zip(alone, ref)), "prompts": len(prompts),
                   "first_divergence": [first_divergence(a, r) for a, r in zip(alone, ref)]}

    rows = []
    for i, (q, a, r) in enumerate(zip(questions, ours, ref)):
        at = first_divergence(a, r)
        rows.append({"question": q, "prompt_tokens": len(prompts[i]), "identical": at is None, "first_divergence": at,
                     "transformers_margin_there": None if at is None else margin(scores, i, at),
                     "r1lite_tokens": len(a), "transformers_tokens": len(r),
                     "r1lite_text": tokenizer.decode(a), "transformers_text": tokenizer.decode(r)})
        tail = "" if at is None else f"  diverges at {at} (transformers' margin {rows[-1]['transformers_margin_there']})"
        print(f"  {i:2d} {'same' if at is None else 'DIFF'}{tail}  {q[:60]!r}", flush=True)
    same = sum(r["identical"] for r in rows)
    print(f"identical: {same}/{len(rows)} sequences of up to {args.new_tokens} tokens", flush=True)
    if control is not None:
        print(f"control, transformers alone vs batched: {control['identical']}/{control['prompts']} identical", flush=True)

    result = {"benchmark": "parity_gemma", **commit, "model": args.model, "dtype": "fp32", "new_tokens": args.new_tokens,
              "template": "r1_zero (R1 paper, Table 1) + ' <think>'", "decoder": decoder,
              "kernels": getattr(engine.decoder, "lib", None) is not None, "machine": machine(),
              "identical": same, "prompts": len(rows), "r1lite_seconds": ours_seconds, "transformers_seconds": hf_seconds,
              "transformers_alone_vs_batched": control, "rows": rows}
    name = args.model if "/" not in args.model else Path(args.model).name
    out_path = args.out or RESULTS / f"parity-{name}-{cpu_kind()}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
