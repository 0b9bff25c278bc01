"""What every benchmark records: the machine, the commit, and a best-of timer."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

RESULTS = Path(__file__).parent / "results"


def git_commit() -> tuple[str, bool]:
    """(HEAD's bare 40-hex commit, whether the tree has uncommitted changes outside ``benchmarks/results``)."""
    root = Path(__file__).parent
    sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=root).stdout.strip()
    # results/ holds the benchmarks' own output: a result written by an earlier script does not make the code dirty
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"],
                           capture_output=True, text=True, cwd=root.parent).stdout.strip()
    return sha, bool(dirty)


def add_allow_dirty(parser) -> None:
    parser.add_argument("--allow-dirty", action="store_true",
                        help="measure an uncommitted tree: the result says dirty: true beside the bare commit (never "
                             "commit such a result; a committed result names code anyone can check out)")


def commit_fields(script: str, allow_dirty: bool) -> dict:
    """The ``commit`` a result names (bare HEAD), and ``dirty: true`` when ``--allow-dirty`` let an
    uncommitted tree run; without it a dirty tree is refused before anything is measured."""
    sha, dirty = git_commit()
    if dirty and not allow_dirty:
        raise SystemExit(f"{script}: the tree has uncommitted changes; commit them first (the result names the commit "
                         "it ran on), or pass --allow-dirty for a result never to be committed")
    return {"commit": sha, "dirty": True} if dirty else {"commit": sha}


def machine() -> dict:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from r1lite.models import cpu_kind

    return {"cpu": cpu, "cpu_kind": cpu_kind(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def best_of(fn, repeats: int = 5) -> float:
    """Seconds of the fastest of ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def train_run(recipe: dict, out: Path) -> dict:
    """``r1lite train`` on ``recipe`` (written beside ``out`` as ``<out>.yaml``) in its own process,
    resumed when ``out`` has begun (a finished run only reads back); its ``summary.json``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump(recipe, sort_keys=False))
    cmd = [sys.executable, "-m", "r1lite", "train", "--config", str(config), "--out", str(out)]
    if (out / "checkpoints" / "latest").exists() or (out / "summary.json").exists():
        cmd += ["--resume", str(out)]
    subprocess.run(cmd, check=True, cwd=Path(__file__).resolve().parents[1])
    return json.loads((out / "summary.json").read_text())


def drop_checkpoints(out: Path) -> None:
    """Remove a finished run's checkpoints (and its KL reference's weights) once its row is kept:
    its final/ model, metrics, evaluations and summary stay (a campaign's runs would otherwise hold
    gigabytes each)."""
    for name in ("checkpoints", "reference"):
        shutil.rmtree(out / name, ignore_errors=True)
