"""Where a command's resident memory goes: any r1lite command, its resident set sampled as it runs.

A thread of the same process reads ``VmRSS`` every ``--every`` milliseconds and, each time the
resident set reaches a new high within its window of ``--window`` seconds, keeps the main thread's
stack (r1lite's frames, and torch.optim's and transformers' where they are on it). The highest point
of each window is printed with its stack, and every kept sample goes to ``--json``. Memory a kernel
allocates shows where its pages are first touched, which can be a later line than the allocation.
The sampler slows the command a little (its wall time is not the command's own).

    python benchmarks/profile_memory.py -- train --config recipes/demo.yaml --out /tmp/demo-profile
    python benchmarks/profile_memory.py --window 2 --json /tmp/eval.json -- eval --model default --limit 300
    python benchmarks/profile_memory.py --window 2 --thread r1lite-engine -- serve --port 8011
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from r1lite.meter.memory import status_mib  # noqa: E402

KEEP = ("r1lite", "torch/optim", "transformers")
"""Where the frames a stack keeps come from."""


def stack_of(thread_id: int, depth: int = 8) -> list[str]:
    """The innermost ``depth`` kept frames of a thread, innermost last, as ``file:line:function``."""
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return []
    frames = [f for f in traceback.extract_stack(frame) if any(k in f.filename for k in KEEP)]
    return [f"{f.filename.split('site-packages/')[-1].split('r1lite/', 1)[-1]}:{f.lineno}:{f.name}" for f in frames[-depth:]]


class Sampler(threading.Thread):
    """Samples the resident set; keeps (seconds, MiB, stack) at each new high of a window."""

    def __init__(self, every_s: float, window_s: float, thread: str = ""):
        super().__init__(daemon=True)
        self.every_s, self.window_s = every_s, window_s
        self.main = threading.get_ident()
        self.thread = thread
        self.samples: list[tuple[float, float, list[str]]] = []
        self.done = threading.Event()

    def run(self) -> None:
        start, window, high = time.perf_counter(), -1, 0.0
        while not self.done.is_set():
            rss = status_mib("VmRSS") or 0.0
            now = time.perf_counter() - start
            if int(now // self.window_s) != window:
                window, high = int(now // self.window_s), 0.0
            if rss > high:
                high = rss
                self.samples.append((round(now, 3), round(rss, 1), stack_of(self.watched())))
            time.sleep(self.every_s)

    def watched(self) -> int:
        """The thread whose stack a sample keeps: the one named ``thread`` while it runs, else the main one."""
        if self.thread:
            for t in threading.enumerate():
                if t.name == self.thread and t.ident is not None:
                    return t.ident
        return self.main


def highs(samples: list[tuple[float, float, list[str]]], window_s: float) -> list[tuple[float, float, list[str]]]:
    """The highest sample of each window, in time order.

    >>> highs([(0.1, 5.0, []), (0.5, 7.0, ["a"]), (1.2, 6.0, ["b"]), (1.9, 4.0, [])], 1.0)
    [(0.5, 7.0, ['a']), (1.2, 6.0, ['b'])]
    """
    best: dict[int, tuple[float, float, list[str]]] = {}
    for sample in samples:
        window = int(sample[0] // window_s)
        if window not in best or sample[1] > best[window][1]:
            best[window] = sample
    return [best[w] for w in sorted(best)]


def main() -> None:
    if "--" not in sys.argv:
        raise SystemExit("usage: profile_memory.py [--every MS] [--window S] [--json PATH] -- <r1lite command and flags>")
    split = sys.argv.index("--")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=float, default=2.0, help="milliseconds between samples")
    parser.add_argument("--window", type=float, default=20.0, help="seconds a printed line covers")
    parser.add_argument("--json", default="", help="write every kept sample here")
    parser.add_argument("--thread", default="", help="keep this thread's stacks (e.g. r1lite-engine, serve's engine)")
    args = parser.parse_args(sys.argv[1:split])
    from r1lite.cli import main as r1lite_main

    sampler = Sampler(args.every / 1000, args.window, args.thread)
    sampler.start()
    sys.argv = ["r1lite", *sys.argv[split + 1:]]
    code = 1
    try:
        code = r1lite_main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sampler.done.set()
        sampler.join()
    for seconds, mib, stack in highs(sampler.samples, args.window):
        where = " < ".join(f"{s.rsplit(':', 2)[2]}:{s.rsplit(':', 2)[1]}" for s in reversed(stack[-5:]))
        print(f"{seconds:8.1f} s {mib:8.0f} MiB  {where}")
    if args.json:
        Path(args.json).write_text(json.dumps(sampler.samples))
    raise SystemExit(code)


if __name__ == "__main__":
    main()
