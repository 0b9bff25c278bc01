"""Checkpoints that survive a kill at any moment, and exact resume.

A checkpoint is a directory ``checkpoints/step-000012/`` holding the trainable weights
(safetensors; the LoRA adapter only, with LoRA), the optimizer and scheduler states, every RNG
state, and ``state.json`` (step, data position, cost meter, anything else the trainer keeps). It
is written under a temporary name and renamed into place; then ``checkpoints/latest`` is
rewritten atomically to name it; then older checkpoints are deleted. A kill at any point leaves
``latest`` naming a complete checkpoint (or no checkpoint at all, before the first one).

Tensors are saved whole on the CPU, whatever the world size: under torchrun every rank calls
:func:`save` (FSDP's shards are gathered, one tensor at a time) and rank 0 alone writes; every rank
:func:`load` s the files and keeps its own shard. So a run saved by 4 processes resumes on one.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from r1lite.config import to_dict
from r1lite.errors import UsageError
from r1lite.files import atomic_dir, read_json, write_text
from r1lite.train.config import LAUNCH_KEYS, GRPOConfig
from r1lite.train.distributed import full_state, local_like


def trainable_state(model, keep: bool = True) -> dict[str, torch.Tensor | None]:
    """Trainable parameters by name (tied weights appear once), whole and on the CPU; with ``keep``
    False (a rank that does not write) gathered and dropped."""
    return full_state({n: p.detach() for n, p in model.named_parameters() if p.requires_grad}, keep)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, step: int, model, optimizer, scheduler, state: dict[str, Any], write: bool = True) -> Path:
    """Write checkpoint ``step``; under torchrun every rank calls it and only rank 0 has ``write``."""
    root = Path(run_dir) / "checkpoints"
    name = f"step-{step:06d}"
    weights = trainable_state(model, keep=write)
    optimizer_state = full_state(optimizer.state_dict(), keep=write)
    if not write:
        return root / name
    with atomic_dir(root / name) as tmp:  # every file fsynced before the directory is renamed in
        save_file({n: t.contiguous() for n, t in weights.items()}, tmp / "weights.safetensors")
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "rng": rng_state()},
                   tmp / "trainer.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2, default=str))
    write_text(root / "latest", name + "\n")
    for old in root.iterdir():
        if old.name not in (name, "latest"):
            shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    return root / name


def latest(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "state.json").exists():
        raise UsageError(f"{pointer} names {path.name}, which is incomplete; delete {pointer} to restart the run")
    return path


def load(path: Path, model, optimizer, scheduler) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG states (each rank its shard); return ``state.json``."""
    params = dict(model.named_parameters())
    with safe_open(path / "weights.safetensors", framework="pt") as f:  # one tensor in memory at a time
        names = set(f.keys())
        missing = [n for n, p in params.items() if p.requires_grad and n not in names]
        if missing or names - set(params):
            raise UsageError(f"{path}: its weights do not match this model (e.g. {(missing or sorted(names - set(params)))[0]}); "
                             "resume with the same --model and --lora settings as the original run")
        with torch.no_grad():
            for n in names:
                params[n].copy_(local_like(f.get_tensor(n), params[n]))
    trainer = torch.load(path / "trainer.pt", weights_only=False, map_location="cpu", mmap=True)
    optimizer.load_state_dict(local_optimizer_state(trainer["optimizer"], optimizer))
    scheduler.load_state_dict(trainer["scheduler"])
    set_rng_state(trainer["rng"])
    return json.loads((path / "state.json").read_text())


def local_optimizer_state(state: dict[str, Any], optimizer) -> dict[str, Any]:
    """A saved (whole) optimizer state with each per-parameter tensor cut to this rank's shard."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    local = {i: {k: local_like(v, params[i]) if isinstance(v, torch.Tensor) and v.shape == params[i].shape else v
                 for k, v in per_param.items()} for i, per_param in state["state"].items()}
    return {**state, "state": local}


def check_resume(cfg: GRPOConfig, run_dir: Path, resume: bool) -> dict:
    """The run directory's summary so far; refuse to mix runs."""
    config_path = run_dir / "config.yaml"
    if not resume:
        if config_path.exists():
            raise UsageError(f"{run_dir} already holds a run; continue it with --resume {run_dir} "
                             "(same flags), or choose another --out")
        return {}
    if not config_path.exists():
        raise UsageError(f"--resume {run_dir}: no config.yaml there; not an r1lite run directory")
    saved = yaml.safe_load(config_path.read_text())
    now = to_dict(cfg)
    diffs = [k for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k) and k not in LAUNCH_KEYS]
    if diffs:
        k = diffs[0]
        raise UsageError(f"--resume {run_dir}: '{k}' was {saved.get(k)!r} in the original run, now {now.get(k)!r}; "
                         "resume with the same flags and recipe as the original run")
    summary_file = run_dir / "summary.json"
    return read_json(summary_file, "delete it to rerun the evaluations") if summary_file.exists() else {}
