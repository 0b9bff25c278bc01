"""Strict and per-field accuracy of ``r1lite eval --out`` files on the tickets task.

    python examples/tickets/score.py BEFORE.jsonl AFTER.jsonl [--json table.json]

One column per file: valid JSON held to the schema, strict exact match (every field right and the
schema kept: what ``json_schema`` scores), the mean of the fields, and each field's accuracy.
A completion without an ``<answer>`` block, or with one that is not a JSON object, gets every
field wrong.
"""

from __future__ import annotations

import argparse
import sys

from r1lite import rewards
from r1lite.errors import UsageError
from r1lite.files import read_jsonl, write_json


def scores(path: str) -> dict:
    """The column of one eval file."""
    rows = [row for _, row in read_jsonl(path, required=("answer", "completion"))]
    if not rows:
        raise UsageError(f"{path}: no rows")
    fields = list(rows[0]["answer"]["gold"])
    hits = dict.fromkeys(fields, 0)
    valid = strict = 0
    for row in rows:
        gold, response = row["answer"], rewards.r1_answer(row["completion"]) or ""
        valid += rewards.json_schema_match(response, gold["schema"]) == 1.0
        strict += rewards.json_schema_match(response, gold["schema"], gold["gold"]) == 1.0
        for field, right in (rewards.json_fields(response, gold["gold"]) or {}).items():
            hits[field] += right
    n = len(rows)
    return {"items": n, "valid": valid / n, "strict": strict / n,
            "field_mean": sum(hits.values()) / (n * len(fields)), "fields": {f: hits[f] / n for f in fields}}


def table(columns: dict[str, dict]) -> str:
    """A Markdown table, one column per file."""
    names = list(columns)
    lines = ["| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    first = columns[names[0]]
    rows = [("items", lambda c: str(c["items"])), ("valid JSON (schema)", lambda c: f"{c['valid']:.1%}"),
            ("**strict exact match**", lambda c: f"**{c['strict']:.1%}**"),
            ("**fields right (mean)**", lambda c: f"**{c['field_mean']:.1%}**")]
    rows += [(f"`{f}`", lambda c, f=f: f"{c['fields'][f]:.1%}") for f in first["fields"]]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(columns[name]) for name in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="r1lite eval --out files (tickets task)")
    parser.add_argument("--json", default="", help="also write the columns here")
    args = parser.parse_args(argv)
    try:
        columns = {path: scores(path) for path in args.files}
    except UsageError as e:
        print(f"score.py: {e}", file=sys.stderr)
        return 2
    print(table(columns))
    if args.json:
        write_json(args.json, columns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
