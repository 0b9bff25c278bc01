"""The GGUF file's parts as llama.cpp's converter writes them: tensors under llama.cpp's names (q/k
rows permuted for its rotary layout on Llama; Gemma's norms as ``1 + w``), the architecture's
hyperparameters, the tokenizer (GPT-2 BPE or SentencePiece), and quantization with llama.cpp's own
quantizer. :mod:`r1lite.edge.export` puts them together with the model card and the chat template.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
from pathlib import Path

import torch

from r1lite import models
from r1lite.errors import UsageError
from r1lite.packaged import TURN_END

GGUF_ARCH = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3_text": "gemma3"}
"""transformers' model type → llama.cpp's architecture name."""
QUANTS = {"f16": 1, "q8_0": 7, "q4_0": 2, "q4_k_m": 15}
"""Quantization scheme → llama.cpp's ``llama_ftype``."""


def pre_tokenizer(model, tokenizer) -> str:
    """llama.cpp's name for the tokenizer's pre-tokenizer (``tokenizer.ggml.pre``)."""
    vocab = tokenizer.get_vocab()
    if model.config.model_type in ("qwen2", "qwen3"):
        return "qwen2"
    if "<|im_start|>" in vocab and len(vocab) == 49152:
        return "smollm"
    if len(vocab) == 128256:
        return "llama-bpe"
    raise UsageError("export: no known llama.cpp pre-tokenizer for this tokenizer (known: SmolLM2, Qwen2/2.5/3, Llama 3)")


def _permute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rotate-half (transformers) to llama.cpp's interleaved rotary layout for Llama q/k rows."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


LLAMA_CPP_SWA_PERIOD = 6
"""llama.cpp's gemma3 loader makes every 6th layer global (5 local, then 1) unless the file has an
``attention.sliding_window_pattern`` array (``llama_model_base::load_swa_pattern``)."""


def gemma_query_scale(cfg) -> float:
    """What Gemma 3's queries must be multiplied by, on top of what llama.cpp does, to get the
    model's own attention scale. transformers scales by ``query_pre_attn_scalar ** -0.5``; llama.cpp's
    gemma3 by ``1/sqrt(head_dim)`` (``1/sqrt(hidden/heads)`` for the 62-layer 27B) and reads no key
    for it, so a model whose scalar is not that (tiny-gemma3: 32 against a head width of 16) gets
    the ratio folded into its q_norm weight — the RMS norm is the last step before RoPE, which is
    linear, so the scaled norm scales the queries (exactly 1 for every released Gemma 3)."""
    head_dim = models.head_dim(cfg)
    ours = (cfg.hidden_size / cfg.num_attention_heads if cfg.num_hidden_layers == 62 else head_dim) ** -0.5
    return float(cfg.query_pre_attn_scalar) ** -0.5 / ours


def gguf_tensors(model):
    """(llama.cpp name, fp32 array) for every tensor, in the reference converter's order."""
    import gguf

    cfg = model.config
    gemma = cfg.model_type == "gemma3_text"
    arch = gguf.MODEL_ARCH[GGUF_ARCH[cfg.model_type].upper()]
    names = gguf.get_tensor_name_map(arch, cfg.num_hidden_layers)
    q_scale = gemma_query_scale(cfg) if gemma else 1.0
    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UsageError(f"export: no GGUF name for tensor {name}")
        t = t.detach().float()
        if cfg.model_type == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            t = _permute(t, cfg.num_attention_heads if "q_proj" in name else cfg.num_key_value_heads)
        if gemma and name.endswith("norm.weight"):
            t = t + 1.0  # Gemma's RMS norm multiplies by 1 + weight, llama.cpp's by the stored weight
            if name.endswith("q_norm.weight"):
                t = t * q_scale
        yield new, t.numpy()


def rope_bases(cfg) -> tuple[float, float | None]:
    """The RoPE base of the global layers, and of the sliding-window ones (None: one base)."""
    params = getattr(cfg, "rope_parameters", None) or {}
    if "full_attention" in params:
        local = params.get("sliding_attention", {}).get("rope_theta")
        return float(params["full_attention"]["rope_theta"]), None if local is None else float(local)
    return float(params.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))), None


def sliding_layers(cfg) -> list[bool]:
    """Which layers attend within the sliding window (Gemma 3's ``layer_types``)."""
    kinds = getattr(cfg, "layer_types", None) or []
    return [k == "sliding_attention" for k in kinds] if getattr(cfg, "sliding_window", None) else [False] * len(kinds)


def add_hparams(w, cfg) -> None:
    """The architecture's hyperparameters, as llama.cpp's converter writes them (and for Gemma 3
    what llama.cpp would otherwise assume wrongly: a sliding-window pattern that is not its 5:1)."""
    import gguf

    head_dim = models.head_dim(cfg)
    global_base, local_base = rope_bases(cfg)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    if cfg.model_type == "gemma3_text":
        # convert_hf_to_gguf.py's Gemma3Model: the head width always, the global base (and the
        # local one), the window; llama.cpp scales the embeddings by sqrt(hidden) itself
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
        w.add_rope_freq_base(global_base)
        if local_base is not None:
            w.add_rope_freq_base_swa(local_base)
        if getattr(cfg, "final_logit_softcapping", None):
            w.add_final_logit_softcapping(cfg.final_logit_softcapping)
        if getattr(cfg, "attn_logit_softcapping", None):
            raise UsageError("export: Gemma 3 has no attention logit soft-capping, and llama.cpp's gemma3 applies none")
        pattern = sliding_layers(cfg)
        if any(pattern):
            w.add_sliding_window(cfg.sliding_window)
            if pattern != [i % LLAMA_CPP_SWA_PERIOD < LLAMA_CPP_SWA_PERIOD - 1 for i in range(len(pattern))]:
                w.add_sliding_window_pattern(pattern)
    else:
        w.add_rope_dimension_count(head_dim)
        if head_dim != cfg.hidden_size // cfg.num_attention_heads:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        w.add_rope_freq_base(global_base)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)


def sentencepiece_style(tokenizer) -> bool:
    """A SentencePiece vocabulary (Gemma's: spaces as ``▁``, byte fallback), which llama.cpp runs as
    its ``llama`` tokenizer, not a GPT-2 byte-level BPE."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    return bool(model.get("byte_fallback")) or model.get("type") == "Unigram"


def add_tokenizer(w, model, tok) -> None:
    """The tokenizer: for a SentencePiece vocabulary (Gemma) tokens, scores and types as llama.cpp's
    converter writes them, ``<bos>`` added, ``<eos>`` the eos and ``<end_of_turn>`` the end of turn;
    for a GPT-2 BPE (SmolLM2, Qwen, Llama 3, tiny-gemma3) tokens, types, merges, llama.cpp's
    pre-tokenizer name, the ChatML end of turn as eos, no bos added."""
    cfg = model.config
    if cfg.model_type == "gemma3_text" and sentencepiece_style(tok):
        tokens, scores, types = sentencepiece_vocabulary(tok, cfg.vocab_size)
        w.add_tokenizer_model("llama")
        w.add_tokenizer_pre("default")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        vocab = tok.get_vocab()
        for key, token in (("bos", "<bos>"), ("eos", "<eos>"), ("unk", "<unk>"), ("pad", "<pad>"), ("eot", "<end_of_turn>")):
            if token in vocab:
                getattr(w, f"add_{key}_token_id")(vocab[token])
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)
        w.add_add_space_prefix(False)
        return
    tokens, types = vocabulary(tok, cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre_tokenizer(model, tok))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]])
    eos = tok.convert_tokens_to_ids(TURN_END)
    if tok.bos_token_id is not None:
        w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(eos)
    w.add_pad_token_id(tok.pad_token_id if tok.pad_token_id is not None else eos)
    w.add_add_bos_token(False)


def vocabulary(tokenizer, size: int) -> tuple[list[str], list[int]]:
    """Token strings by id and their GGUF types: control for special added tokens, user-defined for
    other added ones, normal otherwise, unused for ids with no token."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def sentencepiece_vocabulary(tokenizer, size: int) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and types for llama.cpp's SentencePiece tokenizer, as the converter's
    ``_set_vocab_sentencepiece`` writes them: special added tokens are control tokens and other
    added ones user-defined (both score -1000), ``<0xNN>`` are byte tokens (score 0), the rest
    normal with their SentencePiece score. A BPE tokenizer.json (what transformers makes of a
    SentencePiece model, Gemma's included) keeps no scores, only merges ordered by them: a token
    scores minus the rank of the first merge that makes it, so llama.cpp merges in the same order;
    a token no merge makes ranks below them all (its score never decides a merge)."""
    import gguf

    data = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    if data["type"] == "Unigram":
        score = {piece: float(s) for piece, s in data["vocab"]}
    else:
        score = {}
        for rank, merge in enumerate(data["merges"]):
            left, right = merge if isinstance(merge, list) else merge.split(" ", 1)
            score.setdefault(left + right, -float(rank))
    floor = -float(len(score) + 1)
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, scores, types = [], [], []
    for i in range(size):
        token = by_id.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]"), scores.append(-1000.0), types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(token), scores.append(-1000.0)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        elif re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            tokens.append(token), scores.append(0.0), types.append(gguf.TokenType.BYTE)
        else:
            tokens.append(token), scores.append(score.get(token, floor - i)), types.append(gguf.TokenType.NORMAL)
    return tokens, scores, types


_FALLBACK = re.compile(r"warning: (\S+)\s+- ncols\s+\d+ not divisible by\s+\d+ \(required for type\s+(\w+)\).*?-> falling back to\s+(\w+)", re.S)


def quantize(f16: Path, out: Path, quant: str) -> dict[str, int]:
    """llama.cpp's quantizer; returns the tensors that fell back, counted by the type they got."""
    from r1lite.engine import llamacpp

    lib = llamacpp._llama_cpp()
    llamacpp.capture_logs()
    params = lib.llama_model_quantize_default_params()
    params.ftype = QUANTS[quant]
    params.nthread = os.cpu_count() or 1
    first = len(llamacpp.LOG_LINES)
    code = lib.llama_model_quantize(str(f16).encode(), str(out).encode(), ctypes.byref(params))
    if code != 0:
        raise UsageError(f"llama.cpp's quantizer failed on {f16} ({code})")
    text = "".join(line for _, line in llamacpp.LOG_LINES[first:])
    fallbacks: dict[str, int] = {}
    for _, _, got in _FALLBACK.findall(text):
        fallbacks[got] = fallbacks.get(got, 0) + 1
    return fallbacks
