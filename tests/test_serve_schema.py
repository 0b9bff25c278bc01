"""Schemathesis over every route the server publishes, in-process (ASGI, no socket), on the tiny
random model: generated requests, valid and invalid, never get a server error, and every answer
fits the published schema (its status, content type and body); a request without the key gets a
401 in OpenAI's shape. Bounded: EXAMPLES requests per route and mode, at most MAX_TOKENS tokens
each."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from r1lite.serve import ServeOptions, build

KEY = "schema-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "m"
EXAMPLES = 25
"""Generated requests per route and mode (a few seconds a route on a 2-core CPU)."""
MAX_TOKENS = 8
"""The server's --max-tokens-cap here: a generated request asks for at most this many tokens."""
ROUTES = ["GET /health", "GET /metrics", "GET /v1/models", "POST /v1/chat/completions", "POST /v1/responses"]
CONFORMS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
BOUNDED = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])


@pytest.fixture
def app(thinking_run):
    """The server's app as ``r1lite serve`` builds it, with the key set and the API docs on (the
    schema is read from the app itself). One a test: schemathesis ends the app's lifespan (its
    worker drains and stops) when the test that started it ends."""
    app, _ = build(ServeOptions(model=str(thinking_run), served_model_name=MODEL, api_key=KEY, api_docs=True,
                                max_tokens_cap=MAX_TOKENS, max_new_tokens=MAX_TOKENS, temperature=0.0,
                                device="cpu", dtype="fp32"))
    yield app
    app.state.worker.stop()


@pytest.fixture
def operations(app) -> dict:
    """The published operations by label (``POST /v1/chat/completions``)."""
    api = schemathesis.openapi.from_asgi("/openapi.json", app)
    return {op.label: op for op in (result.ok() for result in api.get_all_operations())}


def test_the_schema_publishes_every_route(operations):
    assert sorted(operations) == ROUTES


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_get_no_server_error_and_answers_fit_the_schema(operations, mode):
    """Valid requests (the served model's name put in, else nearly all would be 404s) and invalid
    ones (then also: refused with a 4xx) on every route that takes input."""
    checks = CONFORMS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])
    for label, op in operations.items():
        if mode is GenerationMode.NEGATIVE and not list(op.body):
            continue  # nothing to make invalid

        @BOUNDED
        @given(case=op.as_strategy(mode))
        def check(case):
            if mode is GenerationMode.POSITIVE and isinstance(case.body, dict):
                case.body["model"] = MODEL
            case.call_and_validate(headers=AUTH, checks=checks)

        check()


def test_a_request_without_the_key_gets_401_in_openai_shape(operations):
    for label, op in operations.items():
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]} if op.method == "post" else None
        case = op.Case(body=body, media_type="application/json") if body else op.Case()
        response = case.call()
        if label == "GET /health":  # open: load balancers probe it
            assert response.status_code == 200
            continue
        assert response.status_code == 401, label
        assert response.json()["error"]["code"] == "invalid_api_key", label
        case.validate_response(response, checks=CONFORMS)


def test_a_method_a_route_does_not_take_gets_405_naming_the_ones_it_does(operations):
    """RFC 9110: a 405 carries ``Allow`` (schemathesis' unsupported-method check)."""
    for label, op in operations.items():
        other = "DELETE" if op.method == "get" else "GET"
        response = op.Case(method=other).call(headers=AUTH)
        assert response.status_code == 405 and response.headers.get("allow") == [op.method.upper()], label
        assert response.json()["error"]["code"] == "method_not_allowed", label


@pytest.mark.parametrize("label, body", [
    ("POST /v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
    ("POST /v1/responses", {"input": "hi", "reasoning": {"effort": "minimal"}}),
])
def test_a_streamed_answer_fits_the_schema(operations, label, body):
    """Generated requests seldom stream: one that does, each of its events checked against the
    published event schema."""
    case = operations[label].Case(body={"model": MODEL, "stream": True, **body}, media_type="application/json")
    response = case.call(headers=AUTH)
    assert response.status_code == 200 and response.headers["content-type"][0].startswith("text/event-stream")
    case.validate_response(response, checks=CONFORMS)
