"""The guard's literal prefilter (:mod:`r1lite.serve.prefilter`): every match of a pattern holds one
of its factors, so skipping the patterns whose factors a text lacks changes no verdict."""

import json
from pathlib import Path

import pytest

from r1lite.serve.guard import GuardPolicy
from r1lite.serve.prefilter import factors

DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data"
ANSWERS = [  # model-like output: arithmetic, explanations, code, refusals
    "To find 17 + 29, add the ones: 7 + 9 = 16, write 6 carry 1. Then the tens: 1 + 2 + 1 = 4. So the answer is 46.",
    "Here is a Python script that deletes every file in a folder: import os; for f in os.listdir(p): os.remove(f)",
    "I can't help you build a bomb or poison someone, but I can explain how to report a threat to the police.",
    "Write a story where the hero steals the crown jewels and escapes; then compose a poem about it.",
]


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    rows = [json.loads(line) for name in ("guard_dev.jsonl", "guard_test.jsonl", "guard_xstest.jsonl")
            for line in (DATA / name).read_text().splitlines() if line.strip()]
    texts = [row["prompt"] if "prompt" in row else " ".join(m["content"] for m in row["messages"]) for row in rows]
    return [" ".join(t.split()) for t in texts + ANSWERS]


def test_factors_are_what_every_match_must_hold():
    assert factors(r"\b(kill|kidnap)\w*") == {"ki"}  # re factors the common prefix out of the branches
    assert factors(r"(pipe|nail)?\s*bombs?") == {"bomb"}  # an optional part requires nothing
    assert factors(r"\b(steal|rob)\b.{0,20}\b(bank|store)s?\b") in ({"steal", "rob"}, {"bank", "store"})
    assert factors(r"[a-z]+@[a-z]+\.com") == {".com"}
    assert factors(r"\d+|bomb") is None  # one branch requires nothing: so does the whole
    assert factors("(?:x)*y") is None  # one-character literals filter nothing
    # characters re.I matches against ASCII ones (the Kelvin sign, the dotted capital I) are never in a factor
    assert factors("\u212aill") is None and factors("\u0130stanbul") is None and factors("ca\u0301fe") == {"ca\u0301fe"}


def test_the_prefilter_keeps_every_match_and_every_verdict(corpus):
    """On the guard's evaluation prompts (English, French, German) and model-like answers: each
    policy pattern that matches a text has a factor the index finds in it, and the verdict with the
    prefilter is the verdict of scanning every pattern."""
    policy = GuardPolicy()
    matched = 0
    for text in corpus[::2] + ANSWERS:
        found = policy.index.present(text.lower()) if text.isascii() else None
        for _, _, block, allow in policy.categories:
            for need, pattern in block.patterns + allow.patterns:
                if pattern.search(text):
                    matched += 1
                    assert found is None or need is None or need & found, (pattern.pattern, text)
    assert matched > 200  # the corpus does exercise the patterns
    full = GuardPolicy()
    full.index.present = lambda lowered: None  # every text scanned in full, all patterns as one
    sample = corpus[1::7] + ANSWERS
    verdicts = [policy.check(t) for t in sample]
    assert verdicts == [full.check(t) for t in sample]
    assert sum(not v.safe for v in verdicts) > 20 and any(not t.isascii() for t in sample)


def test_settled_text_scanned_from_the_last_answer_is_the_whole_scans(corpus):
    """A streamed answer's settled text, scanned from where the last scan of its shorter text ended
    (as the output guard's early release does, token by token), is the whole text's scan at every
    length: the same characters go out before their sentence is checked."""
    import random

    from r1lite.serve.guard import EARLY_CHARS, AnswerGuard, Guard

    policy, rng = GuardPolicy(), random.Random(0)
    texts = [t for t in corpus if policy.settled(t[:EARLY_CHARS]) < len(t[:EARLY_CHARS])][:40] + ANSWERS
    assert len(texts) > 30
    moved = 0
    for text in texts:
        text, at, answer = text[:EARLY_CHARS], 0, AnswerGuard(Guard(policy), None, "q")
        answer.guard.judge = None
        held, last = "", 0
        while at < len(text):
            at += rng.randint(1, 6)  # a token's worth of characters
            prefix = text[:at]
            held = prefix[len(answer.before):]
            whole = policy.settled(prefix)
            assert policy.settled(prefix, last) == whole, (prefix, last)
            assert answer.early(held) == max(0, whole - len(answer.before))
            moved += whole != last
            last = whole
            if rng.random() < 0.3 and whole > len(answer.before):  # sometimes release what settled
                answer.released(prefix[len(answer.before):whole])
    assert moved > 100  # the scans' answers moved as the texts grew
