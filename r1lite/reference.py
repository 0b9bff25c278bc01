"""GRPO's KL reference: the policy as RL started — after any cold start, so the KL at RL step 0 is
0 — replaced by the current policy every ``ref_reset_every`` steps (DeepSeek-R1 resets it every
400 steps).

Full fine-tuning keeps a frozen copy of the model. LoRA keeps only the adapters' values and swaps
them in for the reference's forward (the base weights never change), so the reference costs the
adapters' memory, not a second model.

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
from r1lite.policy import Policy


def trainable(model) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


class Reference:
    def __init__(self, model, lora: bool, temperature: float):
        self.model, self.lora, self.temperature = model, lora, temperature
        self.step: int | None = None
        self.adapters: dict[str, torch.Tensor] = {}  # LoRA: the adapters' values at the reference
        self.frozen = None  # full fine-tuning: a frozen copy of the model

    @torch.no_grad()
    def take(self, step: int) -> None:
        """The current policy becomes the reference."""
        self.step = step
        if self.lora:
            self.adapters = {n: p.detach().clone() for n, p in trainable(self.model).items()}
        elif self.frozen is None:
            self.frozen = copy.deepcopy(self.model).eval().requires_grad_(False)
        else:  # reuse the copy's memory
            for (_, p), (_, q) in zip(self.model.named_parameters(), self.frozen.named_parameters()):
                q.copy_(p)

    def weights(self) -> dict[str, torch.Tensor]:
        """The trainable weights as they are in the reference."""
        if self.lora:
            return self.adapters
        params = dict(self.frozen.named_parameters())
        return {n: params[n].detach() for n in trainable(self.model)}

    @torch.no_grad()
    def logprobs(self, batch) -> torch.Tensor:
        """Completion log-probs under the reference, at the sampling temperature."""
        if not self.lora:
            return Policy(self.frozen, self.temperature)(batch)[0]
        params = trainable(self.model)
        current = {n: p.detach().clone() for n, p in params.items()}
        try:
            for n, p in params.items():
                p.copy_(self.adapters[n])
            return Policy(self.model, self.temperature)(batch)[0]
        finally:
            for n, p in params.items():
                p.copy_(current[n])

    # -- files ----------------------------------------------------------------------------------

    @staticmethod
    def path(run_dir: Path, step: int) -> Path:
        return Path(run_dir) / "reference" / f"step-{step:06d}.safetensors"

    def save(self, run_dir: Path) -> None:
        tensors = {n: t.detach().cpu().contiguous() for n, t in self.weights().items()}
        atomic_write(self.path(run_dir, self.step), lambda tmp: save_file(tensors, tmp))

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
            if self.lora:
                self.adapters = {n: t.to(params[n].device, params[n].dtype) for n, t in tensors.items()}
            else:
                frozen = dict(self.frozen.named_parameters())
                for n, t in tensors.items():
                    frozen[n].copy_(t)

    def keep_only_current(self, run_dir: Path) -> None:
        """Delete saved references other than the current one (after a checkpoint names it)."""
        folder = Path(run_dir) / "reference"
        if folder.exists():
            for f in folder.iterdir():
                if f != self.path(run_dir, self.step):
                    f.unlink(missing_ok=True)
