"""The house stays as built: imports run one way with no circles (import-linter's contracts in
pyproject.toml), no module outgrows its ceiling, and every benchmark result names committed code."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CEILING = 600
"""Lines any file under r1lite/ may have (aim ~550)."""


def test_imports_run_one_way_with_no_circles():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "lint-imports is missing: `make test` installs it with the test extra (import-linter)"
    done = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_no_module_outgrows_the_ceiling():
    sizes = {p.relative_to(ROOT): len(p.read_text().splitlines()) for p in (ROOT / "r1lite").rglob("*")
             if p.suffix in (".py", ".c", ".html", ".yaml")}
    assert {p: n for p, n in sizes.items() if n > CEILING} == {}


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)


def test_every_benchmark_result_names_a_committed_ancestor():
    """A result names the bare 40-hex commit of a clean tree that main's history holds; a result
    measured with --allow-dirty (``dirty: true``) is never committed."""
    if git("rev-parse", "--is-inside-work-tree").returncode:
        pytest.skip("not a git checkout")
    shallow = git("rev-parse", "--is-shallow-repository").stdout.strip() == "true"
    for path in sorted((ROOT / "benchmarks" / "results").glob("*.json")):
        result = json.loads(path.read_text())
        commit = result.get("commit", "")
        assert re.fullmatch(r"[0-9a-f]{40}", commit), f"{path.name}: commit {commit!r} is not a bare 40-hex commit"
        assert result.get("dirty") is not True, f"{path.name}: measured on an uncommitted tree"
        if not shallow:
            assert git("merge-base", "--is-ancestor", commit, "HEAD").returncode == 0, \
                f"{path.name}: {commit} is not in this branch's history"
