"""The generation engine: one interface for every way r1lite samples from a model.

An engine takes token-id :class:`Request` s (a prompt, :class:`Sampling` settings, ``n`` samples,
a seed) and returns :class:`Completion` s, in two forms:

- ``engine.generate(requests)`` → ``[request][sample]`` completions (evaluation, rollouts, the cold
  start, distillation with a local teacher);
- ``engine.add(request)``, ``engine.step()`` → :class:`Delta` s (new tokens and text per sequence),
  ``engine.cancel(id)``: requests join a running batch at the next step and leave it when done
  (serving).

A sequence's tokens depend only on (seed, prompt, sample index). ``engine.stats`` counts prompt,
prefill and generated tokens and the FLOPs the decoder computed. Backends implement the same
interface: :class:`Engine` over r1lite's decoders (:mod:`r1lite.engine.decoders`: our CPU
kernels, PyTorch, the generic transformers forward).

Modules: ``sampling`` (settings, the token budget against the model's context, the per-sequence
draw), ``decoders`` (forward passes over a KV cache), ``gemma`` (Gemma 3's), ``kernels`` (the x86-64
CPU kernels, compiled on first use), ``engine`` (the loop), ``thinking`` (the ``<think>`` block's
tags, budget forcing's close, and :class:`ThinkSplit`: streamed text cut at the block, for ``chat``
and ``serve``).
"""

import torch

from r1lite.engine.decoders import HFDecoder, LlamaDecoder, _unwrapped
from r1lite.engine.engine import Completion, Delta, Engine, GenerationStats, Request
from r1lite.engine.gemma import GemmaDecoder, unsupported
from r1lite.engine.sampling import Sampling, derive_seed
from r1lite.engine.thinking import ThinkSplit
from r1lite.models import llama_family


def make_decoder(model, dtype: torch.dtype, own_weights: bool = False, discard_model: bool = False, int8: bool = False):
    """The fastest decoder for this model and machine (:mod:`r1lite.engine.decoders`); ``dtype`` is
    the rollout weights' precision; ``own_weights``, ``discard_model`` and ``int8`` (the products'
    weights as int8 blocks): see :class:`LlamaDecoder` (FSDP shards Llama-family models only)."""
    base = _unwrapped(model)
    if llama_family(base):
        return LlamaDecoder(model, dtype, own_weights, discard_model, int8)
    if base.config.model_type == "gemma3_text":
        why = unsupported(base.config)
        if why is None:
            return GemmaDecoder(model, dtype, own_weights, discard_model, int8)
        if int8:
            raise ValueError(f"int8 weights: this Gemma 3 model {why}, which r1lite's Gemma decoder does not cover")
        print(f"r1lite: this Gemma 3 model {why}, which r1lite's Gemma decoder does not cover; "
              "generating with the transformers forward (slower)", flush=True)
        return HFDecoder(model, dtype)
    if int8:
        raise ValueError(f"int8 weights: {base.config.model_type} is not an architecture r1lite's decoders cover")
    print(f"r1lite: {base.config.model_type} is not a Llama-family architecture; "
          "generating with the transformers forward (slower)", flush=True)
    return HFDecoder(model, dtype)


def make_engine(model, tokenizer, dtype, stop_ids: list[int] | None = None, max_rows: int = 64,
                own_weights: bool = False, discard_model: bool = False, int8: bool = False) -> Engine:
    """An :class:`Engine` over the fastest decoder for this model and machine; ``dtype`` is the
    precision of the rollout weights (:func:`make_decoder`); ``own_weights``: copy every weight at
    each sync (FSDP frees the gathered weights after it); ``discard_model``: the model is dropped once
    the engine is built (serving: the decoder holds the only copy of the weights it needs); ``int8``:
    decode with int8 weights (serving, chat)."""
    return Engine(make_decoder(model, dtype, own_weights, discard_model, int8), tokenizer, stop_ids, max_rows)


__all__ = ["Completion", "Delta", "Engine", "GemmaDecoder", "GenerationStats", "HFDecoder", "LlamaDecoder", "Request",
           "Sampling", "ThinkSplit", "derive_seed", "make_decoder", "make_engine"]
