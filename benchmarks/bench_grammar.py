"""The cost of structured output's token mask against a decode step, on r1lite's engine.

For each model (the embedded SmolLM2-135M-Instruct: a 49,152-token vocabulary; gemma3-270m: 262,144)
and batch (1 and 16), on the CPU in fp32: the same prompt decoded --steps steps, once free and once
with every row held to a JSON schema from its first token (a bounded array of nested objects that
cannot close within the steps, so every row stays constrained), temperature 1. Per step, medians:

- ``decode_step_ms``: the engine's whole step, free rows (the forward, the draw, the bookkeeping);
- ``mask_ms``: computing every constrained row's mask (llguidance, its thread pool) and setting
  the refused logits to -inf (:meth:`r1lite.engine.grammar.Masker.apply`, timed inside the step);
- ``consume_ms``: every row's matcher taking its drawn token (replayed on fresh matchers);
- ``ratio``: (mask + consume) / decode step — the goal is under 0.10;
- ``constrained_step_ms``: the whole step with the mask, for a cross-check (noisier: two runs).

    python benchmarks/bench_grammar.py        # writes benchmarks/results/grammar-mask-<cpu kind>.json

Run it on a committed tree: the results carry the bare commit.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from common import RESULTS, add_allow_dirty, commit_fields, machine

from r1lite.engine import Request, Sampling, make_engine
from r1lite.models import load_model, resolve_runtime
from r1lite.packaged import stop_token_ids
from r1lite.prompts import encode_messages

SCHEMA = {"type": "array", "minItems": 500, "maxItems": 1000, "items": {
    "type": "object", "additionalProperties": False, "required": ["id", "name", "tags", "point"],
    "properties": {"id": {"type": "integer", "minimum": 0, "maximum": 100000},
                   "name": {"type": "string", "maxLength": 24},
                   "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 4},
                   "point": {"type": "object", "additionalProperties": False, "required": ["x", "y"],
                             "properties": {"x": {"type": "number", "minimum": -1, "maximum": 1, "multipleOf": 0.001},
                                            "y": {"type": "number", "minimum": -1, "maximum": 1, "multipleOf": 0.001}}}}}}
"""Nested objects, arrays, enums, bounded numbers and strings; at least 500 items, so no row finishes."""


def run(engine, prompt: list[int], batch: int, steps: int, grammar) -> tuple[list[float], list[float], list[list[int]]]:
    """(seconds of each decode step, seconds of each step's masking, each row's tokens) for ``batch``
    rows of ``prompt`` decoded ``steps`` steps after the one that prefills them."""
    masks: list[float] = []
    constrain = engine._constrain

    def timed(logits, seqs):
        t = time.perf_counter()
        out = constrain(logits, seqs)
        masks.append(time.perf_counter() - t)
        return out

    engine._constrain = timed
    try:
        for i in range(batch):
            engine.add(Request(prompt, Sampling(max_new_tokens=steps + 1, temperature=1.0, ignore_eos=True), seed=i,
                               grammar=grammar, id=f"r{i}"))
        engine.step()  # prefill and the first token
        masks.clear()
        times, tokens = [], {}
        while engine.has_work:
            t = time.perf_counter()
            for d in engine.step():
                if d.completion is not None:
                    tokens[d.request_id] = d.completion.token_ids
            times.append(time.perf_counter() - t)
    finally:
        engine._constrain = constrain
    return times[:-1], masks, [tokens[f"r{i}"] for i in range(batch)]  # the last step only draws (no forward)


def consume_seconds(engine, grammar, rows: list[list[int]]) -> list[float]:
    """Per step: every row's matcher taking its token, replayed on fresh matchers."""
    matchers = [engine.grammars.matcher(grammar) for _ in rows]
    out = []
    for step in range(min(len(r) for r in rows)):
        t = time.perf_counter()
        for m, r in zip(matchers, rows):
            assert m.consume_token(r[step]), "the replayed token was refused"
        out.append(time.perf_counter() - t)
    return out


def ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 4)


def measure(spec: str, batches: list[int], steps: int) -> dict:
    model, tokenizer = load_model(spec, resolve_runtime("cpu", "fp32"))
    engine = make_engine(model, tokenizer, torch.float32, stop_token_ids(tokenizer, model), max(batches))
    t = time.perf_counter()
    grammar = engine.compile({"type": "json_schema", "json_schema": {"name": "items", "schema": SCHEMA}})
    setup = time.perf_counter() - t  # llguidance reading the vocabulary, and the schema's grammar
    prompt = encode_messages(tokenizer, [{"role": "user", "content": "List the items as JSON."}])
    out = {"model": spec, "vocab": engine.grammars.vocab, "logits": model.config.vocab_size,
           "setup_seconds": round(setup, 3), "batches": {}}
    for batch in batches:
        free, _, _ = run(engine, prompt, batch, steps, None)
        constrained, masks, rows = run(engine, prompt, batch, steps, grammar)
        consume = consume_seconds(engine, grammar, rows)
        row = {"decode_step_ms": ms(free), "mask_ms": ms(masks), "consume_ms": ms(consume),
               "constrained_step_ms": ms(constrained)}
        row["mask_per_row_ms"] = round(row["mask_ms"] / batch, 4)
        row["ratio"] = round((row["mask_ms"] + row["consume_ms"]) / row["decode_step_ms"], 4)
        out["batches"][str(batch)] = row
        print(f"{spec} (vocab {out['vocab']:,}) batch {batch}: decode step {row['decode_step_ms']:.2f} ms, mask "
              f"{row['mask_ms']:.3f} ms + consume {row['consume_ms']:.3f} ms = {row['ratio']:.1%} of a step "
              f"(constrained step {row['constrained_step_ms']:.2f} ms)", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="default,gemma3-270m", help="models by name (their vocabularies: 49k, 262k)")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--steps", type=int, default=64, help="decode steps measured per run")
    ap.add_argument("--out", default="", help="where to write the result (\"\" = benchmarks/results/grammar-mask-<cpu kind>.json)")
    add_allow_dirty(ap)
    args = ap.parse_args()
    commit = commit_fields("bench_grammar.py", args.allow_dirty)
    batches = [int(b) for b in args.batches.split(",")]
    result = {"benchmark": "grammar-mask", **commit, "machine": machine(), "library": "llguidance",
              "steps": args.steps, "schema": SCHEMA, "models": [measure(m, batches, args.steps) for m in args.models.split(",")]}
    import llguidance

    result["llguidance"] = llguidance.__version__
    out = args.out or RESULTS / f"grammar-mask-{result['machine']['cpu_kind']}.json"
    with open(out, "w") as f:
        f.write(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
