"""What the GPU check runs on: the carried folder (``--prepare``) and random models built from it.

The carried folder holds no weights: SmolLM2-135M's tokenizer and config (copied from the embedded
model, :func:`r1lite.packaged.embedded_checkpoint`), and the configs of Qwen2.5-0.5B and Qwen3-0.6B
written from their published values. The weights are random, drawn on the device from those
configs: rollout speed does not depend on the values, and parity compares r1lite with transformers
on the same weights. SmolLM2's tokenizer serves every shape (parity and speed work on token ids; a
random Qwen-shaped model may sample ids past the tokenizer's 49,152, which decode to no text).

No wheels travel (:data:`NO_WHEELS`); the check fails a section that imports a package the GPU
machine lacks (:data:`ABSENT_ON_GPU`), so the dry run here says when one would be needed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CARRIED = ROOT / ".gpu_check"
"""The default carried folder (git-ignored; the device tool's ``carry`` names it)."""
MAX_BYTES = 60 * 2 ** 20
"""What the carried folder may weigh: the tree and the carried paths travel in 64 MiB together."""
ABSENT_ON_GPU = ("gguf", "math_verify", "reasoning_gym", "jsonschema", "fastapi", "uvicorn")
"""r1lite's dependencies that the GPU machine's image does not install (its package list)."""
NO_WHEELS = ("none: the paths the check runs (the arithmetic task, a JSONL task with a Python verifier, the "
             "engine, the trainer, the meter) import none of " + ", ".join(ABSENT_ON_GPU) + ", the packages "
             "r1lite depends on that the GPU machine lacks; every other import is installed there")

SMOLLM2 = "SmolLM2-135M"
QWEN25 = "Qwen2.5-0.5B"
QWEN3 = "Qwen3-0.6B"
FOLDERS = {SMOLLM2: "smollm2-135m", QWEN25: "qwen2.5-0.5b", QWEN3: "qwen3-0.6b"}

PUBLISHED = {
    # config.json of Qwen/Qwen2.5-0.5B on the Hugging Face hub (the -Instruct variant has the same
    # shape; its eos is 151645): 24 layers, 14 query and 2 key/value heads of 64, tied embeddings.
    QWEN25: {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
        "num_key_value_heads": 2, "max_position_embeddings": 32768, "max_window_layers": 24,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "use_sliding_window": False,
        "tie_word_embeddings": True, "vocab_size": 151936, "bos_token_id": 151643, "eos_token_id": 151643,
        "attention_dropout": 0.0, "initializer_range": 0.02, "torch_dtype": "bfloat16", "use_cache": True,
    },
    # config.json of Qwen/Qwen3-0.6B on the Hugging Face hub: 28 layers, 16 query and 8 key/value
    # heads of 128 (wider than hidden / heads), q/k RMS norms, tied embeddings.
    QWEN3: {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_act": "silu",
        "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 16,
        "num_key_value_heads": 8, "head_dim": 128, "attention_bias": False, "max_position_embeddings": 40960,
        "max_window_layers": 28, "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000,
        "sliding_window": None, "use_sliding_window": False, "tie_word_embeddings": True, "vocab_size": 151936,
        "bos_token_id": 151643, "eos_token_id": 151645, "attention_dropout": 0.0, "initializer_range": 0.02,
        "torch_dtype": "bfloat16", "use_cache": True,
    },
}
"""Gemma 3 270M joins once r1lite runs it."""

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16}
"""The dry run's shrink of each config: two narrow layers; the architecture, the vocabulary, the
biases, norms and tied head of the real model stay."""


# -- the carried folder ---------------------------------------------------------------------------


def prepare(folder: Path) -> dict:
    """Fill ``folder`` with what the check reads (run here: it needs the embedded model); returns
    its manifest, also written as ``MANIFEST.json``."""
    from r1lite.meter.flops import SHAPES
    from r1lite.models import ModelShape
    from r1lite.packaged import embedded_checkpoint

    source = embedded_checkpoint()
    folder.mkdir(parents=True, exist_ok=True)
    smol = folder / FOLDERS[SMOLLM2]
    smol.mkdir(exist_ok=True)
    for file in sorted(source.iterdir()):
        if file.is_file() and not file.name.endswith(".safetensors"):
            shutil.copy2(file, smol / file.name)
    for name, config in PUBLISHED.items():
        (folder / FOLDERS[name]).mkdir(exist_ok=True)
        (folder / FOLDERS[name] / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name, sub in FOLDERS.items():  # the configs and r1lite's own table of shapes must agree
        config = json.loads((folder / sub / "config.json").read_text())
        shape = ModelShape.from_config(_Attributes(config), name)
        if shape != SHAPES[name]:
            raise SystemExit(f"{name}: the config's shape {shape} differs from r1lite.meter.flops.SHAPES {SHAPES[name]}")
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != "MANIFEST.json"}
    manifest = {"models": dict(FOLDERS), "files": files, "bytes": sum(files.values()),
                "weights": "none: random, drawn on the device from each config",
                "wheels": NO_WHEELS}
    if manifest["bytes"] > MAX_BYTES:
        raise SystemExit(f"{folder}: {manifest['bytes'] / 2 ** 20:.1f} MiB, over the {MAX_BYTES // 2 ** 20} MiB "
                         "the tree may carry")
    (folder / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


class _Attributes:
    """A config dict read by attribute, as :meth:`r1lite.models.ModelShape.from_config` reads a config."""

    def __init__(self, config: dict):
        self.__dict__.update(config)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


# -- random models on the device ------------------------------------------------------------------


def load_tokenizer(assets: Path):
    """SmolLM2's tokenizer from the carried folder, through r1lite's own loader."""
    from r1lite.models import load_tokenizer as load

    return load(str(assets / FOLDERS[SMOLLM2]))


def model_config(assets: Path, name: str, tiny: bool):
    """The transformers config of ``name`` from the carried folder (shrunk by :data:`TINY`)."""
    from transformers import AutoConfig

    config = json.loads((assets / FOLDERS[name] / "config.json").read_text())
    if tiny:
        config.update(TINY)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        return AutoConfig.from_pretrained(tmp)


def random_model(assets: Path, name: str, tiny: bool, device: torch.device, tokenizer, seed: int = 0):
    """A model of ``name``'s config with random fp32 weights drawn on ``device``, in eval mode."""
    from transformers import AutoModelForCausalLM

    config = model_config(assets, name, tiny)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config)
    model = model.to(torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id  # as r1lite.models.load_model does
    return model.eval()


def save_model(model, tokenizer, folder: Path) -> Path:
    """``model`` and the carried tokenizer as a Hugging Face directory (what ``--model DIR`` opens)."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
