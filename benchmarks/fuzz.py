"""A fuzzing campaign: the suite's hypothesis properties (tests/test_properties.py), run for minutes
instead of 150 examples each.

The properties: the verifiers never raise and compare integers exactly; any chunking of a stream
splits reasoning from answer as the whole text does; any bytes in a JSONL data file or a YAML recipe
are rows or one UsageError naming the file. Each round is one pytest run with a fresh seed and
``R1LITE_FUZZ_EXAMPLES`` examples a property; rounds go on until the time is spent. A failing
round keeps its falsifying example in the result (hypothesis prints it), and the campaign goes on.

    .venv/bin/python benchmarks/fuzz.py --minutes 10

Writes ``benchmarks/results/fuzz-<cpu kind>.json``: examples tried and failures per property.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from common import RESULTS, add_allow_dirty, commit_fields, machine

ROOT = Path(__file__).resolve().parent.parent
PROPERTIES = "tests/test_properties.py"
TEST = re.compile(r"^(tests/\S+::\S+):$")
COUNTS = re.compile(r"(\d+) passing(?: examples?)?, (\d+) failing")


def round_stats(output: str) -> dict[str, dict[str, int]]:
    """``{test: {"passing": n, "failing": n}}`` from pytest's ``--hypothesis-show-statistics``.

    >>> round_stats("tests/t.py::test_a:\\n  - during generate phase (1.0 seconds):\\n"
    ...             "    - 40 passing, 1 failing, and 0 invalid test cases\\n")
    {'tests/t.py::test_a': {'passing': 40, 'failing': 1}}
    """
    stats: dict[str, dict[str, int]] = {}
    test = None
    for line in output.splitlines():
        m = TEST.match(line.strip())
        if m:
            test = m.group(1)
            stats.setdefault(test, {"passing": 0, "failing": 0})
            continue
        m = COUNTS.search(line)
        if m and test is not None:
            stats[test]["passing"] += int(m.group(1))
            stats[test]["failing"] += int(m.group(2))
    return stats


def falsifying(output: str) -> str:
    """The lines that say what failed and on which example (hypothesis' ``Falsifying example``)."""
    lines = output.splitlines()
    keep = [i for i, line in enumerate(lines) if line.startswith(("Falsifying", "E ", "FAILED"))]
    return "\n".join(lines[i] for i in keep[:40])


def run_round(seed: int, examples: int, seconds: float) -> tuple[dict, str | None]:
    """One pytest run of the properties; (its statistics, the falsifying text when it failed)."""
    env = {**os.environ, "R1LITE_FUZZ_EXAMPLES": str(examples)}
    cmd = [sys.executable, "-m", "pytest", PROPERTIES, "-q", "-p", "no:cacheprovider", "-k", "not deeply_nested",
           f"--hypothesis-seed={seed}", "--hypothesis-show-statistics"]
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return round_stats(out), None
    out = done.stdout + done.stderr
    return round_stats(out), (falsifying(out) or out[-2000:]) if done.returncode else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long the campaign runs")
    ap.add_argument("--examples", type=int, default=4000, help="examples a property in each round")
    ap.add_argument("--first-seed", type=int, default=1, help="seed of the first round (each round adds 1)")
    ap.add_argument("--out", type=Path, default=None, help="where the result goes (default benchmarks/results/fuzz-<cpu kind>.json)")
    add_allow_dirty(ap)
    args = ap.parse_args()
    fields = commit_fields("fuzz.py", args.allow_dirty)
    box = machine()
    deadline = time.monotonic() + args.minutes * 60
    totals: dict[str, dict[str, int]] = defaultdict(lambda: {"examples": 0, "failing": 0})
    failures, seeds = [], []
    seed = args.first_seed
    while (left := deadline - time.monotonic()) > 20:
        stats, failed = run_round(seed, args.examples, left)
        seeds.append(seed)
        for test, s in stats.items():
            totals[test]["examples"] += s["passing"] + s["failing"]
            totals[test]["failing"] += s["failing"]
        if failed:
            failures.append({"seed": seed, "falsifying": failed})
        print(f"round {len(seeds)} (seed {seed}): {sum(s['passing'] for s in stats.values())} examples"
              f"{', FAILED' if failed else ''}", flush=True)
        seed += 1
    result = {"benchmark": "fuzz", **fields, "machine": box, "minutes": args.minutes, "rounds": len(seeds),
              "seeds": [seeds[0], seeds[-1]] if seeds else [], "examples_per_round": args.examples,
              "properties": dict(totals), "failures": failures}
    out = args.out or RESULTS / f"fuzz-{box['cpu_kind']}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    for test, t in totals.items():
        print(f"{test.split('::')[1]:<70} {t['examples']:>9} examples  {t['failing']} failing")
    print(f"{len(failures)} failing round(s); wrote {out}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
