"""Prompt formats, the answer extractor and the score: what evaluation and the reward share."""

import json

import pytest

from r1lite.errors import UsageError
from r1lite.prompts import FORMATS, build_messages, extract_answer, score
from r1lite.tasks import load_task, make_item


def test_build_messages():
    task = load_task("arithmetic")
    item = make_item("What is 47 + 38?", 85, {})
    messages, prefill = build_messages(item, task, "r1")
    assert prefill == "" and len(messages) == 1 and messages[0]["role"] == "user"
    content = messages[0]["content"]
    assert content.endswith("What is 47 + 38?") and "<think> </think>" in content and "<answer> </answer>" in content
    assert task.answer_hint in content
    assert build_messages(item, task, "r1", prefill_think=True)[1] == "<think>"
    plain = {build_messages(item, task, fmt)[0][0]["content"] for fmt in FORMATS if fmt != "r1"}
    assert len(plain) == 3 and all("47 + 38" in text and task.answer_hint in text for text in plain)
    with pytest.raises(UsageError, match="unknown prompt format 'chat'"):
        build_messages(item, task, "chat")
    with pytest.raises(UsageError, match="r1 format only"):
        build_messages(item, task, "plain", prefill_think=True)


def test_score_formats():
    task = load_task("arithmetic")
    item = make_item("What is 47 + 38?", 85, {})
    assert score("47 + 38 = 85</think><answer>85</answer>", item, task, "r1", prefill="<think>") == {"accuracy": 1.0, "format": 1.0}
    assert score("<think>x</think><answer>85</answer> and more", item, task, "r1") == {"accuracy": 0.0, "format": 0.0}
    assert score("<think>x <answer>85</answer></think>", item, task, "r1") == {"accuracy": 0.0, "format": 0.0}
    assert score("x</think><answer>85</answer>", item, task, "r1") == {"accuracy": 1.0, "format": 0.0}
    assert score("<think>x</think><answer>84</answer>", item, task, "r1") == {"accuracy": 0.0, "format": 1.0}
    assert score("<think>" + "hmm " * 25_000 + "</think><answer>85</answer>", item, task, "r1")["accuracy"] == 1.0
    assert score("47 + 38 = 85.", item, task, "plain:1") == {"accuracy": 1.0, "format": 1.0}
    assert score("I don't know", item, task, "plain") == {"accuracy": 0.0, "format": 0.0}
    assert score("", item, task, "plain:2") == {"accuracy": 0.0, "format": 0.0}
    unusable = make_item("?", "n/a", {})
    assert score("<think>x</think><answer>85</answer>", unusable, task, "r1")["accuracy"] is None
    with pytest.raises(UsageError):
        score("85", item, task, "chat")


def test_extract_answer_is_what_score_checks():
    task = load_task("arithmetic")
    assert extract_answer("<think>x</think><answer> 85 </answer>", task, "r1") == "85"
    assert extract_answer("<think>x</think><answer>85</answer>!", task, "r1") is None
    assert extract_answer("85</think><answer>85</answer>", task, "r1", prefill="<think>") == "85"
    assert extract_answer("47 + 38 = 85.", task, "plain:2") == "85"
    assert extract_answer("no idea", task, "plain") is None


def test_score_plain_non_numeric_uses_whole_text(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"question": "Capital of France?", "answer": "Paris"}) + "\n")
    task = load_task(f"jsonl:{path}")
    item = task.split("all")[0]
    assert score("Paris<|im_end|>", item, task, "plain") == {"accuracy": 1.0, "format": 1.0}
    assert score("It is Paris", item, task, "plain")["accuracy"] == 0.0
