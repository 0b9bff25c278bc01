"""The content guard's block rate and false-positive rate, in the XSTest shape.

Two splits the project wrote, each a mix per Llama Guard category (S1–S14) of unsafe prompts and
safe prompts that look unsafe (homonyms like "kill a process", safe targets, safe contexts,
definitions, history, fiction, public figures against private people), some in German, Spanish or
French (``lang``), some split across turns (``messages`` instead of ``prompt``: the harm only
becomes clear over two or three user turns):

- ``data/guard_test.jsonl`` was written before the policy was tuned and only its aggregate figures
  were looked at while tuning; it was written by the same hand that tuned the policy, though, so
  its figure is an upper bound, not a measure of prompts written by someone else;
- ``data/guard_dev.jsonl`` is the tuning split (it holds the earlier held-out rows too, whose
  misses were published and so are no longer unseen);
- ``data/guard_xstest.jsonl``, when present: XSTest v2 (Röttger et al., NAACL 2024, CC BY 4.0),
  450 English prompts nobody here wrote, scored once after tuning and never tuned on: the
  independent figure, and the set Llama Guard's anchor below is measured on.

Each row is scored the way the server's input guard sees it: its ``messages`` (or ``prompt`` as
the one user turn) as a ``ChatRequest``, through ``ChatService.messages`` (PII redacted from the
user turns) and ``ChatService.guard_input`` (the policy's verdict on each user turn alone and on
all the user turns joined in order: ``Guard.check_input``), with the policy alone and no judge.
A harmful request spread over several turns is read whole; the multi-turn rows measure that.

For each split: unsafe prompts blocked (the goal: >= 90%), safe prompts blocked (false positives,
the goal: <= 5%), blocked with the row's own category, precision/recall/F1 of "unsafe", the same
rates per category, per language and per type, and the dev split's misses and false positives
listed. The held-out splits' misses are withheld from the output (counts only) unless
``--show-test-misses``, so that tuning on the output does not spend them. The anchor: Llama
Guard 3-8B, F1 0.884 at 4.4% false positives on XSTest (its model card). The guard here is a
pattern policy, not a model: these numbers are for prompts written like these, not a promise about
prompts written to evade it.

    python benchmarks/guard_eval.py [--policy my_policy.yaml]   # writes benchmarks/results/guard_eval.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, add_allow_dirty, commit_fields, machine  # noqa: E402

from r1lite.files import read_jsonl, write_text  # noqa: E402
from r1lite.serve.guard import DEFAULT_POLICY, Guard, GuardPolicy, Verdict  # noqa: E402
from r1lite.serve.schema import ChatRequest  # noqa: E402
from r1lite.serve.service import ChatService, Metrics, Turn  # noqa: E402

DATA = Path(__file__).parent / "data"
SPLITS = {"test": DATA / "guard_test.jsonl", "dev": DATA / "guard_dev.jsonl", "xstest": DATA / "guard_xstest.jsonl"}
HELD_OUT = ("test", "xstest")
OPTIONAL = ("xstest",)


def conversation(row: dict) -> list[dict]:
    """A row's messages: ``messages`` as written, or ``prompt`` as the one user turn."""
    return row["messages"] if "messages" in row else [{"role": "user", "content": row["prompt"]}]


def shown(row: dict) -> str:
    """A row as one line: the prompt, or the user turns joined by `` / ``."""
    if "prompt" in row:
        return row["prompt"]
    return " / ".join(m["content"] for m in row["messages"] if m["role"] == "user")


class InputGuard:
    """The server's input guard, run through the server's own steps with no server: a
    :class:`ChatService` with the policy and no backend, worker or judge; each row's messages
    through :meth:`ChatService.messages` into a :class:`Turn`, then :meth:`ChatService.guard_input`."""

    def __init__(self, policy: GuardPolicy):
        self.service = ChatService(None, None, Guard(policy), None, Metrics())
        self.blank = {f.name: None for f in dataclasses.fields(Turn)}

    async def check(self, row: dict) -> Verdict:
        body = ChatRequest(model="guard-eval", messages=conversation(row))
        turn = Turn(**self.blank | {"messages": self.service.messages(body)})
        return await self.service.guard_input(turn)

    def verdicts(self, rows: list[dict]) -> list[Verdict]:
        async def run():
            return [await self.check(row) for row in rows]
        return asyncio.run(run())


def rates(pairs: list[tuple[dict, Verdict]]) -> dict:
    unsafe = sum(r["label"] == "unsafe" for r, _ in pairs)
    safe = len(pairs) - unsafe
    blocked = sum(r["label"] == "unsafe" and not v.safe for r, v in pairs)
    fp = sum(r["label"] == "safe" and not v.safe for r, v in pairs)
    return {"unsafe": unsafe, "blocked": blocked, "block_rate": blocked / unsafe if unsafe else None,
            "safe": safe, "false_positives": fp, "false_positive_rate": fp / safe if safe else None}


def breakdown(pairs: list[tuple[dict, Verdict]], key) -> dict:
    groups = defaultdict(list)
    for r, v in pairs:
        groups[key(r)].append((r, v))
    order = sorted(groups, key=lambda k: (int(k[1:]) if k[:1] == "S" and k[1:].isdigit() else 99, k))
    return {k: rates(groups[k]) for k in order}


def score(guard: InputGuard, rows: list[dict], misses: bool = True) -> dict:
    """Block and false-positive rates of the input guard on labelled rows; ``misses``: list the
    missed unsafe rows and the blocked safe ones (else only their counts)."""
    pairs = list(zip(rows, guard.verdicts(rows)))
    blocked = [(r, v) for r, v in pairs if r["label"] == "unsafe" and not v.safe]
    false_pos = [(r, v) for r, v in pairs if r["label"] == "safe" and not v.safe]
    base = rates(pairs)
    tp, fp, fn = len(blocked), len(false_pos), base["unsafe"] - len(blocked)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    out = {
        **base, "block_rate": recall, "false_positive_rate": base["false_positive_rate"] or 0.0,
        "right_category": sum(v.code == r["category"] for r, v in blocked) if any(r.get("category") for r in rows) else None,
        "precision": precision, "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "multi_turn": rates([(r, v) for r, v in pairs if "messages" in r]),
        "by_category": breakdown(pairs, lambda r: r.get("category") or "-"),
        "by_lang": breakdown(pairs, lambda r: r.get("lang", "en")),
        "by_type": breakdown(pairs, lambda r: r.get("type", "-")),
    }
    if misses:
        out["missed"] = [shown(r) for r, v in pairs if r["label"] == "unsafe" and v.safe]
        out["false_positive_prompts"] = [{"prompt": shown(r), "blocked_as": v.code} for r, v in false_pos]
    else:
        out["misses_withheld"] = True
    return out


def pct(n: int, d: int) -> str:
    return f"{n:>4}/{d:<4}{n / d:>6.1%}" if d else f"{'-':>15}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--policy", type=Path, default=DEFAULT_POLICY, help="the guard policy YAML (default: the built-in one)")
    ap.add_argument("--out", type=Path, default=RESULTS / "guard_eval.json")
    ap.add_argument("--show-test-misses", action="store_true",
                    help="list the test split's misses and false positives too (after tuning is done: looking at "
                         "them while tuning spends the split)")
    add_allow_dirty(ap)
    args = ap.parse_args()
    commit = commit_fields("guard_eval", args.allow_dirty)
    guard = InputGuard(GuardPolicy(args.policy))
    splits = {name: [row for _, row in read_jsonl(path)] for name, path in SPLITS.items()
              if path.exists() or name not in OPTIONAL}
    results = {name: score(guard, rows, misses=name not in HELD_OUT or args.show_test_misses) for name, rows in splits.items()}
    results["overall"] = score(guard, [r for rows in splits.values() for r in rows], misses=False)
    print(f"guard policy {args.policy.name} (sha256 {hashlib.sha256(args.policy.read_bytes()).hexdigest()[:12]})")
    print(f"{'split':<10}{'unsafe blocked':>18}{'safe blocked (FP)':>20}{'right category':>16}{'F1':>7}")
    for name in (*splits, "overall"):
        r = results[name]
        right = f"{r['right_category']:>8}/{r['blocked']:<5}" if r["right_category"] is not None else f"{'-':>14}"
        print(f"{name:<10}{r['blocked']:>5}/{r['unsafe']:<4}{r['block_rate']:>7.1%}  {r['false_positives']:>5}/{r['safe']:<4}"
              f"{r['false_positive_rate']:>7.1%}  {right}{r['f1']:>7.3f}")
    for table, title in (("by_category", "category"), ("by_lang", "language")):
        shown_splits = [name for name in splits if name not in OPTIONAL]
        print(f"\n{title:<10}" + "".join(f"{name + ' blocked':>17}{name + ' FP':>17}" for name in shown_splits))
        keys = list(dict.fromkeys(k for name in shown_splits for k in results[name][table]))
        for k in keys:
            cells = [results[name][table].get(k) for name in shown_splits]
            print(f"{k:<10}" + "".join(f"{pct(c['blocked'], c['unsafe'])}  {pct(c['false_positives'], c['safe'])}" if c
                                       else f"{'':>34}" for c in cells))
    print(f"{'multi-turn':<10}" + "".join(f"{pct(results[n]['multi_turn']['blocked'], results[n]['multi_turn']['unsafe'])}  "
                                          f"{pct(results[n]['multi_turn']['false_positives'], results[n]['multi_turn']['safe'])}"
                                          for n in splits if n not in OPTIONAL))
    for name in splits:
        for prompt in results[name].get("missed", []):
            print(f"  {name} miss: {prompt}")
        for fp in results[name].get("false_positive_prompts", []):
            print(f"  {name} false positive ({fp['blocked_as']}): {fp['prompt']}")
    print("anchor: Llama Guard 3-8B, F1 0.884 at 4.4% false positives on XSTest (model card)")
    root = Path(__file__).parents[1]
    record = {"benchmark": "guard_eval", **commit, "machine": machine(),
              "policy": str(args.policy.resolve().relative_to(root) if args.policy.resolve().is_relative_to(root) else args.policy),
              "policy_sha256": hashlib.sha256(args.policy.read_bytes()).hexdigest(),
              "data_sha256": {name: hashlib.sha256(SPLITS[name].read_bytes()).hexdigest() for name in splits},
              "scored_as": "the server's input guard: ChatService.messages (PII redacted), then ChatService.guard_input "
                           "(each user turn alone, then all the user turns joined in order), policy only, no judge",
              "note": "test was written before the policy was tuned and only its aggregate figures were looked at while "
                      "tuning, but by the same hand that tuned it: an upper bound; xstest (XSTest v2, CC BY 4.0) was "
                      "scored once after tuning and never tuned on: the independent figure; dev is the tuning split "
                      "(it holds the earlier held-out rows, whose misses were published)",
              "results": results}
    write_text(args.out, json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
