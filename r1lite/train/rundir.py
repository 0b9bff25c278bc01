"""The run directory: what may become one, one process at a time, and what a resumed run must match.

A run never deletes or overwrites a file it did not write. ``--out`` must be a new or empty
directory, or with ``--force`` one whose other files have none of a run's names; a directory that
holds a run (its ``config.yaml``) is only continued, with ``--resume``. While a run works in it,
the directory is locked (``lock``, naming the process that holds it): a second process on the same
run stops with one line. The lock is an ``flock``, so it ends with its process however that process
dies; a lock file left by a process that is gone is taken over with a note.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import yaml

from r1lite.config import to_dict
from r1lite import files
from r1lite.errors import UsageError
from r1lite.files import read_json, read_jsonl, write_jsonl
from r1lite.train.config import LAUNCH_KEYS, GRPOConfig

RUN_NAMES = ("config.yaml", "metrics.jsonl", "summary.json", "report.html", "plots", "checkpoints", "final",
             "reference", "cold_start.jsonl", "cold-start-weights", "distill.jsonl", "lock", "eval_before.jsonl", "eval_after_sft.jsonl",
             "eval_after.jsonl", "eval_base_phrasing0.jsonl", "eval_base_phrasing1.jsonl", "eval_base_phrasing2.jsonl")
"""What a run writes at the top of its directory (distill.jsonl's card files beside it too)."""
WHERE_KEYS = ("out",)
"""Config keys that say where a run is, not what it computes: a moved or copied run resumes."""
CHECK_KEYS = ("preflight",)
"""Config keys that only say whether to stop: a run the pre-flight stopped resumes with --no-preflight."""


TEMP_PREFIXES = (*(f".{name.split('.')[0]}." for name in RUN_NAMES), ".step-", ".latest.")
"""How the temporary files of the run's own writes begin (``files.atomic_write``: ``.NAME.*.tmp``)."""


def own_temp(path: Path) -> bool:
    """Whether ``path`` is a temporary file or directory of one of the run's own writes, as a kill
    leaves it (``.final.x1y2.tmp``, ``.final.x1y2.old``); a hidden file of the user's is not."""
    return path.name.startswith(TEMP_PREFIXES) and path.name.endswith((".tmp", ".old"))


def own_lock(run_dir: Path) -> bool:
    """Whether ``<run>/lock`` is r1lite's (empty, or naming a process): a run killed after taking
    it and before writing config.yaml leaves it and nothing else."""
    return (run_dir / "lock").is_file() and re.fullmatch(r"(pid \d+ on \S*)?", holder(run_dir / "lock")) is not None


def claim(run_dir: Path, resume: bool, force: bool) -> None:
    """Refuse, before anything is written, an ``--out`` the run could not use without losing a file."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir} is a file; give a directory for the run (a new one is made)")
    holds_run = (run_dir / "config.yaml").exists()
    if resume and not holds_run:
        raise UsageError(f"--resume {run_dir}: no config.yaml there; not an r1lite run directory")
    if not resume and holds_run:
        raise UsageError(f"{run_dir} already holds a run; continue it with --resume {run_dir} (same flags), or choose "
                         "another --out")
    leftover = {"lock"} if run_dir.is_dir() and own_lock(run_dir) else set()  # a run killed before its config
    if not resume and run_dir.is_dir() and any(p.name not in leftover and not own_temp(p) for p in run_dir.iterdir()):
        if not force:
            raise UsageError(f"--out {run_dir} is not empty and holds no r1lite run; choose a new or empty directory, or "
                             "add --force to write the run beside the files there (none is changed or deleted)")
        taken = [name for name in RUN_NAMES if name not in leftover and (run_dir / name).exists()]
        if taken:
            raise UsageError(f"--out {run_dir} --force: {run_dir / taken[0]} is in the way of the run's own "
                             f"{taken[0]}; move it, or choose another --out")
    files.writable(run_dir, "--out", directory=True)


class RunLock(files.ProcessLock):
    """One process per run directory: :class:`r1lite.files.ProcessLock` on ``<run>/lock``."""

    def __init__(self, run_dir: Path, console):
        super().__init__(run_dir / "lock", run_dir, lambda line: console.print(f"[yellow]{line}[/]"))


def holder(path: Path) -> str:
    """Who holds the lock at ``path`` ("" when no one does)."""
    return files.ProcessLock(path, path.parent).holder()


def clean_stale_temps(run_dir: Path) -> list[Path]:
    """Remove the temporary files and directories an atomic write of the run's own names left when
    its process was killed (:func:`own_temp`), at the top of the run and in ``checkpoints/``; any
    other file, hidden or not, is the user's and stays."""
    stale = [p for folder in (run_dir, run_dir / "checkpoints") if folder.is_dir() for p in folder.iterdir()
             if own_temp(p)]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return stale


def check_resume(cfg: GRPOConfig, run_dir: Path, resume: bool) -> dict:
    """The run directory's summary so far; refuse to mix runs."""
    if not resume:
        return {}
    config_path = run_dir / "config.yaml"
    try:
        saved = yaml.safe_load(config_path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise UsageError(f"{config_path}: not readable as the run's config ({type(e).__name__}); restore it from a "
                         "copy of the run, or start a new run in another --out") from None
    if not isinstance(saved, dict):
        raise UsageError(f"{config_path}: not a run's config (a mapping of keys); restore it, or start a new run")
    saved.setdefault("template", "chat")  # a run from before templates used the chat template
    now = to_dict(cfg)
    ignored = set(LAUNCH_KEYS) | set(WHERE_KEYS) | set(CHECK_KEYS)
    diffs = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k) and k not in ignored]
    if diffs:
        k = diffs[0]
        raise UsageError(f"--resume {run_dir}: '{k}' was {saved.get(k)!r} in the original run, now {now.get(k)!r}; "
                         "resume with the same flags and recipe as the original run")
    summary_file = run_dir / "summary.json"
    return read_json(summary_file, "delete it to rerun the evaluations") if summary_file.exists() else {}


def truncate_metrics(run_dir: Path, summary: dict, step: int, write: bool = True) -> list[str]:
    """A resumed run's ``metrics.jsonl`` rows and ``eval_curve`` points after its checkpoint's
    ``step`` are dropped (the run writes them again); a cut-off last line (a kill mid-write) too.
    Returns the notes on what was cut off."""
    notes: list[str] = []
    path = run_dir / "metrics.jsonl"
    if write and path.exists():
        rows = [r for _, r in read_jsonl(path, notes=notes)]
        write_jsonl(path, [r for r in rows if r["step"] <= step])
    if "eval_curve" in summary:
        summary["eval_curve"] = [p for p in summary["eval_curve"] if p["step"] <= step]
    return notes
