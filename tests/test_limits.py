"""Bounded sizes: a token budget over the model's context is one line before any work, in every
command that takes one; a teacher's request has a deadline for the whole answer, a capped
Retry-After and a capped answer size, tested against teachers on loopback."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from r1lite.distill.teachers import (
    MAX_WAIT_SECONDS,
    Ask,
    EndpointConfig,
    EndpointTeacher,
    Failure,
    TeacherSampling,
    backoff_seconds,
    retry_after_seconds,
)
from tests.test_distill import Loopback, chat

CPU = ("--device", "cpu", "--dtype", "fp32")
AT_MOST = "ask for at most"


# ---------------------------------------------------------------------------------------------- token budgets


def budget_cases(tmp_path) -> dict:
    """command line, the words the one error line must hold, a path that must not exist afterwards."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: tiny\ntask: arithmetic\nmax_new_tokens: 5000\nmax_steps: 1\nbatch_size: 4\ngroup_size: 2\n"
                      "eval_items: 0\n")
    return {
        "eval": (["eval", "--model", "tiny", "--task", "arithmetic", "--limit", "2", "--max-new-tokens", "4096",
                  "--out", str(tmp_path / "rows.jsonl"), *CPU],
                 ["--max-new-tokens 4096: the model's context is 4096 tokens and the prompt takes", AT_MOST],
                 tmp_path / "rows.jsonl"),
        "chat": (["chat", "--model", "tiny", "--prompt", "Hi", "--max-new-tokens", "4096", *CPU],
                 ["--max-new-tokens 4096: the model's context is 4096 tokens", f"{AT_MOST} 4095"], None),
        "chat, a long prompt": (["chat", "--model", "tiny", "--prompt", "word " * 5000, *CPU],
                                ["--max-new-tokens 512: the prompt is", "the model's whole context 4096; shorten the prompt"],
                                None),
        "distill, a local teacher": (["distill", "--teacher", "tiny", "--task", "arithmetic", "--limit", "1",
                                      "--max-new-tokens", "4096", "--out", str(tmp_path / "traces.jsonl"), *CPU],
                                     ["--max-new-tokens 4096: the model's context is 4096 tokens", f"{AT_MOST} 4095"],
                                     tmp_path / "traces.jsonl"),
        "train, a recipe": (["train", "--config", str(recipe), "--out", str(tmp_path / "run"), *CPU],
                            ["max_new_tokens 5000: the model's context is 4096 tokens", f"{AT_MOST} 4095"],
                            tmp_path / "run"),
        "cost, a model here": (["cost", "--model", "tiny", "--task", "arithmetic", "--max-new-tokens", "4096"],
                               ["max_new_tokens 4096: the model's context is 4096 tokens", f"{AT_MOST} 4095"], None),
        "cost, a built-in shape": (["cost", "--model", "Qwen3-8B", "--hardware", "h100", "--max-new-tokens", "50000"],
                                   ["max_new_tokens 50000: the model's context is 40960 tokens", f"{AT_MOST} 40959"], None),
    }


@pytest.mark.parametrize("case", ["eval", "chat", "chat, a long prompt", "distill, a local teacher", "train, a recipe",
                                  "cost, a model here", "cost, a built-in shape"])
def test_a_token_budget_over_the_model_s_context_is_one_line_before_any_work(case, tmp_path, capsys):
    from r1lite.cli import main

    argv, needles, unwritten = budget_cases(tmp_path)[case]
    code = main(argv)  # in-process: the main the console script runs
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err[-2000:]
    assert all(n in err for n in needles), err
    assert unwritten is None or not unwritten.exists()


# ---------------------------------------------------------------------------------------------- a teacher's answer


class StreamingTeacher(Loopback):
    """A chat endpoint on loopback whose every answer is ``pieces`` written one after the other,
    ``gap`` seconds apart, with no Content-Length (the body ends when the connection closes) unless
    ``declare`` gives one. ``finished`` is set once every piece went out."""

    def __init__(self, pieces, gap: float = 0.0, declare: int | None = None):
        self.finished = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if declare is not None:
                    self.send_header("Content-Length", str(declare))
                self.end_headers()
                for piece in pieces():
                    self.wfile.write(piece)
                    self.wfile.flush()
                    time.sleep(gap)
                outer.finished.set()

        self.start(Handler)


def ask_once(url: str, timeout: float):
    """One ask of an endpoint teacher, no retries: its Answer or Failure."""
    teacher = EndpointTeacher(EndpointConfig(url, "fake-teacher", None, "", timeout, max_retries=0, backoff=0.0,
                                             concurrency=1), TeacherSampling(0.6, 0.95, 64))
    results = []
    teacher.run([Ask(("p", 0), [{"role": "user", "content": "What is 2 + 2?"}], 7)], results.append)
    return results[0]


def test_the_timeout_bounds_the_whole_request_not_each_read():
    body = json.dumps(chat("<think>2 + 2 = 4</think>\n<answer>4</answer>")).encode()
    # a byte every 0.1 s for 3 s: each read is quick, the whole answer is not
    server = StreamingTeacher(lambda: [body[i:i + 1] for i in range(30)] + [body[30:]], gap=0.1)
    try:
        result = ask_once(server.url, timeout=1.0)
        assert isinstance(result, Failure) and result.kind == "timeout", result
        assert "no whole answer within 1 s" in result.error
    finally:
        server.close()


def test_a_retry_after_is_capped_at_60_seconds():
    assert MAX_WAIT_SECONDS == 60.0
    assert backoff_seconds(0, 1.0, retry_after_seconds("600")) == 60.0
    assert backoff_seconds(0, 1.0, retry_after_seconds("7")) == 7.0
    assert backoff_seconds(10, 1.0, None) == 60.0  # 1 s x 2^10, capped too


@pytest.mark.parametrize("declared", [False, True])
def test_an_answer_over_the_size_cap_fails_as_too_large_and_the_rest_is_never_read(declared):
    size = 64 * 2**20  # 16 times the 4 MiB cap: far more than the socket buffers between the two ends hold
    head = b'{"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "'
    tail = b'"}}], "model": "fake-teacher"}'
    filler = size - len(head) - len(tail)

    def pieces():
        yield head
        for _ in range(filler // 2**16):
            yield b"a" * 2**16
        yield b"a" * (filler % 2**16) + tail

    server = StreamingTeacher(pieces, declare=size if declared else None)
    try:
        result = ask_once(server.url, timeout=30.0)
        assert isinstance(result, Failure) and result.kind == "too_large" and result.attempts == 1, result
        assert "4 MiB" in result.error
        assert not server.finished.wait(1.0)  # the teacher could not write it all: nobody read the rest
    finally:
        server.close()
