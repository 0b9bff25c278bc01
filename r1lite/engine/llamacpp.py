"""llama.cpp as a decoder behind the same engine: a GGUF file decodes with the engine's batching,
joining, per-sequence seeds, stops and budgets, so ``chat``, ``serve``, ``eval`` and distillation
take a GGUF as they take a PyTorch model.

The engine's cache is, here, a list of llama.cpp sequence ids in one llama.cpp context (a unified
KV cache): each row of the engine's batch is one sequence. Copying a row (a prompt's prefill into
its n samples) is ``llama_memory_seq_cp``; dropping rows removes their sequences. llama.cpp keeps
each sequence's own positions, so the engine's column alignment and left padding have nothing to
move here: pad positions are simply not sent. The logits come back to the engine, which samples
them with its own per-sequence random numbers.

Needs llama-cpp-python (``pip install r1lite[edge]``; ``make test`` builds it once and caches the
wheel).
"""

from __future__ import annotations

import ctypes
import os
import struct
import sys
from pathlib import Path

import numpy as np
import torch

from r1lite import gguf_header
from r1lite.errors import UsageError

LOG_LINES: list[tuple[int, str]] = []
"""llama.cpp's log (level, text), kept from :func:`capture_logs` on: where loading warnings show up."""
WARN, ERROR, CONT = 3, 4, 5  # ggml_log_level (ggml.h)
_callback = None  # kept alive: llama.cpp holds a pointer to it


def _llama_cpp():
    try:
        import llama_cpp
    except ImportError:
        raise UsageError("GGUF models run on llama.cpp: pip install 'r1lite[edge]' (make test installs it)") from None
    return llama_cpp


def capture_logs() -> None:
    """Send llama.cpp's log to :data:`LOG_LINES` instead of the terminal (a continued line takes
    the level of the line it continues); callers show the warnings that matter."""
    global _callback
    lib = _llama_cpp()
    if _callback is None:
        @lib.llama_log_callback
        def on_log(level, text, user_data):  # noqa: ANN001 - a C callback
            level = int(level)
            if level == CONT and LOG_LINES:
                level = LOG_LINES[-1][0]
            LOG_LINES.append((level, text.decode("utf-8", "replace")))

        _callback = on_log
        lib.llama_log_set(_callback, ctypes.c_void_p(0))


def warnings_since(first: int) -> list[str]:
    """llama.cpp's warning and error lines logged after ``LOG_LINES[first]``."""
    return [line.strip() for level, line in LOG_LINES[first:] if level in (WARN, ERROR) and line.strip()]


def check_gguf(path: Path) -> None:
    """A one-line error for a path that is not a complete GGUF file (before llama.cpp sees it)."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise UsageError(f"{path}: not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    try:
        _, end, size = gguf_header.walk(path)
    except (struct.error, ValueError, KeyError, OverflowError) as e:  # cut short, or an unknown type: damaged
        raise UsageError(f"{path}: truncated or damaged GGUF file ({type(e).__name__}: {str(e)[:120]}); export it again") from None
    if size < end:
        raise UsageError(f"{path}: truncated or damaged GGUF file ({size} bytes, its tensors end at byte {end}); export it again")


class LlamaCppDecoder:
    """A GGUF model on llama.cpp, with the decoder interface of :mod:`r1lite.engine.decoders`."""

    def __init__(self, path: str | Path, max_rows: int = 64, n_ctx: int = 16384, threads: int | None = None):
        lib = _llama_cpp()
        check_gguf(Path(path))
        capture_logs()
        first = len(LOG_LINES)
        self.lib, self.path = lib, Path(path)
        self.device, self.dtype, self.compute = torch.device("cpu"), torch.float32, torch.float32
        params = lib.llama_model_default_params()
        self.model = lib.llama_model_load_from_file(str(path).encode(), params)
        if not self.model:
            raise UsageError(f"{path}: llama.cpp could not load it (see its log above)")
        self.vocab = lib.llama_model_get_vocab(self.model)
        self.n_vocab = lib.llama_vocab_n_tokens(self.vocab)
        self.max_seqs = min(2 * max_rows, 256)  # rows of a batch, and of a group joining it, at once
        ctx = lib.llama_context_default_params()
        ctx.n_ctx, ctx.n_batch, ctx.n_ubatch = n_ctx, min(n_ctx, 2048), min(n_ctx, 512)
        ctx.n_seq_max, ctx.kv_unified = self.max_seqs, True
        ctx.n_threads = ctx.n_threads_batch = threads or os.cpu_count() or 1
        self.ctx = lib.llama_init_from_model(self.model, ctx)
        if not self.ctx:
            raise UsageError(f"{path}: llama.cpp could not create a context of {n_ctx} tokens")
        self.memory = lib.llama_get_memory(self.ctx)
        # The cache is one context shared by all rows (kv_unified), so llama.cpp compares its whole
        # size with the training context and warns; each row's positions stay far below it.
        self.warnings = [w for w in warnings_since(first) if not w.startswith("llama_context: n_ctx_seq")]
        for line in self.warnings:
            print(f"llama.cpp: {line}", file=sys.stderr, flush=True)
        self.n_ctx, self.n_batch = n_ctx, ctx.n_batch
        self.free = list(range(self.max_seqs))[::-1]
        self.batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self.n_params = int(lib.llama_model_n_params(self.model))
        meta = self._meta
        self.layers = int(meta("block_count"))
        self.heads = int(meta("attention.head_count"))
        width = meta("attention.key_length")
        self.attn_width = self.heads * (int(width) if width else int(meta("embedding_length")) // self.heads)

    def _meta(self, key: str) -> str | None:
        arch = self._string("general.architecture")
        return self._string(f"{arch}.{key}")

    def _string(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(256)
        n = self.lib.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode() if n >= 0 else None

    def close(self) -> None:
        lib = self.lib
        if getattr(self, "batch", None) is not None:
            lib.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None):
            lib.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            lib.llama_model_free(self.model)
            self.model = None

    def __del__(self):
        self.close()

    def sync(self, model) -> None:
        raise UsageError("a GGUF model is fixed: train the PyTorch model, then export it again")

    def unload(self) -> None:
        raise UsageError("a GGUF model is fixed: it is not trained beside its engine")

    # -- the cache: sequence ids ------------------------------------------------------------------

    def _take(self) -> int:
        if not self.free:
            raise UsageError(f"llama.cpp: more than {self.max_seqs} sequences at once; lower the batch size")
        seq = self.free.pop()
        self.lib.llama_memory_seq_rm(self.memory, seq, -1, -1)
        return seq

    def _drop(self, seq: int) -> None:
        self.lib.llama_memory_seq_rm(self.memory, seq, -1, -1)
        self.free.append(seq)

    def new_cache(self, rows: int, columns: int) -> list[int]:
        return [self._take() for _ in range(rows)]

    def select(self, cache: list[int], rows: torch.Tensor) -> list[int]:
        """These rows; a row asked for twice is copied into a new sequence. Consumes ``cache``."""
        out, used = [], set()
        for r in rows.tolist():
            seq = cache[r]
            if seq in used:
                copy = self._take()
                self.lib.llama_memory_seq_cp(self.memory, seq, copy, -1, -1)
                out.append(copy)
            else:
                used.add(seq)
                out.append(seq)
        for seq in set(cache) - used:
            self._drop(seq)
        return out

    def compact(self, cache: list[int], rows: torch.Tensor) -> list[int]:
        return self.select(cache, rows)  # no copy: the sequences stay where they are

    def merge(self, parts, columns: int) -> list[int]:
        """The parts' rows one after another (positions are per sequence: nothing moves)."""
        out = []
        for cache, rows, *_ in parts:
            out += cache if rows is None else self.select(cache, rows)
        return out

    def release(self, cache: list[int]) -> None:
        for seq in cache:
            self._drop(seq)

    def flops(self, rows: int, T: int, start: int) -> float:
        """Model FLOPs (llama.cpp does not report its own): 2 per weight per token for the layers
        and the head on every token sent, plus attention over each row's keys."""
        return float(2 * self.n_params * rows * T + 4 * self.layers * self.attn_width * rows * T * (start + T))

    # -- forward ---------------------------------------------------------------------------------

    def forward(self, cache: list[int], tokens: torch.Tensor, positions: torch.Tensor, start: int,
                valid: torch.Tensor, shared: int = 0) -> torch.Tensor:
        """The logits of each row's last token [rows, V]; only real (valid) tokens are sent."""
        lib, b = self.lib, self.batch
        B, T = tokens.shape
        ok = valid[:, start:start + T].tolist()
        ids, pos = tokens.tolist(), positions.tolist()
        work = [(row, ids[row][t], pos[row][t], t == T - 1) for row in range(B) for t in range(T) if ok[row][t]]
        if any(not ok[row][T - 1] for row in range(B)):
            raise ValueError("llama.cpp decoder: each row's last new token must be real")
        logits = torch.empty(B, self.n_vocab)
        done = 0
        while done < len(work):  # in batches of n_batch tokens
            chunk = work[done:done + self.n_batch]
            b.n_tokens = len(chunk)
            outputs = []
            for i, (row, tok, p, last) in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i] = tok, p, 1
                b.seq_id[i][0] = cache[row]
                b.logits[i] = last
                if last:
                    outputs.append((i, row))
            code = lib.llama_decode(self.ctx, b)
            if code != 0:
                raise UsageError(f"llama.cpp: decode failed ({code}); the context of {self.n_ctx} tokens is full — "
                                 "lower the batch size or the token budget")
            for i, row in outputs:
                data = lib.llama_get_logits_ith(self.ctx, i)
                logits[row] = torch.from_numpy(np.ctypeslib.as_array(data, shape=(self.n_vocab,)))  # copied into the row
            done += len(chunk)
        return logits
