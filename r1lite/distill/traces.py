"""Traces files: reading prompt/completion pairs, and the dataset card beside a traces file: ``<stem>.card.md`` for people, ``<stem>.card.json`` for
programs (``r1lite distill`` writes both), and the one line that names a dataset's teacher and
terms wherever the traces are used (``r1lite sft``, a run's cold start).
"""

from __future__ import annotations

import json
from pathlib import Path

from r1lite.errors import UsageError
from r1lite.files import read_json, read_jsonl

STAGES = ("length", "unclosed_thinking", "incorrect", "duplicate")
"""Why an answer was dropped, in the order the filters run."""


def sibling(out: Path, suffix: str) -> Path:
    """``traces.jsonl`` → ``traces<suffix>`` (``.dropped.jsonl``, ``.card.md``, ``.card.json``)."""
    return out.with_name(out.name[:-len(".jsonl")] + suffix)


def card_markdown(card: dict) -> str:
    """The card as a page a person reads."""
    t, c = card["teacher"], card["counts"]
    url = f" at {t['url']}" if t["url"] else ""
    lines = [
        f"# Dataset card: {card['traces']}", "",
        f"Verified reasoning traces from **{t['model']}** ({t['kind']}{url}), written by r1lite {card['r1lite_version']} "
        f"on {card['written']}.", "",
        f"**Teacher terms / licence:** {t['terms'] or 'not recorded (set --teacher-terms)'}", "",
        f"Task `{card['task']}` ({card['split']} split), format `{card['format']}`, {card['samples_per_prompt']} "
        f"sample(s) per prompt; sampling {json.dumps(card['sampling'])}.", "",
        "| stage | count |", "|---|---:|",
        f"| prompts selected | {c['prompts_selected']} |",
        f"| prompts decontaminated (not asked) | {c['prompts_contaminated']} |",
        f"| prompts asked | {c['prompts_asked']} |",
        f"| requests | {c['requests']} |",
        f"| failed after retries | {c['failed']} |",
        f"| answered | {c['answered']} |",
        *(f"| dropped: {s.replace('_', ' ')} | {c[s]} |" for s in STAGES),
        f"| **kept** | **{c['kept']}** ({card['acceptance_rate']:.1%} of answered) |", "",
        f"Decontamination: word {card['decontamination']['ngram']}-grams against the held-out split "
        f"({card['decontamination']['held_out_split']}) and {len(card['decontamination']['files'])} file(s)"
        + (": " + ", ".join(f"{k} {v}" for k, v in c["contaminated_by_source"].items()) if c["contaminated_by_source"] else "")
        + ".", "",
        f"Tokens: {card['tokens']['prompt']:,} prompt, {card['tokens']['completion']:,} completion "
        f"({card['tokens']['reasoning']:,} reasoning where reported); kept traces {card['tokens']['kept_completion']:,}.",
        f"Thinking came in: {', '.join(f'{k} {v}' for k, v in card['reasoning_fields'].items()) or 'no kept trace'}.", "",
        "Cost: " + (f"${card['cost']['usd']:.4f} ({card['cost']['note']})" if card["cost"]["usd"] is not None
                    else card["cost"]["note"]) + ".",
    ]
    if card["compute"]:
        lines.append(f"Local teacher compute: {card['compute']['flops']:.3g} FLOPs in {card['compute']['seconds']:.1f} s "
                     f"({card['compute']['note']}).")
    lines += ["", f"Lacks: {card['lacks']}."]
    if card["failures"]["per_prompt"]:
        lines += ["", "| prompt | samples | error | attempts |", "|---|---|---|---:|"]
        lines += [f"| {pid} | {', '.join(map(str, f['samples']))} | {f['kind']}: {f['error']} | {f['attempts']} |"
                  for pid, f in card["failures"]["per_prompt"].items()]
    return "\n".join(lines) + "\n"


def card_notice(data: str | Path) -> str | None:
    """One line naming the teacher and its terms, for a JSONL that ``r1lite distill`` wrote (its
    card beside it); None for other data."""
    data = Path(data)
    card_file = sibling(data, ".card.json") if data.name.endswith(".jsonl") else None
    if card_file is None or not card_file.exists():
        return None
    card = read_json(card_file, "it is the dataset card r1lite distill wrote; delete it or rerun distill")
    t = card["teacher"]
    return (f"traces from {t['model']} ({t['kind']}{' at ' + t['url'] if t['url'] else ''}); "
            f"teacher terms: {t['terms'] or 'not recorded'}; {card['counts']['kept']} kept of "
            f"{card['counts']['answered']} answers (card: {card_file})")


def read_pairs(path: str) -> list[tuple[list[dict], str, str]]:
    """(messages, prefill, completion) per JSONL row: ``messages`` (chat) or ``prompt`` (one user
    turn), optional ``prefill``, and ``completion``."""
    rows = []
    for n, row in read_jsonl(path, required=("completion",)):
        if "messages" in row:
            messages = row["messages"]
        elif "prompt" in row:
            messages = [{"role": "user", "content": row["prompt"]}]
        else:
            raise UsageError(f"{path}:{n}: missing key 'prompt' (or chat 'messages'); every row needs one")
        if not isinstance(row["completion"], str) or not row["completion"]:
            raise UsageError(f"{path}:{n}: 'completion' must be a non-empty string")
        rows.append((messages, row.get("prefill", ""), row["completion"]))
    if not rows:
        raise UsageError(f"{path}: no rows")
    return rows
