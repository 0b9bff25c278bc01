"""Ask a served tickets model for one ticket's fields, the way the app would: the prompt the run was
trained on, ``response_format`` with the schema, and the JSON back.

    r1lite serve --model runs/tickets --port 8000 &
    python examples/tickets/ask.py --base-url http://127.0.0.1:8000/v1 \\
        "Hi, my Orbit smartwatch arrived broken. Order #K20817, I paid $129.00. I want a refund. Thanks, Ana Silva"

prints the extracted object (the model thinks first, in ``reasoning_content``; ``--show-thinking``
prints it too). The answer is held to ``schema.json`` by the server, so it always parses.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from r1lite import prompts, tasks

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from make_data import INSTRUCTION, SCHEMA  # noqa: E402  (the example's own files, not a package)


def messages(ticket: str) -> list[dict]:
    """The chat turn a run of recipe.yaml was trained on, for one ticket's text."""
    task = tasks.Task("tickets", lambda response, gold: None, False, "Give the answer as JSON.")
    item = tasks.make_item(f"{INSTRUCTION}\n\nTicket:\n{ticket.strip()}", None, {})
    return prompts.build_messages(item, task, "r1")[0]


def main(argv: list[str] | None = None) -> int:
    from openai import OpenAI

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ticket", help="the ticket's text ('-' = read it from stdin)")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default="", help="served model id ('' = the one the server lists)")
    parser.add_argument("--api-key-env", default="", help="environment variable holding the server's key")
    parser.add_argument("--max-thinking-tokens", type=int, default=64)
    parser.add_argument("--show-thinking", action="store_true")
    args = parser.parse_args(argv)
    ticket = sys.stdin.read() if args.ticket == "-" else args.ticket
    client = OpenAI(base_url=args.base_url, api_key=os.environ.get(args.api_key_env, "") if args.api_key_env else "none",
                    max_retries=0)
    model = args.model or client.models.list().data[0].id
    reply = client.chat.completions.create(
        model=model, messages=messages(ticket), max_tokens=256, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "ticket", "schema": SCHEMA, "strict": True}},
        extra_body={"max_thinking_tokens": args.max_thinking_tokens})
    choice = reply.choices[0]
    if args.show_thinking:
        print(getattr(choice.message, "reasoning_content", None) or "", file=sys.stderr)
    if choice.finish_reason != "stop":
        print(f"ask.py: the answer ended with finish_reason {choice.finish_reason!r} "
              f"({choice.message.refusal or 'raise max_tokens'})", file=sys.stderr)
        return 1
    print(json.dumps(json.loads(choice.message.content), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
