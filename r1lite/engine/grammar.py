"""Constrained decoding: the answer held to a JSON schema by a token mask, for structured output.

A :class:`Grammar` is compiled once per request from OpenAI's ``response_format``
(:meth:`Masker.compile`): ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``
or ``{"type": "json_object"}``. The JSON is compact: the grammar has no free whitespace, so
``content`` is exactly the JSON. For a run in the R1 format the grammar is ``<answer>`` JSON
``</answer>``: the tags are part of it.

The engine (:class:`r1lite.engine.Engine`) gives each sequence of a request with a grammar a
matcher of its own; at each step the rows being constrained get their mask (tokens the grammar
does not allow next at -inf) before the draw, and the drawn token is consumed by the matcher. So a
row's tokens still depend only on its own seed and prompt, not on its batch, and rows without a
grammar are untouched. The thinking runs free: the mask starts at the first token, or, when the
prompt opened ``<think>``, at the token after ``</think>``.

The library is llguidance (PyPI ``llguidance``: a Rust core, a 3 MB wheel, no dependencies).
xgrammar, the other common choice, pulls triton (a GPU compiler, hundreds of MB) and TVM's FFI into
a CPU-only install, and ignores ``multipleOf`` on numbers (the one way a schema bounds a number's
digits). Measured on the 2-core AVX2 EPYC this project runs on, the 49,152-token vocabulary, a
nested schema, random logits: the mask computed and applied in 0.24 ms a step at batch 1 and
1.5 ms at batch 16 with llguidance, 0.29 and 4.0 ms with xgrammar (installed without triton for
the measurement); a decode step of the embedded model takes 25-35 ms there.
``benchmarks/bench_grammar.py`` measures it inside the engine, at batch 1 and 16, on 49k and
Gemma 3's 262k vocabulary.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from r1lite.errors import UsageError
from r1lite.rewards import ANSWER_CLOSE, ANSWER_OPEN

JSON_OBJECT = {"type": "object"}
"""``response_format: {"type": "json_object"}``: any JSON object."""


class GrammarError(UsageError):
    """A ``response_format`` that cannot be compiled: an invalid schema, or one the library cannot
    honour. ``param`` names the field (for the server's 400)."""

    def __init__(self, message: str, param: str = "response_format"):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Grammar:
    """A compiled ``response_format``: llguidance's grammar text and what it came from."""

    text: str
    """The grammar as llguidance takes it (Lark, with the schema inline as ``%json``)."""
    name: str
    """The schema's name (``json_object`` for any object), for messages."""
    answer_tags: bool = False
    """The JSON is wrapped in ``<answer>…</answer>`` (a run in the R1 format)."""


def llguidance():
    try:
        import llguidance
        import llguidance.hf
    except ImportError:
        raise UsageError("structured output (response_format) needs llguidance: pip install 'r1lite[serve]'") from None
    return llguidance


def schema_of(response_format: dict) -> tuple[dict | None, str, str]:
    """(the JSON schema, its name, the parameter that holds it) of a ``response_format``; None
    for plain text.

    >>> schema_of({"type": "json_object"})
    ({'type': 'object'}, 'json_object', 'response_format')
    >>> schema_of({"type": "json_schema", "json_schema": {"name": "sum", "schema": {"type": "integer"}}})[:2]
    ({'type': 'integer'}, 'sum')
    """
    if not isinstance(response_format, dict):
        raise GrammarError("'response_format' must be an object such as {\"type\": \"json_object\"}")
    kind = response_format.get("type")
    if kind in (None, "text"):
        return None, "text", "response_format"
    if kind == "json_object":
        return dict(JSON_OBJECT), "json_object", "response_format"
    if kind != "json_schema":
        raise GrammarError(f"'response_format.type' {kind!r}: use text, json_object or json_schema", "response_format.type")
    spec = response_format.get("json_schema")
    if not isinstance(spec, dict):
        raise GrammarError("'response_format' of type json_schema needs 'json_schema': {\"name\", \"schema\"}",
                           "response_format.json_schema")
    name = spec.get("name") or "schema"
    schema = spec.get("schema", {})
    if not isinstance(schema, dict):
        raise GrammarError(f"response_format.json_schema.schema '{name}': a JSON schema is an object",
                           "response_format.json_schema.schema")
    return schema, str(name), "response_format.json_schema.schema"


def check(response_format: dict) -> tuple[dict | None, str, str]:
    """:func:`schema_of`, the schema checked against its JSON Schema draft (jsonschema's
    ``check_schema``): a :class:`GrammarError` naming an invalid one. Needs no tokenizer.

    >>> check({"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": 12}}})
    Traceback (most recent call last):
    ...
    r1lite.engine.grammar.GrammarError: response_format.json_schema.schema 'n' is not a valid JSON schema: 12 is not valid under any of the given schemas (at type)
    """
    schema, name, param = schema_of(response_format)
    if schema is None:
        return schema, name, param
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as e:
        where = "/".join(str(p) for p in e.absolute_path)
        raise GrammarError(f"{param} '{name}' is not a valid JSON schema: {e.message}"
                           + (f" (at {where})" if where else ""), param) from None
    except Exception as e:
        raise GrammarError(f"{param} '{name}' is not a valid JSON schema: {type(e).__name__}: {str(e)[:200]}", param) from None
    return schema, name, param


def read_response_format(path: str, flag: str = "--response-format") -> dict:
    """A JSON schema file as OpenAI's ``response_format``, checked (:func:`check`); the file may hold
    the ``response_format`` object itself: ``{"type": "json_schema", "json_schema": {...}}`` or
    ``{"type": "json_object"}``."""
    try:
        schema = json.loads(Path(path).expanduser().read_text())
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot read it ({e.strerror})") from None
    except ValueError as e:
        raise UsageError(f"{flag} {path}: not JSON ({e})") from None
    if not isinstance(schema, dict):
        raise UsageError(f"{flag} {path}: a JSON schema is an object, not {type(schema).__name__}")
    spec = schema if schema.get("type") in ("json_schema", "json_object") else \
        {"type": "json_schema", "json_schema": {"name": Path(path).stem, "schema": schema}}
    try:
        check(spec)  # an invalid schema: one line, before any model loads
    except GrammarError as e:
        raise UsageError(f"{flag} {path}: {e}") from None
    return spec


def grammar_text(schema: dict, answer_tags: bool) -> str:
    """llguidance's Lark grammar for one JSON value of ``schema``, compact (no free whitespace),
    inside ``<answer>…</answer>`` when ``answer_tags``.

    >>> print(grammar_text({"type": "integer"}, True))
    start: "<answer>" json "</answer>"
    json: %json {"type": "integer", "x-guidance": {"whitespace_flexible": false, "item_separator": ",", "key_separator": ":"}}
    """
    options = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}
    body = json.dumps({**schema, "x-guidance": {**schema.get("x-guidance", {}), **options}})
    start = f'"{ANSWER_OPEN}" json "{ANSWER_CLOSE}"' if answer_tags else "json"
    return f"start: {start}\njson: %json {body}"


class Masker:
    """Compiles grammars against one tokenizer and applies their masks: one per engine (built on
    first use: llguidance reads the whole vocabulary, ~0.7 s for 49k tokens)."""

    def __init__(self, tokenizer, stop_ids):
        self.hf_tokenizer, self.stop_ids = tokenizer, sorted(stop_ids)
        self._tokenizer = None
        self._executor = None
        self._lock = threading.Lock()
        self._compiled: dict[str, object] = {}
        """Grammar text → a fresh matcher, deep-copied for each sequence (compiling is the costly part)."""
        self._bits = torch.zeros(0, 0, dtype=torch.int32)

    @property
    def tokenizer(self):
        """llguidance's tokenizer: the vocabulary, and the engine's stop tokens as end of sequence."""
        with self._lock:
            if self._tokenizer is None:
                llg = llguidance()
                try:
                    self._tokenizer = llg.hf.from_tokenizer(self.hf_tokenizer, eos_token=self.stop_ids)
                except ValueError as e:  # a slow (Python) tokenizer
                    raise UsageError(f"structured output needs a fast tokenizer: {e}") from None
                self._executor = llg.LLExecutor()
            return self._tokenizer

    @property
    def vocab(self) -> int:
        return self.tokenizer.vocab_size

    def compile(self, response_format: dict, answer_tags: bool = False) -> Grammar | None:
        """A ``response_format`` as a :class:`Grammar` (None for plain text). An invalid schema, or
        one llguidance cannot honour, is a :class:`GrammarError` naming it."""
        schema, name, param = check(response_format)
        if schema is None:
            return None
        grammar = Grammar(grammar_text(schema, answer_tags), name, answer_tags)
        llg = llguidance()
        try:
            error = llg.LLMatcher.validate_grammar(grammar.text, self.tokenizer)
        except (ValueError, TypeError, RuntimeError) as e:
            error = str(e)
        if error and not error.startswith("WARNING"):
            first = error.strip().splitlines()[0]  # the rest lists the grammar
            first = first.split(": ", 1)[1] if first.startswith("at ") and ": " in first else first  # "at 2(7): "
            raise GrammarError(f"{param} '{name}': structured output cannot honour this schema: {first[:300]}", param)
        return grammar

    def matcher(self, grammar: Grammar):
        """A fresh matcher for one sequence."""
        llg = llguidance()
        with self._lock:
            template = self._compiled.get(grammar.text)
        if template is None:
            template = llg.LLMatcher(self.tokenizer, grammar.text, log_level=0)
            if template.is_error():
                raise UsageError(f"structured output: schema '{grammar.name}' did not compile: {template.get_error()}")
            with self._lock:
                if len(self._compiled) >= 64:
                    self._compiled.pop(next(iter(self._compiled)))
                self._compiled[grammar.text] = template
        return template.deep_copy()

    def apply(self, logits: torch.Tensor, rows: list[int], matchers: list) -> torch.Tensor:
        """Each of ``rows`` of fp32 logits [B, V], the tokens its matcher does not allow next set to
        -inf (in place where the logits are a contiguous CPU tensor: :func:`mask_rows`; returned).
        The masks are computed together (llguidance's thread pool) as bits, 32 tokens a word."""
        n, width = len(rows), logits.shape[-1]
        words = (self.vocab + 31) // 32
        if self._bits.shape[0] < n or self._bits.shape[1] != words:
            self._bits = torch.zeros(max(n, self._bits.shape[0]), words, dtype=torch.int32)
        bits = self._bits[:n]
        self._executor.unsafe_compute_mask_ptr([(m, i) for i, m in enumerate(matchers)], bits.data_ptr(), words * 4, n)
        cut = min(width, 32 * words)  # past the vocabulary (padding rows of the head): refused
        if logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.is_contiguous():
            mask_rows(logits.detach().numpy(), rows, bits.numpy(), cut)
            return logits
        refused = np.unpackbits(np.invert(bits.numpy()).view(np.uint8), axis=1, bitorder="little").view(bool)
        blocked = torch.ones(n, width, dtype=torch.bool)
        blocked[:, :cut] = torch.from_numpy(refused[:, :cut])
        index = torch.tensor(rows, device=logits.device)
        logits[index] = logits[index].masked_fill(blocked.to(logits.device), float("-inf"))
        return logits


def mask_rows(out: np.ndarray, rows: list[int], bits: np.ndarray, cut: int) -> None:
    """Set the logits of ``out[rows]`` (fp32 [B, V], in place) whose bit in ``bits`` (int32 [len(rows),
    words], 32 tokens a word, low bit first) is 0 to -inf, and those from ``cut`` on.

    A grammar's mask is mostly whole words: all allowed (inside a string) or all refused (between
    values). So only the words that are not, of rows mostly refused, are unpacked and their allowed
    logits kept while the rest of the row is filled with -inf; of rows mostly allowed, the refused
    bits of the words not all allowed are written. Each kind of row is done at once, in a few numpy
    calls: for 16 rows of Gemma's 262,144 tokens ~1 ms on a 2-core CPU, where writing every refused
    logit through a boolean mask (numpy's ``copyto(where=)``) takes ~2.4 ms and torch's
    ``masked_fill`` of the gathered rows ~9 ms.

    >>> out = np.zeros((2, 70), dtype=np.float32)
    >>> mask_rows(out, [0, 1], np.array([[0b11, 0, 0], [-1, -2, -1]], dtype=np.int32), 66)
    >>> np.flatnonzero(out[0] == 0).tolist(), np.flatnonzero(out[1] != 0).tolist()
    ([0, 1], [32, 66, 67, 68, 69])
    """
    rows = np.asarray(rows)
    mostly_allowed = (bits != -1).sum(1) * 2 <= bits.shape[1]
    for kind in (True, False):
        pick = np.flatnonzero(mostly_allowed == kind)
        if not len(pick):
            continue
        group = bits[pick]
        r, w = np.nonzero(group != (-1 if kind else 0))  # the words to unpack: refused bits, or allowed ones
        words = np.invert(group[r, w]) if kind else group[r, w]
        hit = np.unpackbits(words.astype("<i4").view(np.uint8).reshape(-1, 4), axis=1, bitorder="little").view(bool)
        pos = (w[:, None] * 32 + np.arange(32))[hit]
        row = rows[pick][r][:, None].repeat(32, 1)[hit]
        inside = pos < cut
        pos, row = pos[inside], row[inside]
        if kind:  # mostly allowed: the refused logits to -inf
            out[row, pos] = -np.inf
            out[rows[pick], cut:] = -np.inf
        else:  # mostly refused: keep the allowed logits, the rest -inf
            kept = out[row, pos]
            out[rows[pick]] = -np.inf
            out[row, pos] = kept
