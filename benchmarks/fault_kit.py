"""The parts ``benchmarks/faults.py`` builds its cells from: a command run with a deadline and
stopped at a chosen moment, the two outcomes a fault may end in (a finished run, or one error
line), the files a fault must not touch, a tmpfs that is full or read-only, and a teacher on
loopback that misbehaves."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

NOTES = b"the user's own notes: no command may change them\n"
"""A user's file beside every --out: no command may change it."""
ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "COLUMNS": "160"}
"""One thread a command (the tiny model gains nothing from more), and no network beyond loopback."""


class Skip(Exception):
    """A cell that cannot run on this machine; the message says why."""


@dataclass
class Outcome:
    verdict: str
    """ok, defect, skipped, or error (the cell itself broke: a fault of the matrix, not of r1lite)."""
    note: str
    seconds: float = 0.0


def ok(note: str) -> Outcome:
    return Outcome("ok", note)


def defect(note: str) -> Outcome:
    return Outcome("defect", note)


# ---------------------------------------------------------------------------------------------
# Running a command


@dataclass
class Ran:
    code: int | None
    """The exit status (negative: the signal that ended it); None: still running at its deadline."""
    stdout: str
    stderr: str
    seconds: float

    @property
    def last(self) -> str:
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


class Proc:
    """``python -m r1lite ARGS`` in the background, its output to files (a pipe nobody reads can fill
    up), in its own process group so a deadline stops everything it started."""

    def __init__(self, args: list[str], cwd: Path, logs: Path):
        logs.mkdir(parents=True, exist_ok=True)
        n = len(list(logs.glob("*.err")))
        self.out, self.err = logs / f"{n}.out", logs / f"{n}.err"
        (logs / f"{n}.args").write_text(" ".join(map(str, args)) + "\n")
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.popen = subprocess.Popen([sys.executable, "-m", "r1lite", *map(str, args)], cwd=cwd, stdout=out,
                                          stderr=err, stdin=subprocess.DEVNULL, start_new_session=True,
                                          env={**os.environ, **ENV})
        self.started = time.monotonic()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def send(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.send_signal(sig)

    def wait(self, timeout: float) -> Ran:
        try:
            code = self.popen.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            code = None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
        return Ran(code, self.out.read_text(errors="replace"), self.err.read_text(errors="replace"),
                   time.monotonic() - self.started)


def wait_until(ready: Callable[[], bool], proc: Proc, timeout: float, every: float = 0.002) -> bool:
    """Poll ``ready`` until it holds (True), or the process ends or the time runs out (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if ready():
            return True
        if not proc.alive():
            return ready()
        time.sleep(every)
    return False


# ---------------------------------------------------------------------------------------------
# The two acceptable outcomes


def one_line(ran: Ran, *needles: str) -> Outcome:
    """The command refused in one line: exit status > 0, no traceback, stderr's last line names the
    problem (one of ``needles``, case-insensitive)."""
    if ran.code is None:
        return defect(f"still running after {ran.seconds:.0f} s (stopped by the matrix)")
    if ran.code == 0:
        return defect("exit 0 where an error was due; stdout ends: " + tail(ran.stdout))
    if ran.code < 0:
        return defect(f"died by {signal.Signals(-ran.code).name}; stderr ends: {tail(ran.stderr)}")
    if "Traceback" in ran.stderr:
        return defect(f"a traceback ({ran.stderr.count(chr(10))} lines): {raised(ran.stderr)}")
    if not ran.last:
        return defect(f"exit {ran.code} with nothing on stderr")
    if needles and not any(n.lower() in ran.last.lower() for n in needles):
        return defect(f"the last line does not name {needles[0]!r}: {ran.last[:200]}")
    return ok(ran.last[:160])


def finished(ran: Ran, missing: str | None) -> Outcome:
    """The command ran to its end: exit 0, no traceback, and its output whole (``missing`` None)."""
    if ran.code is None:
        return defect(f"still running after {ran.seconds:.0f} s (stopped by the matrix)")
    if ran.code != 0:
        return defect(f"exit {ran.code}: {ran.last[:200]}")
    if "Traceback" in ran.stderr:
        return defect(f"exit 0 with a traceback on stderr: {raised(ran.stderr)}")
    if missing:
        return defect(missing)
    return ok(f"finished in {ran.seconds:.1f} s")


def raised(stderr: str) -> str:
    """The exception line of the last traceback in ``stderr`` (the first unindented line after its frames)."""
    after = stderr[stderr.rindex("Traceback"):].splitlines()[1:]
    return next((line for line in after if line and not line.startswith(" ")), "?")[:200]


def tail(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(nothing)"


# ---------------------------------------------------------------------------------------------
# Files a fault must leave alone


def digests(roots: list[Path]) -> dict[str, str]:
    """sha256 of every file under ``roots`` (or of each root that is a file)."""
    found = {}
    for root in roots:
        paths = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
        for p in paths:
            found[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def hidden(root: Path) -> set[str]:
    """Entries whose names start with a dot: where atomic writes keep their temporary files."""
    return {str(p) for p in root.rglob(".*")} if root.is_dir() else set()


@dataclass
class Guard:
    """The files under ``roots`` as they were when it was made: each must end byte-identical."""

    roots: list[Path]
    before: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        self.before = digests(self.roots)

    def problems(self) -> list[str]:
        now = digests(self.roots)
        return [f"{'deleted' if p not in now else 'changed'} {p}" for p, h in self.before.items() if now.get(p) != h]


# ---------------------------------------------------------------------------------------------
# A tmpfs: full, or read-only


def mount(*args: str) -> None:
    r = subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30, check=False)
    if r.returncode:
        raise Skip(f"mount {' '.join(args[:3])}: {r.stderr.strip() or r.returncode}")


@contextlib.contextmanager
def tmpfs(path: Path, files: dict[str, bytes], free: int | None = None, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs at ``path`` holding ``files``, with ``free`` bytes left when given (a filler file takes
    the rest), remounted read-only when asked; unmounted on the way out whatever happened. Mounting needs
    root; elsewhere a read-only one is a directory without write permission, a full one is skipped."""
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        if not read_only:
            raise Skip("a full disk needs a tmpfs, and mounting one needs root")
        for name, data in files.items():
            (path / name).write_bytes(data)
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    size = (free or 0) + sum(map(len, files.values())) + (1 << 20)
    mount("-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path))
    try:
        for name, data in files.items():
            (path / name).write_bytes(data)
        if free is not None:
            fill(path, free)
        if read_only:
            mount("-o", "remount,ro", str(path))
        yield path
    finally:
        r = subprocess.run(["umount", str(path)], capture_output=True, timeout=30, check=False)
        if r.returncode:  # something still holds it: detach it now, it goes when released
            subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30, check=False)


def fill(path: Path, free: int) -> None:
    """Write ``path/filler`` until ``free`` bytes are left on its filesystem."""
    st = os.statvfs(path)
    want = st.f_bavail * st.f_frsize - free
    if want <= 0:
        return
    chunk = b"\0" * (1 << 20)
    with open(path / "filler", "wb", buffering=0) as f, contextlib.suppress(OSError):  # ENOSPC: full already
        while want > 0:
            want -= f.write(chunk[:want])


# ---------------------------------------------------------------------------------------------
# A teacher that misbehaves


BEHAVIOURS = ("ok", "500", "garbage", "trickle", "429", "endless", "drop")


def right_answer(body: dict) -> str:
    """An R1-format answer to the arithmetic prompt in a chat request (the arithmetic task's wording)."""
    a, op, b = re.findall(r"What is (\d+) ([+*-]) (\d+)\?", body["messages"][-1]["content"])[-1]
    value = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    return f"<think>{a} {op} {b} is {value}.</think>\n<answer>{value}</answer>"


def completion(content: str) -> dict:
    return {"id": "cmpl-fault", "object": "chat.completion", "model": "faulty-teacher",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}}


class Teacher:
    """An OpenAI-compatible endpoint on 127.0.0.1. ``GET /v1/models`` always answers; each chat
    request as ``behaviour`` says: ok (a right answer after ``delay`` s), 500, garbage (200 and bytes
    that are not JSON), trickle (200, then a byte every quarter second), 429 (``Retry-After:
    retry_after`` on a prompt's first request, then ok), endless (200 and a 64 MiB answer), drop
    (the connection closed mid-body)."""

    def __init__(self, behaviour: str = "ok", delay: float = 0.0, retry_after: str = "1"):
        assert behaviour in BEHAVIOURS, behaviour
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def head(self, status: int, length: int, extra: tuple = ()):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(length))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()

            def send(self, status: int, body, extra: tuple = ()):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.head(status, len(data), extra)
                self.wfile.write(data)

            def do_GET(self):
                self.send(200, {"object": "list", "data": [{"id": "faulty-teacher", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                question = body["messages"][-1]["content"]
                first = question not in outer.requests
                outer.requests.append(question)
                try:
                    self.answer(body, first)
                except OSError:  # the client gave up: expected for trickle, endless and drop
                    self.close_connection = True

            def answer(self, body: dict, first: bool):
                if behaviour == "500":
                    return self.send(500, {"error": {"message": "overloaded"}})
                if behaviour == "garbage":
                    return self.send(200, b"<html>\x00\xff not json")
                if behaviour == "429" and first:
                    return self.send(429, {"error": {"message": "slow down"}}, (("Retry-After", retry_after),))
                if behaviour == "trickle":
                    self.head(200, 4096)
                    for _ in range(4096):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(0.25)
                    return
                if behaviour == "endless":
                    data = json.dumps(completion("<think>" + "a" * (64 << 20))).encode()
                    self.head(200, len(data))
                    for i in range(0, len(data), 1 << 20):
                        self.wfile.write(data[i:i + (1 << 20)])
                    return
                if behaviour == "drop":
                    self.head(200, 4096)
                    self.wfile.write(b'{"choices": [')
                    self.close_connection = True
                    return
                time.sleep(delay)
                self.send(200, completion(right_answer(body)))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.handle_error = lambda request, address: None  # a client that gave up is expected
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, path: str, body: dict | None = None, timeout: float = 60) -> tuple[int, dict]:
    """(HTTP status, JSON body) of one request to the server on ``port``; (0, {}) when it cannot connect."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {}
    except (OSError, ValueError):
        return 0, {}


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ---------------------------------------------------------------------------------------------
# Where a cell runs


@dataclass
class Inputs:
    """What every cell may read, made before the first: a tiny model directory, data files, a good
    teacher, the clean runs' times."""

    dir: Path
    teacher: Teacher
    durations: dict

    @property
    def model(self) -> Path:
        return self.dir / "model"


def make_inputs(folder: Path) -> Inputs:
    from r1lite.models import load_model, resolve_runtime

    folder.mkdir(parents=True)
    model, tokenizer = load_model("tiny", resolve_runtime("cpu", "fp32"))
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    rows = [(a, b) for a in range(1, 6) for b in range(1, 5)]
    (folder / "tasks.jsonl").write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n"
                                                for a, b in rows))
    (folder / "pairs.jsonl").write_text("".join(json.dumps({"prompt": f"What is {a} + {b}?", "completion": str(a + b)}) + "\n"
                                                for a, b in rows[:8]))
    return Inputs(folder, Teacher("ok", delay=0.15), {})


class Workspace:
    """One cell's scratch directory, its deadline, the files it must leave alone and the mounts it
    holds (closed after the audit)."""

    def __init__(self, folder: Path, inputs: Inputs, timeout: float, stack: contextlib.ExitStack):
        self.dir, self.inputs, self.stack = folder, inputs, stack
        self.deadline = time.monotonic() + timeout
        (folder / "out").mkdir(parents=True)
        (folder / "out" / "notes.txt").write_bytes(NOTES)
        self.guards = [Guard([inputs.dir]), Guard([folder / "out" / "notes.txt"])]
        self.known: set[str] = set()

    def left(self) -> float:
        return max(0.1, self.deadline - time.monotonic())

    def start(self, args: list) -> Proc:
        return Proc(args, self.dir, self.dir / "logs")

    def run(self, args: list) -> Ran:
        return self.start(args).wait(self.left())

    def protect(self, *roots: Path) -> None:
        """From now on these files must not change (what a failing command finds in place, the
        user's files beside a run); hidden ones among them are not temporary files left behind."""
        self.guards.append(Guard(list(roots)))
        self.known |= set().union(*(hidden(r) for r in roots))

    def audit(self) -> list[str]:
        """What the cell's commands changed that they must not have: a protected file, or a hidden
        entry (an atomic write's temporary file; the cell's own setup makes none) left behind."""
        changed = list(dict.fromkeys(p for g in self.guards for p in g.problems()))
        return changed[:3] + [f"left behind {p}" for p in sorted(hidden(self.dir) - self.known)[:3]]


def run_cell(fn: Callable, kw: dict, command: str, folder: Path, inputs: Inputs, timeout: float) -> Outcome:
    """``fn(workspace, command, **kw)`` in ``folder``, then the audit; the mounts it made are
    unmounted whatever happened."""
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        try:
            w = Workspace(folder, inputs, timeout, stack)
            outcome = fn(w, command, **kw)
            problems = w.audit()
            if problems:
                outcome = defect("; ".join(([outcome.note] if outcome.verdict == "defect" else []) + problems))
        except Skip as e:
            outcome = Outcome("skipped", str(e))
        except Exception as e:  # noqa: BLE001 - the cell itself broke: say so, go on with the others
            outcome = Outcome("error", f"{type(e).__name__}: {e}"[:300])
    outcome.seconds = time.monotonic() - started
    return outcome


MARK = {"ok": "ok", "defect": "DEFECT", "skipped": "skip", "error": "ERROR"}
"""How the matrix prints each verdict."""


def print_matrix(results: list[dict], commands: tuple[str, ...], fast: bool) -> None:
    """Faults down, commands across, a verdict in each cell; then every cell that is not ok, with its note."""
    faults = list(dict.fromkeys(r["fault"] for r in results))
    by = {(r["fault"], r["command"]): r for r in results}
    width = max(map(len, faults), default=5) + 2
    print("".join([" " * width, *(f"{c:>12}" for c in commands)]))
    for fault in faults:
        cells = [MARK[by[fault, c]["verdict"]] if (fault, c) in by else "·" for c in commands]
        print(f"{fault:<{width}}" + "".join(f"{c:>12}" for c in cells))
    print(f"\n· = does not apply{' or not in the fast half' if fast else ''}")
    for r in results:
        if r["verdict"] != "ok":
            print(f"{MARK[r['verdict']]}: {r['command']} × {r['fault']}: {r['note']}")
