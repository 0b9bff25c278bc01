"""Tokens/s of r1lite's generation loop against transformers ``generate``, and the roofline.

Same model (the embedded SmolLM2-135M-Instruct), same dtype (the one r1lite resolves for this
machine, or --dtype), same prompts (held-out arithmetic prompts in the R1 format), exactly
--new-tokens new tokens per sequence (EOS ignored: r1lite's ``ignore_eos``, transformers'
``min_new_tokens``), sampling at temperature 1 with no top-k/top-p on both sides, at batch 1, 16, 64.

The roofline comes from the same process: peak FLOP/s of a large matmul in the dtype, and memory
bandwidth of a >= 1 GiB multithreaded copy (bytes read + written), best of 5 each, measured before
the runs and after each batch, the best counting. A decode step at
batch B must move the weights and the KV cache once and do ~2·N·B FLOPs, so its limit is
``max(bytes / bandwidth, flops / peak)``; tokens/s limit = B / that.

    python benchmarks/bench_rollout.py            # writes benchmarks/results/rollout.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from common import RESULTS, best_of, git_commit, machine

from r1lite import tasks
from r1lite.models import load_model, resolve_runtime, stop_token_ids
from r1lite.rollout import Sampling, encode_prompts, generate, left_pad, make_decoder, render_prompt


def peak_flops(dtype: torch.dtype, device: torch.device, n: int = 2048) -> float:
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)

    def run():
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
    return 2 * n ** 3 / best_of(run)


def bandwidth(device: torch.device, gib: float = 1.0) -> float:
    """Bytes per second moved (read + written) by copying a >= 1 GiB buffer."""
    src = torch.ones(int(gib * 2 ** 30) // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)

    def run():
        dst.copy_(src)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return 2 * src.numel() * 4 / best_of(run)


def decode_limit(model, batch: int, context: float, dtype: torch.dtype, peak: float, bw: float) -> dict:
    """Tokens/s a decode step at this batch and mean context cannot beat."""
    cfg = model.config
    size = torch.tensor([], dtype=dtype).element_size()
    params = sum(p.numel() for p in model.parameters())
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * context * batch * size
    bytes_per_step = params * size + kv_bytes
    flops_per_step = 2 * params * batch + 4 * cfg.num_hidden_layers * context * cfg.num_attention_heads * head_dim * batch
    step = max(bytes_per_step / bw, flops_per_step / peak)
    return {"bytes_per_step": bytes_per_step, "flops_per_step": flops_per_step, "bound": "memory" if bytes_per_step / bw > flops_per_step / peak else "compute",
            "tokens_per_s": batch / step}


def hf_generate(model, tokenizer, prompts: list[list[int]], new_tokens: int, eos: list[int]) -> float:
    ids, mask = left_pad(prompts, tokenizer.pad_token_id)
    width = ids.shape[1]
    ids, mask = ids.to(model.device), mask.to(model.device)
    t = time.perf_counter()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=True, temperature=1.0, top_k=0, top_p=1.0, eos_token_id=eos,
                             pad_token_id=tokenizer.pad_token_id)
    seconds = time.perf_counter() - t
    assert out.shape[1] - width == new_tokens
    return len(prompts) * new_tokens / seconds


def r1lite_generate(decoder, tokenizer, prompts, new_tokens: int, eos: list[int]) -> float:
    sampling = Sampling(max_new_tokens=new_tokens, temperature=1.0, ignore_eos=True)
    t = time.perf_counter()
    out = generate(decoder, tokenizer, prompts, sampling, seed=0, batch_size=len(prompts), stop_ids=eos)
    seconds = time.perf_counter() - t
    assert all(len(o[0].token_ids) == new_tokens for o in out)
    return len(prompts) * new_tokens / seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side and batch, interleaved; the best counts")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--model", default="default", help="default, or a directory (e.g. a random model of the same shape)")
    p.add_argument("--out", type=Path, default=RESULTS / "rollout.json")
    args = p.parse_args()

    runtime = resolve_runtime(args.device, args.dtype)
    print(f"runtime: {runtime.describe()}", flush=True)
    model, tokenizer = load_model(args.model, runtime)
    model = model.to(runtime.dtype)  # transformers runs in the same dtype as r1lite's rollout weights
    decoder = make_decoder(model, runtime.dtype)
    eos = stop_token_ids(tokenizer, model)
    task = tasks.load_task("arithmetic")
    items = task.split("test", max(args.batches), seed=0)
    texts = [render_prompt(tokenizer, *tasks.build_messages(item, task, "r1")) for item in items]
    all_prompts = encode_prompts(tokenizer, texts)
    # The roofline is measured before the runs and again after each batch, and the best figures
    # count: a slow spell of a shared machine during one measurement must not lower the limit.
    peak = peak_flops(runtime.dtype, runtime.device)
    bw = bandwidth(runtime.device)
    measured = []
    for batch in args.batches:
        prompts = all_prompts[:batch]
        context = statistics.mean(map(len, prompts)) + args.new_tokens / 2
        hf = ours = 0.0
        for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits both sides
            hf = max(hf, hf_generate(model, tokenizer, prompts, args.new_tokens, eos))
            ours = max(ours, r1lite_generate(decoder, tokenizer, prompts, args.new_tokens, eos))
        print(f"batch {batch:3d}: transformers {hf:7.1f} tok/s  r1lite {ours:7.1f} tok/s  ({ours / hf:.2f}x)", flush=True)
        measured.append((batch, context, hf, ours))
        peak = max(peak, peak_flops(runtime.dtype, runtime.device))
        bw = max(bw, bandwidth(runtime.device))
    print(f"peak {peak / 1e9:.0f} GFLOP/s ({runtime.dtype}), bandwidth {bw / 1e9:.1f} GB/s (best of {len(args.batches) + 1} measurements)", flush=True)

    rows = []
    for batch, context, hf, ours in measured:
        limit = decode_limit(model, batch, context, runtime.dtype, peak, bw)
        row = {"batch": batch, "transformers_tokens_per_s": hf, "r1lite_tokens_per_s": ours, "speedup": ours / hf,
               "roofline_tokens_per_s": limit["tokens_per_s"], "fraction_of_roofline": ours / limit["tokens_per_s"],
               "bound": limit["bound"], "mean_context": context}
        rows.append(row)
        print(f"batch {batch:3d}: roofline {limit['tokens_per_s']:7.1f} tok/s ({limit['bound']}-bound) -> "
              f"r1lite at {ours / limit['tokens_per_s']:.0%}", flush=True)

    result = {
        "benchmark": "rollout", "commit": git_commit(), "model": args.model, "dtype": str(runtime.dtype),
        "device": runtime.describe(), "new_tokens": args.new_tokens,
        "machine": machine(),
        "peak_flops": peak, "bandwidth_bytes_per_s": bw, "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
