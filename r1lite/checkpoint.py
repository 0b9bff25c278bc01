"""Checkpoints that survive a kill at any moment, and exact resume.

A checkpoint is a directory ``checkpoints/step-000012/`` holding the trainable weights
(safetensors; the LoRA adapter only, with LoRA), the optimizer and scheduler states, every RNG
state, and ``state.json`` (step, data position, cost meter, anything else the trainer keeps). It
is written under a temporary name and renamed into place; then ``checkpoints/latest`` is
rewritten atomically to name it; then older checkpoints are deleted. A kill at any point leaves
``latest`` naming a complete checkpoint (or no checkpoint at all, before the first one).
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from r1lite.errors import UsageError
from r1lite.files import atomic_dir, write_text


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Trainable parameters by name (tied weights appear once)."""
    return {n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad}


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


def save(run_dir: Path, step: int, model, optimizer, scheduler, state: dict[str, Any]) -> Path:
    root = Path(run_dir) / "checkpoints"
    name = f"step-{step:06d}"
    with atomic_dir(root / name) as tmp:  # every file fsynced before the directory is renamed in
        save_file(trainable_state(model), tmp / "weights.safetensors")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
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
    """Restore weights, optimizer, scheduler and RNG states; return ``state.json``."""
    weights = load_file(path / "weights.safetensors")
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in weights]
    if missing or set(weights) - set(params):
        raise UsageError(f"{path}: its weights do not match this model (e.g. {(missing or sorted(set(weights) - set(params)))[0]}); "
                         "resume with the same --model and --lora settings as the original run")
    with torch.no_grad():
        for n, t in weights.items():
            params[n].copy_(t)
    trainer = torch.load(path / "trainer.pt", weights_only=False)
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    set_rng_state(trainer["rng"])
    return json.loads((path / "state.json").read_text())
