"""The CPU decoding kernels against PyTorch: projections with their fused prologues, attention,
and the fallback when the kernel cannot be built."""

import pytest
import torch
import torch.nn.functional as F

from r1lite.engine import kernels as cpu_kernels
from r1lite.models import gqa_attention

LIB = cpu_kernels.load()
needs_kernel = pytest.mark.skipif(LIB is None, reason="the CPU kernel cannot be built on this machine (see its message)")


def rms(x, w, eps):  # feature-major x [K, N]
    return x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + eps) * w[:, None]


@needs_kernel
@pytest.mark.parametrize("N", [1, 7, 16, 17, 40, 96, 200])  # 200: chunks of 64 and a last one of 16
@pytest.mark.parametrize("O,K", [(13, 24), (100, 40), (960, 576)])
def test_projection_matches_torch_for_every_prologue_and_output(O, K, N):
    g = torch.Generator().manual_seed(O * 1000 + K + N)
    w = torch.randn(O, K, generator=g)
    packed = cpu_kernels.PackedWeight(w, LIB)
    x = torch.randn(K, N, generator=g)
    gu = torch.randn(2 * K, N, generator=g) * 4
    norm, bias = torch.rand(K, generator=g) + 0.5, torch.randn(O, generator=g)
    close = dict(atol=1e-4 * K ** 0.5 * 4, rtol=1e-4)
    torch.testing.assert_close(packed.linear(x), w @ x, **close)
    torch.testing.assert_close(packed.linear(x, "rmsnorm", norm, 1e-5), w @ rms(x, norm, 1e-5), **close)
    torch.testing.assert_close(packed.linear(gu, "swiglu"), w @ (F.silu(gu[:K]) * gu[K:]), **close)
    torch.testing.assert_close(packed.linear(x, bias=bias, transposed=True), (w @ x + bias[:, None]).t(), **close)
    residual = torch.randn(O, N, generator=g)
    expected = residual + w @ x + bias[:, None]
    out = packed.linear(x, bias=bias, into=residual)
    assert out is residual
    torch.testing.assert_close(residual, expected, **close)


needs_bf16 = pytest.mark.skipif(not cpu_kernels.bf16_products(LIB),
                                reason="bf16 products need AVX-512 BF16 and a compiler that knows it")


def bf16(t):
    return t.bfloat16().double()


@pytest.mark.parametrize("packing", [pytest.param("fp32", marks=needs_kernel), pytest.param("bf16", marks=needs_bf16)])
def test_rows_of_a_packed_weight_are_its_rows_for_tied_embedding_lookups(packing):
    w = torch.randn(13, 24, generator=torch.Generator().manual_seed(3))  # 13 rows: a last panel of one row
    packed = cpu_kernels.PackedWeight([w[:5], w[5:]], LIB, kind=packing)
    ids = torch.tensor([12, 0, 7, 5, 6, 12, 11])
    expected = (w.bfloat16().float() if packing == "bf16" else w)[ids]
    assert torch.equal(packed.rows(ids), expected)


@needs_bf16
@pytest.mark.parametrize("N", [1, 7, 16, 17, 40, 96, 200])  # 16 a tile of its own, 200: chunks of 64 and a last one of 8
@pytest.mark.parametrize("O,K", [(13, 24), (100, 40), (960, 576)])
def test_bf16_projection_is_the_product_of_bf16_weights_and_bf16_inputs(O, K, N):
    """Each product's inputs rounded to bf16 (the weights at packing, f(x) after its fp32
    prologue), summed in fp32: against the same rounding with the product in fp64."""
    g = torch.Generator().manual_seed(O * 1000 + K + N)
    w = torch.randn(O, K, generator=g)
    packed = cpu_kernels.PackedWeight(w, LIB, kind="bf16")
    x = torch.randn(K, N, generator=g)
    gu = torch.randn(2 * K, N, generator=g) * 4
    norm, bias = torch.rand(K, generator=g) + 0.5, torch.randn(O, generator=g)
    close = dict(atol=1e-5 * K ** 0.5 * 4, rtol=1e-4)
    wb = bf16(w)

    def expect(fx):
        return (wb @ bf16(fx.double().float())).float()

    torch.testing.assert_close(packed.linear(x), expect(x), **close)
    # the norm's fp32 result rounds to bf16; one ulp of bf16 apart in a few inputs is allowed for
    torch.testing.assert_close(packed.linear(x, "rmsnorm", norm, 1e-5), expect(rms(x, norm, 1e-5)),
                               atol=1e-5 * K ** 0.5 * 4 + 2 ** -7 * 4, rtol=1e-2)
    torch.testing.assert_close(packed.linear(gu, "swiglu"), expect(F.silu(gu[:K]) * gu[K:]),
                               atol=1e-5 * K ** 0.5 * 4 + 2 ** -7 * 16, rtol=1e-2)
    torch.testing.assert_close(packed.linear(x, bias=bias, transposed=True), (expect(x) + bias[:, None]).t(), **close)
    residual = torch.randn(O, N, generator=g)
    expected = residual + expect(x) + bias[:, None]
    assert packed.linear(x, bias=bias, into=residual) is residual
    torch.testing.assert_close(residual, expected, **close)
    assert packed.columns(N) == (16 if N <= 16 else -(-N // 32) * 32)


@needs_bf16
@pytest.mark.parametrize("O", [100, 49, 5])  # one column: 12 rows a vector, 4 at once; an odd last panel; one panel
def test_bf16_columns_do_not_depend_on_their_place_in_the_batch(O):
    g = torch.Generator().manual_seed(5)
    packed = cpu_kernels.PackedWeight(torch.randn(O, 64, generator=g), LIB, kind="bf16")
    x, norm, bias = torch.randn(64, 70, generator=g), torch.randn(64, generator=g), torch.randn(O, generator=g)
    whole = packed.linear(x)
    for cols in ([0], [3, 9], list(range(5, 22)), list(range(33, 70))):
        assert torch.equal(packed.linear(x[:, cols].contiguous()), whole[:, cols])
    head = packed.linear(x, "rmsnorm", norm, 1e-5, bias, transposed=True)  # as the vocabulary head runs
    for n in (0, 17, 69):
        assert torch.equal(packed.linear(x[:, n:n + 1].contiguous(), "rmsnorm", norm, 1e-5, bias, transposed=True), head[n:n + 1])


def q8_0(w: torch.Tensor) -> torch.Tensor:
    """llama.cpp's Q8_0 of each row, dequantized: blocks of 32, d = max |w| / 127, q = w / d rounded
    half away from zero (C's roundf; computed exactly in fp64), the weights q * d in fp32."""
    blocks = w.view(w.shape[0], -1, 32)
    d = blocks.abs().amax(-1, keepdim=True) / 127
    v = (blocks * torch.where(d > 0, 1 / d, torch.zeros_like(d))).double()  # the kernel multiplies by 1/d
    q = (v.sign() * (v.abs() + 0.5).floor()).clamp(-127, 127).float()
    return (q * d).view_as(w)


@needs_kernel
@pytest.mark.parametrize("N", [1, 2, 3, 6, 7, 16, 17, 40, 96, 200])  # <= 6: pairs from int8; more: 8, 16, chunks of 64
@pytest.mark.parametrize("O,K", [(13, 32), (100, 64), (960, 576)])  # panels of 8 in fours and threes, a last short one
def test_int8_projection_is_the_product_of_q8_0_weights_and_fp32_inputs(O, K, N):
    g = torch.Generator().manual_seed(O * 1000 + K + N)
    w = torch.randn(O, K, generator=g) * torch.rand(O, 1, generator=g)  # rows of different scales
    packed = cpu_kernels.PackedWeight([w[:5], w[5:]], LIB, kind="int8")
    wq = q8_0(w).double()
    assert torch.equal(packed.rows(torch.arange(O)), wq.float())  # the quantization is Q8_0's, to the bit
    x = torch.randn(K, N, generator=g)
    gu = torch.randn(2 * K, N, generator=g) * 4
    norm, bias = torch.rand(K, generator=g) + 0.5, torch.randn(O, generator=g)
    close = dict(atol=1e-5 * K ** 0.5 * 4, rtol=1e-4)

    def expect(fx):
        return (wq @ fx.double()).float()

    torch.testing.assert_close(packed.linear(x), expect(x), **close)
    torch.testing.assert_close(packed.linear(x, "rmsnorm", norm, 1e-5), expect(rms(x, norm, 1e-5)), **close)
    torch.testing.assert_close(packed.linear(gu, "swiglu"), expect(F.silu(gu[:K]) * gu[K:]), **close)
    torch.testing.assert_close(packed.linear(x, bias=bias, transposed=True), (expect(x) + bias[:, None]).t(), **close)
    residual = torch.randn(O, N, generator=g)
    expected = residual + expect(x) + bias[:, None]
    assert packed.linear(x, bias=bias, into=residual) is residual
    torch.testing.assert_close(residual, expected, **close)
    assert packed.columns(N) == N


@needs_kernel
@pytest.mark.parametrize("kind", ["fp32", "int8"])
@pytest.mark.parametrize("prologue", ["plain", "rmsnorm", "swiglu"])
def test_columns_do_not_depend_on_their_place_in_the_batch(kind, prologue):
    """One column (its own prologue code), a few (int8: pairs straight from the int8 values) and
    many (panels) compute each column alike: a sequence decodes to the same bits alone and in any
    batch."""
    g = torch.Generator().manual_seed(5)
    packed = cpu_kernels.PackedWeight(torch.randn(100, 96, generator=g), LIB, kind=kind)  # K = 96: not a power of 2
    x = torch.randn(192 if prologue == "swiglu" else 96, 70, generator=g) * 3
    norm = torch.rand(96, generator=g) + 0.5
    whole = packed.linear(x, prologue, norm if prologue == "rmsnorm" else None, 1e-5)
    for cols in ([0], [69], [3, 9], [1, 2, 4], list(range(5, 22)), list(range(33, 70))):
        part = packed.linear(x[:, cols].contiguous(), prologue, norm if prologue == "rmsnorm" else None, 1e-5)
        assert torch.equal(part, whole[:, cols]), cols
    with pytest.raises(ValueError, match="multiple of 32"):
        cpu_kernels.PackedWeight(torch.randn(8, 48), LIB, kind="int8")


@needs_kernel
@pytest.mark.parametrize("tied", [True, False])
def test_an_int8_decoder_gives_the_logits_of_its_q8_0_weights(tied):
    """Prefill and decode steps (the whole step in one call) of int8 weights: transformers' logits
    for the same model with every projection and the head replaced by its Q8_0 weights; a tied
    embedding reads the head's int8 copy."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from r1lite.engine import LlamaDecoder

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                         tie_word_embeddings=tied)).eval()
    decoder = LlamaDecoder(model, torch.float32, int8=True)
    assert decoder._step is not None and decoder.weights == "int8" and (decoder.embed is None) == tied
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(q8_0(module.weight))
    B, P, new = 5, 7, 4
    tokens = torch.randint(0, 300, (B, P + new))
    mask = torch.ones(B, P + new, dtype=torch.long)
    mask[1, :3] = 0  # a left-padded row
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache, valid = decoder.new_cache(B, P + new), mask.bool()
    torch.testing.assert_close(decoder.forward(cache, tokens[:, :P], positions[:, :P], 0, valid),
                               model(input_ids=tokens[:, :P], attention_mask=mask[:, :P], position_ids=positions[:, :P]).logits[:, -1].detach(),
                               atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        ref = model(input_ids=tokens, attention_mask=mask, position_ids=positions).logits
    for t in range(P, P + new):
        logits = decoder.forward(cache, tokens[:, t:t + 1], positions[:, t:t + 1], t, valid)
        torch.testing.assert_close(logits, ref[:, t], atol=1e-4, rtol=1e-4)
    bad = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=48, intermediate_size=128, num_hidden_layers=1,
                                       num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(ValueError, match="multiples of 32"):
        LlamaDecoder(bad, torch.float32, int8=True)


@needs_kernel
def test_packing_stacks_parts_and_reuses_memory():
    g = torch.Generator().manual_seed(3)
    q, k, v = torch.randn(10, 24, generator=g), torch.randn(4, 24, generator=g), torch.randn(5, 24, generator=g)
    x = torch.randn(24, 9, generator=g)
    first = cpu_kernels.PackedWeight([q, k, v], LIB)
    torch.testing.assert_close(first.linear(x), torch.cat([q, k, v]) @ x, atol=1e-4, rtol=1e-4)
    again = cpu_kernels.PackedWeight([2 * q, k, v], LIB, reuse=first)
    assert again.data.data_ptr() == first.data.data_ptr()
    torch.testing.assert_close(again.linear(x), torch.cat([2 * q, k, v]) @ x, atol=1e-4, rtol=1e-4)
    other = cpu_kernels.PackedWeight([q], LIB, reuse=again)  # another shape: fresh memory
    assert other.data.data_ptr() != again.data.data_ptr()


@needs_kernel
def test_swiglu_exp_holds_over_the_whole_float_range():
    """silu(g) * u with g from -100 to 100: the vectorised exp is clamped, never inf or nan."""
    K = 1
    w = torch.ones(1, K)
    packed = cpu_kernels.PackedWeight(w, LIB)
    g = torch.linspace(-100, 100, 96)
    gu = torch.stack([g, torch.ones(96)])
    ours = packed.linear(gu.contiguous(), "swiglu")[0]
    torch.testing.assert_close(ours, F.silu(g), atol=1e-6, rtol=1e-6)


@needs_kernel
def test_projection_rejects_what_it_cannot_compute():
    packed = cpu_kernels.PackedWeight(torch.randn(8, 4), LIB)
    with pytest.raises(ValueError, match="rows"):
        packed.linear(torch.randn(5, 3))
    with pytest.raises(ValueError, match="fp32"):
        cpu_kernels.PackedWeight(torch.randn(8, 4, dtype=torch.bfloat16), LIB)
    with pytest.raises(ValueError, match="bias must be"):
        packed.linear(torch.randn(4, 3), bias=torch.randn(7))
    with pytest.raises(ValueError, match="norm weight"):
        packed.linear(torch.randn(4, 3), "rmsnorm")
    qkv, cache = torch.randn(3 * 8, 2), torch.zeros(2, 2, 1, 5, 8)
    cos = sin = torch.ones(2, 8)
    with pytest.raises(ValueError, match="inside the cache"):
        cpu_kernels.attend(LIB, qkv, 1, 1, cos, sin, cache, 5, torch.ones(2, 6, dtype=torch.bool))


def reference_attention(qkv, H, KV, cos, sin, cache, pos, valid):
    """Attention of T new tokens per row with PyTorch: RoPE, cache write, causal gqa_attention
    over 0..pos + t (a pad query sees itself)."""
    D, B = cache.shape[-1], cache.shape[1]
    T = qkv.shape[1] // B
    t = qkv.t().reshape(B, T, H + 2 * KV, D).transpose(1, 2)
    q, k, v = t.split([H, KV, KV], dim=1)
    c, s = cos.reshape(B, 1, T, D), sin.reshape(B, 1, T, D)

    def rope(x):
        half = D // 2
        return x * c + torch.cat([-x[..., half:], x[..., :half]], -1) * s

    end = pos + T
    cache[0, :, :, pos:end] = rope(k)
    cache[1, :, :, pos:end] = v
    causal = torch.ones(T, end, dtype=torch.bool).tril(pos)
    own = torch.zeros(T, end, dtype=torch.bool)
    own[torch.arange(T), pos + torch.arange(T)] = True
    mask = (causal[None] & valid[:, None, :end]) | own[None]
    o = gqa_attention(rope(q), cache[0, :, :, :end], cache[1, :, :, :end], mask[:, None])
    return o.transpose(1, 2).reshape(B * T, H * D).t()


@needs_kernel
@pytest.mark.parametrize("shared", [0, 11])  # 11: a prefix all rows hold, read from row 0
@pytest.mark.parametrize("H,KV,D", [(9, 3, 64), (4, 4, 32), (4, 2, 128)])
@pytest.mark.parametrize("N,T", [(1, 1), (5, 1), (16, 1), (1, 9), (3, 6)])  # T > 1: prefill, causal
def test_attention_matches_torch(H, KV, D, N, T, shared):
    g = torch.Generator().manual_seed(H * 100 + D + N + T)
    L, pos = 40, 29
    qkv = torch.randn((H + 2 * KV) * D, N * T, generator=g)
    angles = torch.rand(N * T, D // 2, generator=g) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    cache = torch.randn(2, N, KV, L, D, generator=g)
    valid = torch.rand(N, L, generator=g) > 0.3  # left padding and holes: masked keys, pad queries
    valid[:, pos] = True
    cache[:, :, :, :shared] = cache[:, :1, :, :shared]
    valid[:, :shared] = True
    ours_cache, ref_cache = cache.clone(), cache.clone()
    ours = cpu_kernels.attend(LIB, qkv, H, KV, cos, sin, ours_cache, pos, valid, shared)
    ref = reference_attention(qkv, H, KV, cos, sin, ref_cache, pos, valid)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours_cache, ref_cache, atol=1e-6, rtol=1e-6)


@needs_kernel
@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # qwen2: q/k/v biases, two query heads per kv head
def test_decode_step_in_one_call_matches_transformers(arch):
    """Prefill (the projections one by one) then decode steps (the whole step in one call) give the
    logits of transformers' forward over the whole sequence, padding included."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    from r1lite.engine import LlamaDecoder

    torch.manual_seed(0)
    shape = dict(vocab_size=300, hidden_size=64, intermediate_size=136, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=64)
    model = (LlamaForCausalLM(LlamaConfig(**shape)) if arch == "llama" else Qwen2ForCausalLM(Qwen2Config(**shape))).eval()
    if arch == "qwen2":
        for layer in model.model.layers:
            torch.nn.init.normal_(layer.self_attn.q_proj.bias, std=0.5)
    decoder = LlamaDecoder(model, torch.float32)
    assert decoder._step is not None
    B, P, new = 5, 7, 4
    tokens = torch.randint(0, 300, (B, P + new))
    mask = torch.ones(B, P + new, dtype=torch.long)
    mask[1, :3] = 0  # a left-padded row
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = decoder.new_cache(B, P + new)
    valid = mask.bool()
    decoder.forward(cache, tokens[:, :P], positions[:, :P], 0, valid)
    with torch.no_grad():
        ref = model(input_ids=tokens, attention_mask=mask, position_ids=positions).logits
    for t in range(P, P + new):
        logits = decoder.forward(cache, tokens[:, t:t + 1], positions[:, t:t + 1], t, valid)
        torch.testing.assert_close(logits, ref[:, t], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="DecodeStep"):
        decoder._step(torch.randn(64, B), torch.ones(B, 16), torch.ones(B, 16), cache, P + new, valid)


def test_an_unbuildable_kernel_falls_back_and_says_why(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cpu_kernels, "_tried", False)
    monkeypatch.setattr(cpu_kernels, "_lib", None)
    monkeypatch.setenv("R1LITE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "/bin/false")
    assert cpu_kernels.load() is None
    err = capsys.readouterr().err
    if LIB is not None:  # on a machine that can build it, the reason is the compiler we broke
        assert "/bin/false" in err and "PyTorch's matmul" in err
    assert not list(tmp_path.glob("kernels/*.so"))  # no half-written library left behind
    assert cpu_kernels.load() is None and capsys.readouterr().err == ""  # said once


def test_kernels_can_be_turned_off(monkeypatch, capsys):
    monkeypatch.setattr(cpu_kernels, "_tried", False)
    monkeypatch.setattr(cpu_kernels, "_lib", None)
    monkeypatch.setenv("R1LITE_CPU_KERNELS", "0")
    assert cpu_kernels.load() is None
    assert capsys.readouterr().err == ""


@needs_kernel
def test_a_compiler_without_avx512_bf16_still_builds_the_fp32_kernels(monkeypatch, tmp_path):
    """The bf16 products need a compiler that knows AVX-512 BF16; where it does not, the library is
    built without them and bf16 weights run as fp32 products of the rounded weights."""
    real = cpu_kernels._compile

    def old_compiler(cc, flags, code, torch_lib):
        if cpu_kernels.NO_BF16 not in flags:
            raise cpu_kernels._Unavailable("error: attribute(target(\"avx512bf16\")) is unknown")
        return real(cc, flags, code, torch_lib)

    monkeypatch.setenv("R1LITE_CACHE", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "_compile", old_compiler)
    lib = cpu_kernels._build()
    assert not hasattr(lib, "r1_linear_bf16") and not cpu_kernels.bf16_products(lib)
    w, x = torch.randn(20, 16), torch.randn(16, 5)
    torch.testing.assert_close(cpu_kernels.PackedWeight(w, lib).linear(x), w @ x, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="bf16 products"):
        cpu_kernels.PackedWeight(w, lib, kind="bf16")


def test_bf16_products_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("R1LITE_BF16_KERNELS", "0")
    assert not cpu_kernels.bf16_products(LIB)


@pytest.mark.skipif(cpu_kernels.sys.platform != "linux", reason="reads the resident set from /proc/self/status")
def test_untouched_zeros_take_their_pages_only_as_they_are_written():
    """A KV cache sized for every row's longest answer is resident as its columns fill, not at once:
    128 MiB of zeros cost nothing until written, a written quarter costs a quarter, and they are
    handed back with the tensor."""
    from r1lite.meter.memory import status_mib

    before = status_mib("VmRSS")
    t = cpu_kernels.untouched_zeros((32, 2**20), torch.float32)
    assert t.is_contiguous() and t.shape == (32, 2**20) and t.dtype == torch.float32
    assert status_mib("VmRSS") - before < 16
    t[:8] = 1.0
    assert 24 < status_mib("VmRSS") - before < 48
    assert t[:8].sum().item() == 8 * 2**20 and not t[8:12].any()
    del t
    assert status_mib("VmRSS") - before < 16


@needs_kernel
@pytest.mark.parametrize("weights,dtype", [("fp32", torch.float32), ("fp32", torch.bfloat16), ("int8", torch.float32),
                                           pytest.param("bf16", torch.bfloat16, marks=needs_bf16)])
def test_a_decoder_packs_each_weight_from_the_model_without_a_second_copy(weights, dtype, monkeypatch):
    """Each projection's packed weight is the packing of the weight as the rollout precision holds
    it, and where the packing itself rounds (bf16 pairs) or reads fp32 (fp32, int8) it reads the
    model's own tensor: a cast copy of the vocabulary head was the highest point of loading a model
    to serve. fp32 products of bf16-rounded weights (no bf16 products) still pack the rounded cast."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from r1lite.engine import LlamaDecoder

    if weights == "fp32" and dtype == torch.bfloat16:
        monkeypatch.setenv("R1LITE_BF16_KERNELS", "0")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    read, pack = [], cpu_kernels.PackedWeight.__init__
    monkeypatch.setattr(cpu_kernels.PackedWeight, "__init__",
                        lambda self, parts, *a, **k: read.extend(p.data_ptr() for p in parts) or pack(self, parts, *a, **k))
    decoder = LlamaDecoder(model, dtype, int8=weights == "int8")
    assert decoder.weights == weights
    own = {p.data_ptr() for p in model.parameters()}
    assert (set(read) <= own) == (dtype == torch.float32 or weights == "bf16") and model.lm_head.weight.data_ptr() in own
    monkeypatch.setattr(cpu_kernels.PackedWeight, "__init__", pack)
    layer = model.model.layers[1]
    for linears, projection in (((layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj), decoder.layers[1]["wqkv"]),
                                ((layer.mlp.down_proj,), decoder.layers[1]["wd"]), ((model.lm_head,), decoder.head)):
        cast = [lin.weight.detach().to(dtype).float() for lin in linears]
        assert torch.equal(projection.packed.data, cpu_kernels.PackedWeight(cast, LIB, kind=weights).data)
