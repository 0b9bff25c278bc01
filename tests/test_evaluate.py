"""Metrics: pass@k, maj@k, format rate and lengths, from rows."""

import pytest

from r1lite import tasks
from r1lite.evaluate import pass_at_k, score_row, summarize


def test_pass_at_k_matches_brute_force():
    """Every n, c and k up to 7, k > n included: for n < k the brute force draws all n samples
    (min(k, n) of them), which is the rule: 1 if any is correct, else 0."""
    from itertools import combinations

    for n in range(1, 8):
        for c in range(n + 1):
            correct = [1] * c + [0] * (n - c)
            for k in range(1, 8):
                subsets = list(combinations(correct, min(k, n)))
                assert pass_at_k(n, c, k) == pytest.approx(sum(any(s) for s in subsets) / len(subsets)), (n, c, k)


def test_items_with_fewer_samples_than_k_count_pass_at_n():
    """An item with 2 samples, none correct, must not score pass@4 = 1; it stays in the mean."""
    task = tasks.load_task("arithmetic")
    ok = "<think>x</think><answer>{}</answer>"
    rows = rows_for(task, {"full": (5, [ok.format(5), ok.format(4), ok.format(4), ok.format(4)]),
                           "short_wrong": (7, [ok.format(1), ok.format(2)]),
                           "short_right": (3, [ok.format(9), ok.format(3)])})
    s = summarize(rows, 4)
    assert s["pass@4"] == pytest.approx((1 + 0 + 1) / 3) and s["pass@2"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert s["items_below_k"] == 2


def rows_for(task, answers_by_item):
    rows = []
    for item_id, (gold, completions) in answers_by_item.items():
        item = tasks.Item(id=item_id, question="", answer=gold, meta={})
        for s, text in enumerate(completions):
            row = {"item_id": item_id, "sample": s, "finish": "stop", "completion_tokens": len(text.split()),
                   "think_tokens": None}
            row.update(score_row(text, item, task, "r1"))
            rows.append(row)
    return rows


def test_summary_pass_k_majority_and_format():
    task = tasks.load_task("arithmetic")
    ok = "<think>x</think><answer>{}</answer>"
    rows = rows_for(task, {
        "a": (5, [ok.format(5), ok.format(4), ok.format("5.0"), "no tags 5"]),  # majority 5.0 == 5: right
        "b": (7, [ok.format(1), ok.format(1), ok.format(7), ok.format(2)]),      # majority 1: wrong
    })
    s = summarize(rows, 4)
    assert s["n_items"] == 2 and s["samples"] == 4
    assert s["pass@1"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert s["pass@4"] == pytest.approx(1.0)
    assert s["maj@4"] == pytest.approx(0.5)
    assert s["format_rate"] == pytest.approx(7 / 8)
    assert s["completion_tokens_mean"] == pytest.approx(sum(r["completion_tokens"] for r in rows) / 8)


def test_items_with_unusable_gold_are_skipped_not_scored_zero():
    task = tasks.load_task("arithmetic")
    rows = rows_for(task, {"a": ("not a number", ["<think>x</think><answer>3</answer>"]),
                           "b": (3, ["<think>x</think><answer>3</answer>"])})
    s = summarize(rows, 1)
    assert s["skipped_items"] == 1 and s["pass@1"] == 1.0


def test_an_exception_in_the_users_verifier_fails_that_item_not_the_run(tmp_path, monkeypatch, capsys):
    import json
    import textwrap

    from r1lite.evaluate import score_file

    (tmp_path / "fragile_checks.py").write_text(textwrap.dedent('''
        def strict(response, answer):
            if response == "boom":
                raise ValueError("cannot read " + response)
            return float(response == answer)
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "q", "answer": "ok"}) + "\n")
    task = tasks.load_task(f"jsonl:{data}", {"verifier": "python:fragile_checks:strict"})
    completions = tmp_path / "c.jsonl"
    completions.write_text("".join(json.dumps({"id": str(i), "answer": {"verifier": "python:fragile_checks:strict",
                                                                      "gold": "ok"}, "completion": c}) + "\n"
                                   for i, c in enumerate(["ok", "boom", "boom", "no"])))
    summary = score_file(task, "plain", completions, tmp_path / "scored.jsonl")
    scored = [json.loads(line)["accuracy"] for line in (tmp_path / "scored.jsonl").read_text().splitlines()]
    assert scored == [1.0, 0.0, 0.0, 0.0] and summary["verifier_errors"] == 2
    err = capsys.readouterr().err
    assert err.count("raised ValueError: cannot read boom") == 1


def test_what_a_killed_eval_left_beside_its_output_is_removed_and_nothing_else(quick_cli, tmp_path):
    out = tmp_path / "scored.jsonl"
    stale, mine = tmp_path / ".scored.jsonl.x1y2.tmp", tmp_path / ".notes.tmp"
    stale.write_text("half a file")
    mine.write_text("the user's")
    r = quick_cli("eval", "--model", "tiny", "--task", "arithmetic", "--format", "plain", "--limit", "2",
                  "--max-new-tokens", "4", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.exists() and not stale.exists() and mine.read_text() == "the user's"
