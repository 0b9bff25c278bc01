"""GRPO's KL reference: the policy as RL started — after any cold start, so the KL at RL step 0 is
0 — replaced by the current policy every ``ref_reset_every`` steps (DeepSeek-R1 resets it every
400 steps).

Full fine-tuning keeps a frozen copy of the model. LoRA keeps only the adapters' values and swaps
them in for the reference's forward (the base weights never change), so the reference costs the
adapters' memory, not a second model. Under FSDP full fine-tuning swaps too: each rank keeps its
shard of the reference's weights and swaps them into the sharded policy.

The reference's weights are saved as ``reference/step-NNNNNN.safetensors`` in the run directory
when taken, before the checkpoint that names them, so a resumed run gets back the same reference.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from r1lite.errors import UsageError
from r1lite.files import atomic_write
from r1lite.train.distributed import full_state, local_like
from r1lite.train.policy import Policy


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class Reference:
    """``swap``: keep the reference's trainable weights and swap them into ``policy`` for its
    forward (LoRA, and full fine-tuning under FSDP), instead of a frozen copy of the model."""

    def __init__(self, policy: Policy, swap: bool, temperature: float):
        self.policy, self.model, self.swap, self.temperature = policy, policy.model, swap, temperature
        self.step: int | None = None
        self.saved: dict[str, torch.Tensor] = {}  # swap: the trainable weights' values at the reference
        self.frozen = None  # otherwise: a frozen copy of the model

    @torch.no_grad()
    def take(self, step: int) -> None:
        """The current policy becomes the reference."""
        self.step = step
        if self.swap:
            self.saved = {n: p.detach().clone() for n, p in trainable(self.model).items()}
        elif self.frozen is None:
            self.frozen = copy.deepcopy(self.model).eval().requires_grad_(False)
        else:  # reuse the copy's memory
            for (_, p), (_, q) in zip(self.model.named_parameters(), self.frozen.named_parameters()):
                q.copy_(p)

    def weights(self) -> dict[str, torch.Tensor]:
        """The trainable weights as they are in the reference (this rank's shards under FSDP)."""
        if self.swap:
            return self.saved
        params = dict(self.frozen.named_parameters())
        return {n: params[n].detach() for n in trainable(self.model)}

    @torch.no_grad()
    def logprobs(self, batch) -> torch.Tensor:
        """Completion log-probs under the reference, at the sampling temperature."""
        if not self.swap:
            return Policy(self.frozen, self.temperature)(batch)[0]
        params = trainable(self.model)
        current = {n: p.detach().clone() for n, p in params.items()}
        try:
            for n, p in params.items():
                p.copy_(self.saved[n])
            return self.policy(batch)[0]
        finally:
            for n, p in params.items():
                p.copy_(current[n])

    # -- files ----------------------------------------------------------------------------------

    @staticmethod
    def path(run_dir: Path, step: int) -> Path:
        return Path(run_dir) / "reference" / f"step-{step:06d}.safetensors"

    def save(self, run_dir: Path, write: bool = True) -> None:
        """Write the reference's weights whole; under torchrun every rank calls it, rank 0 has ``write``."""
        tensors = full_state(self.weights(), keep=write)
        if write:
            atomic_write(self.path(run_dir, self.step), lambda tmp: save_file({n: t.contiguous() for n, t in tensors.items()}, tmp))

    def load(self, run_dir: Path, step: int) -> None:
        path = self.path(run_dir, step)
        if not path.exists():
            raise UsageError(f"{path} is missing: the checkpoint's KL reference (step {step}) is gone; "
                             "restart the run, or resume with beta 0")
        tensors = load_file(path)
        params = trainable(self.model)
        if set(tensors) != set(params):
            raise UsageError(f"{path}: its weights do not match this model; resume with the original --model and --lora")
        self.take(step)  # allocate, then overwrite with the saved values
        with torch.no_grad():
            if self.swap:
                self.saved = {n: local_like(t.to(params[n].dtype), params[n]) for n, t in tensors.items()}
            else:
                frozen = dict(self.frozen.named_parameters())
                for n, t in tensors.items():
                    frozen[n].copy_(t)

    def keep_only(self, run_dir: Path, steps: set[int | None]) -> None:
        """Delete saved references other than those at ``steps`` (the ones kept checkpoints name)."""
        folder = Path(run_dir) / "reference"
        if folder.exists():
            keep = {self.path(run_dir, s) for s in steps if s is not None}
            for f in folder.iterdir():
                if f not in keep:
                    f.unlink(missing_ok=True)
