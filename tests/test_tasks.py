"""Tasks: deterministic, disjoint splits; loaders and their error messages; prompts and scoring."""

import json
import textwrap

import pytest

from r1lite.errors import UsageError
from r1lite.prompts import score
from r1lite.tasks import held_out_bucket, load_task


def r1(answer) -> str:
    """A well-formed r1 completion whose answer is ``answer``."""
    return f"<think>I worked it out.</think>\n<answer>{answer}</answer><|im_end|>"


def write_jsonl(path, rows) -> str:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return str(path)


# ------------------------------------------------------------------------------ splits


def test_arithmetic_default_is_two_digit_addition_enumerated():
    task = load_task("arithmetic")
    train, test = task.split("train"), task.split("test")
    assert len(train) + len(test) == len(task.split("all")) == 90 * 90
    assert {i.id for i in train}.isdisjoint({i.id for i in test})
    assert 0.08 < len(test) / 8100 < 0.12
    item = task.split("train", 1, seed=3)[0]
    a, b = item.meta["a"], item.meta["b"]
    assert item.question == f"What is {a} + {b}?" and item.answer == a + b and 10 <= a <= 99
    assert task.numeric and score(r1(a + b), item, task, "r1")["accuracy"] == 1.0


def test_splits_are_deterministic_and_seed_picks_problems():
    for spec, options in [("arithmetic", {}), ("arithmetic", {"digits": 4, "ops": "+-*"}), ("countdown", {})]:
        task = load_task(spec, options)
        first, again = task.split("train", 50, seed=7), task.split("train", 50, seed=7)
        assert [i.id for i in first] == [i.id for i in again]
        assert [i.id for i in first] != [i.id for i in task.split("train", 50, seed=8)]
        assert len({i.id for i in first}) == 50  # unique within the split


@pytest.mark.parametrize("spec, options", [("arithmetic", {"digits": 3, "ops": "+*"}), ("countdown", {"count": 3})])
def test_train_and_test_never_overlap(spec, options):
    task = load_task(spec, options)
    train = {i.id for seed in (0, 1) for i in task.split("train", 2000, seed=seed)}
    test = {i.id for seed in (0, 1) for i in task.split("test", 300, seed=seed)}
    assert train.isdisjoint(test)
    for item in task.split("test", 300, seed=5):
        assert held_out_bucket(item.question) < 0.1  # held-out membership ignores the seed


def test_held_out_option_and_sizes():
    task = load_task("arithmetic", {"digits": 1, "held_out": 0.5})
    assert 30 < len(task.split("test")) < 70
    with pytest.raises(UsageError, match=r"test split has \d+ items; asked for 1000"):
        task.split("test", 1000)
    with pytest.raises(UsageError, match="generated"):
        load_task("countdown").split("train")
    with pytest.raises(UsageError, match="held_out"):
        load_task("arithmetic", {"held_out": 1.5})
    with pytest.raises(UsageError, match="unknown split"):
        task.split("validation")
    with pytest.raises(UsageError, match="empty"):
        load_task("countdown", {"held_out": 0}).split("test", 5)


def test_arithmetic_options():
    task = load_task("arithmetic", {"ops": "*", "digits_a": 1, "digits_b": 2})
    items = task.split("all")
    assert len(items) == 10 * 90
    assert all(i.meta["a"] < 10 <= i.meta["b"] and i.answer == i.meta["a"] * i.meta["b"] for i in items)
    minus = load_task("arithmetic", {"ops": "-"}).split("train", 20)
    assert all(" - " in i.question and i.answer == i.meta["a"] - i.meta["b"] for i in minus)
    for bad, message in [({"ops": "/"}, "ops must be"), ({"digits": 0}, "at least 1"), ({"digits_a": 0}, "at least 1"),
                         ({"colour": "red"}, "unknown option"), ({"digits": "two"}, "digits='two' should be a int"),
                         ({"held_out": "10%"}, "should be a float")]:
        with pytest.raises(UsageError, match=message):
            load_task("arithmetic", bad)


def test_countdown_items_are_solvable():
    task = load_task("countdown", {"count": 4, "max_number": 50})
    for item in task.split("train", 200, seed=1):
        numbers, target = item.answer["numbers"], item.answer["target"]
        assert len(numbers) == 4 and all(1 <= n <= 50 for n in numbers) and target >= 1
        assert str(target) in item.question
        assert task.check(item.meta["solution"], item.answer) == 1.0
        assert score(r1(item.meta["solution"]), item, task, "r1") == {"accuracy": 1.0, "format": 1.0}
    assert "exactly once" in task.answer_hint
    json.dumps([i.answer for i in task.split("test", 10)])


# ------------------------------------------------------------------------------ benchmark files


def test_gsm8k_gold_scores_one(data_dir):
    task = load_task(f"gsm8k:{data_dir}/gsm8k_test.jsonl")
    items = task.split("all")
    assert len(items) == 1319 and items[0].answer == "18" and items[0].meta["source"].endswith(":1")
    for item in items[:200]:
        assert score(r1(item.answer), item, task, "r1") == {"accuracy": 1.0, "format": 1.0}
        assert score(f"The answer is {item.answer}.", item, task, "plain")["accuracy"] == 1.0
    assert score(r1(float(items[0].answer) + 1), items[0], task, "r1")["accuracy"] == 0.0


def test_svamp_gold_scores_one_for_every_row(data_dir):
    task = load_task(f"svamp:{data_dir}/svamp.jsonl")
    items = task.split("all")
    assert len(items) == 1000
    assert items[0].question.startswith("There are 87 oranges") and items[0].question.endswith("bananas?")
    for item in items:
        assert score(r1(item.answer), item, task, "r1")["accuracy"] == 1.0


def test_math500_gold_scores_one(data_dir):
    task = load_task(f"math:{data_dir}/math500.jsonl")
    items = task.split("all")
    assert len(items) == 500 and not task.numeric
    for item in items[:200]:
        assert score(r1(item.answer), item, task, "r1")["accuracy"] == 1.0, item.answer
    assert score(r1("12345"), items[0], task, "r1")["accuracy"] == 0.0


def test_file_splits_are_disjoint_and_stable(data_dir):
    task = load_task(f"gsm8k:{data_dir}/gsm8k_train.jsonl")
    train, test = task.split("train"), task.split("test")
    assert len(train) + len(test) == 7473
    assert {i.id for i in train}.isdisjoint({i.id for i in test})
    assert [i.id for i in task.split("test", 100, seed=1)] == [i.id for i in task.split("test", 100, seed=1)]
    assert {i.id for i in task.split("test", 100, seed=2)} <= {i.id for i in test}


def test_missing_source_and_hub_ids(tmp_path):
    with pytest.raises(UsageError, match="nope.jsonl: no such file"):
        load_task(f"gsm8k:{tmp_path}/nope.jsonl")
    with pytest.raises(UsageError, match="name the data"):
        load_task("math")
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(UsageError, match=r"install r1lite\[hub\] or pass a local JSONL path"):
            load_task("gsm8k:openai/gsm8k")


def test_benchmark_row_errors_name_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "g.jsonl", [{"question": "q1", "answer": "x\n#### 3"}, {"question": "q2", "answer": "no marker"}])
    with pytest.raises(UsageError, match=r"g.jsonl:2: 'answer' must be a number or end with '#### <number>'"):
        load_task(f"gsm8k:{path}")
    path = write_jsonl(tmp_path / "s.jsonl", [{"Body": "b", "Question": "q"}])
    with pytest.raises(UsageError, match=r"s.jsonl:1: missing key 'Answer'"):
        load_task(f"svamp:{path}")


# ------------------------------------------------------------------------------ custom jsonl


def test_jsonl_every_verifier_type(tmp_path, monkeypatch):
    (tmp_path / "my_checks.py").write_text(
        textwrap.dedent(
            """
            def starts_with(response, answer):
                return response.lower().startswith(answer)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    schema = {"type": "object", "required": ["team"], "properties": {"team": {"enum": ["billing", "tech"]}}}
    rows = [
        {"question": "Capital of France?", "answer": "Paris"},  # default verifier (task option)
        {"question": "Price?", "answer": "19.99", "verifier": "numeric", "tolerance": 0.01},
        {"question": "Ticket id?", "answer": r"T-\d{3}", "verifier": "regex"},
        {"prompt": "Extract as JSON", "answer": {"name": "Ada", "age": 36}, "verifier": "json"},
        {"question": "Route this ticket", "verifier": "json_schema", "schema": schema},
        {"question": "Route this ticket to tech", "answer": {"team": "tech"}, "verifier": {"type": "json_schema", "schema": schema}},
        {"question": "Pi?", "answer": 3.14159, "verifier": {"type": "numeric", "tolerance": 0.01}},
    ]
    task = load_task(f"jsonl:{write_jsonl(tmp_path / 'data.jsonl', rows)}", {"verifier": "exact"})
    greet = load_task(f"jsonl:{write_jsonl(tmp_path / 'greet.jsonl', [{'question': 'Greet', 'answer': 'hello'}])}",
                      {"verifier": "python:my_checks:starts_with"})  # code only from the user's own option
    items = {i.question: i for i in task.split("all")}
    assert len(items) == len(rows) and not task.numeric

    def acc(question, response):
        return score(r1(response), items[question], task, "r1")["accuracy"]

    assert acc("Capital of France?", "Paris") == 1.0 and acc("Capital of France?", "paris") == 0.0
    assert acc("Price?", "20.01") == 0.0 and acc("Price?", "19.995") == 1.0 and acc("Price?", "20") == 1.0  # |d| <= tolerance
    assert acc("Ticket id?", "T-123") == 1.0 and acc("Ticket id?", "T-1234") == 0.0
    assert acc("Extract as JSON", '```json\n{"age": 36, "name": "Ada"}\n```') == 1.0
    assert acc("Extract as JSON", '{"age": "36", "name": "Ada"}') == 0.0
    assert acc("Route this ticket", '{"team": "billing"}') == 1.0 and acc("Route this ticket", '{"team": "sales"}') == 0.0
    assert acc("Route this ticket to tech", '{"team": "billing"}') == 0.0
    assert acc("Route this ticket to tech", '{"team": "tech"}') == 1.0
    assert [score(r1(r), greet.split("all")[0], greet, "r1")["accuracy"] for r in ("Hello there", "Hi")] == [1.0, 0.0]
    assert acc("Pi?", "3.14") == 1.0 and acc("Pi?", "3.2") == 0.0
    json.dumps([i.answer for i in items.values()])


def test_jsonl_numeric_rows_get_only_the_tolerance_they_ask_for(tmp_path):
    rows = [{"question": "Exact?", "answer": 99980001, "verifier": "numeric"},
            {"question": "Zero tolerance?", "answer": 2.5, "verifier": "numeric", "tolerance": 0},
            {"question": "Some tolerance?", "answer": 2.5, "verifier": "numeric", "tolerance": 0.5}]
    task = load_task(f"jsonl:{write_jsonl(tmp_path / 'tol.jsonl', rows)}")
    items = {i.question: i for i in task.split("all")}

    def acc(question, response):
        return score(r1(response), items[question], task, "r1")["accuracy"]

    assert acc("Exact?", "99980001") == 1.0 and acc("Exact?", "99980100") == 0.0
    assert acc("Zero tolerance?", "2.50") == 1.0 and acc("Zero tolerance?", "2.5000001") == 0.0
    assert acc("Some tolerance?", "3") == 1.0 and acc("Some tolerance?", "3.01") == 0.0
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": 1, "verifier": "numeric", "tolerance": -1}])
    with pytest.raises(UsageError, match="bad.jsonl:1: 'tolerance' -1 must be a number >= 0"):
        load_task(f"jsonl:{bad}")


def test_jsonl_default_verifier_object(tmp_path):
    path = write_jsonl(tmp_path / "n.jsonl", [{"question": "About pi?", "answer": 3.14}])
    task = load_task(f"jsonl:{path}", {"verifier": {"type": "numeric", "tolerance": 0.1}})
    item = task.split("all")[0]
    assert score(r1("3.2"), item, task, "r1")["accuracy"] == 1.0 and score(r1("3.3"), item, task, "r1")["accuracy"] == 0.0
    with pytest.raises(UsageError, match="n.jsonl:1: unknown verifier 'fuzzy'"):
        load_task(f"jsonl:{path}", {"verifier": "fuzzy"})


def test_jsonl_all_numeric_is_numeric(tmp_path):
    path = write_jsonl(tmp_path / "n.jsonl", [{"question": f"{k} + 1?", "answer": k + 1} for k in range(20)])
    task = load_task(f"jsonl:{path}", {"verifier": "numeric"})
    assert task.numeric and task.answer_hint == "Give the answer as a single number."
    item = task.split("all")[3]
    assert score("so it is 4.", item, task, "plain") == {"accuracy": 1.0, "format": 1.0}


@pytest.mark.parametrize(
    "rows, message",
    [
        (['{"question": "a", "answer": 1}', '{"question": "b", "answer": 2', ""], r"data.jsonl:2: not valid JSON \(.*\); fix or remove the line"),
        ([{"question": "a", "answer": 1}, {"question": "b"}, {}], r"data.jsonl:2: missing key 'answer'; every row needs"),
        ([{"answer": 1}], r"data.jsonl:1: missing key 'question'"),
        ([{"question": "a", "answer": 1}, {"question": "b", "answer": 2, "verifier": "foo"}], r"data.jsonl:2: unknown verifier 'foo'; use one of exact, numeric, regex, json, json_schema, python:module:function"),
        ([{"question": "a", "answer": 1, "verifier": {"type": "fuzzy"}}], r"data.jsonl:1: unknown verifier 'fuzzy'"),
        ([{"question": "a", "answer": "x", "verifier": "python:my_checks:f"}], r"data.jsonl:1: the row names the Python verifier 'python:my_checks:f'.*--task-options verifier=python:my_checks:f"),
        ([{"question": "a", "answer": "x", "verifier": {"type": "python:my_checks:f"}}], r"data.jsonl:1: the row names the Python verifier"),
        ([{"question": "a", "answer": "[", "verifier": "regex"}], r"data.jsonl:1: 'answer' is not a valid regex"),
        ([{"question": "a", "answer": "many", "verifier": "numeric"}], r"data.jsonl:1: 'answer' 'many' is not a number"),
        ([{"question": "a", "verifier": "json_schema"}], r"data.jsonl:1: missing key 'schema'"),
        ([{"question": "a", "verifier": "json_schema", "schema": {"type": 12}}], r"data.jsonl:1: 'schema' is not a valid JSON schema"),
        (["[1, 2]"], r"data.jsonl:1: expected a JSON object"),
        ([""], r"data.jsonl: no items"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    with pytest.raises(UsageError, match=message):
        load_task(f"jsonl:{path}")


@pytest.mark.parametrize("verifier, message", [
    ("python:no_such_module_r1lite:f", r"data.jsonl:1: cannot import verifier 'python:no_such_module_r1lite:f'"),
    ("python:json:no_such_function", r"data.jsonl:1: cannot import verifier"),
])
def test_a_python_verifier_option_that_cannot_be_imported_names_it(tmp_path, verifier, message):
    path = write_jsonl(tmp_path / "data.jsonl", [{"question": "a", "answer": "x"}])
    with pytest.raises(UsageError, match=message):
        load_task(f"jsonl:{path}", {"verifier": verifier})


def test_a_row_naming_a_python_verifier_is_refused_and_the_answer_never_runs(cli, tmp_path):
    """A data file must not choose code to run: ``python:builtins:eval`` in a row would execute the
    model's answer when scored."""
    marker = tmp_path / "ran"
    data = write_jsonl(tmp_path / "data.jsonl", [{"question": "q", "answer": {}, "verifier": "python:builtins:eval"}])
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    completions = write_jsonl(tmp_path / "c.jsonl", [{"answer": {}, "completion": r1(code), "prompt": "q"}])
    r = cli("eval", "--task", f"jsonl:{data}", "--completions", completions, "--out", tmp_path / "scored.jsonl")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "data.jsonl:1: the row names the Python verifier 'python:builtins:eval'" in r.stderr + r.stdout
    assert "--task-options verifier=python:builtins:eval" in r.stderr + r.stdout
    assert not marker.exists()


# ------------------------------------------------------------------------------ reasoning-gym

GYM = ["basic_arithmetic", "chain_sum", "letter_counting", "spell_backward", "word_sorting", "gcd"]


@pytest.mark.parametrize("name", GYM)
def test_gym_generators_score_their_own_gold(name):
    task = load_task(f"gym:{name}")
    items = task.split("train", 8, seed=1)
    assert len({i.id for i in items}) == 8
    assert [i.id for i in items] == [i.id for i in task.split("train", 8, seed=1)]
    assert {i.id for i in items}.isdisjoint(i.id for i in task.split("test", 8, seed=1))
    for item in items:
        json.dumps(item.answer)
        assert score(r1(item.answer["answer"]), item, task, "r1")["accuracy"] == 1.0
        assert score(r1("definitely not it"), item, task, "r1")["accuracy"] < 1.0


def test_gym_options_and_errors():
    task = load_task("gym:chain_sum", {"min_terms": 2, "max_terms": 2, "held_out": 0.2})
    assert task.held_out == 0.2
    assert all(len(i.answer["metadata"]["expression"].split()) == 3 for i in task.split("train", 5))
    with pytest.raises(UsageError, match="close names: chain_sum"):
        load_task("gym:chain_summ")
    with pytest.raises(UsageError, match="bad generator options"):
        load_task("gym:chain_sum", {"colour": "red"})


def test_unknown_task_lists_names():
    with pytest.raises(UsageError, match="unknown task 'gms8k:x'; use one of arithmetic, countdown, gsm8k:PATH"):
        load_task("gms8k:x")


# ------------------------------------------------------------------------------ prompts and scoring
