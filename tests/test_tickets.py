"""examples/tickets: the data generator, the partial-credit reward, and the pipeline from data to
a scored eval, on the tiny model with a handful of rows (it must run, not learn)."""

import importlib.util
import json
import re
from pathlib import Path

import jsonschema
import pytest

from r1lite import rewards, tasks

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tickets"


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"tickets_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("tickets")
    assert load("make_data").main(["--out", str(out), "--train", "40", "--held-out", "8", "--seed", "3"]) == 0
    return out


def test_rows_split_exactly_and_the_gold_keeps_the_schema(data):
    make_data = load("make_data")
    spec = f"jsonl:{data / 'tickets.jsonl'}"
    task = tasks.load_task(spec, {"held_out": make_data.HELD_OUT_SHARE})
    assert (len(task.split("train")), len(task.split("test"))) == (40, 8)
    schema = json.loads((data / "schema.json").read_text())
    jsonschema.validators.validator_for(schema).check_schema(schema)
    for item in task.split("all"):
        gold = item.answer["gold"]
        jsonschema.validate(gold, schema)
        text = item.question.split("Ticket:\n", 1)[1]
        for key in ("customer", "product", "order_id"):  # what the gold names, the ticket says
            assert gold[key] is None or gold[key] in text, (key, gold[key], text)
        assert (gold["amount"] is None) == (gold["currency"] is None)
        if gold["order_date"]:
            year, month, day = map(int, gold["order_date"].split("-"))
            assert gold["order_date"] in text or re.search(rf"\b{day}, {year}\b", text)


def test_the_generator_is_seeded(data, tmp_path):
    load("make_data").main(["--out", str(tmp_path), "--train", "40", "--held-out", "8", "--seed", "3"])
    for name in ("tickets.jsonl", "gold_traces.jsonl", "schema.json"):
        assert (tmp_path / name).read_bytes() == (data / name).read_bytes()
    load("make_data").main(["--out", str(tmp_path), "--train", "40", "--held-out", "8", "--seed", "4"])
    assert (tmp_path / "tickets.jsonl").read_bytes() != (data / "tickets.jsonl").read_bytes()


def test_gold_traces_score_full_marks_strict_and_partial(data):
    make_data = load("make_data")
    spec = f"jsonl:{data / 'tickets.jsonl'}"
    strict = tasks.load_task(spec, {"held_out": make_data.HELD_OUT_SHARE})
    partial = tasks.load_task(spec, {"held_out": make_data.HELD_OUT_SHARE, "partial_credit": True})
    items = {item.id: item for item in strict.split("train")}
    traces = [json.loads(line) for line in (data / "gold_traces.jsonl").read_text().splitlines()]
    assert len(traces) == 40
    for trace in traces:
        item = items[trace["provenance"]["item_id"]]
        answer = rewards.r1_answer(trace["completion"])
        assert rewards.r1_format(trace["completion"]) == 1.0
        assert strict.check(answer, item.answer) == 1.0 and partial.check(answer, item.answer) == 1.0
        wrong = json.loads(answer) | {"urgency": "none", "customer": "Nobody"}
        assert strict.check(json.dumps(wrong), item.answer) == 0.0
        assert partial.check(json.dumps(wrong), item.answer) == pytest.approx(7 / 9)


def test_the_pipeline_runs_on_the_tiny_model(data, tmp_path, cli, free_port, monkeypatch, capsys):
    run = tmp_path / "run"
    train = cli("train", "--config", EXAMPLE / "recipe.yaml", "--model", "tiny", "--task",
                f"jsonl:{data / 'tickets.jsonl'}", "--cold-start-data", data / "gold_traces.jsonl",
                "--cold-start-epochs", "1", "--max-steps", "1", "--batch-size", "4", "--group-size", "2",
                "--micro-batch-size", "4", "--rollout-batch-size", "4", "--max-new-tokens", "8",
                "--eval-items", "4", "--dtype", "fp32", "--no-preflight", "--out", run)
    assert train.returncode == 0, train.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["cold_start"]["traces"] == 40 and summary["steps"] == 1
    evaluated = cli("eval", "--model", run, "--task", f"jsonl:{data / 'tickets.jsonl'}", "--task-options",
                    "held_out=0.13", "--limit", "-1", "--max-new-tokens", "24", "--max-thinking-tokens", "8",
                    "--response-format", data / "schema.json", "--dtype", "fp32", "--out", tmp_path / "after.jsonl")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    from tests.test_serve import KEY, Server, serve_args

    server = Server(serve_args(run, max_tokens_cap=256, max_new_tokens=256), free_port())
    try:
        monkeypatch.setenv("TICKETS_KEY", KEY)
        code = load("ask").main(["--base-url", f"{server.url}/v1", "--api-key-env", "TICKETS_KEY", "--max-thinking-tokens",
                                 "8", "Hi, my Orbit smartwatch arrived broken. Order #K20817. Thanks, Ana Silva"])
    finally:
        server.close()
    assert code == 0
    jsonschema.validate(json.loads(capsys.readouterr().out), json.loads((data / "schema.json").read_text()))
    table = tmp_path / "table.json"
    files = [run / "eval_before.jsonl", run / "eval_after_sft.jsonl", run / "eval_after.jsonl", tmp_path / "after.jsonl"]
    assert load("score").main([*map(str, files), "--json", str(table)]) == 0
    columns = json.loads(table.read_text())
    assert [c["items"] for c in columns.values()] == [4, 4, 4, 8]
    assert set(next(iter(columns.values()))["fields"]) == set(load("make_data").FIELDS)


def test_score_counts_fields_and_strict(tmp_path):
    score = load("score")
    schema = {"type": "object", "additionalProperties": False, "required": ["a", "b"],
              "properties": {"a": {"type": "integer"}, "b": {"type": ["string", "null"]}}}
    rows = [("<think>x</think><answer>{\"a\": 1, \"b\": null}</answer>", {"a": 1, "b": None}),
            ("<think>x</think><answer>{\"a\": 2, \"b\": null}</answer>", {"a": 1, "b": None}),
            ("<think>x</think><answer>{\"a\": 1, \"b\": null, \"c\": 0}</answer>", {"a": 1, "b": None}),
            ("no answer", {"a": 1, "b": "z"})]
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps({"completion": c, "answer": {"verifier": "json_schema", "gold": g,
                                                                     "schema": schema}}) + "\n" for c, g in rows))
    column = score.scores(str(path))
    assert column["strict"] == 0.25 and column["valid"] == 0.5
    assert column["fields"] == {"a": 0.5, "b": 0.75} and column["field_mean"] == 0.625


def test_partial_credit_refuses_rows_without_an_object(tmp_path, quick_cli):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"question": "q", "answer": {"a": 1}, "verifier": "json"}) + "\n"
                    + json.dumps({"question": "r", "answer": "7"}) + "\n")
    result = quick_cli("eval", "--model", "tiny", "--task", f"jsonl:{path}", "--task-options", "partial_credit=true")
    assert result.returncode == 2
    assert f"{path}:2: partial_credit scores the fields of a JSON object" in result.stderr
    assert "Traceback" not in result.stderr
