"""Which task gives an R1-Zero run a signal? The base model's pass@k on candidate tasks.

R1-Zero learns only from the rewards its own samples earn: a task the base model never gets right
(in the format) gives every group the same reward and no gradient. For each candidate this runs
``r1lite eval`` on the base model under the R1-Zero template (``<think>`` pre-filled), sampling
``--samples`` completions per held-out item, and records pass@1 and pass@k, the strict format rate,
the accuracy among well-formed answers, how often the last number of a completion is right whatever
its format (what the base knows once a format reward has taught it the tags) and the share of items
with at least one right sample (the groups a GRPO step could learn from). Results: ``benchmarks/results/zero-tasks-<cpu kind>.json``,
finished candidates kept (a rerun measures only the missing ones).

    python benchmarks/zero_tasks.py                       # every candidate
    python benchmarks/zero_tasks.py --only letters3 aiw   # some
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import RESULTS, add_allow_dirty, commit_fields, machine  # noqa: E402
from r1lite import rewards, tasks  # noqa: E402
from r1lite.files import write_json  # noqa: E402

# name -> (task spec, task options): small answer spaces first (the base can land them by chance
# once it writes the format), then arithmetic where thinking could help.
CANDIDATES = {
    "sum3x1": ("gym:chain_sum", {"min_terms": 3, "max_terms": 3, "min_digits": 1, "max_digits": 1}),
    "letters3": ("gym:letter_counting", {"min_words": 3, "max_words": 5}),
    "aiw": ("gym:aiw", {}),
    "legs2": ("gym:leg_counting", {"min_animals": 1, "max_animals": 2, "min_instances": 1, "max_instances": 3}),
    "sequence": ("gym:number_sequence", {"min_terms": 4, "max_terms": 5, "min_value": 0, "max_value": 20,
                                         "max_complexity": 1}),
    "gcd2": ("gym:gcd", {"min_value": 1, "max_value": 30}),
}


def measure(name: str, args, out_dir: Path) -> dict:
    spec, options = CANDIDATES[name]
    rows = out_dir / f"{name}.jsonl"
    cmd = [sys.executable, "-m", "r1lite", "eval", "--model", args.model, "--task", spec, "--split", "test",
           "--limit", str(args.items), "--samples", str(args.samples), "--temperature", str(args.temperature),
           "--top-p", "1", "--max-new-tokens", str(args.max_new_tokens), "--seed", "0", "--out", str(rows)]
    for key, value in options.items():
        cmd += ["--task-options", f"{key}={value}"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t
    summary = json.loads(Path(f"{rows}.summary.json").read_text())
    samples = [json.loads(line) for line in rows.read_text().splitlines()]
    formed = [r for r in samples if r["format"]]
    task = tasks.load_task(spec, options)
    # what the base knows once it writes the format: the last number of any completion, checked
    anywhere = [bool((n := rewards.last_number(r["completion"])) is not None and task.check(n, r["answer"]))
                for r in samples]
    items: dict[str, list[float]] = {}
    for r in samples:
        items.setdefault(r["item_id"], []).append(r["accuracy"] or 0.0)
    k = args.samples
    return {"task": spec, "options": options, "items": summary["n_items"], "samples": k,
            "pass@1": summary["pass@1"], f"pass@{k}": summary[f"pass@{k}"],
            "format_rate": summary["format_rate"],
            "accuracy_when_formed": (sum(r["accuracy"] or 0.0 for r in formed) / len(formed)) if formed else None,
            "last_number_right": sum(anywhere) / len(anywhere),
            "items_with_a_right_sample": sum(any(v > 0 for v in vs) for vs in items.values()) / max(len(items), 1),
            "completion_tokens_mean": summary["completion_tokens_mean"], "seconds": round(seconds, 1),
            "example": next((r["completion"][:300] for r in formed if r["accuracy"]), None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--only", nargs="*", choices=sorted(CANDIDATES), help="candidates to measure (default: all)")
    parser.add_argument("--items", type=int, default=12)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    add_allow_dirty(parser)
    args = parser.parse_args()
    info = machine()
    path = RESULTS / f"zero-tasks-{info['cpu_kind']}.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    result.update(commit_fields("zero_tasks.py", args.allow_dirty))
    result.update({"machine": info, "model": args.model, "template": "r1_zero", "max_new_tokens": args.max_new_tokens})
    rows = result.setdefault("rows", {})
    if "temperature" in result:  # a file from before rows kept their own temperature
        temperature = result.pop("temperature")
        for row in rows.values():
            row.setdefault("temperature", temperature)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or list(CANDIDATES):
            key = name if args.temperature == 1 else f"{name}@t{args.temperature:g}"  # a row per temperature
            if key in rows and rows[key]["samples"] == args.samples and rows[key]["items"] == args.items:
                continue
            rows[key] = {**measure(name, args, Path(tmp)), "temperature": args.temperature}
            row = rows[key]
            print(f"{key:14s} pass@1 {row['pass@1']:.3f}  pass@{args.samples} {row[f'pass@{args.samples}']:.3f}  "
                  f"format {row['format_rate']:.3f}  right-when-formed {row['accuracy_when_formed']}  "
                  f"last-number right {row['last_number_right']:.3f}  "
                  f"{row['seconds']:.0f} s", flush=True)
            write_json(path, result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
