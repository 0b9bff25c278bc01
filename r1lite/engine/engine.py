"""The one generation loop, for evaluation, GRPO rollouts, the cold start, distillation with a
local teacher and serving.

Two forms over one implementation:

- ``generate(requests)`` → completions: add every request, step until all are done;
- the step-level form for serving: ``add(request)``, ``step()`` → the tokens (and text) each
  sequence gained, ``cancel(id)``. A request added while a batch decodes joins it at the next
  step; one that finishes or is cancelled leaves it.

What a step does:

1. every row draws its next token (:func:`r1lite.engine.sampling.sample_rows`: per-sequence
   random numbers, so a sequence does not depend on its batch); a row whose request has a
   grammar (structured output, :mod:`r1lite.engine.grammar`) draws from its grammar's mask once
   its answer starts;
2. rows that finished (an end-of-turn token, a stop string, the token budget, a cancel) leave the
   batch once they are a quarter of it, or when waiting requests need their room (each leave
   copies the cache);
3. the remaining rows run one decode step;
4. waiting requests are prefilled — the token prefix all prompts of the group share (system
   prompt, instructions) once, then each prompt's own tokens — their cache is copied into their
   ``n`` rows (GRPO's G samples of one prompt share the prompt's prefill), and merged into the
   running batch, aligned so every row writes its next token at the same cache column.

The engine counts tokens and FLOPs as the decoder computes them (:class:`GenerationStats`); the
cost meter takes its figures from there.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, fields

import torch

from r1lite.engine.grammar import Grammar, Masker
from r1lite.engine.sampling import Sampling, sample_rows, sequence_key
from r1lite.engine.thinking import CLOSE_SENTENCE, CLOSE_THINKING, THINK_CLOSE, THINK_OPEN
from r1lite.errors import UsageError
from r1lite.meter.memory import release_free
from r1lite.models import left_pad, shared_prefix


@dataclass
class Request:
    """Sample ``n`` continuations of one tokenized prompt."""

    prompt: list[int]
    """Token ids (the chat template with the assistant turn opened; :mod:`r1lite.prompts`)."""
    sampling: Sampling = field(default_factory=Sampling)
    n: int = 1
    """Samples of this prompt; they share its prefill."""
    seed: int | None = None
    """Sample i's tokens depend only on (seed, prompt, i). None = a seed drawn from torch's generator."""
    id: str = ""
    """Set by :meth:`Engine.add` when empty."""
    stream: bool = False
    """Decode text as it comes (``Delta.text``); otherwise only the finished completion has text."""
    max_thinking_tokens: int | None = None
    """Thinking budget (s1-style budget forcing): tokens inside ``<think>``, the forced close
    included; None = no limit. See :data:`CLOSE_THINKING`."""
    thinking: bool = False
    """The prompt ends inside an open ``<think>`` block (a ``<think>`` prefill)."""
    grammar: Grammar | None = None
    """Structured output: the answer is held to this grammar (:meth:`Engine.compile`). The mask
    starts at the first token, or, when the prompt opened ``<think>`` (``thinking``), at the token
    after ``</think>``: the thinking runs free, except that it cannot end the turn (the stop tokens
    are masked until the answer). The sequence stops (``stop``) when the grammar is complete, and
    ends with ``length`` when ``max_new_tokens`` runs out first; stop strings do not apply (the
    grammar decides where the answer ends)."""


@dataclass
class Completion:
    """One sampled continuation of a prompt."""

    token_ids: list[int]
    """Generated tokens, including the end-of-turn token or the token that completed a stop string."""
    text: str
    """The generated tokens decoded, without a final end-of-turn token."""
    finish: str
    """``stop`` (end-of-turn token or stop string), ``length`` (hit max_new_tokens) or ``cancelled``."""
    prompt_tokens: int = 0
    """Tokens of the prompt this continues."""


@dataclass
class Delta:
    """What one sequence gained in one step."""

    request_id: str
    sample: int
    token_ids: list[int]
    text: str
    """New text (streaming requests; "" otherwise, and while a character's bytes are incomplete)."""
    finish: str | None = None
    completion: Completion | None = None
    """The whole completion, on the sequence's last delta."""


@dataclass
class GenerationStats:
    """What the engine did, for tokens/s and the cost meter. Counters add up over calls."""

    prompt_tokens: int = 0
    """Tokens of the distinct prompts prefilled (a prompt's n samples share its prefill)."""
    prefill_tokens: int = 0
    """Token positions prefill computed (left padding included; a shared prefix once per group)."""
    new_tokens: int = 0
    """Tokens sampled."""
    flops: float = 0.0
    """FLOPs of every forward the decoder ran (:meth:`flops` of the decoder)."""
    seconds: float = 0.0
    decode_steps: int = 0
    row_steps: list[int] = field(default_factory=list)
    """Rows in the batch at each decode step (shows rows leaving and joining)."""

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else 0.0

    def add(self, other: GenerationStats) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class _Seq:
    """One row: a sample of a request being decoded."""

    def __init__(self, request: Request, sample: int, seed: int):
        self.request, self.sample = request, sample
        self.key = sequence_key(seed, sample)
        self.tokens: list[int] = []
        self.finish: str | None = None
        self.shown = 0  # streaming: characters of text already returned
        self.cancelled_now = False  # cancelled since the last step: owes a last delta
        self.in_thought = request.thinking  # inside <think> (budget forcing only)
        self.thought = 0  # tokens generated inside <think>
        self.forced: list[int] = []  # tokens the budget writes next
        self.stop_window = 0  # tokens whose text can hold the longest stop string (set on first use)
        self.matcher = None  # structured output: the grammar's state (set by the engine)
        self.constrained = False  # the grammar's mask applies (the answer has started)

    @property
    def remaining(self) -> int:
        return self.request.sampling.max_new_tokens - len(self.tokens)


@dataclass
class _Batch:
    """The running batch: rows, their cache, and each row's pending next-token logits."""

    seqs: list[_Seq]
    cache: object
    col: int
    """Cache column every row writes its next token at."""
    valid: torch.Tensor
    """[rows, columns] bool: real (non-pad) cache columns; columns from ``col`` on are True."""
    pos: torch.Tensor
    """[rows] RoPE position of each row's next token (real tokens before it)."""
    logits: torch.Tensor
    """[rows, V] fp32: the distribution of each row's next token."""
    shared: int = 0
    """Columns 0..shared hold the same keys and values in every row."""


class Engine:
    """Generation over a decoder (:mod:`r1lite.engine.decoders`); see the module docstring."""

    def __init__(self, decoder, tokenizer, stop_ids: list[int] | None = None, max_rows: int = 64):
        if max_rows < 1:
            raise UsageError(f"max_rows={max_rows}: the engine needs room for at least one sequence")
        self.decoder, self.tokenizer = decoder, tokenizer
        self.stop_ids = set(stop_ids if stop_ids is not None else [tokenizer.eos_token_id])
        self.max_rows = max_rows
        self.join_at = 1
        """Waiting requests join a running batch once this many rows are free (generate() waits
        for a quarter of the batch, so joins and their cache copies stay rare)."""
        self.stats = GenerationStats()
        self.grammars = Masker(tokenizer, self.stop_ids)
        """Structured output: compiles ``response_format`` s and masks the rows that have one."""
        self.batch: _Batch | None = None
        self.waiting: list[Request] = []
        self.failed: dict[str, Exception] = {}
        """Requests whose prefill raised, by id, with the error: they left the engine; the batch
        running beside them goes on (the step-level caller takes them out of here)."""
        self._ids = itertools.count()

    @property
    def device(self) -> torch.device:
        return self.decoder.device

    def compile(self, response_format: dict, answer_tags: bool = False) -> Grammar | None:
        """OpenAI's ``response_format`` as a :class:`Grammar` for :attr:`Request.grammar` (None for
        plain text; ``answer_tags``: wrapped in ``<answer>…</answer>``, the R1 format);
        :class:`r1lite.engine.grammar.GrammarError` naming a schema that is invalid or cannot be honoured."""
        return self.grammars.compile(response_format, answer_tags)

    def sync(self, model) -> None:
        """Refresh the decoder's weights from the model (after an optimizer step)."""
        self.decoder.sync(model)

    def unload(self) -> None:
        """Drop the decoder's copy of the weights until the next :meth:`sync`; nothing may run between."""
        if self.batch is not None or self.waiting:
            raise RuntimeError("the engine unloads its weights only when no request is running or waiting")
        self.decoder.unload()

    # -- the step-level form ---------------------------------------------------------------------

    def add(self, request: Request) -> str:
        """Queue a request; it starts at the next step. Returns its id."""
        if request.n < 1 or request.n > self.max_rows:
            raise UsageError(f"a request asks for {request.n} samples; this engine decodes 1..{self.max_rows} "
                             "rows at once (raise the batch size)")
        if not request.prompt:
            raise UsageError("a request needs at least one prompt token")
        if not request.id:
            request.id = f"r{next(self._ids)}"
        if request.seed is None:
            request.seed = int(torch.randint(0, 2 ** 62, (1,)).item())
        self.waiting.append(request)
        return request.id

    def cancel(self, request_id: str) -> None:
        """Stop a request: waiting, it is dropped; running, its rows finish with ``cancelled`` at
        the next step."""
        self.waiting = [r for r in self.waiting if r.id != request_id]
        if self.batch is not None:
            for seq in self.batch.seqs:
                if seq.request.id == request_id and seq.finish is None:
                    seq.finish = "cancelled"
                    seq.cancelled_now = True

    @property
    def has_work(self) -> bool:
        return bool(self.waiting) or self.batch is not None

    def clear(self) -> None:
        """Drop every request, waiting and running, with no last delta (after a step failed: the
        batch's state is unknown)."""
        self.batch, self.waiting, self.failed = None, [], {}

    def step(self) -> list[Delta]:
        """Advance every running sequence by one token; see the module docstring."""
        t0 = time.perf_counter()
        if self.batch is None:
            self._admit()
        deltas: list[Delta] = []
        b = self.batch
        if b is None:
            return deltas
        drawing = [j for j, s in enumerate(b.seqs) if s.finish is None]
        if drawing:
            logits = self._constrain(b.logits[drawing] if len(drawing) < len(b.seqs) else b.logits,
                                     [b.seqs[j] for j in drawing])
            tokens = sample_rows(logits, [b.seqs[j].request.sampling for j in drawing], [b.seqs[j].key for j in drawing],
                                 [len(b.seqs[j].tokens) for j in drawing])
        else:
            tokens = []
        for k, (j, tok) in enumerate(zip(drawing, tokens)):
            seq = b.seqs[j]
            if seq.constrained:
                if not seq.matcher.consume_token(tok):  # drawn under its mask: never, short of a defect
                    seq.finish = "length"  # not complete: never called a whole answer
            elif seq.request.max_thinking_tokens is not None or seq.matcher is not None:
                tokens[k] = tok = self._budget(seq, tok)
            deltas.append(self._advance(seq, tok))
        for seq in b.seqs:  # cancelled since the last step: a last delta without tokens
            if seq.cancelled_now:
                seq.cancelled_now = False
                deltas.append(Delta(seq.request.id, seq.sample, [], "", "cancelled", self._completion(seq)))
        self.stats.new_tokens += len(tokens)
        live = [j for j, s in enumerate(b.seqs) if s.finish is None]
        if not live:
            self.decoder.release(b.cache)
            self.batch = None
            self._admit()
        else:
            if len(live) <= 0.75 * len(b.seqs):  # (a join below drops finished rows too)
                self.batch = b = self._merge([(b, live)])
            nxt = [(b.seqs[j].tokens[-1] if b.seqs[j].tokens else 0) for j in range(len(b.seqs))]
            self.stats.row_steps.append(len(b.seqs))
            self.stats.decode_steps += 1
            self.stats.flops += self.decoder.flops(len(b.seqs), 1, b.col)
            b.logits = self.decoder.forward(b.cache, torch.tensor(nxt, device=self.device)[:, None], b.pos[:, None],
                                            b.col, b.valid, b.shared)
            b.col += 1
            b.pos = b.pos + 1
            self._admit()
        self.stats.seconds += time.perf_counter() - t0
        return deltas

    # -- the batch form --------------------------------------------------------------------------

    def generate(self, requests: list[Request], stats: GenerationStats | None = None, max_rows: int | None = None,
                 on_progress=None) -> list[list[Completion]]:
        """Every request's completions, ``[request][sample]``. Requests start shortest prompt
        first (less padding, longer shared prefixes); ``max_rows`` overrides the engine's for this
        call; ``on_progress(sequences_done)`` is called as sequences finish."""
        if max_rows is not None and max_rows != self.max_rows:
            saved, self.max_rows = self.max_rows, max_rows
            try:
                return self.generate(requests, stats, None, on_progress)
            finally:
                self.max_rows = saved
        outer, self.stats = self.stats, GenerationStats()  # this call's figures, added to both at the end
        order = sorted(range(len(requests)), key=lambda i: len(requests[i].prompt))
        for i in order:
            requests[i].id = ""
            self.add(requests[i])
        mine = {requests[i].id for i in order}
        done: dict[tuple[str, int], Completion] = {}
        saved, self.join_at = self.join_at, max(1, self.max_rows // 4)
        release_free()  # what the weights' sync and earlier work freed, as after each step below
        try:
            while len(done) < sum(r.n for r in requests):
                deltas = self.step()
                # a step's freed tensors back to the OS: glibc would keep them resident, and the next
                # step's land beside them (a GRPO rollout's resident set grew through its steps)
                release_free()
                if failed := [e for rid, e in self.failed.items() if rid in mine]:
                    raise failed[0]
                for d in deltas:
                    if d.completion is not None and d.request_id in mine:
                        done[(d.request_id, d.sample)] = d.completion
                        if on_progress is not None:
                            on_progress(len(done))
        finally:
            self.join_at = saved
            mine_stats, self.stats = self.stats, outer
            outer.add(mine_stats)
            if stats is not None:
                stats.add(mine_stats)
        return [[done[(r.id, s)] for s in range(r.n)] for r in requests]

    # -- internals -------------------------------------------------------------------------------

    def _constrain(self, logits: torch.Tensor, seqs: list[_Seq]) -> torch.Tensor:
        """The logits with each structured row masked: to its grammar once its answer started; its
        stop tokens while it thinks (the thinking cannot end the turn). Other rows untouched."""
        if not any(s.matcher is not None for s in seqs):
            return logits
        rows = [r for r, s in enumerate(seqs) if s.constrained]
        if rows:
            logits = self.grammars.apply(logits, rows, [seqs[r].matcher for r in rows])
        thinking = [r for r, s in enumerate(seqs) if s.matcher is not None and not s.constrained and not s.forced]
        if thinking:
            stops = torch.tensor(sorted(i for i in self.stop_ids if i < logits.shape[-1]), dtype=torch.long)
            logits[torch.tensor(thinking)[:, None], stops[None, :]] = float("-inf")
        return logits

    def _advance(self, seq: _Seq, tok: int) -> Delta:
        s = seq.request.sampling
        seq.tokens.append(tok)
        if seq.finish is not None:  # set while drawing it (a structured row whose token its grammar refused)
            pass
        elif tok in self.stop_ids and not s.ignore_eos:
            seq.finish = "stop"
        elif seq.constrained and seq.matcher.is_stopped():  # the grammar is complete: nothing may follow
            seq.finish = "stop"
        elif s.stop and seq.matcher is None and self._hit_stop(seq):
            seq.finish = "stop"
        elif len(seq.tokens) >= s.max_new_tokens:
            seq.finish = "length"
        text = ""
        if seq.request.stream:
            full = self._text(seq)
            if seq.finish is None and full.endswith("\ufffd"):  # a character whose bytes are still coming
                full = full[:seq.shown]
            text, seq.shown = full[seq.shown:], max(seq.shown, len(full))
        done = self._completion(seq) if seq.finish is not None else None
        return Delta(seq.request.id, seq.sample, [tok], text, seq.finish, done)

    def _budget(self, seq: _Seq, sampled: int) -> int:
        """The token a sequence with a thinking budget (or a grammar, whose answer starts after the
        thinking) gets: the sampled one, or the next forced one."""
        budget = seq.request.max_thinking_tokens
        if budget is not None and not seq.forced and seq.in_thought:
            close = self.tokenizer.encode(CLOSE_THINKING, add_special_tokens=False)
            plan = self.tokenizer.encode(CLOSE_SENTENCE, add_special_tokens=False) + close
            plan = plan if budget >= len(plan) else close
            if budget - seq.thought <= len(plan):
                seq.forced = plan
        forced = bool(seq.forced)
        tok = seq.forced.pop(0) if seq.forced else sampled
        if seq.in_thought:
            seq.thought += 1
        tail = self.tokenizer.decode(seq.tokens[-8:] + [tok])
        if (seq.in_thought and seq.matcher is not None and not forced and THINK_CLOSE in tail
                and tail.rsplit(THINK_CLOSE, 1)[1].strip()):
            # The model closed its thinking with a token that carries answer text too: the grammar
            # sees tokens from the close on, so the close is written instead (the rest of the
            # token's text is dropped), and the answer starts on a token of its own.
            seq.forced = self.tokenizer.encode(THINK_CLOSE, add_special_tokens=False)
            tok = seq.forced.pop(0)
            tail = self.tokenizer.decode(seq.tokens[-8:] + [tok])
        if seq.in_thought and THINK_CLOSE in tail:
            seq.in_thought, seq.forced = False, []
            seq.constrained = seq.matcher is not None  # the answer starts: from the next token on
        elif not seq.in_thought and not seq.thought and seq.matcher is None and THINK_OPEN in tail and THINK_CLOSE not in tail:
            seq.in_thought = True
        return tok

    def _hit_stop(self, seq: _Seq) -> bool:
        """Whether the newest token completed a stop string (searched in the text of the last few
        tokens, enough to hold the longest stop string)."""
        stops = seq.request.sampling.stop
        if not seq.stop_window:  # tokenized once per sequence, not at every step
            seq.stop_window = max(len(self.tokenizer.encode(t, add_special_tokens=False)) for t in stops) + 2
        tail = self.tokenizer.decode(seq.tokens[-seq.stop_window:])
        return any(t in tail for t in stops)

    def _text(self, seq: _Seq) -> str:
        body = seq.tokens[:-1] if seq.tokens and seq.finish == "stop" and seq.tokens[-1] in self.stop_ids else seq.tokens
        return self.tokenizer.decode(body)

    def _completion(self, seq: _Seq) -> Completion:
        return Completion(list(seq.tokens), self._text(seq), seq.finish, len(seq.request.prompt))

    def _admit(self) -> None:
        """Prefill waiting requests that fit and merge them into the running batch."""
        rows = sum(s.finish is None for s in self.batch.seqs) if self.batch is not None else 0
        if not self.waiting or (self.batch is not None and self.max_rows - rows < self.join_at):
            return
        group: list[Request] = []
        while self.waiting and rows + self.waiting[0].n <= self.max_rows:
            group.append(self.waiting.pop(0))
            rows += group[-1].n
        if not group:
            return
        try:
            new = self._prefill(group)
        except Exception as e:  # these prompts failed (the running batch is untouched): they alone end
            self.failed.update((r.id, e) for r in group)
            return
        if self.batch is None:
            self.batch = new
        else:
            self.batch = self._merge([(self.batch, [j for j, s in enumerate(self.batch.seqs) if s.finish is None]),
                                      (new, list(range(len(new.seqs))))])

    def _prefill(self, group: list[Request]) -> _Batch:
        """Prefill a group of prompts: their shared prefix once, then each prompt's own tokens;
        each prompt's cache copied into its n rows."""
        dec, device = self.decoder, self.device
        prompts = [r.prompt for r in group]
        B = len(prompts)
        L = shared_prefix(prompts) if B > 1 else 0
        S = max(len(p) for p in prompts) - L  # suffix width: [shared prefix | left pad | own tokens]
        width = L + S + max(r.sampling.max_new_tokens for r in group)
        suffix, own = left_pad([p[L:] for p in prompts], self.tokenizer.pad_token_id or 0)  # [B, S]
        valid = torch.ones(B, width, dtype=torch.bool)
        valid[:, L:L + S] = own.bool()
        positions = valid[:, :L + S].long().cumsum(-1) - 1  # RoPE positions count real tokens only
        suffix, valid, positions = suffix.to(device), valid.to(device), positions.to(device)
        cache = dec.new_cache(1 if L else B, width)
        if L:
            dec.forward(cache, torch.tensor([prompts[0][:L]], device=device), positions[:1, :L], 0, valid[:1])
            cache = dec.select(cache, torch.zeros(B, dtype=torch.long, device=device))
            self.stats.flops += dec.flops(1, L, 0)
        logits = dec.forward(cache, suffix, positions[:, L:].clamp(min=0), L, valid, L)  # [B, V]
        self.stats.flops += dec.flops(B, S, L)
        self.stats.prompt_tokens += sum(len(p) for p in prompts)
        self.stats.prefill_tokens += L + B * S
        counts = torch.tensor([r.n for r in group], device=device)
        if int(counts.sum()) != B:
            expand = torch.arange(B, device=device).repeat_interleave(counts)
            cache, logits, valid, positions = dec.select(cache, expand), logits[expand], valid[expand], positions[expand]
        seqs = [_Seq(r, i, r.seed) for r in group for i in range(r.n)]
        for seq in seqs:
            if seq.request.grammar is not None:
                seq.matcher = self.grammars.matcher(seq.request.grammar)
                seq.constrained = not seq.request.thinking  # else: from the thinking's close on
        return _Batch(seqs, cache, L + S, valid, positions[:, -1] + 1, logits, shared=L)

    def _merge(self, parts: list[tuple[_Batch, list[int]]]) -> _Batch:
        """One batch of the given rows of each part, aligned at a common next column, with the
        leading columns no kept row uses trimmed and room for every row's remaining tokens."""
        col = max(b.col for b, _ in parts)
        starts = []
        for b, rows in parts:  # the first real column of each part's kept rows
            real = b.valid[rows, :b.col].any(0)
            starts.append(int(real.nonzero()[0]) if bool(real.any()) else b.col)
        trim = min(s + col - b.col for s, (b, _) in zip(starts, parts))
        new_col = col - trim
        seqs = [b.seqs[j] for b, rows in parts for j in rows]
        columns = new_col + max(s.remaining for s in seqs)
        valid = torch.ones(len(seqs), columns, dtype=torch.bool, device=self.device)
        spans, at = [], 0
        for s, (b, rows) in zip(starts, parts):
            first = max(s, trim - (col - b.col))  # columns before it are trimmed
            dest = first + col - b.col - trim
            idx = torch.tensor(rows, dtype=torch.long, device=self.device)
            valid[at:at + len(rows), :dest] = False
            valid[at:at + len(rows), dest:new_col] = b.valid[idx, first:b.col]
            spans.append((b.cache, None if rows == list(range(len(b.seqs))) else idx, first, b.col, dest))
            at += len(rows)
        single = len(parts) == 1 and trim == 0
        if single and spans[0][1] is not None and columns <= parts[0][0].valid.shape[1]:
            # rows leaving: no shift, no new columns. In the cache's own memory, unless requests wait to
            # join: their merge would then sit beside the whole old cache, where a copy frees it first
            leave = self.decoder.select if self.waiting else self.decoder.compact
            cache = leave(parts[0][0].cache, spans[0][1])
        elif single and spans[0][1] is None:
            cache = parts[0][0].cache
        else:
            cache = self.decoder.merge(spans, columns)
        pos = torch.cat([b.pos[torch.tensor(rows, dtype=torch.long, device=self.device)] for b, rows in parts])
        logits = torch.cat([b.logits[torch.tensor(rows, dtype=torch.long, device=self.device)] for b, rows in parts])
        return _Batch(seqs, cache, new_col, valid, pos, logits, shared=parts[0][0].shared if single else 0)
