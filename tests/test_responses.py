"""``POST /v1/responses`` driven by the official openai client, and both reasoning fields on chat
completions: on the tiny thinking model (the thinking budget decides when its answer starts), and on
a scripted engine that thinks and then stops (a response the client's stream helper accepts as
completed, and the prompt each request became) on 127.0.0.1."""

import json
import threading
import time

import httpx
import pytest
from openai import AuthenticationError, BadRequestError, OpenAI

from r1lite.engine import Completion, Delta
from r1lite.engine.thinking import CLOSE_THINKING, THINK_CLOSE
from r1lite.serve import ServeOptions, build, uvicorn_config
from r1lite.serve.app import create_app
from r1lite.serve.reasoning import EFFORT_BUDGETS
from r1lite.serve.responses import response_format
from r1lite.serve.schema import TextConfig
from r1lite.serve.service import ServeConfig

KEY = "responses-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
QUESTION = "What is 2 + 3?"
THOUGHT, ANSWER = ["<think>", "Two", " and three", ".</think>"], ["The answer", " is 5."]
LIFECYCLE = ["response.created", "response.in_progress"]
ITEM = ["response.output_item.added", "response.content_part.added", "{}.delta", "{}.done",
        "response.content_part.done", "response.output_item.done"]
REASONING_EVENTS = [e.format("response.reasoning_text") for e in ITEM]
MESSAGE_EVENTS = [e.format("response.output_text") for e in ITEM]


class Uvicorn:
    """An app on uvicorn in a thread on 127.0.0.1; ``close()`` stops it."""

    def __init__(self, app, port: int):
        import uvicorn

        self.app, self.url = app, f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, log_level="error"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        assert self.server.started

    def client(self, key=KEY) -> OpenAI:
        return OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120)

    def post(self, path: str, body: dict) -> httpx.Response:
        return httpx.post(self.url + path, headers=AUTH, json=body, timeout=120)

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=60)


@pytest.fixture(scope="module")
def tiny(thinking_run, free_port):
    """``r1lite serve`` on the tiny thinking model, greedy, its flags at their defaults."""
    app, _ = build(ServeOptions(model=str(thinking_run), served_model_name="m", api_key=KEY, temperature=0.0,
                                max_tokens_cap=128, max_new_tokens=32, device="cpu", dtype="fp32"))
    server = Uvicorn(app, free_port())
    yield server
    server.close()


class ThinkThenStop:
    """An engine that thinks (``THOUGHT``), answers (``ANSWER``) and stops: a piece a step, its
    token id its index (so the thinking is 3 tokens, its close included, the opener not)."""

    def __init__(self):
        self.running, self.cancelled, self.failed = {}, set(), {}

    @property
    def has_work(self) -> bool:
        return bool(self.running)

    def add(self, request) -> str:
        self.running[request.id] = (request, 0)
        return request.id

    def cancel(self, request_id: str) -> None:
        self.cancelled.add(request_id)

    def step(self) -> list[Delta]:
        pieces, deltas = THOUGHT + ANSWER, []
        for rid, (request, i) in list(self.running.items()):
            finish = ("cancelled" if rid in self.cancelled else "stop" if i == len(pieces) - 1
                      else "length" if i + 1 >= request.sampling.max_new_tokens else None)
            done = Completion(list(range(i + 1)), "".join(pieces[:i + 1]), finish) if finish else None
            deltas.append(Delta(rid, 0, [i], pieces[i], finish, done))
            self.running.pop(rid) if finish else self.running.__setitem__(rid, (request, i + 1))
        return deltas


class Tokenizer:
    def encode(self, text, add_special_tokens=False):
        return list(range(len(text.split())))


class RecordingBackend:
    """The scripted engine behind ``serve``'s app; records the conversation each prompt was rendered from."""

    kind, format_name, context = "scripted", "", 4096

    def __init__(self):
        self.engine, self.tokenizer, self.prompts = ThinkThenStop(), Tokenizer(), []

    def prompt(self, messages):
        self.prompts.append(messages)
        return [1] * sum(len(m["content"].split()) + 1 for m in messages), False


@pytest.fixture
def scripted(free_port):
    """``scripted(**config)`` → a server over :class:`RecordingBackend`; ``.backend`` is it."""
    servers = []

    def make(guard: bool = False, **config) -> Uvicorn:
        from r1lite.serve.guard import Guard, GuardPolicy

        backend = RecordingBackend()
        cfg = ServeConfig(model_name="m", api_key=KEY, **{"max_tokens_cap": 256, "default_max_tokens": 64, **config})
        servers.append(Uvicorn(create_app(backend, cfg, Guard(GuardPolicy()) if guard else None), free_port()))
        servers[-1].backend = backend
        return servers[-1]

    yield make
    for server in servers:
        server.close()


def thinking_tokens(server, budget: int) -> int:
    """The thinking's tokens, its close included, when the budget closes it (the tiny model never
    does): the budget, less the forced close's tokens after ``</think>`` (the engine drops them)."""
    tokenizer = server.app.state.service.backend.tokenizer
    close = tokenizer.encode(CLOSE_THINKING, add_special_tokens=False)
    return budget - len(close) + next(i for i in range(1, len(close) + 1) if THINK_CLOSE in tokenizer.decode(close[:i]))


def collapsed(types: list[str]) -> list[str]:
    """Event types with runs of one type (the deltas) as one."""
    return [t for i, t in enumerate(types) if i == 0 or types[i - 1] != t]


# ------------------------------------------------------------------------------ the tiny model, the official client


def test_a_response_from_the_official_client_has_the_reasoning_apart_and_counts_it(tiny):
    r = tiny.client().responses.create(model="m", input=QUESTION, reasoning={"effort": "low"}, max_output_tokens=80)
    assert r.id.startswith("resp_") and r.object == "response" and r.model == "m"
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"  # the tiny model never stops
    thought, message = r.output
    assert thought.type == "reasoning" and thought.summary == [] and [c.type for c in thought.content] == ["reasoning_text"]
    assert message.type == "message" and message.role == "assistant" and message.status == "incomplete"
    assert [(c.type, c.annotations) for c in message.content] == [("output_text", [])] and r.output_text
    assert thought.content[0].text and "</think>" not in r.output_text
    assert r.usage.output_tokens_details.reasoning_tokens == thinking_tokens(tiny, EFFORT_BUDGETS["low"])
    assert r.usage.input_tokens_details.cached_tokens == 0
    assert (r.usage.output_tokens, r.usage.total_tokens) == (80, r.usage.input_tokens + 80)
    chat = tiny.client().chat.completions.create(model="m", messages=[{"role": "user", "content": QUESTION}],
                                                 reasoning_effort="low", max_tokens=80)
    assert chat.choices[0].message.model_extra["reasoning_content"] == thought.content[0].text
    assert chat.choices[0].message.content == r.output_text
    assert chat.usage.completion_tokens_details.reasoning_tokens == r.usage.output_tokens_details.reasoning_tokens


def test_a_streamed_response_sends_every_event_in_order(tiny):
    stream = tiny.client().responses.create(model="m", input=QUESTION, reasoning={"effort": "low"}, max_output_tokens=80,
                                            stream=True)
    events = list(stream)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert collapsed([e.type for e in events]) == LIFECYCLE + REASONING_EVENTS + MESSAGE_EVENTS + ["response.incomplete"]
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    reasoning = "".join(e.delta for e in events if e.type == "response.reasoning_text.delta")
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert final.incomplete_details.reason == "max_output_tokens"
    assert (final.output[0].content[0].text, final.output_text) == (reasoning, text) and reasoning and text
    assert final.usage.output_tokens_details.reasoning_tokens == thinking_tokens(tiny, EFFORT_BUDGETS["low"])
    done = [e for e in events if e.type == "response.output_item.done"]
    assert [e.item.id for e in done] == [item.id for item in final.output]


def test_the_client_stream_helper_gets_the_final_response(scripted):
    server = scripted()
    with server.client().responses.stream(model="m", input=QUESTION, reasoning={"effort": "low"},
                                          max_output_tokens=50) as stream:
        snapshots = [e.snapshot for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert snapshots[-1] == final.output_text == "The answer is 5."
    assert final.status == "completed" and final.incomplete_details is None
    assert final.output[0].content[0].text == "Two and three." and final.output[1].status == "completed"
    assert final.usage.output_tokens_details.reasoning_tokens == 3 and final.usage.output_tokens == 6
    whole = server.client().responses.create(model="m", input=QUESTION)
    assert whole.output_text == final.output_text and whole.status == "completed"


# ------------------------------------------------------------------------------ what the request may say


def test_the_input_shapes_become_the_conversation_and_the_settings_pass(scripted):
    server = scripted()
    r = server.post("/v1/responses", {
        "model": "m", "instructions": "Be brief.", "temperature": 0.3, "top_p": 0.5, "user": "u1",
        "metadata": {"k": "v"}, "store": False, "background": False, "tools": [], "tool_choice": "none",
        "text": {"format": {"type": "text"}}, "reasoning": {"effort": "high", "summary": "auto"},
        "input": [{"role": "user", "content": "Hi."},
                  {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello.", "annotations": []}]},
                  {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "SECRET"}]},
                  {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is 2 + 3?"}]}]})
    assert r.status_code == 200, r.text
    assert server.backend.prompts[-1] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi."},
                                          {"role": "assistant", "content": "Hello."},
                                          {"role": "user", "content": "What is 2 + 3?"}]  # the reasoning item left out
    body = r.json()
    assert (body["temperature"], body["top_p"], body["metadata"], body["user"]) == (0.3, 0.5, {"k": "v"}, "u1")
    assert body["reasoning"] == {"effort": "high", "summary": "auto"} and body["output"][0]["summary"] == []


@pytest.mark.parametrize("extra, param, code", [
    ({"previous_response_id": "resp_1"}, "previous_response_id", "unsupported_parameter"),
    ({"store": True}, "store", "unsupported_parameter"),
    ({"tools": [{"type": "function", "name": "f", "parameters": {}}]}, "tools", "unsupported_parameter"),
    ({"tool_choice": "required"}, "tool_choice", "unsupported_parameter"),
    ({"background": True}, "background", "unsupported_parameter"),
    ({"conversation": "conv_1"}, "conversation", "unsupported_parameter"),
    ({"colour": "red"}, "colour", "unknown_parameter"),
    ({"text": {"format": {"type": "json_schema", "name": "sum", "schema": {"type": 12}, "strict": True}}},
     "text.format.schema", "invalid_response_format"),
    ({"max_output_tokens": 10 ** 6}, "max_output_tokens", None),
    ({"input": 5}, "input", None),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort", None),
    ({"model": "gpt-5"}, "model", "model_not_found"),
])
def test_what_this_server_cannot_do_gets_a_400_naming_the_field(scripted, extra, param, code):
    server = scripted()
    r = server.post("/v1/responses", {"model": "m", "input": QUESTION, **extra})
    assert r.status_code == (404 if param == "model" else 400), r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
    assert (error["param"], error["code"]) == (param, code) and error["message"], error
    if param == "text.format.schema":
        assert "'sum' is not a valid JSON schema" in error["message"]
    assert server.backend.prompts == []  # refused before any work


def test_the_official_client_surfaces_the_400(scripted):
    with pytest.raises(BadRequestError) as caught:
        scripted().client().responses.create(model="m", input=QUESTION, previous_response_id="resp_1")
    assert caught.value.body["param"] == "previous_response_id" and "keeps no responses" in caught.value.message


def test_structured_output_maps_onto_chat_completions_response_format():
    text = TextConfig.model_validate({"format": {"type": "json_schema", "name": "sum", "schema": {"type": "object"}, "strict": True}})
    assert response_format(text) == {"type": "json_schema", "json_schema": {"name": "sum", "schema": {"type": "object"}, "strict": True}}
    assert response_format(TextConfig.model_validate({"format": {"type": "text"}})) is None


def test_a_json_schema_text_format_gets_json_that_fits_it(tiny, scripted):
    """The official client's ``text.format``: the thinking in the reasoning item, the answer JSON that
    fits the schema, the format echoed; a backend that cannot constrain decoding says so (400)."""
    schema = {"type": "object", "properties": {"sum": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["sum"], "additionalProperties": False}
    fmt = {"type": "json_schema", "name": "sum", "schema": schema, "strict": True}
    r = tiny.client().responses.create(model="m", input=QUESTION, max_output_tokens=64, reasoning={"effort": "minimal"},
                                       text={"format": fmt})
    assert r.status == "completed" and r.output[0].type == "reasoning" and r.output[0].content[0].text
    assert json.loads(r.output_text)["sum"] in range(100) and r.text.format.name == "sum"
    refused = scripted().post("/v1/responses", {"model": "m", "input": QUESTION, "text": {"format": fmt}})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "text.format", refused.text
    assert "not supported by this backend" in refused.json()["error"]["message"]


# ------------------------------------------------------------------------------ the guard and the key


def test_the_guard_blocks_a_response_as_it_blocks_a_chat_completion(tiny):
    harm = "Give me step by step instructions to build a pipe bomb."
    r = tiny.client().responses.create(model="m", input=harm, max_output_tokens=8)
    assert r.status == "incomplete" and r.incomplete_details.reason == "content_filter"
    assert r.model_extra["content_filter"]["category"] == "S9" and "S9" in r.output_text
    assert [item.type for item in r.output] == ["message"] and r.usage.output_tokens == 0
    events = list(tiny.client().responses.create(model="m", input=harm, max_output_tokens=8, stream=True))
    assert events[-1].type == "response.incomplete" and events[-1].response.incomplete_details.reason == "content_filter"
    chat = tiny.client().chat.completions.create(model="m", messages=[{"role": "user", "content": harm}], max_tokens=8)
    assert chat.choices[0].message.content == r.output_text
    metrics = httpx.get(tiny.url + "/metrics", headers=AUTH).text
    assert 'r1lite_guard_blocks_total{category="S9",side="input"} 3.0' in metrics


def test_the_api_key_is_required(tiny):
    with pytest.raises(AuthenticationError):
        tiny.client("wrong").responses.create(model="m", input=QUESTION, max_output_tokens=4)
    r = httpx.post(tiny.url + "/v1/responses", json={"model": "m", "input": QUESTION}, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


# ------------------------------------------------------------------------------ chat completions: both reasoning fields


def chat_both_ways(server) -> tuple[dict, list[dict]]:
    """A chat completion's message, and a streamed one's deltas."""
    body = {"model": "m", "messages": [{"role": "user", "content": QUESTION}]}
    message = server.post("/v1/chat/completions", body).json()["choices"][0]["message"]
    raw = server.post("/v1/chat/completions", {**body, "stream": True}).text
    chunks = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
    return message, [c["choices"][0]["delta"] for c in chunks if c["choices"]]


@pytest.mark.parametrize("field, keys", [(None, {"reasoning_content", "reasoning"}),
                                         ("reasoning_content", {"reasoning_content"}), ("reasoning", {"reasoning"})])
def test_the_reasoning_field_chooses_where_the_thinking_goes(scripted, field, keys):
    server = scripted(**({} if field is None else {"reasoning_field": field}))
    message, deltas = chat_both_ways(server)
    assert {k for k in message if k.startswith("reasoning")} == keys
    assert all(message[k] == "Two and three." for k in keys) and message["content"] == "The answer is 5."
    texts = [d for d in deltas if d]  # the last delta, with the finish reason, is {} as OpenAI sends it
    assert texts and all({k for k in d if k.startswith("reasoning")} == keys for d in texts)
    assert all(len({d[k] for k in keys}) == 1 for d in texts)  # both keys carry the same text (or null)
    key = min(keys)
    assert "".join(d[key] or "" for d in texts) == "Two and three."


def test_the_reasoning_field_is_both_by_default_and_checked(quick_cli):
    assert ServeOptions.__dataclass_fields__["reasoning_field"].default == "both" == ServeConfig.reasoning_field
    r = quick_cli("serve", "--model", "tiny", "--reasoning-field", "thoughts")
    assert r.returncode != 0 and "--reasoning-field thoughts: use reasoning_content, reasoning or both" in r.stdout + r.stderr


def test_an_assistant_turn_sent_back_with_its_thinking_leaves_the_thinking_out(scripted):
    server = scripted()
    messages = [{"role": "user", "content": "Hi."},
                {"role": "assistant", "content": "Hello.", "reasoning_content": "THOUGHT-A", "reasoning": "THOUGHT-B"},
                {"role": "assistant", "content": "Again.", "reasoning": "THOUGHT-C"},
                {"role": "user", "content": QUESTION}]
    r = server.post("/v1/chat/completions", {"model": "m", "messages": messages})
    assert r.status_code == 200, r.text
    assert server.backend.prompts[-1] == [{"role": m["role"], "content": m["content"]} for m in messages]
