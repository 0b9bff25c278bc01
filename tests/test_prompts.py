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


# ---------------------------------------------------------------------------------------------
# Templates: chat, and r1_zero (the R1 paper's plain template for base models)

PAPER = ("A conversation between User and Assistant. The user asks a question, and the Assistant solves it. The "
         "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
         "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> tags, "
         "respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
         "User: {question}. Assistant:")
"""Table 1 of the DeepSeek-R1 paper, typed out here rather than imported: the test of the code's copy."""
PREAMBLE = PAPER.split(" User:")[0]


@pytest.fixture(scope="module")
def tokenizers():
    from r1lite.models import load_tokenizer

    return {spec: load_tokenizer(spec) for spec in ("tiny-gemma3", "default")}


def test_r1_zero_renders_the_paper_s_template_exactly(tokenizers):
    from r1lite.prompts import item_prompts, render_prompt

    task = load_task("arithmetic")
    hint = task.answer_hint.removesuffix(".")  # the template's own full stop ends the question
    item = make_item("What is 47 + 38?", 85, {})
    for spec, tok in tokenizers.items():
        for prefill_think, tail in ((False, ""), (True, " <think>")):
            (prompt,) = item_prompts(tok, task, [item], "r1", prefill_think, template="r1_zero")
            text = render_prompt(tok, prompt.messages, prompt.prefill, "r1_zero")
            assert text == PAPER.format(question=f"What is 47 + 38? {hint}") + tail, spec
            assert prompt.ids[0] == tok.bos_token_id and prompt.ids.count(tok.bos_token_id) == 1, spec
            assert tok.decode(prompt.ids[1:]) == text, spec
    # a question that ends a sentence takes no second full stop; one that does not gets the template's
    bare = load_task("arithmetic", {"answer_hint": ""})
    for question, shown in (("What is 2 + 2?", "What is 2 + 2?"), ("Add 2 and 2 ", "Add 2 and 2."),
                            ("Say 4!", "Say 4!")):
        messages, prefill = build_messages(make_item(question, 4, {}), bare, "r1", template="r1_zero")
        assert render_prompt(None, messages, prefill, "r1_zero") == f"{PREAMBLE} User: {shown} Assistant:"


def test_r1_zero_multi_turn_and_a_system_message():
    from r1lite.prompts import r1_zero_text

    preamble = PREAMBLE
    turns = [{"role": "user", "content": "What is 2 + 2"}, {"role": "assistant", "content": " <think>2 + 2</think> <answer>4</answer> "},
             {"role": "user", "content": "And 3 + 3?"}]
    assert r1_zero_text(turns) == (f"{preamble} User: What is 2 + 2. Assistant: <think>2 + 2</think> <answer>4</answer> "
                                   "User: And 3 + 3? Assistant:")
    assert r1_zero_text([{"role": "system", "content": "Be brief."}, *turns[:1]]) == (
        f"Be brief.\n{preamble} User: What is 2 + 2. Assistant:")


def test_auto_template_follows_the_model(tmp_path):
    from r1lite.prompts import resolve_template

    assert resolve_template("auto", "gemma3-270m") == resolve_template("auto", "tiny-gemma3") == "r1_zero"
    assert {resolve_template("auto", m) for m in ("default", "tiny", "HuggingFaceTB/SmolLM2-135M")} == {"chat"}
    assert resolve_template("auto", "gemma3-270m", "plain:2") == "chat"  # plain phrasings have no r1_zero form
    assert resolve_template("chat", "gemma3-270m") == "chat" and resolve_template("r1_zero", "tiny") == "r1_zero"
    # a run directory: the template its config recorded (chat for a run from before templates)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("task: arithmetic\nmodel: gemma3-270m\ntemplate: r1_zero\n")
    assert resolve_template("auto", str(run)) == "r1_zero"
    (run / "config.yaml").write_text("task: arithmetic\nmodel: gemma3-270m\n")
    assert resolve_template("auto", str(run)) == "chat"
    # a model directory: Gemma 3 without a chat template is a base model
    base = tmp_path / "gemma"
    base.mkdir()
    (base / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    (base / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<bos>"}))
    assert resolve_template("auto", str(base)) == "r1_zero"
    (base / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    assert resolve_template("auto", str(base)) == "chat"


def test_r1_zero_takes_the_r1_format_only():
    from r1lite.prompts import resolve_template

    task = load_task("arithmetic")
    item = make_item("What is 2 + 2?", 4, {})
    for fmt in FORMATS[1:]:
        with pytest.raises(UsageError, match="r1 format only"):
            resolve_template("r1_zero", "gemma3-270m", fmt)
        with pytest.raises(UsageError, match="r1 format only"):
            build_messages(item, task, fmt, template="r1_zero")
    with pytest.raises(UsageError, match="template 'zero' is unknown"):
        resolve_template("zero", "tiny")


def test_sft_pairs_under_r1_zero_continue_the_prompt_as_generation_does(tokenizers):
    from r1lite.train.sft import encode_pair

    tok = tokenizers["default"]
    messages, _ = build_messages(make_item("What is 2 + 2?", 4, {}), load_task("arithmetic"), "r1", template="r1_zero")
    completion = "<think>2 + 2 = 4</think> <answer>4</answer>"
    prompt, body = encode_pair(tok, messages, "", completion, "r1_zero")
    assert tok.decode(body) == " " + completion + tok.eos_token  # the space after "Assistant:" is the model's
    prompt, body = encode_pair(tok, messages, "<think>", completion[len("<think>"):], "r1_zero")
    assert tok.decode(prompt).endswith("Assistant: <think>") and tok.decode(body) == completion[len("<think>"):] + tok.eos_token


class ScriptedDecoderEngine:
    """A real engine whose model is forced to write ``script`` (token by token, greedy)."""

    def __new__(cls, script: str, tokenizer):
        import torch

        from r1lite.engine import Engine, make_decoder
        from r1lite.models import load_model, resolve_runtime
        from r1lite.packaged import stop_token_ids

        model, _ = load_model("tiny", resolve_runtime("cpu", "fp32"))
        decoder = make_decoder(model, torch.float32)
        wanted = tokenizer.encode(script, add_special_tokens=False)
        real_forward = decoder.forward
        state = {}

        def forward(cache, tokens, positions, *args, **kw):
            logits = real_forward(cache, tokens, positions, *args, **kw)
            if tokens.shape[1] > 1:  # the prompt's prefill: the next token is the script's first
                state["prompt"] = int(positions[0, -1]) + 1
            k = min(int(positions[0, -1]) + 1 - state["prompt"], len(wanted) - 1)
            logits[:, wanted[k]] = 1e4
            return logits

        decoder.forward = forward
        return Engine(decoder, tokenizer, stop_token_ids(tokenizer, model))


def test_r1_zero_generation_stops_at_the_answer_s_close_and_scores_it(tokenizers):
    """Through the engine: the completion ends at ``</answer>`` (a base model rarely writes its
    end-of-text), the token that closed it may carry more (``>.``), and the scored text ends at
    the tag, so the format reward passes."""
    from r1lite.evaluate import evaluate

    tok = tokenizers["default"]
    task = load_task("arithmetic")
    item = make_item("What is 2 + 2?", 4, {})
    script = " <think> 2 + 2 = 4 </think> <answer> 4 </answer>. And then it goes on and on about other things"
    engine = ScriptedDecoderEngine(script, tok)
    rows, summary = evaluate(engine, tok, task, [item], "r1", max_new_tokens=40, template="r1_zero")
    (row,) = rows
    assert row["finish"] == "stop" and row["completion"].endswith("</answer>") and "goes on" not in row["completion"]
    assert (row["accuracy"], row["format"], row["template"], summary["template"]) == (1.0, 1.0, "r1_zero", "r1_zero")
    rows, _ = evaluate(engine, tok, task, [item], "r1", max_new_tokens=40, template="chat")  # chat: eos alone stops
    assert rows[0]["finish"] == "length" and rows[0]["format"] == 0.0


def test_r1_zero_stops_at_the_answer_s_close_in_rollouts_chat_and_serve():
    from r1lite.config import build
    from r1lite.edge.chat_format import prompt_format
    from r1lite.engine import Completion, GenerationStats
    from r1lite.train.config import GRPOConfig
    from r1lite.train.distributed import World
    from r1lite.train.rollout import sample_groups

    task = load_task("arithmetic")
    assert prompt_format(task, "r1", True, "r1_zero").stop == ("</answer>",) == prompt_format(None, "r1", False, "r1_zero").stop
    assert prompt_format(task, "r1", True).stop == () == prompt_format(None, "r1", False).stop

    class Recorder:
        def __init__(self):
            self.stops = []

        def generate(self, requests, stats=None, **kw):
            self.stops += [r.sampling.stop for r in requests]
            text = "<think>x</think> <answer>4</answer>."
            return [[Completion([1, 2], text, "stop") for _ in range(r.n)] for r in requests]

    items = [make_item("What is 2 + 2?", 4, {})] * 2
    for template, want in (("r1_zero", ("</end>", "</answer>")), ("chat", ("</end>",))):
        cfg = build(GRPOConfig, {"model": "tiny", "template": template, "prefill_think": False, "stop": ["</end>"],
                                 "batch_size": 4, "group_size": 2})
        engine = Recorder()
        groups, _ = sample_groups(engine, _Tok(), task, cfg, World(), 0, lambda n: items[:n], GenerationStats())
        assert set(engine.stops) == {want}
        # the ">." of the closing token: cut under r1_zero (the stop), a malformed answer under chat
        assert groups[0]["seen"]["format"] == ([1.0, 1.0] if template == "r1_zero" else [0.0, 0.0])


class _Tok:
    """Enough of a tokenizer for prompts: one id per character, a bos, no chat template."""

    bos_token_id, chat_template = 0, None

    def encode(self, text, add_special_tokens=False):
        return [ord(c) for c in text]
