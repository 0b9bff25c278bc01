"""Our own kernels for a decode step on x86-64 CPUs (AVX2 + FMA), built on first use: fp32
products, and bf16 products where the CPU has AVX-512 BF16 (``gemm_bf16.c``).

A decode step multiplies every weight by a handful of columns (one per sequence in the batch).
MKL and oneDNN run these tall-skinny products at 50-75 GFLOP/s on the 2-core EPYC we measured
(peak 140-170); ``kernels/gemm.c``, with the weights packed once per sync, runs them at 90-140: a
3072x576 weight times 16 columns in 0.50 vs 0.96 ms (MKL), the 49k x 576 vocabulary head in 6.5-7
vs 17.8 ms (MKL) and 11.6 ms (oneDNN). With hundreds of columns (prefill) it is within ~10-20% of
MKL either way (2048 columns: 56 vs 72 ms for 3072x576, 32 vs 30 ms for 576x1536), so it serves
every product and the decoder keeps no second copy of the weights. The projections take their
layer's RMS norm or SwiGLU as a prologue and the residual add as an epilogue; attention (RoPE,
cache write, scores, softmax, values; a decode step's or a prefill's) is one call per layer, a whole
decode step (every layer and the head) is one call from Python, and the draw of the next tokens
from the logits another. A batch-16 decode step of the 135M model: 33-39 ms against 86-102 ms for
the same decoder on PyTorch operations (same process, fast and slow spells of the machine).

The C source is compiled with the system compiler (``$CC``, else ``cc``) into
``$R1LITE_CACHE/kernels`` the first time it is needed, and linked against the OpenMP runtime
PyTorch ships so both share one thread pool. Where that is not possible (no compiler, not x86-64
Linux, no AVX2) :func:`load` returns None, says why once, and the decoder keeps PyTorch's products.
``R1LITE_CPU_KERNELS=0`` turns the kernel off.
"""

from __future__ import annotations

import ctypes
import hashlib
import math
import mmap
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from r1lite.packaged import cache_dir

SOURCE = Path(__file__).with_name("gemm.c")
SOURCES = [SOURCE, SOURCE.with_name("gemm_bf16.c"), SOURCE.with_name("gemm_int8.c")]  # gemm.c includes the others
FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]
NO_BF16 = "-DR1_NO_BF16"  # for a compiler that does not know AVX-512 BF16: the fp32 kernels alone
PANEL = 6  # weight rows per packed panel (gemm.c)
Q8_BLOCK, Q8_PANEL = 32, 8  # int8 weights: a scale per 32 weights of a row; panels of 8 rows (gemm_int8.c)
KINDS = {"fp32": 0, "bf16": 1, "int8": 2}  # how weights are packed, as r1_decode_step numbers them

_lib: ctypes.CDLL | None = None
_tried = False


def load() -> ctypes.CDLL | None:
    """The compiled kernel library, or None where it cannot be used (reason printed once)."""
    global _lib, _tried
    if not _tried:
        _tried = True
        try:
            _lib = _build()
        except _Unavailable as e:
            if str(e):
                print(f"r1lite: fast CPU decoding kernel not used ({e}); decoding with PyTorch's matmul", file=sys.stderr, flush=True)
    return _lib


class _Unavailable(Exception):
    pass


def _build() -> ctypes.CDLL:
    if os.environ.get("R1LITE_CPU_KERNELS", "1") == "0":
        raise _Unavailable("")
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise _Unavailable(f"written for x86-64 Linux, this is {platform.system()} {platform.machine()}")
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        raise _Unavailable("this CPU has no AVX2/FMA")
    torch_lib = Path(torch.__file__).parent / "lib"
    if not (torch_lib / "libgomp.so.1").exists():
        raise _Unavailable(f"PyTorch's OpenMP runtime libgomp.so.1 is not in {torch_lib}")
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise _Unavailable("no C compiler found: install gcc, or set CC")
    code = b"".join(path.read_bytes() for path in SOURCES)
    try:
        target = _compile(cc, FLAGS, code, torch_lib)
    except _Unavailable as first:
        try:  # the bf16 products need a compiler that knows AVX-512 BF16 (GCC 9, clang 9); the rest does not
            target = _compile(cc, [*FLAGS, NO_BF16], code, torch_lib)
        except _Unavailable:
            raise first from None
    lib = ctypes.CDLL(str(target))
    ptr, long, int_, float_ = ctypes.c_void_p, ctypes.c_long, ctypes.c_int, ctypes.c_float
    signatures = {  # argument types, in gemm.c's order
        "r1_pack6": [ptr, ptr, long, ptr, long, long],
        "r1_linear": [ptr, long, long, ptr, long, int_, ptr, float_, ptr, ptr, ptr, int_, int_],
        "r1_attend": [ptr, long, long, long, long, long, ptr, ptr, ptr, long, long, long, ptr, long, float_, ptr],
        "r1_linear_work": [long] * 2,
        "r1_decode_work": [long] * 6,
        "r1_sample": [ptr, long, long, ptr, ptr],
        "r1_decode_step": [long] * 7 + [ptr, ptr, float_, float_, ptr, long, ptr, ptr, ptr, long, long, long, ptr, long, ptr, ptr,
                           int_],
        "r1_pack6_bf16": [ptr, ptr, long, ptr, long, long],
        "r1_linear_bf16": [ptr, long, long, ptr, long, int_, ptr, float_, ptr, ptr, ptr, int_, int_],
        "r1_pack_q8": [ptr, ptr, long, ptr, long, long],
        "r1_linear_q8": [ptr, long, long, ptr, long, int_, ptr, float_, ptr, ptr, ptr, int_, int_],
    }
    for name, argtypes in signatures.items():
        if name.endswith("_bf16") and not hasattr(lib, name):
            continue  # built without the bf16 products
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = (long if name.endswith("_work") else None), argtypes
    return lib


def _compile(cc: str, flags: list[str], code: bytes, torch_lib: Path) -> Path:
    """The shared library of ``code`` built with ``flags`` (cached by their hash)."""
    key = hashlib.sha256(code + " ".join([cc, *flags, str(torch_lib)]).encode()).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"gemm-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [cc, *flags, str(SOURCE), "-o", tmp, f"-L{torch_lib}", f"-Wl,-rpath,{torch_lib}", "-l:libgomp.so.1"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise _Unavailable(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-300:]}")
        os.replace(tmp, target)  # atomic: a concurrent build or a killed one never leaves half a file
    except (OSError, subprocess.TimeoutExpired) as e:
        raise _Unavailable(f"compiling with {cc} failed: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


MADV_DONTNEED = 4


def drop_pages(t: torch.Tensor) -> bool:
    """Drop the whole pages a CPU tensor's elements span from this process (``madvise(MADV_DONTNEED)``),
    so they stop counting as its resident memory. Only for a tensor that is never read again: a
    dropped page of a file map reads back as the file's content, an anonymous one as zeros. False
    where nothing was dropped (off Linux, a tensor smaller than a page)."""
    page = os.sysconf("SC_PAGE_SIZE")
    start = -(-t.data_ptr() // page) * page  # whole pages inside the tensor's own elements only
    end = (t.data_ptr() + t.numel() * t.element_size()) // page * page
    if end <= start or sys.platform != "linux" or not t.is_contiguous():
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_DONTNEED) == 0


def untouched_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero CPU tensor whose pages are taken only as they are written (an anonymous memory map:
    the kernel hands out zeroed pages on first touch). ``torch.zeros`` writes every page at once: a
    KV cache sized for every row's longest answer was resident whole before its first token, and a
    merge's new cache beside the old ones it is copied from. Freed (unmapped) with the tensor."""
    count = math.prod(shape)
    if count == 0:
        return torch.zeros(shape, dtype=dtype)
    buffer = mmap.mmap(-1, count * dtype.itemsize)
    return torch.frombuffer(buffer, dtype=dtype, count=count).view(shape)


def bf16_products(lib: ctypes.CDLL | None) -> bool:
    """Whether bf16 weights can run as bf16 products here: the library has them and the CPU has
    AVX-512 BF16. ``R1LITE_BF16_KERNELS=0`` keeps them in fp32 products (bf16-rounded weights)."""
    from r1lite.models import cpu_bf16_flags

    return (lib is not None and hasattr(lib, "r1_linear_bf16") and "avx512_bf16" in cpu_bf16_flags() and os.environ.get("R1LITE_BF16_KERNELS", "1") != "0")


class PackedWeight:
    """fp32 CPU weights [O_i, K], stacked along O, packed for :meth:`linear` (a copy: pack again
    after the weights change). ``kind``: "fp32"; "bf16", packed as bf16 pairs for bf16 products (the
    weights rounded to bf16, f(x) too; fp32 sums: gemm_bf16.c), where :func:`bf16_products` says
    the machine has them, K even; "int8", each row in blocks of 32 int8 values with an fp32 scale
    (llama.cpp's Q8_0; f(x) and the sums fp32: gemm_int8.c), K a multiple of 32. ``reuse``: a
    PackedWeight of the same shape and kind whose memory to pack into (a fresh 0.5 GB allocation
    costs ~0.2 s of page faults per sync for the 135M model)."""

    def __init__(self, parts: torch.Tensor | list[torch.Tensor], lib: ctypes.CDLL, reuse: PackedWeight | None = None,
                 kind: str = "fp32"):
        parts = [parts] if isinstance(parts, torch.Tensor) else list(parts)
        K = parts[0].shape[-1]
        if kind not in KINDS:
            raise ValueError(f"PackedWeight kind {kind!r}: one of {sorted(KINDS)}")
        if kind == "bf16" and (K % 2 or not hasattr(lib, "r1_linear_bf16")):
            raise ValueError(f"bf16 packing needs an even K (got {K}) and a library built with the bf16 products")
        if kind == "int8" and K % Q8_BLOCK:
            raise ValueError(f"int8 packing needs K a multiple of {Q8_BLOCK}, got {K}")
        for w in parts:
            if w.dtype != torch.float32 or w.device.type != "cpu" or w.dim() != 2 or w.shape[1] != K:
                raise ValueError(f"PackedWeight takes 2-D fp32 CPU tensors with {K} columns, got {w.dtype} {tuple(w.shape)} on {w.device}")
        parts = [w.detach().contiguous() for w in parts]
        self.lib, self.kind, self.bf16 = lib, kind, kind == "bf16"
        self.out_features, self.in_features = sum(w.shape[0] for w in parts), K
        if kind == "int8":  # int8 values [OP, K], then fp32 scales [OP, K / 32]
            size, dtype = self._q8_rows() * (K + K // Q8_BLOCK * 4), torch.int8
        else:  # 32-bit words
            size, dtype = -(-self.out_features // PANEL) * K * PANEL // (2 if self.bf16 else 1), torch.int32 if self.bf16 else torch.float32
        same = reuse is not None and (reuse.out_features, reuse.in_features, reuse.kind) == (self.out_features, K, kind)
        self.data = reuse.data if same else torch.empty(size, dtype=dtype)
        pointers = (ctypes.c_void_p * len(parts))(*[w.data_ptr() for w in parts])
        rows = (ctypes.c_long * len(parts))(*[w.shape[0] for w in parts])
        pack = {"fp32": lib.r1_pack6, "bf16": getattr(lib, "r1_pack6_bf16", None), "int8": lib.r1_pack_q8}[kind]
        pack(pointers, rows, len(parts), self.data.data_ptr(), self.out_features, K)

    def _q8_rows(self) -> int:
        """The rows an int8 weight stores: whole panels of 8 (zero rows at the end)."""
        return -(-self.out_features // Q8_PANEL) * Q8_PANEL

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows ``ids`` of the packed weight as fp32 [N, K] (bf16 packing: the bf16-rounded values):
        a tied embedding's lookups read the head's packed copy, so the decoder holds one, not two."""
        panels, K = -(-self.out_features // PANEL), self.in_features
        if self.kind == "int8":  # q * d, the weights the products stand for: values [OP/8, K, 8], scales [OP/8, K/32, 8]
            OP, nb = self._q8_rows(), K // Q8_BLOCK
            q = self.data[:OP * K].view(OP // Q8_PANEL, K, Q8_PANEL)[ids // Q8_PANEL, :, ids % Q8_PANEL].float()
            d = self.data[OP * K:].view(torch.float32).view(OP // Q8_PANEL, nb, Q8_PANEL)[ids // Q8_PANEL, :, ids % Q8_PANEL]
            return (q.view(len(ids), nb, Q8_BLOCK) * d[:, :, None]).view(len(ids), K)
        if not self.bf16:
            return self.data.view(panels, K, PANEL)[ids // PANEL, :, ids % PANEL]
        words = self.data.view(panels, K // 2, PANEL)[ids // PANEL, :, ids % PANEL]  # [N, K/2], elements 2k | 2k+1 << 16
        low, high = (words << 16).view(torch.float32), (words & -65536).view(torch.float32)
        return torch.stack((low, high), dim=-1).reshape(len(ids), K)

    def columns(self, n: int) -> int:
        """Columns a product with n columns of x computes, padding included (gemm.c, gemm_bf16.c;
        gemm_int8.c computes n)."""
        if self.kind == "int8":
            return n
        if self.bf16:
            return 16 if n <= 16 else -(-n // 32) * 32
        return 8 if n <= 8 else -(-n // 16) * 16

    def linear(self, x: torch.Tensor, prologue: str = "plain", norm: torch.Tensor | None = None, eps: float = 0.0,
               bias: torch.Tensor | None = None, into: torch.Tensor | None = None, transposed: bool = False) -> torch.Tensor:
        """``weight @ f(x) + bias`` for feature-major x [K, N] (fp32, contiguous).

        ``prologue``: "plain" (f = identity), "rmsnorm" (x * rsqrt(mean over K of x^2 + eps) * norm)
        or "swiglu" (x has 2K rows: silu(x[:K]) * x[K:]). The result is [O, N], or its transpose
        [N, O] with ``transposed``; with ``into`` (such a tensor) it is added to ``into`` in place.
        """
        rows, N = x.shape
        K = self.in_features
        if rows != (2 * K if prologue == "swiglu" else K) or not x.is_contiguous() or x.dtype != torch.float32:
            raise ValueError(f"x must be contiguous fp32 with {2 * K if prologue == 'swiglu' else K} rows, got {x.dtype} {tuple(x.shape)}")
        shape = (N, self.out_features) if transposed else (self.out_features, N)
        out = into if into is not None else torch.empty(shape)
        if tuple(out.shape) != shape or not out.is_contiguous():
            raise ValueError(f"into must be a contiguous {shape} tensor, got {tuple(out.shape)}")
        scratch = torch.empty(self.lib.r1_linear_work(K, N))  # f(x) and the norm's per-column factors
        for name, t, size in (("norm", norm, K), ("bias", bias, self.out_features)):
            if t is not None and (t.dtype != torch.float32 or not t.is_contiguous() or t.numel() != size):
                raise ValueError(f"{name} must be a contiguous fp32 vector of {size}, got {t.dtype} {tuple(t.shape)}")
        if prologue == "rmsnorm" and norm is None:
            raise ValueError("the rmsnorm prologue needs its norm weight")
        linear = {"fp32": self.lib.r1_linear, "bf16": getattr(self.lib, "r1_linear_bf16", None), "int8": self.lib.r1_linear_q8}[self.kind]
        linear(self.data.data_ptr(), self.out_features, K, x.data_ptr(), N, _PROLOGUES[prologue],
                           None if norm is None else norm.data_ptr(), eps, scratch.data_ptr(),
                           None if bias is None else bias.data_ptr(), out.data_ptr(), into is not None, transposed)
        return out


_PROLOGUES = {"plain": 0, "rmsnorm": 1, "swiglu": 2}


def attend(lib: ctypes.CDLL, qkv: torch.Tensor, heads: int, kv_heads: int, cos: torch.Tensor, sin: torch.Tensor,
           cache: torch.Tensor, pos: int, valid: torch.Tensor, shared: int = 0) -> torch.Tensor:
    """Grouped-query attention of T new tokens per sequence (T = 1: a decode step; more: prefill), fp32.

    ``cache`` [2, B, KV, L, D]; ``qkv`` [(H + 2 KV) * D, B * T]: the qkv projection, feature-major,
    column b * T + t for token t of sequence b. Applies rotate-half RoPE with ``cos``/``sin``
    [B * T, D] to queries and keys, writes keys and values at columns pos..pos + T of the cache, and
    token t attends causally over columns 0..pos + t where ``valid`` [B, >= pos + T] (bool) is true
    (a pad token attends to itself alone); returns [H * D, B * T] feature-major. Columns
    0..``shared`` hold the same keys and values in every row (a prompt prefix prefilled once): they
    are read from row 0, which stays in cache for all rows. The torch version (``gqa_attention``,
    ~25 small operations a layer) took ~3x as long for a batch-16 decode step and ~10x for a prefill.
    """
    B, D = cache.shape[1], cache.shape[-1]
    T = qkv.shape[1] // max(B, 1)
    shapes_ok = (cache.dim() == 5 and cache.shape[0] == 2 and cache.shape[2] == kv_heads and B > 0 and T > 0
                 and tuple(qkv.shape) == ((heads + 2 * kv_heads) * D, B * T) and heads % kv_heads == 0
                 and 0 <= pos and pos + T <= cache.shape[3] and 0 <= shared <= pos
                 and tuple(cos.shape) == tuple(sin.shape) == (B * T, D) and valid.shape[0] == B and valid.shape[1] >= pos + T)
    layout_ok = (qkv.is_contiguous() and cache.is_contiguous() and cos.is_contiguous() and sin.is_contiguous()
                 and valid.stride(1) == 1 and valid.dtype == torch.bool
                 and all(t.dtype == torch.float32 for t in (qkv, cache, cos, sin)))
    if not (shapes_ok and layout_ok and D % 8 == 0 and D <= 256):
        raise ValueError(f"attend: qkv {tuple(qkv.shape)}, cache {tuple(cache.shape)}, cos/sin {tuple(cos.shape)}, "
                         f"valid {tuple(valid.shape)} at position {pos} for {heads}/{kv_heads} heads: needs contiguous fp32, "
                         "a bool mask, a head size that is a multiple of 8 (<= 256) and the new tokens inside the cache")
    out = torch.empty(heads * D, B * T)
    lib.r1_attend(qkv.data_ptr(), B, T, heads, kv_heads, D, cos.data_ptr(), sin.data_ptr(), cache.data_ptr(),
                  cache.shape[-2], pos, shared, valid.data_ptr(), valid.stride(0), D ** -0.5, out.data_ptr())
    return out


def sample(lib: ctypes.CDLL, logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One token per row of fp32 ``logits`` [N, V], drawn from their softmax by inverting its
    cumulative distribution at ``u`` [N] (uniform in [0, 1)); -inf logits are never drawn."""
    N, V = logits.shape
    if logits.dtype != torch.float32 or u.dtype != torch.float32 or u.shape != (N,) or V == 0:
        raise ValueError(f"sample: logits {logits.dtype} {tuple(logits.shape)}, u {u.dtype} {tuple(u.shape)}: "
                         "needs fp32 logits [N, V] and fp32 u [N]")
    logits, u = logits.contiguous(), u.contiguous()
    out = torch.empty(N, dtype=torch.long)
    lib.r1_sample(logits.data_ptr(), N, V, u.data_ptr(), out.data_ptr())
    return out


class DecodeStep:
    """A whole decode step of a Llama-family model in one call of ``r1_decode_step``: per layer the
    qkv projection (RMS norm fused), :func:`attend`, the output projection into the residual,
    gate/up (RMS norm fused) and down (SwiGLU fused) into the residual; then the vocabulary head.
    The products and the attention are the ones the decoder calls one by one for prefill; one call
    instead of ~150 saves their Python and ctypes overhead (~15-40 us each, a few ms a step).

    ``layers``: per layer (qkv, o, gate_up, down) PackedWeights and (ln1, ln2, bqkv, bo, bgu, bd)
    fp32 vectors (biases may be None); the tensors must outlive this object (the decoder holds them).
    """

    def __init__(self, lib: ctypes.CDLL, layers: list[tuple[tuple[PackedWeight, ...], tuple]], head: PackedWeight,
                 final_norm: torch.Tensor, heads: int, kv_heads: int, head_dim: int, eps: float):
        self.lib = lib
        self.n_layers = len(layers)
        qkv, o, gu, down = layers[0][0]
        self.C, self.I, self.V = o.out_features, down.in_features, head.out_features
        self.H, self.KV, self.D, self.eps = heads, kv_heads, head_dim, eps
        for i, (ws, vs) in enumerate(layers):
            shapes = [(w.out_features, w.in_features) for w in ws]
            expected = [((heads + 2 * kv_heads) * head_dim, self.C), (self.C, heads * head_dim), (2 * self.I, self.C), (self.C, self.I)]
            sizes = [self.C, self.C, shapes[0][0], self.C, 2 * self.I, self.C]
            if shapes != expected or any(v is not None and (v.dtype != torch.float32 or not v.is_contiguous() or v.numel() != n)
                                         for v, n in zip(vs, sizes)):
                raise ValueError(f"DecodeStep: layer {i} has projections {shapes} and vectors "
                                 f"{[None if v is None else tuple(v.shape) for v in vs]}; expected {expected} and {sizes}")
        packed = [w for ws, _ in layers for w in ws] + [head]
        if len({w.kind for w in packed}) != 1:
            raise ValueError("DecodeStep: every weight must be packed alike (all fp32, all bf16 or all int8)")
        self.kind = head.kind
        self._keep = [layers, head, final_norm]
        self.weights = (ctypes.c_void_p * (4 * self.n_layers + 1))(
            *[w.data.data_ptr() for ws, _ in layers for w in ws], head.data.data_ptr())
        self.vectors = (ctypes.c_void_p * (6 * self.n_layers + 1))(
            *[None if v is None else v.data_ptr() for _, vs in layers for v in vs], final_norm.data_ptr())

    def __call__(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache: torch.Tensor, pos: int,
                 valid: torch.Tensor, shared: int = 0) -> torch.Tensor:
        """x [C, N] the embedded new tokens (updated in place: the residual stream), cos/sin [N, D],
        cache [layers, 2, N, KV, L, D], new keys at column ``pos``, ``valid`` and ``shared`` as in
        :func:`attend`. Returns the logits [N, V]."""
        N = x.shape[1]
        ok = (tuple(x.shape) == (self.C, N) and x.is_contiguous() and x.dtype == torch.float32
              and tuple(cache.shape[:5]) == (self.n_layers, 2, N, self.KV, cache.shape[4]) and cache.shape[5] == self.D
              and cache.is_contiguous() and cache.dtype == torch.float32 and 0 <= shared <= pos < cache.shape[4]
              and tuple(cos.shape) == tuple(sin.shape) == (N, self.D) and cos.is_contiguous() and sin.is_contiguous()
              and valid.dtype == torch.bool and valid.shape[0] == N and valid.shape[1] > pos and valid.stride(1) == 1)
        if not ok:
            raise ValueError(f"DecodeStep: x {tuple(x.shape)}, cache {tuple(cache.shape)}, cos/sin {tuple(cos.shape)}, "
                             f"valid {tuple(valid.shape)} at position {pos}: expected contiguous fp32 x [{self.C}, N], "
                             f"cache [{self.n_layers}, 2, N, {self.KV}, L, {self.D}], cos/sin [N, {self.D}], a bool mask")
        work = torch.empty(self.lib.r1_decode_work(self.C, self.H, self.KV, self.D, self.I, N))
        logits = torch.empty(N, self.V)
        self.lib.r1_decode_step(self.n_layers, self.C, self.H, self.KV, self.D, self.I, self.V, self.weights, self.vectors,
                                self.eps, self.D ** -0.5, x.data_ptr(), N, cos.data_ptr(), sin.data_ptr(), cache.data_ptr(),
                                cache.shape[4], pos, shared, valid.data_ptr(), valid.stride(0), work.data_ptr(), logits.data_ptr(),
                                KINDS[self.kind])
        return logits
