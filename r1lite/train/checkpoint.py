"""Checkpoints that survive a kill at any moment, and exact resume.

A checkpoint is a directory ``checkpoints/step-000012/`` holding the trainable weights
(safetensors; the LoRA adapter only, with LoRA), the optimizer and scheduler states, every RNG
state, and ``state.json`` (step, data position, cost meter, anything else the trainer keeps). It
is written under a temporary name and renamed into place; then ``checkpoints/latest`` is
rewritten atomically to name it; then checkpoints older than the one before it are deleted. A kill
at any point leaves ``latest`` naming a complete checkpoint (or no checkpoint at all, before the
first one), and the one before it stays as a fallback: a damaged latest checkpoint (a truncated
file, a bad disk block) is reported in one line and the run resumes from the one before.

Nothing in a checkpoint can run code when it is read: the weights are safetensors, the states
JSON, and ``trainer.pt`` (optimizer, scheduler, RNG) is read with ``torch.load(weights_only=True)``,
which takes tensors and plain data only.

Tensors are saved whole on the CPU, whatever the world size: under torchrun every rank calls
:func:`save` (FSDP's shards are gathered, one tensor at a time) and rank 0 alone writes; every rank
:func:`load` s the files and keeps its own shard. So a run saved by 4 processes resumes on one.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy._core.multiarray import _reconstruct
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from r1lite.errors import UsageError
from r1lite.files import atomic_dir, write_text
from r1lite.packaged import carry_source
from r1lite.train.distributed import full_state, local_like

KEEP = 2
"""Checkpoints kept: the latest and the one before it, the fallback when the latest is damaged."""
NAME = re.compile(r"step-\d{6}")
NUMPY_DATA = [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
"""What a checkpoint written before the RNG key became a list holds besides tensors: numpy's RNG key
as a uint32 array (plain data; no other global is allowed)."""


def trainable_state(model, keep: bool = True) -> dict[str, torch.Tensor | None]:
    """Trainable parameters by name (tied weights appear once), whole and on the CPU; with ``keep``
    False (a rank that does not write) gathered and dropped."""
    return full_state({n: p.detach() for n, p in model.named_parameters() if p.requires_grad}, keep)


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain data (numpy's key as a list), readable with weights_only."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, key.tolist(), pos, has_gauss, gauss),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss))
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
    for old in kept(run_dir)[:-KEEP]:  # only checkpoints r1lite named; any other file stays
        shutil.rmtree(old, ignore_errors=True)
    return root / name


def kept(run_dir: Path) -> list[Path]:
    """The run's complete checkpoints, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if NAME.fullmatch(p.name) and (p / "state.json").exists())


def latest(run_dir: Path) -> Path | None:
    """The checkpoint ``checkpoints/latest`` names (None before the first): only a ``step-NNNNNN``
    beside it, so the pointer cannot lead out of the run directory."""
    pointer = Path(run_dir) / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    name = pointer.read_text(errors="replace").strip()
    if not NAME.fullmatch(name):
        raise UsageError(f"{pointer} names {name[:60]!r}, not a checkpoint of this run (step-NNNNNN); delete {pointer} "
                         "to resume from the newest complete checkpoint, or restart the run")
    path = pointer.parent / name
    if not (path / "state.json").exists():
        raise UsageError(f"{pointer} names {path.name}, which is incomplete; delete {pointer} to restart the run")
    return path


def before(path: Path) -> Path | None:
    """The complete checkpoint before ``path``, if one is kept."""
    older = [p for p in kept(path.parent.parent) if p.name < path.name]
    return older[-1] if older else None


def load(path: Path, model, optimizer, scheduler) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG states (each rank its shard); return ``state.json``.
    A damaged or foreign file is one UsageError naming it (the weights may be half restored: load
    another checkpoint over them)."""
    state = read_state(path / "state.json")
    params = dict(model.named_parameters())
    weights = path / "weights.safetensors"
    try:
        with safe_open(weights, framework="pt") as f:  # one tensor in memory at a time
            names = set(f.keys())
            missing = [n for n, p in params.items() if p.requires_grad and n not in names]
            if missing or names - set(params):
                raise UsageError(f"{path}: its weights do not match this model (e.g. "
                                 f"{(missing or sorted(names - set(params)))[0]}); resume with the same --model and --lora "
                                 "settings as the original run")
            with torch.no_grad():
                for n in names:
                    tensor = f.get_tensor(n)
                    if not torch.isfinite(tensor).all():
                        raise UsageError(f"{weights}: {n} holds NaN or infinite values; the checkpoint is damaged")
                    params[n].copy_(local_like(tensor, params[n]))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise damaged(weights, e) from None
    try:
        with torch.serialization.safe_globals(NUMPY_DATA):
            trainer = torch.load(path / "trainer.pt", weights_only=True, map_location="cpu", mmap=True)
        optimizer.load_state_dict(local_optimizer_state(trainer["optimizer"], optimizer))
        scheduler.load_state_dict(trainer["scheduler"])
        set_rng_state(trainer["rng"])
    except UsageError:
        raise
    except (pickle.UnpicklingError, EOFError, OSError, RuntimeError, ValueError, KeyError, TypeError) as e:
        raise damaged(path / "trainer.pt", e) from None
    return state


def load_or_before(path: Path, model, optimizer, scheduler, warn) -> tuple[Path, dict[str, Any]]:
    """:func:`load` ``path``; when it is damaged, ``warn`` why and load the one before it (kept for
    this). Returns the checkpoint loaded and its state."""
    try:
        return path, load(path, model, optimizer, scheduler)
    except UsageError as e:
        fallback = before(path)
        if fallback is None:
            raise
        warn(f"[yellow]{e}[/]\nresuming from the checkpoint before it, {fallback.name}")
        return fallback, load(fallback, model, optimizer, scheduler)


def read_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict) or not {"step", "data_position"} <= set(state):
            raise ValueError("missing step or data_position")
    except (OSError, ValueError) as e:
        raise damaged(path, e) from None
    return state


def damaged(path: Path, error: BaseException) -> UsageError:
    reason = str(error).splitlines()[0][:160] if str(error) else type(error).__name__
    return UsageError(f"{path}: damaged or not written by r1lite ({reason}); resume from another checkpoint or "
                      "restart the run")


def local_optimizer_state(state: dict[str, Any], optimizer) -> dict[str, Any]:
    """A saved (whole) optimizer state with each per-parameter tensor cut to this rank's shard."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    local = {i: {k: local_like(v, params[i]) if isinstance(v, torch.Tensor) and v.shape == params[i].shape else v
                 for k, v in per_param.items()} for i, per_param in state["state"].items()}
    return {**state, "state": local}


def write_final(final: Path, model, tokenizer, source: str) -> None:
    """The trained model as a plain Hugging Face directory, written whole or not at all, with a
    packaged base's origin and terms (Gemma's) beside it; weights holding NaN or infinite values
    are refused with the fix."""
    bad = next((n for n, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    if bad is not None:
        raise UsageError(f"{bad} holds NaN or infinite values: final/ is not written; resume from an earlier "
                         "checkpoint with a lower learning rate (lr)")
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        carry_source(source, tmp)
