"""A fault matrix that runs itself: every command against every fault that applies to it.

Each command — ``train``, ``sft``, ``distill``, ``eval``, ``export --to hf``, ``export --to gguf``,
``serve`` — runs on the tiny random model with small settings (seconds a run), as a user runs it
(``python -m r1lite``, a subprocess), against: SIGKILL and SIGTERM at several points, a full disk
(a tmpfs of a few MiB), a read-only output directory (a tmpfs remounted read-only: root ignores
mode bits), the user's files in ``--out``, damaged inputs (data JSONL, recipe YAML, a model
directory, a run's config.yaml or summary.json), damaged checkpoints, two processes on one run,
and a teacher on 127.0.0.1 that answers 500s, garbage, a trickle, 429 with Retry-After, a 64 MiB
answer or half an answer.

A cell is ``ok`` when the command ends in one of two ways: a finished run (after a kill: the same
command, for train with ``--resume``, finishes; the output is whole), or one error line (exit
status > 0, no traceback, stderr's last line names the problem) — and in both, every file that
existed before the fault (the user's file beside ``--out``, the inputs) is byte-identical and no
partial temporary file is left behind. Anything else is a ``defect``; a cell this machine cannot
run (no root for a tmpfs) is ``skipped`` with the reason. Every command has a deadline
(``--cell-timeout``) and nothing leaves loopback (``HF_HUB_OFFLINE=1``).

    .venv/bin/python benchmarks/faults.py            # the whole matrix; writes benchmarks/results/faults-<cpu kind>.json
    .venv/bin/python benchmarks/faults.py --fast     # the cheap half, no training run (tests/test_faults.py)

Run it on a committed tree: the result carries the bare commit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from common import RESULTS, add_allow_dirty, commit_fields, machine
from fault_kit import (
    MARK,
    NOTES,
    Outcome,
    Proc,
    Ran,
    Skip,
    Teacher,
    Workspace,
    copy_tree,
    defect,
    finished,
    free_port,
    make_inputs,
    ok,
    one_line,
    print_matrix,
    raised,
    request,
    run_cell,
    tmpfs,
    wait_until,
)

COMMANDS = ("train", "sft", "distill", "eval", "export-hf", "export-gguf", "serve")
WRITERS = COMMANDS[:-1]
TRAIN = ["train", "--model", "tiny", "--task", "arithmetic", "--format", "plain", "--batch-size", "8", "--group-size", "4",
         "--max-new-tokens", "8", "--eval-items", "0", "--save-every", "1", "--device", "cpu", "--dtype", "fp32",
         "--no-preflight"]
DISTILL = ["--limit", "6", "--concurrency", "1", "--timeout", "5", "--max-retries", "1", "--backoff", "0.1"]


@dataclass
class Job:
    """A small invocation of one command: its arguments, its output, whether that is whole."""

    args: list
    out: Path
    done: Callable[[], str | None]
    """None when the output is whole, else what is missing."""
    command: str

    def again(self) -> list:
        """What continues it after a kill: train with --resume once its config.yaml is written, else the same command."""
        resume = self.command == "train" and (self.out / "config.yaml").exists()
        return [*self.args, "--resume", self.out] if resume else self.args


def job(w: Workspace, command: str, where: Path | None = None, teacher: str = "", steps: int = 2) -> Job:
    """``command`` writing into ``where`` (default: the workspace's out/, beside the user's notes.txt)."""
    where = where or w.dir / "out"
    teacher = teacher or w.inputs.teacher.url
    if command == "train":
        out = where / "run"
        return Job([*TRAIN, "--max-steps", steps, "--out", out], out, lambda: train_done(out, steps), command)
    if command == "sft":
        out = where / "sft"
        args = ["sft", "--model", "tiny", "--data", w.inputs.dir / "pairs.jsonl", "--epochs", "1", "--batch-size", "4",
                "--micro-batch-size", "4", "--device", "cpu", "--dtype", "fp32", "--out", out]
        return Job(args, out, lambda: whole(out / "final" / "model.safetensors", out / "metrics.jsonl"), command)
    if command == "distill":
        out = where / "traces.jsonl"
        args = ["distill", "--teacher", teacher, "--task", "arithmetic", "--task-options", "digits=1", *DISTILL, "--out", out]
        return Job(args, out, lambda: distill_done(out), command)
    if command == "eval":
        out = where / "scored.jsonl"
        args = ["eval", "--model", "tiny", "--task", "arithmetic", "--format", "plain", "--limit", "8", "--max-new-tokens",
                "32", "--device", "cpu", "--dtype", "fp32", "--out", out]
        return Job(args, out, lambda: whole(out, out.with_name("scored.jsonl.summary.json")), command)
    if command == "export-hf":
        out = where / "hf"
        return Job(["export", "--model", "tiny", "--to", "hf", "--out", out], out,
                   lambda: whole(out / "model.safetensors", out / "config.json", out / "README.md"), command)
    assert command == "export-gguf", command
    out = where / "model.f16.gguf"
    return Job(["export", "--model", "tiny", "--to", "gguf", "--quant", "f16", "--out", out], out,
               lambda: whole(out, where / "model.f16.Modelfile") or (None if out.read_bytes()[:4] == b"GGUF" else
                                                                    f"{out} is not a GGUF file"), command)


def whole(*paths: Path) -> str | None:
    missing = [p for p in paths if not p.exists()]
    return f"no {missing[0]}" if missing else None


def train_done(out: Path, steps: int) -> str | None:
    missing = whole(out / "summary.json", out / "final" / "model.safetensors")
    if missing:
        return missing
    summary = json.loads((out / "summary.json").read_text())
    seen = [json.loads(line).get("step") for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    steps_seen = [s for s in seen if s is not None]
    if not summary.get("finished") or summary.get("steps") != steps:
        return f"summary.json says finished={summary.get('finished')}, steps={summary.get('steps')}"
    if len(steps_seen) != len(set(steps_seen)):
        return f"metrics.jsonl repeats a step: {steps_seen}"
    return None


def distill_done(out: Path) -> str | None:
    card = out.with_name("traces.card.json")
    if not card.exists():
        return f"no {card}"
    counts = json.loads(card.read_text())["counts"]
    rows = [json.loads(line)["provenance"] for f in (out, out.with_name("traces.dropped.jsonl")) if f.exists()
            for line in f.read_text().splitlines() if line.strip()]
    keys = [(p["prompt_id"], p["sample"]) for p in rows]
    if len(keys) != len(set(keys)):
        return f"{len(keys) - len(set(keys))} answers written twice across traces.jsonl and its .dropped.jsonl"
    if counts["answered"] != counts["requests"] or counts["failed"]:
        return f"the card counts {counts['answered']} of {counts['requests']} answered, {counts['failed']} failed"
    return None


def either(ran: Ran, j: Job, *needles: str) -> Outcome:
    """A damaged file the command has no need to read may go unnoticed: then its run must finish whole."""
    return finished(ran, j.done()) if ran.code == 0 else one_line(ran, *needles)


# ---------------------------------------------------------------------------------------------
# One function per kind of fault


def no_fault(w: Workspace, command: str) -> Outcome:
    """The command as it is: it must finish (its time sets when the ½-run kills come)."""
    if command == "serve":
        return serve_stop(w, signal.SIGTERM, mid_request=False)
    j = job(w, command)
    ran = w.run(j.args)
    w.inputs.durations[command] = ran.seconds
    return finished(ran, j.done())


def writing(j: Job) -> Callable[[], bool]:
    """True while the output (final/, the file, the directory) sits under its temporary name."""
    if j.command in ("train", "sft"):
        return lambda: any(j.out.glob(".final.*"))
    return lambda: any(p.name.startswith(".") for p in j.out.parent.iterdir())


def kill(w: Workspace, command: str, sig: int, at: str) -> Outcome:
    """``sig`` at a moment (``half``: half a clean run's time; ``checkpoint``: the first one written;
    ``row``: distill's first answer written; ``writing``: the output under its temporary name); then
    the command again (train: --resume) must finish, with nothing left behind."""
    if at == "half" and command not in w.inputs.durations:
        raise Skip("no clean run of this command was timed (run the whole matrix)")
    j = job(w, command, steps=2)
    proc = w.start(j.args)
    moments = {"checkpoint": lambda: (j.out / "checkpoints" / "latest").exists(),
               "row": lambda: any(f.exists() and f.stat().st_size for f in (j.out, j.out.with_name("traces.dropped.jsonl"))),
               "writing": writing(j)}
    if at == "half":
        time.sleep(w.inputs.durations[command] / 2)
    elif not wait_until(moments[at], proc, w.left()):
        proc.wait(w.left())
        raise Skip(f"the run ended before the moment ({at}) could be caught")
    proc.send(sig)
    first = proc.wait(min(w.left(), 60))
    if first.code is None:
        return defect(f"still running 60 s after {signal.Signals(sig).name}")
    if "Traceback" in first.stderr:
        return defect(f"{signal.Signals(sig).name} gave a traceback: {raised(first.stderr)}")
    if j.done() is None:
        return ok(f"finished before the signal took effect (exit {first.code})")
    again = j.again()
    result = finished(w.run(again), j.done())
    how = "--resume" if "--resume" in again else "the same command"
    return ok(f"exit {first.code}; then {how} finished") if result.verdict == "ok" else result


def users_files(w: Workspace, command: str) -> Outcome:
    """--out a directory that already holds the user's files, one of them hidden (train: with
    --force): the run finishes beside them, or stops in one line; either way each is as it was."""
    j = job(w, command)
    j.out.mkdir()
    mine = {"notes.txt": NOTES, ".draft.tmp": NOTES} if command == "train" else \
        {"notes.txt": NOTES, ".draft.tmp": NOTES, "metrics.jsonl": b'{"mine": true}\n'}
    for name, data in mine.items():
        (j.out / name).write_bytes(data)
    w.protect(j.out)
    return either(w.run([*j.args, "--force"] if command == "train" else j.args), j, "--out")


def disk_full(w: Workspace, command: str) -> Outcome:
    """--out on a tmpfs with little room (train, sft, export: 2 MiB, below a model's size; eval and
    distill: none): one line saying the disk is full."""
    free = 0 if command in ("eval", "distill") else 2 << 20
    where = w.stack.enter_context(tmpfs(w.dir / "full", {"notes.txt": NOTES}, free=free))
    w.protect(where / "notes.txt")
    j = job(w, command, where)
    return one_line(w.run(j.args), "disk is full", "no space")


def read_only(w: Workspace, command: str) -> Outcome:
    """--out inside a read-only directory (a tmpfs remounted ro, since root passes mode bits): one
    line, before any work."""
    where = w.stack.enter_context(tmpfs(w.dir / "ro", {"notes.txt": NOTES}, read_only=True))
    w.protect(where)
    j = job(w, command, where)
    return one_line(w.run(j.args), "read-only", "cannot write", "permission")


DATA = {"junk line": lambda rows: rows[0] + '{"question": "What is 1 +\n' + "".join(rows[1:]),
        "not UTF-8": lambda rows: rows[0] + rows[1].replace("What", "Wh\udcffat") + "".join(rows[2:]),
        "cut off": lambda rows: "".join(rows)[:-12]}


def bad_data(w: Workspace, command: str, what: str) -> Outcome:
    """A data file damaged (a junk line, a byte that is not UTF-8, the last line cut off): one line
    naming the file and the line."""
    source = w.inputs.dir / ("pairs.jsonl" if command == "sft" else "tasks.jsonl")
    rows = source.read_text().splitlines(keepends=True)
    bad = w.dir / "bad.jsonl"
    bad.write_bytes(DATA[what](rows).encode("utf-8", "surrogateescape"))
    w.protect(bad, w.dir / "out")
    args = job(w, command).args
    if command == "sft":
        args[args.index("--data") + 1] = bad
    else:
        args[args.index("--task") + 1] = f"jsonl:{bad}"
        if "--task-options" in args:
            del args[args.index("--task-options"):args.index("--task-options") + 2]
    return one_line(w.run(args), "bad.jsonl:")


def bad_recipe(w: Workspace, command: str) -> Outcome:
    """A recipe that is not YAML (an unclosed list): one line naming it."""
    recipe = w.dir / "recipe.yaml"
    recipe.write_text("lr: [0.001,\nmax_steps: 2\n")
    w.protect(recipe, w.dir / "out")
    return one_line(w.run([*job(w, command).args, "--config", recipe]), "recipe.yaml")


MODEL_DAMAGE = {"truncated weights": ("model.safetensors", lambda b: b[:len(b) // 3]),
                "junk config.json": ("config.json", lambda b: b"{not json"),
                "junk tokenizer.json": ("tokenizer.json", lambda b: b[:100])}


def bad_model(w: Workspace, command: str, what: str) -> Outcome:
    """A model directory with one file damaged, as --model (distill: a local --teacher): one line
    naming the file."""
    name, damage = MODEL_DAMAGE[what]
    model = copy_tree(w.inputs.model, w.dir / "model")
    (model / name).write_bytes(damage((model / name).read_bytes()))
    w.protect(model, w.dir / "out")
    if command == "serve":
        return one_line(w.run(["serve", "--model", model, "--port", free_port(), "--device", "cpu"]), name)
    args = job(w, command).args
    args[args.index("--teacher" if command == "distill" else "--model") + 1] = model
    return one_line(w.run(args), name)


RUN_CONFIG = "model: tiny\ntask: arithmetic\ntask_options: {}\nformat: r1\nprefill_think: false\n"
RUN_DAMAGE = {"config.yaml": "task: [arithmetic\nformat: r1\n", "summary.json": "{not json"}


def bad_run(w: Workspace, command: str, name: str) -> Outcome:
    """A run directory (a model in final/) whose config.yaml or summary.json is damaged, as --model
    (train: --resume): one line naming it, or, for a command that has no need of it, a whole output."""
    run = w.dir / "run"
    copy_tree(w.inputs.model, run / "final")
    (run / "config.yaml").write_text(RUN_CONFIG)
    (run / name).write_text(RUN_DAMAGE[name])
    w.protect(run, w.dir / "out")
    if command == "serve":
        return one_line(w.run(["serve", "--model", run, "--port", free_port(), "--device", "cpu"]), name)
    if command == "train":
        return one_line(w.run([*TRAIN, "--max-steps", "2", "--out", run, "--resume", run]), name)
    j = job(w, command)
    j.args[j.args.index("--teacher" if command == "distill" else "--model") + 1] = run
    return either(w.run(j.args), j, name)


def unfinished_run(w: Workspace, drop_latest: bool) -> Path:
    """A copy of the finished 3-step run as a kill before its end leaves it: no final/, summary
    not finished; ``drop_latest``: its last checkpoint gone too (so a resume trains a step)."""
    run = copy_tree(w.inputs.dir / "run-3", w.dir / "out" / "run")
    shutil.rmtree(run / "final")
    (run / "summary.json").write_text("{}")
    if drop_latest:
        shutil.rmtree(run / "checkpoints" / "step-000003")
        (run / "checkpoints" / "latest").write_text("step-000002\n")
    return run


def make_run_3(folder: Path) -> None:
    """The finished 3-step run (a checkpoint each step) the checkpoint and two-at-once cells copy."""
    ran = Proc([*TRAIN, "--max-steps", "3", "--out", folder / "run-3"], folder, folder / "logs").wait(600)
    if ran.code != 0:
        raise SystemExit(f"faults.py: the 3-step run the checkpoint cells need failed: {ran.last}")


def bad_checkpoint(w: Workspace, command: str, what: str) -> Outcome:
    """An unfinished run whose latest checkpoint is damaged: --resume falls back to the one before
    and finishes; with every kept checkpoint damaged: one line naming it."""
    run = unfinished_run(w, drop_latest=False)
    kept = sorted((run / "checkpoints").glob("step-*"))
    for ckpt in kept if what == "all damaged" else kept[-1:]:
        weights = ckpt / "weights.safetensors"
        if what in ("truncated weights", "all damaged"):
            weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
        elif what == "junk state.json":
            (ckpt / "state.json").write_text("{not json")
        else:
            (ckpt / "trainer.pt").write_bytes(b"PK\x03\x04 junk")
    args = [*TRAIN, "--max-steps", "3", "--out", run, "--resume", run]
    if what == "all damaged":
        w.protect(run / "checkpoints")
        return one_line(w.run(args), "step-0000", "checkpoint")
    ran = w.run(args)
    result = finished(ran, train_done(run, 3))
    return ok("fell back to the checkpoint before and finished") if result.verdict == "ok" else result


def concurrent(w: Workspace, command: str) -> Outcome:
    """Two processes on one run at once (train: two --resume; distill: the same command twice): each
    finishes or stops in one line, and the run ends whole, nothing written twice."""
    if command == "train":
        run = unfinished_run(w, drop_latest=True)
        args, done = [*TRAIN, "--max-steps", "3", "--out", run, "--resume", run], lambda: train_done(run, 3)
    else:
        j = job(w, command)
        args, done = j.args, j.done
    procs = [w.start(args), w.start(args)]
    ran = [p.wait(w.left()) for p in procs]
    for r in ran:
        verdict = finished(r, None) if r.code == 0 else one_line(r, "in use", "another")
        if verdict.verdict != "ok":
            return verdict
    missing = done()
    if missing:
        return defect(missing)
    return ok("exit " + " and ".join(str(r.code) for r in ran) + "; the run is whole")


def teacher(w: Workspace, command: str, behaviour: str, retry_after: str = "1") -> Outcome:
    """distill against a teacher that misbehaves: each prompt's failure recorded in the card and
    exit 0 (or, for 429 then ok, the answers kept), within the deadline, or one line."""
    bad = Teacher(behaviour, retry_after=retry_after)
    try:
        j = job(w, command, teacher=bad.url)
        for flag, value in (("--limit", "2"), ("--concurrency", "2"), ("--timeout", "2")):
            j.args[j.args.index(flag) + 1] = value
        ran = w.run(j.args)
    finally:
        bad.close()
    if ran.code != 0:
        return one_line(ran, "teacher")
    card = json.loads(j.out.with_name("traces.card.json").read_text())
    counts = card["counts"]
    if behaviour == "429":
        return finished(ran, j.done())
    if behaviour == "endless" and counts["answered"]:
        return defect(f"a 64 MiB answer was read whole and judged ({counts['answered']} answered): no size cap")
    if counts["failed"] != 2:
        return defect(f"the card counts {counts['failed']} failed of 2 prompts")
    kinds = sorted({f["kind"] for f in card["failures"]["per_prompt"].values()})
    return ok(f"exit 0 in {ran.seconds:.0f} s; failures in the card: {', '.join(kinds)}")


# ---------------------------------------------------------------------------------------------
# serve


def serve(w: Workspace, port: int) -> Proc:
    proc = w.start(["serve", "--model", "tiny", "--port", port, "--device", "cpu"])
    if not wait_until(lambda: request(port, "/health", timeout=2)[0] == 200, proc, w.left(), every=0.2):
        proc.send(signal.SIGKILL)
        raise RuntimeError(f"serve never answered /health: {proc.wait(10).last}")
    return proc


CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "What is 2 + 3?"}], "max_tokens": 512}


def serve_stop(w: Workspace, sig: int, mid_request: bool) -> Outcome:
    """serve stopped by ``sig``, after a chat request or while one decodes. SIGTERM: the request is
    answered and serve exits 0. SIGKILL: serve started again on the port answers."""
    port = free_port()
    proc = serve(w, port)
    status = []
    asking = threading.Thread(target=lambda: status.append(request(port, "/v1/chat/completions", CHAT)[0]))
    asking.start()
    if mid_request:
        wait_until(lambda: request(port, "/health", timeout=2)[1].get("in_flight", 0) > 0, proc, 10, every=0.01)
    else:
        asking.join()
    proc.send(sig)
    ran = proc.wait(min(w.left(), 60))
    asking.join(60)
    if sig == signal.SIGKILL:
        again = serve(w, port)
        answered = request(port, "/v1/chat/completions", CHAT)[0]
        again.send(signal.SIGTERM)
        again.wait(60)
        return ok("serve started again answered 200") if answered == 200 else defect(f"after a restart: HTTP {answered}")
    result = finished(ran, None if status == [200] else f"the request got HTTP {status}, not 200")
    return ok("the request was answered; exit 0 after draining") if result.verdict == "ok" else result


def port_taken(w: Workspace, command: str) -> Outcome:
    """serve on a port another program listens on: one line naming the address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        return one_line(w.run(["serve", "--model", "tiny", "--port", port, "--device", "cpu"]), "in use", str(port))


# ---------------------------------------------------------------------------------------------
# The matrix

Row = tuple[str, Callable, dict, tuple, tuple]
ROWS: list[Row] = [
    # fault, its function, keyword arguments, the commands it applies to, those in the fast half
    ("none", no_fault, {}, COMMANDS, ("distill",)),
    ("SIGKILL at ½ run", kill, {"sig": signal.SIGKILL, "at": "half"}, WRITERS, ()),
    ("SIGKILL at 1st checkpoint", kill, {"sig": signal.SIGKILL, "at": "checkpoint"}, ("train",), ()),
    ("SIGKILL after 1st answer", kill, {"sig": signal.SIGKILL, "at": "row"}, ("distill",), ()),
    ("SIGKILL writing output", kill, {"sig": signal.SIGKILL, "at": "writing"},
     ("train", "sft", "eval", "export-hf", "export-gguf"), ()),
    ("SIGKILL mid-request", lambda w, c: serve_stop(w, signal.SIGKILL, True), {}, ("serve",), ()),
    ("SIGTERM at ½ run", kill, {"sig": signal.SIGTERM, "at": "half"}, WRITERS, ()),
    ("SIGTERM mid-request", lambda w, c: serve_stop(w, signal.SIGTERM, True), {}, ("serve",), ()),
    ("user's files in --out", users_files, {}, ("train", "sft", "export-hf"), ("export-hf",)),
    ("disk full", disk_full, {}, WRITERS, ("distill",)),
    ("read-only out", read_only, {}, WRITERS, ("train", "sft", "eval", "export-gguf")),
    ("data: junk line", bad_data, {"what": "junk line"}, ("train", "sft", "distill", "eval"), ("sft",)),
    ("data: not UTF-8", bad_data, {"what": "not UTF-8"}, ("train", "sft", "distill", "eval"), ("distill",)),
    ("data: cut off", bad_data, {"what": "cut off"}, ("train", "sft", "distill", "eval"), ("eval",)),
    ("recipe: not YAML", bad_recipe, {}, ("train", "sft"), ("train",)),
    ("model: truncated weights", bad_model, {"what": "truncated weights"}, COMMANDS, ("export-gguf", "serve")),
    ("model: junk config.json", bad_model, {"what": "junk config.json"}, COMMANDS, ("sft",)),
    ("model: junk tokenizer.json", bad_model, {"what": "junk tokenizer.json"}, COMMANDS, ("eval",)),
    ("run: junk config.yaml", bad_run, {"name": "config.yaml"}, ("train", "eval", "export-hf", "export-gguf", "serve"),
     ("export-hf",)),
    ("run: junk summary.json", bad_run, {"name": "summary.json"}, ("export-hf", "export-gguf"), ()),
    ("ckpt: truncated weights", bad_checkpoint, {"what": "truncated weights"}, ("train",), ()),
    ("ckpt: junk state.json", bad_checkpoint, {"what": "junk state.json"}, ("train",), ()),
    ("ckpt: junk trainer.pt", bad_checkpoint, {"what": "junk trainer.pt"}, ("train",), ()),
    ("ckpt: every one damaged", bad_checkpoint, {"what": "all damaged"}, ("train",), ()),
    ("two at once", concurrent, {}, ("train", "distill"), ()),
    ("port taken", port_taken, {}, ("serve",), ()),
    ("teacher: 500s", teacher, {"behaviour": "500"}, ("distill",), ("distill",)),
    ("teacher: garbage", teacher, {"behaviour": "garbage"}, ("distill",), ("distill",)),
    ("teacher: half an answer", teacher, {"behaviour": "drop"}, ("distill",), ("distill",)),
    ("teacher: trickle", teacher, {"behaviour": "trickle"}, ("distill",), ("distill",)),
    ("teacher: 429, Retry-After 1", teacher, {"behaviour": "429"}, ("distill",), ("distill",)),
    ("teacher: 429, Retry-After 1 day", teacher, {"behaviour": "429", "retry_after": "86400"}, ("distill",), ()),
    ("teacher: 64 MiB answer", teacher, {"behaviour": "endless"}, ("distill",), ("distill",)),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fast", action="store_true",
                   help="the cheap half: the cells that need no training run (what tests/test_faults.py runs)")
    p.add_argument("--cell-timeout", type=float, default=150.0, help="seconds one cell may take, all its commands together")
    p.add_argument("--jobs", type=int, default=1, help="cells run at once (the clean runs, whose times set the "
                                                       "½-run kills, always run first and alone)")
    p.add_argument("--only", default="", help="run only the faults whose name contains this text (\"\" = all)")
    p.add_argument("--out", type=Path, help="default: benchmarks/results/faults-<cpu kind>.json")
    add_allow_dirty(p)
    args = p.parse_args(argv)
    header = commit_fields("faults.py", args.allow_dirty)
    cells = [(fault, fn, kw, command) for fault, fn, kw, commands, fast in ROWS if args.only in fault
             for command in (fast if args.fast else commands)]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="r1lite-faults-") as scratch:
        inputs = make_inputs(Path(scratch) / "inputs")
        if any(fn is bad_checkpoint or (fn is concurrent and command == "train") for _, fn, _, command in cells):
            make_run_3(inputs.dir)

        def one(i: int) -> dict:
            fault, fn, kw, command = cells[i]
            outcome = run_cell(fn, kw, command, Path(scratch) / f"{i:03d}", inputs, args.cell_timeout)
            print(f"{command:>12} × {fault:<32} {MARK[outcome.verdict]:<7} {outcome.seconds:5.1f} s  {outcome.note[:110]}",
                  flush=True)
            return {"command": command, "fault": fault, "verdict": outcome.verdict, "note": outcome.note,
                    "seconds": round(outcome.seconds, 1)}

        try:
            first = [i for i, cell in enumerate(cells) if cell[1] is no_fault]
            results = dict(zip(first, map(one, first)))
            with ThreadPoolExecutor(max(1, args.jobs)) as pool:
                rest = [i for i in range(len(cells)) if i not in results]
                results.update(zip(rest, pool.map(one, rest)))
        finally:
            inputs.teacher.close()
    results = [results[i] for i in range(len(cells))]
    seconds = time.monotonic() - started
    print()
    print_matrix(results, COMMANDS, args.fast)
    counts = {v: sum(r["verdict"] == v for r in results) for v in MARK}
    print(f"\n{len(results)} cells in {seconds:.0f} s: " + ", ".join(f"{n} {v}" for v, n in counts.items()))
    m = machine()
    out = args.out or RESULTS / f"faults-{m['cpu_kind']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**header, "machine": m, "fast": args.fast, "jobs": args.jobs, "seconds": round(seconds, 1),
                               "counts": counts, "cells": results}, indent=2) + "\n")
    print(f"wrote {out}")
    return 1 if counts["defect"] or counts["error"] else 0


if __name__ == "__main__":
    sys.exit(main())
