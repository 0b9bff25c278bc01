"""The GPU check's ``speed`` and ``memory`` sections.

``speed``, for the SmolLM2-135M and Qwen2.5-0.5B shapes (random weights) in the run's dtype:

- rollout tokens/s of r1lite's engine against transformers ``generate`` at each batch, exactly
  ``new_tokens`` per sequence, sampling at temperature 1 (``bench_rollout.py``'s two timers, one
  timed run per side after a short warm-up of both);
- a train step (forward, backward, clip + AdamW) on one rollout of the real trainer
  (``profile_train_step.py``'s phases, median of three after one warm-up): its tokens/s, and its
  model FLOPs (:func:`r1lite.train.policy.pass_flops`, as the meter counts them) per second as a
  share of the peak of a large matmul in the same dtype, measured in the same run.

``memory``, on a GPU only: the largest rollout batch of the Qwen2.5-0.5B shape at 512 new tokens
that runs, found by doubling and then bisecting. The engine allocates a prefill's KV cache for
every new token at once, so a batch whose prefill and first decode steps run has its peak behind
it; each trial runs exactly those.
"""

from __future__ import annotations

import copy
import gc
import statistics
from collections.abc import Callable

import torch
from gpu_check_models import QWEN25, SMOLLM2

from r1lite import tasks
from r1lite.engine import Request, Sampling, make_engine
from r1lite.models import head_dim
from r1lite.packaged import stop_token_ids
from r1lite.prompts import item_prompts

SPEED_SHAPES = (SMOLLM2, QWEN25)
MEMORY_SHAPE = QWEN25
MEMORY_NEW_TOKENS = 512


def task_prompts(tokenizer, count: int) -> list[list[int]]:
    """Held-out arithmetic prompts in the R1 format, as ``bench_rollout.py`` draws them."""
    task = tasks.load_task("arithmetic")
    return [p.ids for p in item_prompts(tokenizer, task, task.split("test", count, seed=0), "r1")]


def run_speed(record: dict, ctx) -> str | None:
    from bench_rollout import hf_generate, peak_flops, r1lite_generate

    sizes, dtype, device = ctx.sizes, ctx.runtime.dtype, ctx.device
    peak = peak_flops(dtype, device, sizes.peak_matmul)
    record["peak"] = {"dtype": str(dtype).removeprefix("torch."), "matmul": f"{sizes.peak_matmul}^3",
                      "flops_per_s": peak}
    record["new_tokens"], record["shapes"] = sizes.speed_new_tokens, {}
    if ctx.tiny:
        record["note"] = "tiny dry run: two-layer models, small batches and few tokens; the figures prove the code, not the speed"
    prompts = task_prompts(ctx.tokenizer, max(sizes.speed_batches))
    ctx.save()
    for name in SPEED_SHAPES:
        shape = record["shapes"][name] = {"rollout": []}
        model = ctx.model(name)
        eos = stop_token_ids(ctx.tokenizer, model)
        reference = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
        engine = make_engine(model, ctx.tokenizer, dtype, eos, max(sizes.speed_batches))
        hf_generate(reference, ctx.tokenizer, prompts[:2], 4, eos)  # warm-up: kernels chosen, caches allocated
        r1lite_generate(engine, prompts[:2], 4)
        for batch in sizes.speed_batches:
            if ctx.left() < ctx.cap() / 4:
                shape["rollout"].append({"batch": batch, "skipped": "the section's time cap is near"})
                continue
            hf = hf_generate(reference, ctx.tokenizer, prompts[:batch], sizes.speed_new_tokens, eos)
            ours = r1lite_generate(engine, prompts[:batch], sizes.speed_new_tokens)
            shape["rollout"].append({"batch": batch, "transformers_tokens_per_s": hf, "r1lite_tokens_per_s": ours,
                                     "speedup": ours / hf})
            ctx.save()
        del reference, engine
        free(device)
        if ctx.left() < ctx.cap() / 4:
            shape["train_step"] = {"skipped": "the section's time cap is near"}
            continue
        shape["train_step"] = train_step(ctx, name, peak)
        ctx.save()
    return None


def train_step(ctx, name: str, peak: float) -> dict:
    from profile_train_step import phases

    from r1lite.config import build
    from r1lite.train.config import GRPOConfig
    from r1lite.train.trainer import Trainer

    s = ctx.sizes
    cfg = build(GRPOConfig, {"model": str(ctx.saved(name)), "task": "arithmetic", "format": "plain:2",
                             "batch_size": s.train_batch, "group_size": s.train_group, "micro_batch_size": s.train_batch,
                             "max_new_tokens": s.train_new_tokens, "beta": 0.0, "mu": 1, "lr": 1e-6, "eval_items": 0,
                             "save_every": 0, "max_steps": 1, "device": ctx.device.type,
                             "out": str(ctx.tmp / f"speed-{name}")})
    trainer = Trainer(cfg)
    trainer.setup()
    groups, _ = trainer.rollout()
    runs = [phases(trainer, groups) for _ in range(4)][1:]  # the first warms up
    median = {k: statistics.median(r[k] for r in runs) for k in ("forward", "backward", "optimizer")}
    seconds = sum(median.values())
    tokens, flops = runs[0]["tokens"], runs[0]["flops"]
    result = {"completions": s.train_batch, "max_new_tokens": s.train_new_tokens, "tokens": tokens,
              "runtime": trainer.runtime.describe(), "median_seconds": median, "tokens_per_s": tokens / seconds,
              "model_flops": flops, "achieved_flops_per_s": flops / seconds, "mfu": flops / seconds / peak}
    del trainer, groups
    free(ctx.device)
    return result


def run_memory(record: dict, ctx) -> str | None:
    if ctx.device.type != "cuda":
        return ("on a CPU an allocation that does not fit is not refused: the machine swaps or the kernel ends the "
                "process, so the largest batch cannot be probed safely; it runs on a GPU only")
    ctx.keep_only([MEMORY_SHAPE])
    model = ctx.model(MEMORY_SHAPE)
    dtype, tokenizer = ctx.runtime.dtype, ctx.tokenizer
    engine = make_engine(model, tokenizer, dtype, stop_token_ids(tokenizer, model), 1)
    prompts = task_prompts(tokenizer, 64)
    sampling = Sampling(max_new_tokens=MEMORY_NEW_TOKENS, temperature=1.0, ignore_eos=True)
    peaks: dict[int, int] = {}

    def fits(rows: int) -> bool:
        """Prefill ``rows`` prompts and run three decode steps; False when the GPU runs out of memory."""
        engine.clear()
        engine.max_rows = rows
        free(ctx.device)
        torch.cuda.reset_peak_memory_stats()
        try:
            for i in range(rows):
                engine.add(Request(prompts[i % len(prompts)], sampling, seed=i))
            for _ in range(4):
                engine.step()
            if engine.failed:  # a prefill's error stays with its requests (the engine goes on)
                raise next(iter(engine.failed.values()))
            torch.cuda.synchronize()
            peaks[rows] = torch.cuda.max_memory_allocated()
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            engine.clear()

    cfg = model.config
    record.update({"shape": MEMORY_SHAPE, "new_tokens": MEMORY_NEW_TOKENS, "dtype": str(dtype).removeprefix("torch."),
                   "gpu_memory_bytes": torch.cuda.get_device_properties(ctx.device).total_memory,
                   "kv_cache_bytes_per_row": 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim(cfg)
                   * (max(map(len, prompts)) + MEMORY_NEW_TOKENS) * torch.tensor([], dtype=dtype).element_size()})
    search = largest_batch(fits, 256, 1 << 16, lambda: ctx.left() - ctx.cap() / 6)
    record.update(search)
    record["peak_bytes_at_largest"] = peaks.get(search["largest"])
    ctx.expect(record, "a_batch_fits", search["largest"] is not None)
    return None


def largest_batch(fits: Callable[[int], bool], start: int, limit: int, time_left: Callable[[], float]) -> dict:
    """The largest batch ``fits`` accepts: doubling from ``start`` until one fails (or ``limit``),
    then bisecting to within 1/32 of it, while ``time_left() > 0``.

    >>> found = largest_batch(lambda rows: rows <= 1000, 64, 1 << 16, lambda: 1.0)
    >>> found["largest"], found["first_failing"]
    (992, 1008)
    """
    trials: list[list] = []
    best = failed = None
    rows = start
    while rows <= limit and time_left() > 0:
        ok = fits(rows)
        trials.append([rows, ok])
        if not ok:
            failed = rows
            break
        best, rows = rows, rows * 2
    while best is not None and failed is not None and failed - best > max(1, best // 32) and time_left() > 0:
        mid = (best + failed) // 2
        ok = fits(mid)
        trials.append([mid, ok])
        best, failed = (mid, failed) if ok else (best, mid)
    return {"largest": best, "first_failing": failed, "trials": trials,
            "resolution": None if best is None or failed is None else failed - best}


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
