import contextlib
import io
import os
import socket
import subprocess
import sys
import textwrap
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
"""The evaluation data (GSM8K, MATH-500, SVAMP) beside the repository, found from its root."""


def run_cli(*args: str | Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m r1lite ARGS`` in a subprocess, as a user would run it (paths may be passed as they
    are); ``env`` adds to this process's environment."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "r1lite", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=ROOT)


def run_cli_here(*args: str | Path) -> subprocess.CompletedProcess:
    """``r1lite ARGS`` inside this process, its output captured: for a command that stops on bad input
    before any work, without a new interpreter's start (seconds a call). An exception that escapes
    the command is a traceback on stderr and exit 1, as it would be in a subprocess."""
    from r1lite.cli import main

    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(ROOT):
        try:
            code = main(argv)
        except SystemExit as e:  # argparse's own errors and --help
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            if isinstance(e.code, str):
                print(e.code, file=sys.stderr)
        except Exception:
            traceback.print_exc()
            code = 1
    return subprocess.CompletedProcess(["r1lite", *argv], code, out.getvalue(), err.getvalue())


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago (all bound at once, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture
def screenshot_dir(tmp_path) -> Path:
    """Where page tests save their screenshots: the test's own folder, or ``docs/`` (the README's
    pictures) when ``R1LITE_REFRESH_DOCS=1``; a plain test run leaves the checkout clean."""
    return ROOT / "docs" if os.environ.get("R1LITE_REFRESH_DOCS") == "1" else tmp_path


@pytest.fixture
def data_dir() -> Path:
    """``../shared/data`` relative to the repository root. Missing: the test skips on a developer's
    machine, and fails where the ``CI`` environment variable is set (CI must have the data)."""
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED_DATA} is missing: CI needs the evaluation data beside the repository")
        pytest.skip(f"{SHARED_DATA} is not on this machine")
    return SHARED_DATA


@pytest.fixture(params=["kernels", "torch"])
def cpu_path(request, monkeypatch):
    """Our CPU kernels, and PyTorch where they cannot be built (GPUs, other CPUs, no compiler)."""
    from r1lite.engine import kernels

    if request.param == "torch":
        monkeypatch.setattr(kernels, "load", lambda: None)
    elif kernels.load() is None:
        pytest.skip("the CPU kernels cannot be built on this machine")
    return request.param


@pytest.fixture(scope="session")
def cli():
    """:func:`run_cli`, for tests and for fixtures of any scope."""
    return run_cli


@pytest.fixture(scope="session")
def quick_cli():
    """:func:`run_cli_here`: the CLI in this process, for input that is refused before any work."""
    return run_cli_here


@pytest.fixture(scope="session")
def free_port():
    """``free_port()`` → one loopback port that was free a moment ago."""
    return lambda: free_ports(1)[0]


@pytest.fixture(scope="session", name="free_ports")
def free_ports_fixture():
    """:func:`free_ports`: ``free_ports(n)`` → ``n`` distinct loopback ports."""
    return free_ports


@pytest.fixture(scope="session")
def tiny_model():
    """``tiny_model(seed=0)`` → ``(model, tokenizer)``: the random tiny model in fp32 on the CPU,
    loaded afresh on each call, so a test or fixture that trains it shares it with no one."""
    from r1lite.models import load_model, resolve_runtime

    return lambda seed=0: load_model("tiny", resolve_runtime("cpu", "fp32"), seed=seed)


@pytest.fixture(scope="module")
def thinking_run(tmp_path_factory, tiny_model):
    """An untrained tiny model (seed 1) in a run directory whose config prefills <think> (R1
    format): it never closes the thinking by itself, so a budget decides when the answer starts."""
    run = tmp_path_factory.mktemp("think") / "run"
    model, tokenizer = tiny_model(seed=1)
    model.save_pretrained(run / "final")
    tokenizer.save_pretrained(run / "final")
    (run / "config.yaml").write_text("model: tiny\ntask: arithmetic\ntask_options: {}\nformat: r1\nprefill_think: true\n")
    return run


def write_varied_task(folder: Path) -> tuple[str, dict, dict]:
    """A custom JSONL task whose Python verifier gives a random tiny model varied rewards, so GRPO
    has non-zero advantages (an untrained model never solves a real task): the reward is 1 when the
    completion has an even number of vowels. Returns (task spec, extra environment, task options):
    the verifier is a task option (``--task-options verifier=…``), as rows may not name code."""
    module = folder / "vowels_verifier.py"
    module.write_text(textwrap.dedent('''
        def even_vowels(response, answer):
            return float(sum(ch in "aeiou" for ch in response) % 2 == 0)

        def by_answer(response, answer):
            """Rows whose answer is "fixed" always score 1 (zero variance); others vary."""
            return 1.0 if answer == "fixed" else even_vowels(response, answer)
    '''))
    data = folder / "vowels.jsonl"
    rows = [f'{{"question": "Write something about item {i}.", "answer": "{"fixed" if i % 2 else "free"}"}}'
            for i in range(200)]
    data.write_text("\n".join(rows) + "\n")
    env = {"PYTHONPATH": f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return f"jsonl:{data}", env, {"verifier": "python:vowels_verifier:by_answer"}


@pytest.fixture
def varied_task(tmp_path):
    """:func:`write_varied_task` in the test's own directory."""
    return write_varied_task(tmp_path)


@pytest.fixture(scope="module")
def module_varied_task(tmp_path_factory):
    """:func:`write_varied_task` once for a module whose runs share it."""
    return write_varied_task(tmp_path_factory.mktemp("varied_task"))


@pytest.fixture
def chromium_browser():
    """Debian's headless Chromium driven by playwright (playwright's own browser download cannot
    work offline). Missing pieces fail with the install command; they never skip."""
    import shutil

    executable = shutil.which("chromium")
    if executable is None:
        pytest.fail("Chromium is missing: apt-get install chromium (make test installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[test]' (make test installs it)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def no_model_loads(monkeypatch):
    """Every ``load_model`` r1lite can call raises: for refusals that must come before a model loads.
    The modules that bind the name at import are imported first, so none keeps the stand-in after
    the test."""
    import importlib

    def refuse(*args, **kw):
        raise AssertionError("a model loaded before the refusal")

    modules = [importlib.import_module(name) for name in ("r1lite.models", "r1lite.edge.export", "r1lite.edge.backends",
                                                           "r1lite.train.onpolicy", "r1lite.train.trainer", "r1lite.evaluate")]
    for module in modules:  # all imported before any is patched: none binds the stand-in
        if hasattr(module, "load_model"):
            monkeypatch.setattr(module, "load_model", refuse)
