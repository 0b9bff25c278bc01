"""Decontamination: whether a question overlaps a benchmark's, by shared word 8-grams.

A distilled trace whose question shares a word 8-gram with an evaluation question would teach the
student that question's answer; open-r1 and s1 drop such rows, and so does ``r1lite distill``.
Words are lowercased runs of letters and digits, and each other non-space character (so ``12 +
34`` and ``12 - 34`` differ). A question shorter than 8 words compares whole: it overlaps a text
whose words contain its whole word sequence. Only the question text is compared, never the
rendered prompt (its instructions are the same for every item).
"""

from __future__ import annotations

import re
from pathlib import Path

from r1lite import tasks
from r1lite.errors import UsageError
from r1lite.files import read_jsonl

NGRAM = 8
"""Word n-grams compared (open-r1 and s1 use 8 too)."""


def words(text: str) -> list[str]:
    """Lowercased words: runs of letters and digits, and each other non-space character.

    >>> words("What is 12 + 34?")
    ['what', 'is', '12', '+', '34', '?']
    """
    return re.findall(r"\w+|[^\w\s]", text.lower())


def ngrams(ws: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)}


class Contamination:
    """Which reference texts a question overlaps (see the module docstring).

    >>> c = Contamination({"test": ["Natalia sold clips to 48 of her friends in April, and then some."]})
    >>> c.source_of("Tom sold clips to 48 of her friends in April too"), c.source_of("Natalia sold clips to 49 friends")
    ('test', None)
    >>> c.source_of("Sold clips to 48")  # shorter than 8 words: whole, inside the text
    'test'
    """

    def __init__(self, sources: dict[str, list[str]]):
        self.sources = {name: [words(t) for t in texts] for name, texts in sources.items()}
        self._index: dict[int, dict[tuple[str, ...], str]] = {}

    def index(self, n: int) -> dict[tuple[str, ...], str]:
        if n not in self._index:
            grams: dict[tuple[str, ...], str] = {}
            for name, texts in self.sources.items():
                for ws in texts:
                    for g in ngrams(ws, n):
                        grams.setdefault(g, name)
            self._index[n] = grams
        return self._index[n]

    def source_of(self, question: str) -> str | None:
        ws = words(question)
        if not ws:
            return None
        n = min(NGRAM, len(ws))
        index = self.index(n)
        return next((index[g] for g in ngrams(ws, n) if g in index), None)


def reference_texts(path: str) -> list[str]:
    """The question texts of a ``--decontaminate`` JSONL: ``question``, ``problem`` or ``prompt``
    (GSM8K, MATH, s1, r1lite's own), or SVAMP's ``Body`` + ``Question``."""
    texts = []
    for n, row in read_jsonl(path):
        key = next((k for k in ("question", "problem", "prompt") if isinstance(row.get(k), str)), None)
        if key is not None:
            texts.append(row[key])
        elif isinstance(row.get("Body"), str) and isinstance(row.get("Question"), str):
            texts.append(f"{row['Body']} {row['Question']}")
        else:
            raise UsageError(f"{path}:{n}: no 'question', 'problem' or 'prompt' text; decontamination compares question texts")
    return texts


def references(task: tasks.Task, paths: list[str]) -> tuple[Contamination, str]:
    """The reference texts a distilled question must not overlap, and how the held-out split was used.

    A file task's held-out split is compared by 8-grams; a generated task's held-out split is every
    question whose hash falls in it (too many to list), which the train split never holds."""
    sources = {f"{task.name} held-out split": [i.question for i in task.split("test")]} if task.rows is not None else {}
    held_out = "8-grams of its questions" if task.rows is not None else "hash split only (a generated task)"
    for path in paths:
        if not Path(path).exists():
            raise UsageError(f"--decontaminate {path}: no such file")
        sources[path] = reference_texts(path)
    return Contamination(sources), held_out
