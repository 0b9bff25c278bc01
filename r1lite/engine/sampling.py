"""How the next token is picked: sampling settings, and the draw from the logits.

Randomness is per sequence, never per batch: the uniform number that picks a sequence's t-th token
is a hash of (the request's seed, the sample's index, t) — a counter-based generator, like
JAX's or Philox, in a few lines of Python. So a sequence's tokens depend only on (seed, prompt,
sample index): not on the batch size, its row, the other rows, or when it joined a running batch.
Distributed training and the server rely on this. It takes logits that are themselves the same
bits in any batch: so they are on our kernels (fp32 products, and bf16 products on CPUs with
AVX-512 BF16) and PyTorch's fp32 CPU path (see :class:`r1lite.engine.decoders.Projection`); bf16
compute on PyTorch and GPUs round by the batch's shape, and a near-tie can then go either way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from r1lite.engine import kernels
from r1lite.errors import UsageError


@dataclass(frozen=True)
class Sampling:
    """How to pick tokens. The defaults sample from the model's own distribution."""

    max_new_tokens: int = 256
    """Token budget per completion; a completion that reaches it finishes with ``length``."""
    temperature: float = 1.0
    """Softmax temperature; 0 = greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p; 1 = off."""
    top_k: int = 0
    """Keep the k most likely tokens; 0 = off."""
    stop: tuple[str, ...] = ()
    """Strings that end a completion. The completion ends with the token that completed one: its
    text is exactly its tokens decoded, so it may hold a few characters after the stop string
    (those of that token), and training sees exactly what the reward saw."""
    ignore_eos: bool = False
    """Keep going past end-of-turn tokens (benchmarks that need exactly max_new_tokens)."""

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise UsageError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise UsageError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if self.top_k < 0:
            raise UsageError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if any(not s for s in self.stop):
            raise UsageError("stop strings must not be empty")


# ---------------------------------------------------------------------------------------------
# The token budget against the model's context


def over_context(max_new_tokens: int, context: int, prompt_tokens: int = 0) -> str | None:
    """Why a prompt of ``prompt_tokens`` and up to ``max_new_tokens`` new tokens do not fit a context
    of ``context`` tokens (0 = not known: anything fits), with the largest budget that does; None
    when they fit. A prompt not known yet counts as one token.

    >>> over_context(10_000_000, 8192, 500)
    "the model's context is 8192 tokens and the prompt takes 500; ask for at most 7692"
    >>> over_context(7692, 8192, 500), over_context(10**9, 0)
    (None, None)
    """
    prompt = max(prompt_tokens, 1)
    if not context or prompt + max_new_tokens <= context:
        return None
    if prompt >= context:
        return f"the prompt is {prompt} tokens, the model's whole context {context}; shorten the prompt"
    took = f"the prompt takes {prompt}" if prompt_tokens else "a prompt takes at least 1"
    return f"the model's context is {context} tokens and {took}; ask for at most {context - prompt}"


def check_budget(max_new_tokens: int, context: int, prompt_tokens: int = 0, flag: str = "--max-new-tokens") -> None:
    """Refuse a token budget that does not fit the model's context (:func:`over_context`) in one
    line naming ``flag`` (the flag or recipe key that set it), before any work."""
    problem = over_context(max_new_tokens, context, prompt_tokens)
    if problem:
        raise UsageError(f"{flag} {max_new_tokens}: {problem}")


# ---------------------------------------------------------------------------------------------
# Per-sequence random numbers

_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """SplitMix64's finaliser: a bijection of 64-bit integers that scatters every input bit."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def sequence_key(seed: int, sample: int) -> int:
    """The key of one sequence's random stream: a hash of the request's seed and the sample index.

    >>> sequence_key(0, 0) != sequence_key(0, 1) != sequence_key(1, 0)
    True
    """
    return _mix(_mix(seed & _MASK) ^ (sample & _MASK))


def uniform(key: int, step: int) -> float:
    """The uniform number in [0, 1) that draws token ``step`` of the sequence with ``key``: 24
    random bits, so it is exact in fp32 and never rounds up to 1.

    >>> 0 <= uniform(sequence_key(7, 0), 3) < 1, uniform(5, 0) == uniform(5, 0), uniform(5, 0) != uniform(5, 1)
    (True, True, True)
    """
    return (_mix(key ^ _mix(step)) >> 40) / (1 << 24)


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (a run's seed, a step, a prompt's index): each part
    is mixed in, so (1, 23) and (12, 3) differ.

    >>> derive_seed(1, 23) != derive_seed(12, 3), 0 <= derive_seed(5) < 2 ** 63
    (True, True)
    """
    x = 0
    for p in parts:
        x = _mix(x ^ (p & _MASK))
    return x >> 1


# ---------------------------------------------------------------------------------------------
# The draw


def filter_logits(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Temperature, top-k and top-p applied to fp32 logits [B, V] (temperature > 0): the
    distribution the sampler draws from, as logits (removed tokens at -inf)."""
    if s.temperature != 1:
        logits = logits / s.temperature
    if s.top_k:
        kth = torch.topk(logits, min(s.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if s.top_p < 1:
        logits = nucleus(logits, s.top_p)
    return logits


NUCLEUS_FIRST = 64
"""The most likely tokens :func:`nucleus` looks at first (x8 while the nucleus is wider)."""


def nucleus(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits [B, V] with every token outside the nucleus at -inf: the most likely tokens whose
    probabilities, summed from the largest, reach ``top_p``, the one that crosses it kept.

    The nucleus is a prefix of the k most likely tokens for any k whose mass reaches top_p, so only
    the top k are sorted (``topk``), k = 64 first and 8 times more while a row falls short. A full
    sort of each row took 35.7 ms for 16 x 49k logits against 1.1 ms for the top 64 (2-core AVX2
    EPYC): at batch 16, as long as the decode step itself (py-spy on ``serve``, 16 clients)."""
    probs = logits.softmax(-1)
    V = logits.shape[-1]
    k = min(NUCLEUS_FIRST, V)
    while True:
        top, order = probs.topk(k, dim=-1)  # sorted, largest first
        mass = top.cumsum(-1, dtype=torch.float64)  # fp64: the sums do not depend on k or the CPU's vector width
        if k == V or bool((mass[:, -1] >= top_p).all()):
            break
        k = min(8 * k, V)
    drop = mass - top.double() >= top_p  # keep the token that crosses top_p
    return torch.full_like(logits, -math.inf).scatter_(-1, order, logits.gather(-1, order).masked_fill(drop, -math.inf))


def sample_next(logits: torch.Tensor, s: Sampling, u: torch.Tensor | None) -> torch.Tensor:
    """Pick one token per row of fp32 logits [B, V]: argmax at temperature 0, else the draw at the
    uniform numbers ``u`` [B] from the filtered distribution."""
    if s.temperature == 0:
        return logits.argmax(-1)
    return sample_categorical(filter_logits(logits, s), u)


def sample_categorical(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One draw per row from softmax(logits) at uniform numbers ``u`` [B] by inverting the
    cumulative distribution: a cumulative sum and a binary search.

    ``torch.multinomial`` draws one exponential number per vocabulary entry instead: 24 ms per
    step for 16 rows x 49k tokens on the 2-core CPU we measured, against 1.4 ms here, and 94 ms
    against 6 ms for 64 rows, more than a whole decode step of the layers at batch 16. It also
    takes one generator for the whole batch, which would tie a sequence's tokens to its row.
    Tokens with probability 0 (masked to -inf) are never drawn. fp32 logits on a CPU where our
    kernels run take :func:`r1lite.engine.kernels.sample`, the same draw in one pass over block
    sums (0.3 vs 1.4 ms for 16 x 49k logits).
    """
    u = u.to(device=logits.device, dtype=torch.float32)
    lib = kernels.load() if logits.device.type == "cpu" and logits.dtype == torch.float32 else None
    if lib is not None:
        return kernels.sample(lib, logits, u)
    weights = (logits - logits.amax(-1, keepdim=True)).exp_()  # unnormalised: u is scaled instead
    cdf = weights.cumsum_(-1)
    return torch.searchsorted(cdf, u[:, None] * cdf[:, -1:], right=True).clamp_(max=cdf.shape[-1] - 1).squeeze(-1)


def sample_rows(logits: torch.Tensor, settings: list[Sampling], keys: list[int], steps: list[int]) -> list[int]:
    """The next token of each row: row r follows ``settings[r]`` and draws with
    ``uniform(keys[r], steps[r])``. Rows with the same settings are drawn together."""
    out = [0] * len(settings)
    groups: dict[Sampling, list[int]] = {}
    for r, s in enumerate(settings):
        groups.setdefault(s, []).append(r)
    for s, rows in groups.items():
        part = logits if len(rows) == len(settings) else logits[torch.tensor(rows, device=logits.device)]
        u = None if s.temperature == 0 else torch.tensor([uniform(keys[r], steps[r]) for r in rows])
        for r, tok in zip(rows, sample_next(part, s, u).tolist()):
            out[r] = tok
    return out
