"""int8 decode weights (``serve``/``chat --dtype int8``) against fp32 on r1lite's PyTorch engine:
what the quantization costs in answers, and what it saves in memory.

For --model (a run directory: its task and format; or default): greedy-token agreement with fp32
on --prompts held-out prompts, first 32 tokens (as ``bench_edge.py`` measures the GGUF exports);
held-out accuracy of both on --eval-items items (greedy, 48 new tokens, the run's format); and, in
a fresh process each, the resident memory after loading and the process's peak (VmHWM). Speed is
``bench_rollout.py --dtypes fp32 int8`` (the engine) and ``bench_serve.py`` (``r1lite:int8``).

    python benchmarks/bench_int8.py --model runs/demo-...   # writes benchmarks/results/int8-<cpu kind>.json

Run it on a committed tree: the results carry the bare commit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bench_edge import accuracy, greedy, held_out
from common import RESULTS, add_allow_dirty, commit_fields, machine

HERE = Path(__file__).resolve().parent


def memory(model: str, dtype: str) -> dict:
    """In a fresh process: MiB resident after ``open_model`` and the peak while loading."""
    from r1lite.edge.backends import open_model
    from r1lite.meter.memory import status_mib

    backend = open_model(model, "cpu", dtype)
    assert backend.engine is not None
    return {"resident_mib": status_mib("VmRSS"), "load_peak_mib": status_mib("VmHWM")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="default", help="a run directory (its task and format), or default")
    p.add_argument("--prompts", type=int, default=50, help="held-out prompts for greedy agreement (first 32 tokens)")
    p.add_argument("--eval-items", type=int, default=300, help="held-out items for accuracy")
    p.add_argument("--memory", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path)
    add_allow_dirty(p)
    args = p.parse_args()
    if args.memory:
        print(json.dumps(memory(args.model, args.memory)))
        return
    commit = commit_fields("bench_int8", args.allow_dirty)

    from r1lite.edge.backends import open_model
    from r1lite.edge.chat_format import prompt_format
    from r1lite.edge.export import load_source

    src = load_source(args.model)
    task, fmt, prefill, items, questions = held_out(src, args.prompts, args.eval_items)
    rows = {}
    reference = None
    for dtype in ("fp32", "int8"):
        backend = open_model(args.model, "cpu", dtype)
        if not src.config:  # a plain model: the R1 prompt format, applied by r1lite
            backend.fmt = prompt_format(task, fmt, bool(prefill))
        tokens = greedy(backend, questions, 32)
        reference = reference or tokens
        row = {"greedy_32_identical": sum(a == b for a, b in zip(tokens, reference)) / len(reference),
               "greedy_token_agreement": sum(x == y for a, b in zip(tokens, reference) for x, y in zip(a, b))
               / sum(map(len, reference)),
               "accuracy": accuracy(backend, task, items[:args.eval_items], fmt, prefill, 48)}
        del backend
        r = subprocess.run([sys.executable, __file__, "--model", args.model, "--memory", dtype], capture_output=True,
                           text=True, check=True, cwd=HERE.parent)
        row.update(json.loads(r.stdout.strip().splitlines()[-1]))
        rows[dtype] = row
        print(f"{dtype}: identical {row['greedy_32_identical']:.0%}  tokens {row['greedy_token_agreement']:.1%}  "
              f"accuracy {row['accuracy']:.1%}  resident {row['resident_mib']:.0f} MiB (load peak {row['load_peak_mib']:.0f})",
              flush=True)
    result = {"benchmark": "int8", **commit, "machine": machine(), "model": args.model, "task": task.name, "format": fmt,
              "prefill": prefill, "prompts": args.prompts, "eval_items": args.eval_items, "rows": rows}
    out = args.out or RESULTS / f"int8-{result['machine']['cpu_kind']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
