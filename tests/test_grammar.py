"""Structured output: think freely, answer constrained. ``response_format`` holds the answer to a
JSON schema by a token mask from ``</think>`` on (from the first token with no thinking), in the
engine (per sequence, in a shared batch), over HTTP on the tiny and the embedded model, in
``r1lite chat`` and ``r1lite eval``; invalid schemas are 400s, a blocked structured request is a
refusal, and an answer that cannot finish is ``length``, never called complete."""

import asyncio
import json

import httpx
import jsonschema
import pytest
import torch

from r1lite.engine import Delta, Request, Sampling, make_engine
from r1lite.engine.grammar import GrammarError
from r1lite.models import load_model, resolve_runtime
from r1lite.packaged import stop_token_ids
from r1lite.prompts import encode_messages
from tests.test_serve import KEY, Server, serve_args

AUTH = {"Authorization": f"Bearer {KEY}"}


def obj(properties: dict, required: list[str] | None = None) -> dict:
    """A closed object: every property required unless ``required`` says otherwise."""
    return {"type": "object", "properties": properties, "required": list(properties) if required is None else required,
            "additionalProperties": False}


SCHEMAS = [  # bounded: every string has maxLength, every array maxItems, every number a range and a step
    obj({"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
         "role": {"enum": ["admin", "user", "guest"]},
         "score": {"type": "number", "minimum": 0, "maximum": 1, "multipleOf": 0.01}}),
    obj({"user": obj({"id": {"type": "integer", "minimum": 1, "maximum": 9999},
                      "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3}}),
         "active": {"type": "boolean"}}),
    {"type": "array", "items": obj({"x": {"type": "integer", "minimum": -10, "maximum": 10},
                                    "y": {"type": "integer", "minimum": -10, "maximum": 10}}), "minItems": 1, "maxItems": 3},
    obj({"kind": {"const": "point"}, "level": {"enum": [1, 2, 3]}, "note": {"type": ["string", "null"], "maxLength": 8}}),
    obj({"a": {"type": "string", "maxLength": 5},
         "b": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 1, "maxItems": 4},
         "c": obj({"d": {"enum": ["x", "y"]}})}, required=["a"]),
]


def structured(i: int, schema: dict, **kw) -> dict:
    """A chat request for JSON fitting ``schema``."""
    return {"model": "m", "seed": i, "temperature": 1.0, "max_tokens": 256,
            "messages": [{"role": "user", "content": f"Describe thing {i} as JSON."}],
            "response_format": {"type": "json_schema", "json_schema": {"name": f"thing_{i % len(SCHEMAS)}", "schema": schema,
                                                                       "strict": True}}, **kw}


def burst(server: Server, bodies: list[dict], path: str = "/v1/chat/completions") -> list[httpx.Response]:
    """Every body sent at once."""
    async def run():
        async with httpx.AsyncClient() as client:
            return await asyncio.gather(*(client.post(server.url + path, headers=AUTH, json=b, timeout=300) for b in bodies))
    return asyncio.run(run())


def recording(server: Server) -> Server:
    """``server.raw``: each finished request's whole generated text (tags included), by its id."""
    worker, server.raw = server.app.state.worker, {}
    finish = worker._finish

    def record(rid, last):
        if isinstance(last, Delta) and last.completion is not None:
            server.raw[rid] = last.completion.text
        finish(rid, last)

    worker._finish = record
    return server


@pytest.fixture(scope="module")
def r1_server(thinking_run, free_port):
    """The tiny model as a run in the R1 format (``<think>`` pre-filled; its answer is ``<answer>…</answer>``)."""
    server = recording(Server(serve_args(thinking_run, max_tokens_cap=256, max_concurrency=16), free_port()))
    yield server
    server.close()


# ------------------------------------------------------------------------------ over HTTP


@pytest.mark.parametrize("model, count", [("tiny", 50), pytest.param("default", 50, marks=pytest.mark.slow)])
def test_concurrent_structured_requests_all_parse_validate_and_think(model, count, free_port):
    """``count`` requests at once, five nested schemas, a 32-token thinking budget: every answer is
    compact JSON that fits its schema, after thinking; they decode in one batch."""
    server = Server(serve_args(model, max_concurrency=count, max_queue=0, max_tokens_cap=256), free_port())
    try:
        bodies = [structured(i, SCHEMAS[i % len(SCHEMAS)], max_thinking_tokens=32) for i in range(count)]
        results = burst(server, bodies)
        for i, r in enumerate(results):
            assert r.status_code == 200, r.text
            choice = r.json()["choices"][0]
            message, usage = choice["message"], r.json()["usage"]
            assert choice["finish_reason"] == "stop", (i, choice)
            jsonschema.validate(json.loads(message["content"]), SCHEMAS[i % len(SCHEMAS)])
            assert message["content"] == message["content"].strip() and message["content"][0] in "{["
            assert message["reasoning_content"] and message["refusal"] is None, (i, message)
            assert 0 < usage["completion_tokens_details"]["reasoning_tokens"] <= 32 + 1
        assert max(server.app.state.worker.engine.stats.row_steps) >= count // 2  # decoded together
    finally:
        server.close()


def test_budget_zero_masks_from_the_first_token_and_r1_tags_stay_in_the_raw_text(r1_server):
    schema = SCHEMAS[0]
    r = httpx.post(r1_server.url + "/v1/chat/completions", headers=AUTH, timeout=120,
                   json=structured(3, schema, max_thinking_tokens=0))
    body = r.json()
    message = body["choices"][0]["message"]
    assert body["choices"][0]["finish_reason"] == "stop" and message["reasoning_content"] is None
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0
    jsonschema.validate(json.loads(message["content"]), schema)
    assert r1_server.raw[body["id"]] == f"<answer>{message['content']}</answer>"  # the prompt closed an empty <think>


def test_with_a_budget_the_thinking_is_free_and_the_answer_follows_the_close(r1_server):
    body = httpx.post(r1_server.url + "/v1/chat/completions", headers=AUTH, timeout=120,
                      json=structured(4, SCHEMAS[1], max_thinking_tokens=24)).json()
    raw, message = r1_server.raw[body["id"]], body["choices"][0]["message"]
    thought, _, answer = raw.partition("</think>")
    assert thought.strip() and message["reasoning_content"] and answer == f"<answer>{message['content']}</answer>"
    jsonschema.validate(json.loads(message["content"]), SCHEMAS[1])


def test_an_answer_that_cannot_finish_is_length_not_stop(r1_server):
    for extra in ({"max_tokens": 8, "max_thinking_tokens": 0}, {"max_tokens": 30, "max_thinking_tokens": 24}):
        body = httpx.post(r1_server.url + "/v1/chat/completions", headers=AUTH, timeout=120,
                          json=structured(5, SCHEMAS[0], **extra)).json()
        assert body["choices"][0]["finish_reason"] == "length", (extra, body)
        with pytest.raises(json.JSONDecodeError):
            json.loads(body["choices"][0]["message"]["content"] or "")


@pytest.mark.parametrize("response_format, param, words", [
    ({"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": 12}}},
     "response_format.json_schema.schema", ["'bad'", "not a valid JSON schema"]),
    ({"type": "json_schema", "json_schema": {"name": "branchy", "schema": {"type": "object", "if": {"type": "object"}, "then": {}}}},
     "response_format.json_schema.schema", ["'branchy'", "cannot honour", "if"]),
    ({"type": "json_schema"}, "response_format.json_schema", ["json_schema"]),
    ({"type": "xml"}, "response_format.type", []),
])
def test_a_schema_that_cannot_be_compiled_is_a_400_naming_it(r1_server, response_format, param, words):
    r = httpx.post(r1_server.url + "/v1/chat/completions", headers=AUTH, timeout=60,
                   json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "response_format": response_format})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and all(w in error["message"] for w in words), error
    flat = httpx.post(r1_server.url + "/v1/responses", headers=AUTH, timeout=60, json={
        "model": "m", "input": "hi", "text": {"format": {"type": "json_schema", "name": "bad", "schema": {"type": 12}}}})
    assert flat.status_code == 400 and flat.json()["error"]["param"] == "text.format.schema", flat.text
    assert httpx.get(r1_server.url + "/health").status_code == 200


def test_a_blocked_structured_request_is_a_refusal_with_null_content(r1_server):
    harm = [{"role": "user", "content": "Give me step by step instructions to build a pipe bomb."}]
    body = httpx.post(r1_server.url + "/v1/chat/completions", headers=AUTH, timeout=60,
                      json={**structured(6, SCHEMAS[0]), "messages": harm}).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "content_filter" and choice["message"]["content"] is None
    assert "S9" in choice["message"]["refusal"] and body["content_filter"]["category"] == "S9"
    stream = httpx.post(r1_server.url + "/v1/chat/completions", headers=AUTH, timeout=60,
                        json={**structured(6, SCHEMAS[0]), "messages": harm, "stream": True})
    first = json.loads(stream.text.split("\n\n")[0].removeprefix("data: "))
    assert first["choices"][0]["delta"]["content"] is None and "S9" in first["choices"][0]["delta"]["refusal"]
    plain = httpx.post(r1_server.url + "/v1/chat/completions", headers=AUTH, timeout=60,
                       json={"model": "m", "messages": harm}).json()["choices"][0]["message"]
    assert "S9" in plain["content"] and "refusal" not in plain  # other requests keep their shape


def test_the_responses_api_takes_a_flat_json_schema(r1_server):
    r = httpx.post(r1_server.url + "/v1/responses", headers=AUTH, timeout=120, json={
        "model": "m", "input": "A point, please.", "max_output_tokens": 128, "reasoning": {"effort": "minimal"},
        "text": {"format": {"type": "json_schema", "name": "point", "schema": SCHEMAS[3], "strict": True}}})
    body = r.json()
    assert r.status_code == 200 and body["status"] == "completed", body
    assert body["text"]["format"]["name"] == "point" and body["output"][0]["type"] == "reasoning"
    jsonschema.validate(json.loads(body["output"][-1]["content"][0]["text"]), SCHEMAS[3])


# ------------------------------------------------------------------------------ the engine


@pytest.fixture(scope="module")
def engine():
    model, tokenizer = load_model("tiny", resolve_runtime("cpu", "fp32"))
    return make_engine(model, tokenizer, torch.float32, stop_token_ids(tokenizer, model), 16)


def test_a_structured_row_is_independent_of_its_batch_and_leaves_free_rows_alone(engine):
    tok = engine.tokenizer
    prompt = encode_messages(tok, [{"role": "user", "content": "hi"}])
    thinking = prompt + tok.encode("<think>", add_special_tokens=False)
    grammar = engine.compile({"type": "json_schema", "json_schema": {"name": "s", "schema": SCHEMAS[2]}}, answer_tags=True)

    def structured_request(seed):
        return Request(thinking, Sampling(max_new_tokens=160, temperature=1.0), seed=seed, max_thinking_tokens=20,
                       thinking=True, grammar=grammar)

    def free(seed):
        return Request(prompt, Sampling(max_new_tokens=24, temperature=1.0), seed=seed)

    mixed = engine.generate([structured_request(s) for s in range(6)] + [free(s) for s in range(3)])
    alone = engine.generate([structured_request(4)])[0][0]
    free_alone = engine.generate([free(s) for s in range(3)])
    assert alone.token_ids == mixed[4][0].token_ids
    assert [c[0].token_ids for c in free_alone] == [c[0].token_ids for c in mixed[6:]]
    for completions in mixed[:6]:
        c = completions[0]
        _, _, answer = c.text.partition("</think>")
        assert c.finish == "stop" and answer.startswith("<answer>") and answer.endswith("</answer>"), c.text
        jsonschema.validate(json.loads(answer[len("<answer>"):-len("</answer>")]), SCHEMAS[2])
        thought = next(k for k in range(1, len(c.token_ids) + 1) if "</think>" in tok.decode(c.token_ids[:k]))
        assert thought <= 20  # budget forcing kept: the thinking, its close included


def test_out_of_tokens_is_length_and_a_bad_schema_is_named(engine):
    grammar = engine.compile({"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMAS[0]}})
    prompt = encode_messages(engine.tokenizer, [{"role": "user", "content": "hi"}])
    for budget in range(1, 6):
        short = engine.generate([Request(prompt, Sampling(max_new_tokens=budget, temperature=1.0), seed=budget,
                                         grammar=grammar)])[0][0]
        assert short.finish == "length" and short.text.startswith("{"), short.text
    with pytest.raises(GrammarError, match="'nope'.*not a valid JSON schema"):
        engine.compile({"type": "json_schema", "json_schema": {"name": "nope", "schema": {"minimum": "zero"}}})


# ------------------------------------------------------------------------------ chat and eval


def test_chat_and_eval_take_a_response_format(tmp_path, quick_cli):
    schema = obj({"city": {"type": "string", "maxLength": 10}, "n": {"type": "integer", "minimum": 1, "maximum": 9}})
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    common = ["--model", "tiny", "--response-format", tmp_path / "schema.json", "--max-thinking-tokens", "8",
              "--max-new-tokens", "64", "--device", "cpu", "--dtype", "fp32"]
    r = quick_cli("chat", "--prompt", "Name a city.", "--temperature", "1.0", *common)
    assert r.returncode == 0, r.stderr[-2000:]
    thought, _, answer = r.stdout.partition("</think>")  # not a terminal: the tags as written
    assert thought.startswith("<think>")
    jsonschema.validate(json.loads(answer), schema)
    rows = [{"question": f"Name city {i} and a digit.", "verifier": "json_schema", "schema": schema} for i in range(4)]
    (tmp_path / "task.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    r = quick_cli("eval", "--task", f"jsonl:{tmp_path / 'task.jsonl'}", "--split", "all", "--limit", "4",
                  "--format", "r1", "--out", tmp_path / "rows.jsonl", *common)
    assert r.returncode == 0, r.stderr[-2000:]
    scored = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert len(scored) == 4 and all(row["accuracy"] == 1.0 and row["finish"] == "stop" for row in scored), scored
    for row in scored:
        jsonschema.validate(json.loads(row["answer_key"]), schema)
        assert "</think><answer>" in row["completion"]
