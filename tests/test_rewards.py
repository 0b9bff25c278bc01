"""Verifiers on correct, wrong and adversarial completions; linear time on hostile input."""


import pytest

from r1lite.rewards import (
    countdown_check,
    exact_match,
    format_partial,
    json_match,
    json_schema_match,
    last_number,
    math_equal,
    numeric_equal,
    overlong_penalty,
    parse_number,
    r1_answer,
    r1_format,
    regex_match,
    strip_end,
)

GOOD = "<think>6 times 7 is 42</think>\n<answer>42</answer>"


def fast(fn, *args, limit=None):
    """Call fn(*args) on a hostile input. Not a speed test: these calls take milliseconds, and a
    regex that backtracks catastrophically on them would not finish for hours, so a hang guard of
    two minutes tells the two apart on any machine."""
    import threading

    out = {}
    worker = threading.Thread(target=lambda: out.setdefault("result", fn(*args)), daemon=True)
    worker.start()
    worker.join(120)
    assert "result" in out, f"{fn.__name__} did not finish on a hostile input (catastrophic backtracking?)"
    return out["result"]


# ------------------------------------------------------------------------------ r1 tags


@pytest.mark.parametrize(
    "completion, expected",
    [
        (GOOD, "42"),
        ("<think>x</think><answer>  42\n</answer>", "42"),
        ("think without open tag</think> <answer>42</answer>", "42"),
        ("<think>x</think><answer>42</answer><|im_end|>", "42"),
        ("<think>x</think><answer>42</answer> \n<|eot_id|>\n</s><|endoftext|>", "42"),
        ("<think>x</think><answer>42</answer><｜end▁of▁sentence｜>", "42"),
        ("<think>x</think><answer></answer>", ""),
        # malformed
        ("<think>x</think><answer>41</answer><answer>42</answer>", None),  # several answers
        ("<think>x</think><answer>41</answer>\n<answer>42</answer>", None),
        ("<think>the answer is <answer>42</answer></think>", None),  # only inside the thinking
        ("<think>x <answer>41</answer></think><answer>42</answer>", None),  # one inside, one after
        ("<think>x</think> 42", None),  # no answer block
        ("42", None),
        ("", None),
        ("<think>x</think><answer>42", None),  # unclosed answer
        ("<think>x <answer>42</answer>", None),  # unclosed think
        ("<think>x</think><answer>42</answer> Let me know if you need more!", None),  # trailing text
        ("<think>x</think> So: <answer>42</answer>", None),  # text between think and answer
        ("<think>x</think><think>y</think><answer>42</answer>", None),  # two thinks
        ("</think><think>x<answer>42</answer>", None),  # think opens after it closes
        ("<think>x</think></answer>42<answer>", None),  # reversed answer tags
    ],
)
def test_r1_answer(completion, expected):
    assert r1_answer(completion) == expected


def test_r1_format():
    assert r1_format(GOOD) == 1.0
    assert r1_format("  \n<think>x</think><answer>42</answer><|im_end|>") == 1.0
    for bad in [
        "<think>x</think><answer> </answer>",  # empty answer
        "<think> </think><answer>42</answer>",  # empty thinking
        "x</think><answer>42</answer>",  # no <think>
        "Let me see. <think>x</think><answer>42</answer>",
        "<think>x</think><answer>42</answer> done",
        "<think>x</think><answer>1</answer><answer>2</answer>",
        "",
    ]:
        assert r1_format(bad) == 0.0, bad


def test_prefilled_think_counts_as_part_of_completion():
    completion = "6*7=42</think><answer>42</answer>"
    assert r1_format(completion) == 0.0
    assert r1_format("<think>" + completion) == 1.0


def test_long_thinking_is_linear_and_correct():
    thinking = "Let me add these numbers carefully. " * 2800  # ~100,000 characters
    completion = f"<think>{thinking}</think>\n<answer>78</answer><|im_end|>"
    assert len(thinking) > 100_000
    assert fast(r1_answer, completion) == "78"
    assert fast(r1_format, completion) == 1.0
    assert numeric_equal(r1_answer(completion), 78) == 1.0


def test_hostile_tag_soup_is_fast():
    soup = "<think><answer></think></answer>" * 20_000 + "<" * 100_000
    assert fast(r1_answer, soup) is None
    assert fast(r1_format, soup) == 0.0
    assert fast(strip_end, "x" + "<|im_end|> " * 20_000) == "x"


def test_format_partial():
    assert format_partial(GOOD) == 1.0
    assert format_partial("<think>x</think>") == 0.5
    assert format_partial("<think><think>x</think><answer>1</answer>") == 0.75
    assert format_partial("") == 0.0


# ------------------------------------------------------------------------------ numbers


@pytest.mark.parametrize(
    "text, expected",
    [
        ("42", 42.0), ("42.0", 42.0), (" 42 ", 42.0), ("\\boxed{42}", 42.0), ("\\boxed{ -3.5 }", -3.5),
        ("+7", 7.0), ("-0.25", -0.25), (".5", 0.5), ("1,234,567", 1234567.0), ("1,234.5", 1234.5),
        ("41 or 42", None), ("41, 42, 43", None), ("4 2", None), ("42abc", None), ("", None),
        ("1,23", None), ("12,3456", None), (",123", None), ("1,", None), ("42.", None), ("--4", None),
        ("\\boxed{41} \\boxed{42}", None), ("$42$", None), ("\\boxed{\\frac{1}{2}}", None), ("1e5", None),
    ],
)
def test_parse_number(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("So the answer is 78.", "78"),
        ("40 + 38 = 78", "78"),
        ("Total: 1,234,567 people", "1,234,567"),
        ("It was -12 degrees", "-12"),
        ("x = -3.75, done", "-3.75"),
        ("The answer is 42.0.", "42.0"),
        ("5-3 gives 2", "2"),
        ("COVID-19", "19"),
        ("(2)-4", "4"),
        ("answers: 3,4", "4"),
        ("version 1.2.3", "2.3"),
        ("about .5 of it", ".5"),
        ("about -.5 of it", "-.5"),
        ("no numbers here", None),
        ("", None),
    ],
)
def test_last_number(text, expected):
    result = last_number(text)
    assert result == expected
    if result is not None:
        assert parse_number(result) is not None


def test_number_parsing_is_linear_on_long_runs():
    for hostile in ["1," * 50_000, "1" * 100_000 + "x", ",1" * 50_000 + ",", "1." * 50_000, "9" * 3 + ",999" * 30_000 + ",99"]:
        fast(parse_number, hostile)
        result = fast(last_number, hostile)
        assert result is None or parse_number(result) is not None


def test_numeric_equal():
    assert numeric_equal("42", 42) == 1.0
    assert numeric_equal("42.0", "42") == 1.0
    assert numeric_equal("\\boxed{42}", 42.0) == 1.0
    assert numeric_equal("1,000", "1000") == 1.0
    assert numeric_equal("0.1", 0.1) == 1.0 and numeric_equal("0.10", "0.1") == 1.0
    assert numeric_equal("43", 42) == 0.0
    for bad in ["41 or 42", "41, 42, 43", "4 2", "", "forty-two"]:
        assert numeric_equal(bad, 42) == 0.0, bad
    assert numeric_equal("42", "n/a") is None
    assert numeric_equal("42", float("nan")) is None
    assert numeric_equal("1", True) is None
    assert numeric_equal("10.4", 10, tolerance=0.5) == 1.0
    assert numeric_equal("110", 100, rel_tolerance=0.1) == 1.0 and numeric_equal("111", 100, rel_tolerance=0.1) == 0.0


def test_numeric_equal_is_exact_unless_a_tolerance_is_asked_for():
    """No built-in slack: a relative 1e-6 would accept 99980100 for 99980001 (a wrong product of
    4-digit numbers), and big integers must not round through floats."""
    assert numeric_equal("99980100", 99980001) == 0.0
    assert numeric_equal("1.000001", 1) == 0.0
    assert numeric_equal("12345678901234567891", 12345678901234567890) == 0.0
    assert numeric_equal("12345678901234567890", "12,345,678,901,234,567,890") == 1.0
    assert numeric_equal("1e-10", 0) == 0.0  # not a number in the accepted syntax
    assert numeric_equal("0.0000000001", 0) == 0.0


# ------------------------------------------------------------------------------ string checks


def test_exact_and_regex():
    assert exact_match("Paris", "Paris") == 1.0
    assert exact_match(" Paris\n", "Paris") == 1.0
    assert exact_match("Paris, France", "Paris") == 0.0
    assert exact_match("7", 7) == 1.0
    assert regex_match("ORD-0042", r"ORD-\d{4}") == 1.0
    assert regex_match("my ORD-0042", r"ORD-\d{4}") == 0.0
    assert regex_match("ORD-0042 thanks", r"ORD-\d{4}") == 0.0
    assert regex_match("yes", r"yes|no") == 1.0


def test_json_match():
    gold = {"name": "Ada", "tags": ["a", "b"], "n": 2}
    assert json_match('{"n": 2, "tags": ["a", "b"], "name": "Ada"}', gold) == 1.0
    assert json_match('```json\n{"n": 2.0, "tags": ["a", "b"], "name": "Ada"}\n```', gold) == 1.0
    assert json_match('Here you go:\n```json\n{"n": 2, "tags": ["a", "b"], "name": "Ada"}\n```\nDone.', gold) == 1.0
    assert json_match('```\n{"n": 2, "tags": ["a", "b"], "name": "Ada"}\n```', gold) == 1.0
    assert json_match('{"n": 2, "tags": ["b", "a"], "name": "Ada"}', gold) == 0.0  # order of a list matters
    assert json_match('{"n": 2, "tags": ["a", "b"]}', gold) == 0.0  # missing key
    assert json_match('{"n": 2, "tags": ["a", "b"], "name": "Ada", "x": 1}', gold) == 0.0  # extra key
    assert json_match('{"n": 2, "tags": ["a", "b"], "name": "Ada"', gold) == 0.0  # truncated
    assert json_match("```json\n{}\n```\n```json\n{}\n```", {}) == 0.0  # two fenced blocks
    assert json_match("```json\n{}", {}) == 0.0  # unclosed fence
    assert json_match("", {}) == 0.0
    assert json_match("true", 1) == 0.0 and json_match("1", True) == 0.0
    assert json_match("[" * 100_000, []) == 0.0  # deep nesting does not crash


def test_json_schema_match():
    schema = {
        "type": "object",
        "properties": {"priority": {"enum": ["low", "high"]}, "id": {"type": "integer"}},
        "required": ["priority", "id"],
        "additionalProperties": False,
    }
    assert json_schema_match('{"priority": "high", "id": 3}', schema) == 1.0
    assert json_schema_match('```json\n{"priority": "low", "id": 3}\n```', schema) == 1.0
    assert json_schema_match('{"priority": "urgent", "id": 3}', schema) == 0.0
    assert json_schema_match('{"priority": "high"}', schema) == 0.0
    assert json_schema_match("not json", schema) == 0.0
    assert json_schema_match('{"priority": "high", "id": 3}', schema, {"priority": "high", "id": 3}) == 1.0
    assert json_schema_match('{"priority": "low", "id": 3}', schema, {"priority": "high", "id": 3}) == 0.0


# ------------------------------------------------------------------------------ math


def test_math_equal():
    assert math_equal("\\frac{\\pi}{2}", "\\frac{\\pi}{2}") == 1.0
    assert math_equal("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\frac{\\pi}{2})") == 1.0
    assert math_equal("\\boxed{2\\sqrt{2}}", "\\sqrt{8}") == 1.0
    assert math_equal("0.5", "\\frac12") == 1.0
    assert math_equal("3", "4") == 0.0
    assert math_equal("", "4") == 0.0
    assert math_equal("42", "") is None


def test_math_equal_off_the_main_thread():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(math_equal, "\\frac{1}{2}", "0.5").result() == 1.0


# ------------------------------------------------------------------------------ countdown

GOLD = {"target": 24, "numbers": [3, 4, 6, 2]}


@pytest.mark.parametrize(
    "expression, expected",
    [
        ("(6 - 2) * (4 + 2)", 0.0),  # 2 used twice, 3 missing
        ("6 * 4 * (3 - 2)", 1.0),
        ("(3 - 2) * 6 * 4 = 24", 1.0),
        ("6*4*(3-2)", 1.0),
        ("6 / (3 - 2) * 4", 1.0),
        ("(6 + 2) * 3 * 4 / 4", 0.0),  # 4 reused
        ("6 * 4", 0.0),  # numbers missing
        ("6 * 4 * (3 - 2) + 0", 0.0),  # extra number
        ("6 * 4 * (3 - 2) * 1", 0.0),  # extra number
        ("6 * 4 * 3 / 3", 0.0),
        ("6 * 4 / (3 - 3) + 2", 0.0),  # division by zero (and wrong numbers)
        ("6 * 4 * (2 - 3) * -1", 0.0),  # unary minus
        ("-(2 - 3) * 6 * 4", 0.0),
        ("(6 - 2) ** 2 + 3 + 4", 0.0),  # power
        ("__import__('os').system('true')", 0.0),
        ("6 * 4 * (3 - 2); 1", 0.0),
        ("6 * 4 * (3 - 2) = 24 = 24", 0.0),
        ("6 // 2 * 4 * 3", 0.0),  # floor division
        ("", 0.0),
        ("6 4 3 2", 0.0),
        ("06 * 4 * (3 - 2)", 0.0),
        ("6.0 * 4 * (3 - 2)", 0.0),
        ("24", 0.0),
    ],
)
def test_countdown_check(expression, expected):
    assert countdown_check(expression, GOLD) == expected


def test_countdown_division_by_zero_and_fractions():
    assert countdown_check("4 / (2 - 2) + 6 + 3", GOLD) == 0.0
    assert countdown_check("6 / (1 - 3 / 4)", {"target": 24, "numbers": [6, 1, 3, 4]}) == 1.0  # exact fractions


def test_countdown_hostile_input_is_bounded():
    for count in (500, 2_000, 50_000):
        chain = " + ".join(["1"] * count)
        assert fast(countdown_check, chain, {"target": count, "numbers": [1] * count}) in (0.0, 1.0)
    assert fast(countdown_check, "(" * 10_000 + "1" + ")" * 10_000, {"target": 1, "numbers": [1]}) == 0.0


# ------------------------------------------------------------------------------ overlong


def test_overlong_penalty():
    assert overlong_penalty(0, 100, 20) == 0.0
    assert overlong_penalty(80, 100, 20) == 0.0
    assert overlong_penalty(85, 100, 20) == pytest.approx(-0.25)
    assert overlong_penalty(100, 100, 20) == -1.0
    assert overlong_penalty(500, 100, 20) == -1.0
    assert overlong_penalty(100, 100, 0) == 0.0 and overlong_penalty(101, 100, 0) == -1.0
    with pytest.raises(ValueError):
        overlong_penalty(10, 100, 200)
