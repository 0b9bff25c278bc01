"""Tokens/s of r1lite's generation loop against transformers ``generate``, and the roofline.

Same model (the embedded SmolLM2-135M-Instruct, or --model: gemma3-270m), same prompts (held-out arithmetic prompts in the
R1 format), exactly --new-tokens new tokens per sequence (EOS ignored: r1lite's ``ignore_eos``,
transformers' ``min_new_tokens``), sampling at temperature 1 with no top-k/top-p on both sides, at
batch 1, 16, 64, one row per precision of the weights:

- fp32: both sides in fp32;
- bf16: r1lite as a bf16 run decodes (the weights rounded to bf16; on a CPU with AVX-512 BF16 our
  kernels' bf16 products, on an AVX2 CPU our kernels' fp32 products of the rounded weights,
  elsewhere PyTorch in bf16) against transformers in bf16 — where bf16 is slow (no AVX-512
  BF16/AMX, ~1 GFLOP/s) transformers runs fp32 instead, and the row says so;
- int8 (``--dtypes int8``, CPUs with our kernels): r1lite as ``serve``/``chat --dtype int8`` decode
  (every product's weights as Q8_0 rows, fp32 activations and sums) against transformers in fp32.
  Its roofline counts the weights at 1.125 bytes each (an int8 value and a quarter of a 4-byte scale
  per 32; norms and biases are < 0.1%) and the fp32 peak.

The roofline comes from the same process: peak FLOP/s of a large matmul in the dtype, and memory
bandwidth of a >= 1 GiB multithreaded copy (bytes read + written), best of 5 each, measured before
the runs and after each batch, the best counting. A decode step at
batch B must move the weights and the KV cache once and do ~2·N·B FLOPs, so its limit is
``max(bytes / bandwidth, flops / peak)``; tokens/s limit = B / that.

Where a decode step's time goes, per batch: the vocabulary head (final norm and product), the
attention (r1lite's Gemma and torch-path decoders: every layer's, in torch) and the rest of the
body, timed on one step of r1lite's decoder after prefilling the batch's prompts (best of 5).

    python benchmarks/bench_rollout.py            # writes benchmarks/results/rollout-<cpu kind>.json
    python benchmarks/bench_rollout.py --model gemma3-270m   # rollout-gemma3-270m-<cpu kind>.json
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from common import RESULTS, add_allow_dirty, best_of, commit_fields, machine

from r1lite import tasks
from r1lite.engine import Request, Sampling, make_engine
from r1lite.models import left_pad, load_model, resolve_runtime
from r1lite.packaged import stop_token_ids
from r1lite.prompts import item_prompts


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


def decode_limit(model, batch: int, context: float, dtype: torch.dtype, peak: float, bw: float,
                 weight_size: float | None = None) -> dict:
    """Tokens/s a decode step at this batch and mean context cannot beat (``weight_size``: bytes per
    weight where it is not the dtype's, int8 rows' 1.125)."""
    cfg = model.config
    size = torch.tensor([], dtype=dtype).element_size()
    params = sum(p.numel() for p in model.parameters())
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    kv_bytes = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * context * batch * size
    bytes_per_step = params * (weight_size or size) + kv_bytes
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


def r1lite_generate(engine, prompts, new_tokens: int) -> float:
    sampling = Sampling(max_new_tokens=new_tokens, temperature=1.0, ignore_eos=True)
    t = time.perf_counter()
    out = engine.generate([Request(p, sampling, seed=i) for i, p in enumerate(prompts)], max_rows=len(prompts))
    seconds = time.perf_counter() - t
    assert all(len(o[0].token_ids) == new_tokens for o in out)
    return len(prompts) * new_tokens / seconds


def step_split(engine, prompts: list[list[int]], repeats: int = 5) -> dict | None:
    """Milliseconds of one decode step of r1lite's decoder at this batch (after prefilling
    ``prompts``), split into the vocabulary head, attention and the rest of the body; None for a
    decoder without a separate head (the transformers forward)."""
    decoder = engine.decoder
    if getattr(decoder, "head", None) is None:
        return None
    engine.clear()
    for p in prompts:
        engine.add(Request(p, Sampling(max_new_tokens=8)))
    engine._admit()
    b = engine.batch
    tokens = torch.zeros(len(prompts), 1, dtype=torch.long, device=engine.device)
    attention = [0.0]
    name = "_attend" if hasattr(decoder, "_attend") else "_attention"
    inner = getattr(decoder, name)
    fused = getattr(decoder, "_step", None) is not None  # Llama's one-call step: attention inside it

    def timed(*a, **k):
        t = time.perf_counter()
        out = inner(*a, **k)
        attention[0] += time.perf_counter() - t
        return out

    setattr(decoder, name, timed)
    try:
        best = (float("inf"), 0.0)
        for _ in range(repeats + 1):  # the first call warms up
            attention[0] = 0.0
            t = time.perf_counter()
            decoder.forward(b.cache, tokens, b.pos[:, None], b.col, b.valid, b.shared)
            best = min(best, (time.perf_counter() - t, attention[0]))
    finally:
        delattr(decoder, name)
    last = torch.randn(decoder.config.hidden_size, len(prompts), dtype=decoder.compute, device=engine.device)
    head = best_of(lambda: decoder.head(last, "rmsnorm", decoder.norm, decoder.eps, transposed=True), repeats)
    engine.clear()
    step, attend = best
    return {"step_ms": 1e3 * step, "head_ms": 1e3 * head, "head_share": head / step,
            "attention_ms": None if fused else 1e3 * attend, "rest_of_body_ms": 1e3 * (step - head - (0 if fused else attend))}


def compute_name(decoder) -> str:
    """The precision of the decoder's products: "bfloat16 products" (fp32 sums), or its compute dtype."""
    if getattr(decoder, "weights", None) == "int8":
        return "int8 weights, float32 products"
    if getattr(decoder, "bf16_products", False):
        return "bfloat16 products"
    return str(decoder.compute).removeprefix("torch.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per side and batch, interleaved; the best counts")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "int8"])
    p.add_argument("--model", default="default", help="default, gemma3-270m, or a directory (e.g. a random model of the "
                   "same shape)")
    p.add_argument("--out", type=Path, help="default: benchmarks/results/rollout-<cpu kind>.json (or -<gpu>.json); "
                   "another model than default: rollout-<model>-<cpu kind>.json")
    add_allow_dirty(p)
    args = p.parse_args()
    commit = commit_fields("bench_rollout", args.allow_dirty)

    from r1lite.models import cpu_bf16_flags, cpu_kind

    base = resolve_runtime(args.device, "fp32")
    model, tokenizer = load_model(args.model, base)
    eos = stop_token_ids(tokenizer, model)
    task = tasks.load_task("arithmetic")
    items = task.split("test", max(args.batches), seed=0)
    all_prompts = [p.ids for p in item_prompts(tokenizer, task, items, "r1")]
    fast_bf16 = base.device.type == "cuda" or bool(cpu_bf16_flags())
    result = {"benchmark": "rollout", **commit, "model": args.model, "new_tokens": args.new_tokens,
              "machine": machine(), "rows": []}
    for name in args.dtypes:
        dtype = torch.bfloat16 if name == "bf16" else torch.float32
        hf_dtype = dtype if fast_bf16 else torch.float32
        reference = model if hf_dtype == torch.float32 else copy.deepcopy(model).to(hf_dtype)
        engine = make_engine(model, tokenizer, dtype, eos, max(args.batches), int8=name == "int8")
        products = compute_name(engine.decoder)
        path = f"our kernels, {products}" if engine.decoder.lib is not None else f"PyTorch in {products}"
        print(f"{name}: r1lite on {name} weights ({path}), transformers in {hf_dtype}", flush=True)
        # The roofline is measured before the runs and again after each batch, and the best figures
        # count: a slow spell of a shared machine during one measurement must not lower the limit.
        peak, bw = peak_flops(dtype, base.device), bandwidth(base.device)
        measured = []
        for batch in args.batches:
            prompts = all_prompts[:batch]
            context = statistics.mean(map(len, prompts)) + args.new_tokens / 2
            hf = ours = 0.0
            for _ in range(args.repeats):  # interleaved, so a slow spell of the machine hits both sides
                hf = max(hf, hf_generate(reference, tokenizer, prompts, args.new_tokens, eos))
                ours = max(ours, r1lite_generate(engine, prompts, args.new_tokens))
            print(f"  batch {batch:3d}: transformers {hf:7.1f} tok/s  r1lite {ours:7.1f} tok/s  ({ours / hf:.2f}x)", flush=True)
            split = step_split(engine, prompts)
            if split is not None:
                attention = "in the fused step" if split["attention_ms"] is None else f"{split['attention_ms']:.1f} ms"
                print(f"             a decode step {split['step_ms']:.1f} ms: head {split['head_ms']:.1f} ms "
                      f"({split['head_share']:.0%}), attention {attention}, rest of the body {split['rest_of_body_ms']:.1f} ms",
                      flush=True)
            measured.append((batch, context, hf, ours, split))
            peak, bw = max(peak, peak_flops(dtype, base.device)), max(bw, bandwidth(base.device))
        print(f"  peak {peak / 1e9:.0f} GFLOP/s ({name}), bandwidth {bw / 1e9:.1f} GB/s", flush=True)
        rows = []
        for batch, context, hf, ours, split in measured:
            limit = decode_limit(model, batch, context, dtype, peak, bw, 1.125 if name == "int8" else None)
            rows.append({"batch": batch, "transformers_tokens_per_s": hf, "r1lite_tokens_per_s": ours, "speedup": ours / hf,
                         "roofline_tokens_per_s": limit["tokens_per_s"], "fraction_of_roofline": ours / limit["tokens_per_s"],
                         "bound": limit["bound"], "mean_context": context, "decode_step_split": split})
            print(f"  batch {batch:3d}: roofline {limit['tokens_per_s']:7.1f} tok/s ({limit['bound']}-bound) -> "
                  f"r1lite at {ours / limit['tokens_per_s']:.0%}", flush=True)
        result["rows"].append({"weights": name, "transformers_dtype": str(hf_dtype).removeprefix("torch."),
                               "r1lite_compute": products,
                               "peak_flops": peak, "bandwidth_bytes_per_s": bw, "results": rows})
    kind = cpu_kind() if base.device.type == "cpu" else torch.cuda.get_device_name().replace(" ", "-").lower()
    tag = "" if args.model == "default" else f"{Path(args.model).name}-"
    out = args.out or RESULTS / f"rollout-{tag}{kind}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
