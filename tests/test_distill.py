"""Distillation: traces from teachers on loopback — scripted OpenAI-compatible servers for every filter
and every fault, llama-cpp-python's own server behind a counting proxy for the end-to-end run with a
kill and a restart, local teachers (PyTorch and GGUF) through the engine — and bad input refused in
one line with the traces file left byte-identical."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from r1lite import prompts, rewards, tasks
from r1lite.distill import collect
from r1lite.distill.contamination import Contamination
from r1lite.train import sft
from r1lite.train.policy import Policy

ROOT = Path(__file__).resolve().parents[1]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
ENV = {**os.environ, **ONE_THREAD}


def chat(content, reasoning_content=None, reasoning=None, finish="stop", model="fake-teacher"):
    """A chat completion body as OpenAI-compatible servers send it."""
    message = {"role": "assistant", "content": content}
    if reasoning_content is not None:
        message["reasoning_content"] = reasoning_content
    if reasoning is not None:
        message["reasoning"] = reasoning
    return {"id": "cmpl-1", "object": "chat.completion", "model": model, "system_fingerprint": "fp-test",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30,
                      "completion_tokens_details": {"reasoning_tokens": 5}}}


def question_of(body: dict) -> str:
    return body["messages"][-1]["content"].split("\n\n")[-1]


class Quiet(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that gave up (a timeout test) is expected
        pass


class Loopback:
    """A threaded HTTP server on 127.0.0.1 for a handler class; ``url`` is its ``…/v1``."""

    def start(self, handler) -> None:
        self.server = Quiet(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeTeacher(Loopback):
    """An OpenAI-compatible server on loopback answering from a script: ``respond(question, attempt)``
    → (status, headers, body: dict or bytes, delay seconds). Records every chat request."""

    def __init__(self, respond, key=None, models=("fake-teacher",)):
        self.calls: list[tuple[float, str, int]] = []  # (time, question, seed)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, status, body, headers=()):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def authorized(self):
                if key is None or self.headers.get("Authorization") == f"Bearer {key}":
                    return True
                self.send(401, {"error": {"message": "invalid api key"}})
                return False

            def do_GET(self):
                if self.authorized():
                    self.send(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in models]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.authorized():
                    return
                question = question_of(body)
                attempt = sum(q == question and s == body["seed"] for _, q, s in outer.calls)
                outer.calls.append((time.monotonic(), question, body["seed"]))
                status, headers, reply, delay = respond(question, attempt)
                time.sleep(delay)
                self.send(status, reply, headers)

        self.start(Handler)

    def asked(self) -> list[str]:
        return [q for _, q, _ in self.calls]


def answer_of(question: str) -> int:
    a, op, b = re.match(r"What is (\d+) ([+*-]) (\d+)\?", question).groups()
    return {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]


def snapshot(out: Path) -> dict:
    files = [out, collect.sibling(out, ".dropped.jsonl"), collect.sibling(out, ".card.json"), collect.sibling(out, ".card.md")]
    return {f.name: f.read_bytes() if f.exists() else None for f in files}


# ---------------------------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize("content, fields, expected", [
    ("<answer>7</answer>", {"reasoning_content": "3 + 4 = 7"}, ("3 + 4 = 7", "<answer>7</answer>", "reasoning_content")),
    ("7", {"reasoning": "3 + 4"}, ("3 + 4", "7", "reasoning")),
    ("<think>3 + 4 = 7</think>\n<answer>7</answer><|im_end|>", {}, ("3 + 4 = 7", "<answer>7</answer>", "content")),
    ("3 + 4 = 7</think> 7", {}, ("3 + 4 = 7", "7", "content")),  # the template opened the thinking
    ("7", {"reasoning_content": ""}, ("", "7", "none")),
    ("<think>3 + 4 is", {}, None),
])
def test_the_thinking_is_read_from_each_field_endpoints_use(content, fields, expected):
    assert collect.split_reasoning(content, fields) == expected


def test_decontamination_drops_8_gram_overlaps_and_compares_short_questions_whole():
    held_out = ["Janet's ducks lay 16 eggs per day and she eats three for breakfast.", "What is 12 + 34?"]
    c = Contamination({"test": held_out})
    assert c.source_of("Bob's ducks lay 16 eggs per day and she eats three for lunch.") == "test"  # shares an 8-gram
    assert c.source_of("Janet's ducks lay 17 eggs per day and she eats four for breakfast.") is None  # no 8-gram in common
    assert c.source_of("WHAT IS 12 + 34 ?") == "test"  # short: compared whole, lowercased
    assert c.source_of("What is 12 + 35?") is None


# ---------------------------------------------------------------------------------------------- every filter


VARIANTS = ("reasoning_content", "reasoning", "content", "none", "unclosed_thinking", "length", "incorrect")


def variant_answer(variant: str, question: str) -> dict:
    c = answer_of(question)
    return {
        "reasoning_content": chat(f"<answer>{c}</answer>", reasoning_content=f"{question} It is {c}."),
        "reasoning": chat(str(c), reasoning=f"Adding: {c}."),
        "content": chat(f"<think>Adding gives {c}.</think>\n<answer>{c}</answer>"),
        "none": chat(f"<answer>{c}</answer>"),
        "unclosed_thinking": chat("<think>Let me add these two numbers and then"),
        "length": chat(f"<think>Adding gives {c}.</think><answer>{c}</answer>", finish="length"),
        "incorrect": chat(f"<think>Adding gives {c + 1}.</think>\n<answer>{c + 1}</answer>"),
    }[variant]


TASK = ("--task", "arithmetic", "--task-options", "digits=1")


def test_every_filter_counts_and_every_kept_row_carries_its_provenance(cli, tmp_path):
    items = tasks.load_task("arithmetic", {"digits": 1}).split("train", 16, seed=0)
    variant = {item.question: VARIANTS[i % len(VARIANTS)] for i, item in enumerate(items)}
    held_back = [items[7].question, items[8].question]  # a decontamination file names two of them
    (tmp_path / "bench.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in held_back))
    server = FakeTeacher(lambda q, attempt: (200, (), variant_answer(variant[q], q), 0))
    out = tmp_path / "traces.jsonl"
    args = ("distill", "--teacher", server.url, *TASK, "--limit", "16", "--samples-per-prompt", "2", "--out", out,
            "--decontaminate", tmp_path / "bench.jsonl", "--teacher-usd-per-mtok", "1,2", "--teacher-terms", "test terms v1")
    try:
        r = cli(*args, env=ONE_THREAD)
        assert r.returncode == 0, r.stderr[-3000:]
        asked = server.asked()
        assert sorted(set(asked)) == sorted(set(variant) - set(held_back)) and len(asked) == 2 * 14  # decontaminated: never asked

        card = json.loads(collect.sibling(out, ".card.json").read_text())
        clean = [q for q in variant if q not in held_back]
        expect = {v: 2 * sum(variant[q] == v for q in clean) for v in VARIANTS}
        kept_variants = ("reasoning_content", "reasoning", "content", "none")
        c = card["counts"]
        assert (c["prompts_selected"], c["prompts_contaminated"], c["prompts_asked"], c["requests"]) == (16, 2, 14, 28)
        assert c["contaminated_by_source"] == {str(tmp_path / "bench.jsonl"): 2}
        assert (c["length"], c["unclosed_thinking"], c["incorrect"]) == (expect["length"], expect["unclosed_thinking"], expect["incorrect"])
        kept = sum(expect[v] for v in kept_variants) // 2
        assert (c["kept"], c["duplicate"], c["answered"], c["failed"]) == (kept, kept, 28, 0)  # each prompt's 2nd sample: a duplicate
        assert card["acceptance_rate"] == kept / 28
        assert card["reasoning_fields"] == {v: expect[v] // 2 for v in kept_variants if expect[v]}
        assert card["tokens"] == {"prompt": 280, "completion": 560, "reasoning": 140, "kept_completion": 20 * kept}
        assert card["cost"]["usd"] == pytest.approx(280 / 1e6 * 1 + 560 / 1e6 * 2)
        assert card["teacher"] == {"model": "fake-teacher", "kind": "openai-compatible", "url": server.url, "terms": "test terms v1"}
        assert "test terms v1" in collect.sibling(out, ".card.md").read_text()

        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert len(rows) == kept
        for row in rows:
            p = row["provenance"]
            item = next(i for i in items if i.id == p["prompt_id"])
            assert row["messages"] == prompts.build_messages(item, tasks.load_task("arithmetic", {"digits": 1}), "r1")[0]
            assert p["prompt_sha256"] == collect.prompt_sha256(row["messages"])
            assert rewards.r1_answer(row["completion"]) == str(answer_of(item.question))
            assert (p["task"], p["task_options"], p["split"], p["format"]) == ("arithmetic", {"digits": 1}, "train", "r1")
            assert p["teacher"] == {"model": "fake-teacher", "kind": "openai-compatible", "url": server.url}
            assert {k: p["sampling"][k] for k in ("temperature", "top_p", "max_tokens", "seed")} == \
                {"temperature": 0.6, "top_p": 0.95, "max_tokens": 2048, "seed": 0}
            assert p["sampling"]["request_seed"] == collect.request_seed(0, item, p["sample"])
            assert p["sampling"]["reported"] == {"model": "fake-teacher", "id": "cmpl-1", "system_fingerprint": "fp-test"}
            assert p["reasoning_field"] == variant[item.question] and p["finish_reason"] == "stop"
            assert p["usage"] == {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30, "reasoning_tokens": 5}
            assert p["verifier"]["accuracy"] == 1.0 and p["timestamp"] and p["attempts"] == 1
        assert len(sft.read_pairs(str(out))) == kept  # `r1lite sft --data` takes the file as it is
        dropped = [json.loads(line) for line in collect.sibling(out, ".dropped.jsonl").read_text().splitlines()]
        assert sorted({d["stage"] for d in dropped}) == ["duplicate", "incorrect", "length", "unclosed_thinking"]

        # The same command again asks nothing (a cut-off last line, as a kill leaves it, is trimmed first).
        before = out.read_bytes()
        with open(out, "ab") as f:
            f.write(b'{"messages": [{"role": "us')
        r = cli(*args, env=ONE_THREAD)
        assert r.returncode == 0, r.stderr[-3000:]
        assert len(server.calls) == 28 and out.read_bytes() == before
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------- faults


def fault_script(questions: list[str]):
    """Question i gets fault i: a timeout, 500s, one 429 with Retry-After, malformed JSON, one 503,
    nothing wrong, a 400 (not retried), a body that is JSON but not a completion once."""
    def respond(q, attempt):
        i = questions.index(q)
        ok = (200, (), chat(f"<think>It is {answer_of(q)}.</think>\n<answer>{answer_of(q)}</answer>"), 0)
        return [
            (200, (), chat("late"), 3.0),
            (500, (), {"error": {"message": "overloaded"}}, 0),
            (429, (("Retry-After", "1"),), {"error": {"message": "slow down"}}, 0) if attempt == 0 else ok,
            (200, (), b'{"choices": [{"message": {"content": "cut', 0),
            (503, (), b"busy", 0) if attempt == 0 else ok,
            ok,
            (400, (), {"error": {"message": "prompt too long"}}, 0),
            (200, (), {"detail": "not a completion"}, 0) if attempt == 0 else ok,
        ][i]
    return respond


def test_faults_are_retried_with_backoff_then_recorded_per_prompt_and_the_run_ends_with_exit_0(cli, tmp_path):
    items = tasks.load_task("arithmetic", {"digits": 1}).split("train", 8, seed=3)
    questions = [i.question for i in items]
    server = FakeTeacher(fault_script(questions))
    out = tmp_path / "traces.jsonl"
    args = ("distill", "--teacher", server.url, *TASK, "--limit", "8", "--seed", "3", "--out", out, "--concurrency", "4",
            "--timeout", "0.5", "--max-retries", "2", "--backoff", "0.2")
    try:
        r = cli(*args, env=ONE_THREAD)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "lacks: 4 requests (4 prompts) failed after retries" in " ".join(r.stdout.split())
        attempts = {q: [t for t, asked, _ in server.calls if asked == q] for q in questions}
        assert [len(attempts[q]) for q in questions] == [3, 3, 2, 3, 2, 1, 1, 2]
        gaps = [b - a for a, b in zip(attempts[questions[1]], attempts[questions[1]][1:])]
        assert gaps[0] >= 0.2 and gaps[1] >= 0.4  # exponential backoff
        assert attempts[questions[2]][1] - attempts[questions[2]][0] >= 1.0  # Retry-After: 1 honoured

        card = json.loads(collect.sibling(out, ".card.json").read_text())
        failures = card["failures"]["per_prompt"]
        by_question = {items[i].id: questions[i] for i in range(8)}
        assert {by_question[pid]: (f["kind"], f["attempts"]) for pid, f in failures.items()} == {
            questions[0]: ("timeout", 3), questions[1]: ("http_500", 3), questions[3]: ("malformed", 3),
            questions[6]: ("http_400", 1)}
        assert card["counts"]["kept"] == 4 and card["counts"]["failed"] == 4
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(r["provenance"]["attempts"] for r in rows) == [1, 2, 2, 2]

        # Again: only the failed prompts are asked.
        calls = len(server.calls)
        r = cli(*args, env=ONE_THREAD)
        assert r.returncode == 0, r.stderr[-3000:]
        assert sorted({q for _, q, _ in server.calls[calls:]}) == sorted(questions[i] for i in (0, 1, 3, 6))
        assert len(out.read_text().splitlines()) == 4
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def finished(cli, tmp_path_factory):
    """A traces file from a finished run against a scripted teacher that wants a key."""
    folder = tmp_path_factory.mktemp("finished")
    server = FakeTeacher(lambda q, attempt: (200, (), variant_answer("content", q), 0), key="right-key")
    out = folder / "traces.jsonl"
    r = cli("distill", "--teacher", server.url, *TASK, "--limit", "4", "--out", out, "--api-key-env", "TEACHER_KEY",
            env={**ONE_THREAD, "TEACHER_KEY": "right-key"})
    assert r.returncode == 0, r.stderr[-3000:]
    yield server, out
    server.close()


def bad_cases(server, folder: Path, port: int) -> dict:
    (folder / "questions.jsonl").write_text('{"question": "What is 2 + 2?"}\n')
    (folder / "empty.jsonl").write_text("")
    return {
        "unreachable": (["--teacher", f"http://127.0.0.1:{port}/v1", *TASK], "cannot connect"),
        "no key": (["--teacher", server.url, *TASK], "refused (401)"),
        "wrong key": (["--teacher", server.url, *TASK, "--api-key-env", "TEACHER_KEY"], "set a valid key in $TEACHER_KEY"),
        "unknown model": (["--teacher", server.url, *TASK, "--teacher-model", "nope", "--api-key-env", "RIGHT"], "not 'nope'"),
        "no verifier": (["--teacher", server.url, "--task", f"jsonl:{folder / 'questions.jsonl'}", "--api-key-env", "RIGHT"],
                        "missing key 'answer'"),
        "empty prompts": (["--teacher", server.url, "--task", f"jsonl:{folder / 'empty.jsonl'}", "--api-key-env", "RIGHT"], "no items"),
        "other sampling": (["--teacher", server.url, *TASK, "--temperature", "0.9", "--api-key-env", "RIGHT"],
                           "holds traces from another run: its sampling"),
        "other task": (["--teacher", server.url, "--task", "arithmetic", "--api-key-env", "RIGHT"], "its task_options"),
    }


@pytest.mark.parametrize("case", ["unreachable", "no key", "wrong key", "unknown model", "no verifier", "empty prompts",
                                  "other sampling", "other task"])
def test_bad_input_is_one_line_exit_2_and_the_traces_file_is_untouched(finished, case, free_port, tmp_path, monkeypatch, capsys):
    from r1lite.cli import main

    server, out = finished
    args, needle = bad_cases(server, tmp_path, free_port())[case]
    monkeypatch.setenv("TEACHER_KEY", "wrong-key")
    monkeypatch.setenv("RIGHT", "right-key")
    before, calls = snapshot(out), len(server.calls)
    code = main(["distill", *map(str, args), "--limit", "4", "--out", str(out)])  # in-process: the main the console script runs
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert snapshot(out) == before and len(server.calls) == calls


# ---------------------------------------------------------------------------------------------- real teachers

N_PROMPTS = 12


@pytest.fixture(scope="module")
def teacher(cli, tiny_model, tmp_path_factory):
    """A yes/no task (gold: yes) and a tiny model trained briefly to answer its prompts in the R1
    format, "yes" three times in four and "no" otherwise — right often enough for the verifier to
    keep traces, wrong often enough for it to drop some — as a Hugging Face directory and as an F16
    GGUF exported by `r1lite export`."""
    import contextlib

    import torch

    folder = tmp_path_factory.mktemp("teacher")
    data = folder / "yes.jsonl"
    # short questions (under 8 words) that share no 8-gram: decontamination compares them whole
    data.write_text("".join(json.dumps({"question": f"Is {i} whole, yes or no?", "answer": "yes"}) + "\n" for i in range(40)))
    task = tasks.load_task(f"jsonl:{data}")
    items = task.split("train", N_PROMPTS, seed=0)
    model, tokenizer = tiny_model()
    pairs = []
    for i, item in enumerate(items):
        messages, prefill = prompts.build_messages(item, task, "r1")
        word = "no" if i % 4 == 3 else "yes"
        pairs.append(sft.encode_pair(tokenizer, messages, prefill, f"<think>Whole numbers are 0, 1, 2 and so on.</think>\n<answer>{word}</answer>"))
    torch.manual_seed(0)
    sft.train_sft(Policy(model), tokenizer, pairs, epochs=20, lr=3e-3, batch_size=4, micro_batch_size=4, seed=0,
                  autocast=contextlib.nullcontext, device=torch.device("cpu"))
    model.save_pretrained(folder / "hf")
    tokenizer.save_pretrained(folder / "hf")
    gguf = folder / "teacher.f16.gguf"
    r = cli("export", "--model", folder / "hf", "--to", "gguf", "--quant", "f16", "--out", gguf, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-3000:]
    return {"hf": folder / "hf", "gguf": gguf, "items": items, "task": ("--task", f"jsonl:{data}")}


class CountingProxy(Loopback):
    """A loopback proxy in front of a teacher server: forwards every request, counts the chat
    requests by (question, seed), and holds each for ``delay`` seconds (so a run can be killed mid-way)."""

    def __init__(self, upstream: str, delay: float):
        import httpx

        self.calls: list[tuple[str, int]] = []
        outer = self
        client = httpx.Client(base_url=upstream.removesuffix("/v1"), timeout=120)  # requests keep their /v1/... path

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def relay(self, response):
                self.send_response(response.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(response.content)))
                self.end_headers()
                self.wfile.write(response.content)

            def do_GET(self):
                self.relay(client.get(self.path))

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = json.loads(raw)
                outer.calls.append((question_of(body), body["seed"]))
                time.sleep(delay)
                self.relay(client.post(self.path, content=raw, headers={"Content-Type": "application/json"}))

        self.start(Handler)


@pytest.fixture
def llama_server(teacher, free_port):
    """llama-cpp-python's OpenAI-compatible server on 127.0.0.1 serving the teacher's GGUF."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(teacher["gguf"]), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "2048", "--n_threads", "1", "--interrupt_requests", "False",
                             "--verbose", "False"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.time() + 180
        while True:
            assert proc.poll() is None, f"llama_cpp.server exited: {proc.stderr.read()[-2000:]}"
            assert time.time() < deadline, "llama_cpp.server did not start within 180 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.kill()
        proc.wait(timeout=30)


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_end_to_end_with_llama_cpp_server_killed_and_restarted_loses_nothing_and_asks_nothing_twice(cli, teacher, llama_server, tmp_path):
    proxy = CountingProxy(llama_server, delay=0.3)
    out = tmp_path / "traces.jsonl"
    dropped = collect.sibling(out, ".dropped.jsonl")
    contaminated = teacher["items"][5].question
    (tmp_path / "bench.jsonl").write_text(json.dumps({"question": contaminated}) + "\n")
    args = ["distill", "--teacher", proxy.url, *teacher["task"], "--limit", str(N_PROMPTS), "--samples-per-prompt", "2", "--max-new-tokens", "40",
            "--concurrency", "2", "--out", str(out), "--decontaminate", str(tmp_path / "bench.jsonl")]
    try:
        collector = subprocess.Popen([sys.executable, "-m", "r1lite", *args], cwd=ROOT, env=ENV,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 300
        while lines(out) + lines(dropped) < 6:
            assert collector.poll() is None, collector.stderr.read()[-3000:]
            assert time.time() < deadline, "the collector wrote no rows within 300 s"
            time.sleep(0.05)
        collector.send_signal(signal.SIGKILL)
        collector.wait(timeout=30)
        before = {p: p.read_bytes() for p in (out, dropped) if p.exists()}
        answered_before = {(r["provenance"]["prompt_id"], r["provenance"]["sample"])
                           for p in before for r in collect.read_rows(p)}
        assert 6 <= len(answered_before) < 22, "the kill came after the run had finished"
        asked_before = len(proxy.calls)

        r = cli(*args, env=ONE_THREAD)
        assert r.returncode == 0, r.stderr[-3000:]
        for path, data in before.items():  # no row lost: what was on disk is still there, in order
            whole = data[:data.rfind(b"\n") + 1]
            assert path.read_bytes().startswith(whole)
        seed_of = {(item.id, s): collect.request_seed(0, item, s) for item in teacher["items"] for s in (0, 1)}
        asked_again = set(proxy.calls[asked_before:])
        assert not asked_again & {(next(i.question for i in teacher["items"] if i.id == pid), seed_of[pid, s])
                                  for pid, s in answered_before}  # nothing answered before the kill was asked again
        assert contaminated not in {q for q, _ in proxy.calls}

        rows = collect.read_rows(out) + collect.read_rows(dropped)
        keys = [(r["provenance"]["prompt_id"], r["provenance"]["sample"]) for r in rows]
        assert len(keys) == len(set(keys)) == 2 * (N_PROMPTS - 1)  # every request answered exactly once
        card = json.loads(collect.sibling(out, ".card.json").read_text())
        c = card["counts"]
        assert c["prompts_contaminated"] == 1 and c["failed"] == 0 and c["answered"] == 22
        assert c["kept"] >= 5 and c["incorrect"] >= 1 and c["duplicate"] >= 1
        assert c["kept"] + c["duplicate"] + c["incorrect"] + c["length"] + c["unclosed_thinking"] == 22
        for row in collect.read_rows(out):
            p = row["provenance"]
            assert rewards.r1_answer(row["completion"]) == "yes" and p["verifier"]["accuracy"] == 1.0
            assert p["teacher"]["kind"] == "openai-compatible" and p["teacher"]["url"] == proxy.url
            assert p["reasoning_field"] == "content" and p["finish_reason"] == "stop"  # llama_cpp.server leaves <think> in the content
            assert p["usage"]["completion_tokens"] > 0 and p["sampling"]["request_seed"] == seed_of[p["prompt_id"], p["sample"]]
    finally:
        proxy.close()


def test_local_teachers_through_the_engine_pytorch_and_gguf(teacher, tmp_path, capsys):
    from r1lite.cli import main

    runs = {}
    for name, spec, n, k in (("torch", teacher["hf"], 6, 2), ("torch again", teacher["hf"], 6, 2), ("llama.cpp", teacher["gguf"], 3, 1)):
        out = tmp_path / f"{name.replace(' ', '_')}.jsonl"
        code = main(["distill", "--teacher", str(spec), *teacher["task"], "--limit", str(n), "--samples-per-prompt", str(k),
                     "--max-new-tokens", "40", "--out", str(out), "--device", "cpu", "--dtype", "fp32"])
        assert code == 0, capsys.readouterr().err[-3000:]
        runs[name] = collect.read_rows(out) + collect.read_rows(collect.sibling(out, ".dropped.jsonl"))
        card = json.loads(collect.sibling(out, ".card.json").read_text())
        assert card["counts"]["answered"] == n * k and card["counts"]["kept"] >= 1 and card["compute"]["flops"] > 0
        assert {r["provenance"]["teacher"]["kind"] for r in runs[name]} == {"local:" + name.split()[0]}

    def by_key(rows):
        return {(r["provenance"]["prompt_id"], r["provenance"]["sample"]): (r["provenance"]["sampling"]["request_seed"], r.get("completion"),
                                                                          r.get("raw")) for r in rows}
    assert by_key(runs["torch"]) == by_key(runs["torch again"])  # a local teacher's traces depend only on their seeds


# ---------------------------------------------------------------------------------------------- in a recipe

TINY_RUN = ("--model", "tiny", *TASK, "--max-steps", "1", "--batch-size", "4", "--group-size", "2", "--max-new-tokens", "8",
            "--cold-start-epochs", "1", "--eval-items", "0", "--save-every", "0", "--device", "cpu", "--dtype", "fp32", "--no-preflight")


def test_a_run_cold_starts_from_a_teacher_or_a_traces_file_and_lists_the_teacher_apart(cli, tmp_path):
    server = FakeTeacher(lambda q, attempt: (200, (), variant_answer("content", q), 0))
    try:
        run = tmp_path / "from-teacher"
        r = cli("train", *TINY_RUN, "--cold-start-teacher", server.url, "--cold-start-items", "8", "--cold-start-samples", "1",
                "--distill-options", "teacher_usd_per_mtok=1,2", "--distill-options", "teacher_terms=fake terms v2", "--out", run,
                env=ONE_THREAD)
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        server.close()
    assert len(server.calls) == 8 and "teacher terms: fake terms v2" in " ".join(r.stdout.split())
    assert len((run / "distill.jsonl").read_text().splitlines()) == 8 and (run / "distill.card.md").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["cold_start"]["traces"] == 8 and summary["cold_start"]["source"] == str(run / "distill.jsonl")
    teacher = summary["cost"]["teacher"]
    assert teacher["cold_start_teacher"]["terms"] == "fake terms v2" and teacher["flops"] == 0.0  # an endpoint: no FLOPs here
    assert teacher["usd"] == pytest.approx(8 * 10 / 1e6 + 8 * 20 * 2 / 1e6) and teacher["student_flops"] == summary["cost"]["flops"]["total"]
    assert "Teacher" in (run / "report.html").read_text() and "fake terms v2" in (run / "report.html").read_text()

    again = tmp_path / "from-file"
    r = cli("train", *TINY_RUN, "--cold-start-data", run / "distill.jsonl", "--out", again, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((again / "summary.json").read_text())
    assert summary["cold_start"]["traces"] == 8 and len(summary["cold_start"]["sha256"]) == 64
    assert "teacher terms: fake terms v2" in " ".join(r.stdout.split()) and summary["cost"]["teacher"] is None


def test_a_second_distill_on_the_same_traces_is_refused_in_one_line(finished, monkeypatch, capsys):
    """Two processes on one traces file would each ask for what the file lacks and write it twice."""
    from r1lite.cli import main
    from r1lite.files import ProcessLock

    server, out = finished
    monkeypatch.setenv("RIGHT", "right-key")
    before, calls = snapshot(out), len(server.calls)
    with ProcessLock(out.with_name("traces.lock"), out):  # what the first process holds while it runs
        code = main(["distill", "--teacher", server.url, *TASK, "--limit", "4", "--out", str(out), "--api-key-env", "RIGHT"])
    err = capsys.readouterr().err
    assert code == 2 and "in use by another r1lite process" in err and err.count("\n") == 1, err
    assert snapshot(out) == before and len(server.calls) == calls
