"""Properties over generated inputs (hypothesis, bounded): the verifiers never raise and compare
integers exactly, the <think> splitter gives the same split however a stream is cut, and the file
readers turn any bytes into rows or one UsageError, never a traceback."""

import os
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r1lite import rewards
from r1lite.config import read_yaml
from r1lite.engine import ThinkSplit
from r1lite.errors import UsageError
from r1lite.files import read_jsonl

# 150 examples a property in the suite; benchmarks/fuzz.py runs the same properties for minutes.
BOUNDED = settings(max_examples=int(os.environ.get("R1LITE_FUZZ_EXAMPLES", "150")), deadline=None, database=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=300)
TAGGED = st.lists(st.one_of(TEXT, st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "<", "</th", "ink>"])),
                  max_size=12).map("".join)


@BOUNDED
@given(TAGGED, st.one_of(st.integers(-10**30, 10**30), st.floats(allow_nan=True, allow_infinity=True), TEXT))
def test_verifiers_never_raise(completion, gold):
    """Whatever the model writes and whatever the gold answer is, a verifier returns a score (or
    None for a gold it cannot parse); it never raises."""
    for check in (rewards.r1_format, rewards.format_partial, rewards.r1_answer, rewards.last_number,
                  rewards.parse_number):
        check(completion)
    rewards.numeric_equal(completion, gold)
    rewards.exact_match(completion, gold)
    rewards.json_match(completion, gold)
    assert rewards.math_equal(completion, str(gold)) in (None, 0.0, 1.0)


@BOUNDED
@given(st.integers(-10**40, 10**40))
def test_integers_compare_exactly_however_large(n):
    """No float rounding: n matches n and never n + 1, at any size."""
    assert rewards.numeric_equal(str(n), n) == 1.0 and rewards.numeric_equal(f"{n:,}", n) == 1.0
    assert rewards.numeric_equal(str(n + 1), n) == 0.0 and rewards.r1_answer(f"<think>x</think><answer>{n}</answer>") == str(n)
    assert rewards.parse_decimal(str(n)) == Decimal(n)


def split_whole(text: str, prefilled: bool) -> list[tuple[str, str]]:
    return merged(ThinkSplit(thinking=prefilled, marks=("<answer>", "</answer>")).feed(text, final=True))


def merged(pieces: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Adjacent pieces of one kind joined, empty ones dropped: the split itself, not its chunking."""
    out: list[tuple[str, str]] = []
    for kind, text in pieces:
        if not text:
            continue
        if out and out[-1][0] == kind and kind != "tag":
            out[-1] = (kind, out[-1][1] + text)
        else:
            out.append((kind, text))
    return out


@BOUNDED
@given(TAGGED, st.lists(st.integers(0, 400), max_size=10), st.booleans())
def test_any_chunking_of_a_stream_splits_like_the_whole_text(text, cuts, prefilled):
    split = ThinkSplit(thinking=prefilled, marks=("<answer>", "</answer>"))
    bounds = sorted({min(c, len(text)) for c in cuts})
    pieces = []
    for start, end in zip([0, *bounds], [*bounds, None]):
        pieces += split.feed(text[start:end], final=end is None)
    assert merged(pieces) == split_whole(text, prefilled)
    assert "".join(t for _, t in pieces) == text  # nothing lost or repeated


def read_rows(path):
    rows = [row for _, row in read_jsonl(path)]
    assert all(isinstance(row, dict) for row in rows)


def read_recipe(path):
    assert isinstance(read_yaml(path), dict)


@BOUNDED
@given(st.binary(max_size=400), st.sampled_from([("rows.jsonl", read_rows), ("recipe.yaml", read_recipe)]))
def test_any_bytes_in_a_data_file_or_recipe_are_read_or_one_usage_error(tmp_path_factory, data, reader):
    """JSONL rows are mappings, a recipe a mapping; anything else is one line naming the file."""
    name, read = reader
    path = tmp_path_factory.mktemp("file") / name
    path.write_bytes(data)
    try:
        read(path)
    except UsageError as e:
        assert str(path) in str(e) and "\n" not in str(e)


@pytest.mark.parametrize("depth", [5_000])
def test_a_deeply_nested_recipe_is_one_usage_error(tmp_path, depth):
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * depth + "]" * depth + "\n")
    with pytest.raises(UsageError, match=str(path)):
        read_yaml(path)
