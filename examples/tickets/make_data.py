"""Write the tickets example's data: support tickets and the JSON a team extracts from them.

    python examples/tickets/make_data.py --out runs/tickets-data

writes, in ``--out``:

- ``tickets.jsonl``: ``jsonl:`` task rows (``question``, ``answer``: the gold object, ``verifier``:
  json_schema, ``schema``); ``--train`` + ``--held-out`` rows, split by r1lite's own held-out rule
  (the task option ``held_out=HELD_OUT_SHARE`` below puts exactly ``--held-out`` rows in the test split);
- ``gold_traces.jsonl``: ``--traces`` train rows as SFT traces in the R1 format (the run's cold
  start): the prompt r1lite builds for the row, a short thought naming the fields found, the gold
  JSON, compact as ``response_format`` writes it;
- ``schema.json``: the schema, for ``r1lite eval --response-format`` and for the app.

The tickets vary the way real ones do: several phrasings of each field, fields left out (null in
the gold), typos in the running text, two date formats, amounts written four ways, and numbers
that are not the order's (years as a customer, phone numbers, counts). Seeded: the same flags
write the same bytes.
"""

from __future__ import annotations

import argparse
import calendar
import json
import random
import sys
from pathlib import Path

from r1lite import prompts, tasks
from r1lite.files import write_json, write_jsonl

HELD_OUT_SHARE = 0.13
"""The task option held_out the recipe gives: a row is held out when r1lite's hash of its text is below it."""

CATEGORIES = ["billing", "shipping", "damaged_item", "account", "cancellation", "other"]
CURRENCIES = ["USD", "EUR", "GBP"]
FIELDS = ["customer", "product", "order_id", "order_date", "amount", "currency", "category", "urgency",
          "refund_requested"]

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": FIELDS,
    "properties": {
        "customer": {"type": ["string", "null"], "maxLength": 40},
        "product": {"type": ["string", "null"], "maxLength": 40},
        "order_id": {"type": ["string", "null"], "maxLength": 12},
        "order_date": {"type": ["string", "null"], "maxLength": 10},
        "amount": {"type": ["number", "null"], "minimum": 0, "maximum": 100000},
        "currency": {"enum": [*CURRENCIES, None]},
        "category": {"enum": CATEGORIES},
        "urgency": {"enum": ["low", "medium", "high"]},
        "refund_requested": {"type": "boolean"},
    },
}

INSTRUCTION = ("Extract the support ticket's fields as one JSON object with the keys customer, product, order_id, "
               "order_date (YYYY-MM-DD), amount, currency (USD, EUR or GBP), category (billing, shipping, "
               "damaged_item, account, cancellation or other), urgency (low, medium or high) and refund_requested "
               "(true or false); use null for a field the ticket does not give.")

FIRST = ["Maria", "James", "Aisha", "Chen", "Olga", "Liam", "Priya", "Noah", "Fatima", "Lucas", "Yuki", "Emma",
         "Diego", "Sara", "Tomasz", "Grace", "Omar", "Ingrid", "Kofi", "Elena"]
LAST = ["Lopez", "Smith", "Khan", "Wei", "Petrova", "Murphy", "Patel", "Johnson", "Haddad", "Martin", "Tanaka",
        "Brown", "Garcia", "Nilsson", "Nowak", "Okafor", "Rossi", "Dubois", "Mensah", "Schmidt"]
PRODUCTS = ["Aurora X2 headphones", "SmartKettle Pro", "TrailRunner 5 shoes", "PixelFrame 10", "Nimbus desk lamp",
            "Volt power bank", "Echo mini speaker", "Glide office chair", "Breeze fan 300", "Cirrus router",
            "Atlas backpack", "Zen yoga mat", "Orbit smartwatch", "Lumen e-reader", "Terra water bottle",
            "Quill pen set", "Summit tent 2P", "Polar cooler 20L"]

PROBLEMS = {
    "billing": ["I was charged twice for the {product}.", "There is a charge on my card for the {product} that I "
                "don't recognise.", "You billed me the full price for the {product} but it was on sale.",
                "My invoice for the {product} shows the wrong amount."],
    "shipping": ["My {product} still hasn't arrived.", "The tracking for my {product} has not moved in a week.",
                 "I received the wrong item instead of the {product}.", "The courier says the {product} was "
                 "delivered but nothing came."],
    "damaged_item": ["The {product} arrived broken.", "My {product} stopped working after a few days.",
                     "The {product} came with a cracked casing.", "The {product} I got is faulty and won't turn on."],
    "account": ["I can't log in to my account since the {product} order.", "I need to change the email on my "
                "account.", "The password reset link never reaches me.", "My account got locked after I ordered "
                "the {product}."],
    "cancellation": ["Please cancel my order for the {product}.", "I'd like to cancel the {product} before it ships.",
                     "I changed my mind about the {product}, please cancel it.", "Cancel the {product} order please."],
    "other": ["Do you sell gift cards for the {product}?", "Can I pick up the {product} in store instead?",
              "What is the warranty on the {product}?", "Is the {product} available in blue?"],
}
# the problem sentence without a product, for tickets that do not name one
NO_PRODUCT = {"the {product}": "my order", "my {product}": "my order", "The {product}": "The item",
              "My {product}": "My order"}

REFUND_YES = ["I want a refund.", "Please refund me.", "I'd like my money back.", "Can I get a refund?",
              "Refund the payment please."]
REFUND_NO = ["", "", "", "I don't want a refund, just a replacement.", "No refund needed, I just want it fixed."]
URGENT = ["This is urgent!", "I need this sorted ASAP.", "Please help immediately, it's a gift for tomorrow.",
          "URGENT please."]
LOW = ["No rush on this.", "Whenever you get a chance.", "Not urgent.", "Take your time."]
DISTRACTORS = ["I've been a customer for {n} years.", "I already called {n} times.", "My phone is 555-01{n:02d}.",
               "It's the {n}th time this happens.", "I ordered {n} other things last month and they were fine."]
GREETINGS = ["Hi,", "Hello,", "Dear support,", "Hey there,", "Good morning,", ""]
SIGNOFFS = ["Thanks", "Regards", "Best", "Cheers", "Thank you"]


def typo(word: str, rng: random.Random) -> str:
    """One typing slip in a word: two letters swapped, one dropped or one doubled."""
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(1, len(word) - 2)
    kind = rng.randrange(3)
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    return word[:i] + word[i + 1:] if kind == 1 else word[:i] + word[i] + word[i:]


def slips(text: str, rng: random.Random, rate: float) -> str:
    """The running text with typos in about ``rate`` of its words (the fields' values are put in after)."""
    return " ".join(typo(w, rng) if "{" not in w and rng.random() < rate else w for w in text.split(" "))


def money(amount: float, currency: str, rng: random.Random) -> str:
    symbol = {"USD": "$", "EUR": "€", "GBP": "£"}[currency]
    number = f"{amount:.2f}" if rng.random() < 0.7 or amount != int(amount) else f"{int(amount)}"
    return rng.choice([f"{symbol}{number}", f"{number} {currency}", f"{currency} {number}", f"{symbol}{number}"])


def date_text(year: int, month: int, day: int, rng: random.Random) -> str:
    if rng.random() < 0.5:
        return f"{year}-{month:02d}-{day:02d}"
    return f"{calendar.month_name[month]} {day}, {year}"


def ticket(rng: random.Random) -> tuple[str, dict]:
    """One ticket's text and its gold object."""
    category = rng.choice(CATEGORIES)
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}" if rng.random() < 0.75 else None
    product = rng.choice(PRODUCTS) if rng.random() < 0.85 else None
    order_id = f"{rng.choice('ABCDEFGHJKLMNPRSTUVWXYZ')}{rng.randrange(10000, 99999)}" if rng.random() < 0.8 else None
    dated = rng.random() < 0.7
    year, month, day = 2026, rng.randrange(1, 13), rng.randrange(1, 29)
    currency = rng.choice(CURRENCIES) if rng.random() < 0.7 else None
    amount = round(rng.choice([rng.randrange(5, 400), rng.randrange(500, 40000) / 100]), 2) if currency else None
    urgency = rng.choice(["low", "medium", "medium", "high"])
    refund = rng.random() < 0.4

    problem = rng.choice(PROBLEMS[category])
    if "{product}" not in problem:
        product = None
    if product is None:
        for pattern, plain in NO_PRODUCT.items():
            problem = problem.replace(pattern, plain)
    facts = []
    if order_id:
        facts.append(rng.choice(["The order number is {oid}.", "Order #{oid}.", "My order ID: {oid}.",
                                 "It was order {oid}.", "(ref {oid})"]))
    if dated:
        facts.append(rng.choice(["I placed it on {date}.", "Ordered on {date}.", "I bought it {date}.",
                                 "The order date was {date}."]))
    if currency:
        facts.append(rng.choice(["I paid {money}.", "It cost {money}.", "The total was {money}.",
                                 "That's {money} I'm out."]))
    rng.shuffle(facts)
    extras = [rng.choice(REFUND_YES) if refund else rng.choice(REFUND_NO),
              {"high": rng.choice(URGENT), "low": rng.choice(LOW), "medium": ""}[urgency]]
    if rng.random() < 0.6:
        extras.append(rng.choice(DISTRACTORS).format(n=rng.randrange(2, 12)))
    rng.shuffle(extras)
    intro = rng.choice(["This is {name}.", "My name is {name}.", "{name} here."]) if name and rng.random() < 0.5 else ""
    signoff = f"{rng.choice(SIGNOFFS)}, {{name}}" if name and not intro else rng.choice(SIGNOFFS)
    body = " ".join(p for p in [rng.choice(GREETINGS), intro, problem, *facts, *extras] if p)
    body = slips(body, rng, 0.04 if rng.random() < 0.5 else 0.0)
    text = f"{body}\n{signoff}".format(name=name, product=product, oid=order_id,
                                        date=date_text(year, month, day, rng) if dated else "",
                                        money=money(amount, currency, rng) if currency else "")
    gold = {"customer": name, "product": product, "order_id": order_id,
            "order_date": f"{year}-{month:02d}-{day:02d}" if dated else None, "amount": amount,
            "currency": currency, "category": category, "urgency": urgency, "refund_requested": refund}
    return text, gold


def thought(gold: dict) -> str:
    """The short thought of a gold trace: which fields the ticket gives and which it leaves out."""
    names = {"customer": "name", "product": "product", "order_id": "order id", "order_date": "date", "amount": "amount"}
    found = [names[k] for k in names if gold[k] is not None]
    missing = [names[k] for k in names if gold[k] is None]
    return (f"Found: {', '.join(found) or 'none'}. Missing: {', '.join(missing) or 'none'}. "
            f"Category {gold['category']}, urgency {gold['urgency']}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/tickets-data", help="folder for the three files")
    parser.add_argument("--train", type=int, default=2000, help="train rows")
    parser.add_argument("--held-out", type=int, default=300, help="held-out (test) rows")
    parser.add_argument("--traces", type=int, default=400,
                        help="gold traces for the SFT, from the first train rows (-1 = every train row; 400 keeps the "
                             "recipe near 30 minutes on 2 cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.train < 1 or args.held_out < 1 or args.traces < -1:
        print("make_data.py: --train and --held-out must be >= 1, --traces >= -1", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)
    rows: list[dict] = []
    seen: set[str] = set()
    left = {"train": args.train, "test": args.held_out}
    while any(left.values()):
        text, gold = ticket(rng)
        question = f"{INSTRUCTION}\n\nTicket:\n{text}"
        split = "test" if tasks.held_out_bucket(question) < HELD_OUT_SHARE else "train"
        if question in seen or not left[split]:
            continue
        seen.add(question)
        left[split] -= 1
        rows.append({"question": question, "answer": gold, "verifier": "json_schema", "schema": SCHEMA})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "tickets.jsonl", rows)
    write_json(out / "schema.json", SCHEMA)
    task = tasks.load_task(f"jsonl:{out / 'tickets.jsonl'}", {"held_out": HELD_OUT_SHARE})
    traces = []
    train = task.split("train")
    for item in train if args.traces < 0 else train[:args.traces]:
        messages, prefill = prompts.build_messages(item, task, "r1")
        answer = json.dumps(item.answer["gold"], separators=(",", ":"))  # compact, as response_format writes it
        traces.append({"messages": messages, "prefill": prefill,
                       "completion": f"<think>\n{thought(item.answer['gold'])}\n</think>\n<answer>{answer}</answer>",
                       "provenance": {"item_id": item.id, "source": "gold"}})
    write_jsonl(out / "gold_traces.jsonl", traces)
    print(f"{out}: {len(rows)} tickets ({args.train} train, {args.held_out} held out with held_out="
          f"{HELD_OUT_SHARE}), {len(traces)} gold traces, schema.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
