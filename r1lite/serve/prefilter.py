"""A literal prefilter for the guard's patterns: strings one of which every match of a pattern
contains, so a text that holds none of them is not scanned at all.

Python's ``re`` tries each of a joined pattern's alternatives at every position of the text: the
default policy's 14 categories took ~8 ms to check a 200-character window, a check runs at every
sentence of every streamed answer, and ``re`` holds the GIL while it scans, so the engine thread
waited on it (py-spy on ``serve``, 16 clients: half the event loop's time). RE2 and Hyperscan
compute such prefilters, but neither takes the policy's lookaheads; here the parse tree of ``re``
itself gives them (:func:`factors`).

The prefilter applies to ASCII texts only, lowercased: a pattern compiled with ``re.I`` matches an
ASCII letter in either case and nothing else in an ASCII text, and a factor with a character that
``re.I`` folds onto an ASCII one (the Kelvin sign, the long s) is not used. A non-ASCII text is
scanned in full.
"""

from __future__ import annotations

import re

try:  # the parser of re itself: re._parser from Python 3.11, sre_parse before
    import re._constants as sre
    import re._parser as sre_parse
except ImportError:  # Python 3.10
    import sre_constants as sre  # type: ignore[no-redef]
    import sre_parse  # type: ignore[no-redef]

REPEATS = tuple(getattr(sre, name) for name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT") if hasattr(sre, name))

MIN_FACTOR = 2
"""Shorter literals are in almost every text: no use as a filter."""


def _folds_to_ascii(ch: str) -> bool:
    """Whether ``re.I`` matches this non-ASCII character against an ASCII one."""
    return any(re.fullmatch(re.escape(ch), chr(a), re.I) for a in range(128))


def _usable(literal: str) -> bool:
    """A literal (as the pattern spells it) whose lowercase an ASCII text holds wherever the
    pattern matches it: long enough, and none of its characters matched against an ASCII one."""
    return len(literal) >= MIN_FACTOR and not any(not c.isascii() and _folds_to_ascii(c) for c in literal)


def _required(items) -> set[str] | None:
    """Strings one of which every match of the parsed sequence ``items`` contains (as the pattern
    spells them), or None where nothing is required (an optional part, a character class, an
    assertion)."""
    options: list[set[str]] = []
    run = ""

    def close() -> None:
        nonlocal run
        if run:
            options.append({run})
        run = ""

    for op, av in items:
        if op is sre.LITERAL:
            run += chr(av)
            continue
        close()  # a literal run ends here: anything else may sit between its parts
        if op is sre.SUBPATTERN:
            need = _required(av[-1])
        elif op is sre.BRANCH:
            branches = [_required(b) for b in av[1]]
            need = None if any(b is None for b in branches) else set().union(*branches)
        elif op in REPEATS and av[0] >= 1:
            need = _required(av[2])
        else:
            need = None
        if need is not None:
            options.append(need)
    close()
    options = [o for o in options if all(_usable(s) for s in o)]
    if not options:
        return None
    return max(options, key=lambda o: (min(map(len, o)), -len(o)))  # the most selective


def factors(pattern: str, flags: int = re.I) -> frozenset[str] | None:
    """Lowercased strings one of which every match of ``pattern`` contains, or None where the
    pattern requires none (it is then always scanned).

    >>> sorted(factors(r"\\b(pipe|nail)\\s+bombs?\\b"))
    ['bomb']
    >>> sorted(factors(r"\\b(kill|murder)\\b.{0,20}\\bhim\\b"))
    ['kill', 'murder']
    >>> factors(r"\\d{3}-\\d{4}") is None
    True
    """
    need = _required(sre_parse.parse(pattern, flags))
    return None if need is None else frozenset(s.lower() for s in need)


class FactorIndex:
    """The factors of many patterns, to find at once which of them a text holds: each factor is
    looked for only where the text has its first two characters (a per-factor loop over the
    default policy's ~1,500 factors took ~1 ms a check; it was then most of the guard's time)."""

    def __init__(self, all_factors):
        self.by_start: dict[str, list[str]] = {}
        for f in sorted(set(all_factors)):
            self.by_start.setdefault(f[:2], []).append(f)

    def present(self, lowered: str) -> set[str]:
        """The factors ``lowered`` (an ASCII text, lowercased) holds."""
        starts = {lowered[i:i + 2] for i in range(len(lowered) - 1)}
        return {f for s in starts & self.by_start.keys() for f in self.by_start[s] if f in lowered}


class PatternSet:
    """Several patterns (a category's block or allow list): :meth:`search` says whether any of them
    matches a text. On an ASCII text only the patterns whose factors it holds are scanned, one by
    one (a text holds common factors, "write" or "find", of a few patterns, not of all); on any
    other text ``joined``, all of them as one pattern, is."""

    def __init__(self, patterns: list[re.Pattern], joined: re.Pattern):
        self.patterns = [(factors(p.pattern, p.flags), p) for p in patterns]
        self.joined = joined

    def factors(self) -> list[str]:
        return [f for need, _ in self.patterns if need is not None for f in need]

    def search(self, text: str, found: set[str] | None) -> bool:
        """``found``: the factors ``text`` holds (:meth:`FactorIndex.present`) where it is ASCII,
        else None (every pattern is scanned)."""
        if found is None:
            return self.joined.search(text) is not None
        return any((need is None or not need.isdisjoint(found)) and p.search(text) is not None for need, p in self.patterns)
