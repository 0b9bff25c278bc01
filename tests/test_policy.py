"""Completion log-probs with shared prompts equal a plain transformers forward, values and gradients."""

import pytest
import torch

from r1lite.models import load_model, resolve_runtime
from r1lite.train.policy import (
    CHUNK_POSITIONS,
    completion_logprobs,
    head_logprobs,
    make_group_batch,
)

FP32 = resolve_runtime("cpu", "fp32")


def reference(model, prompts, group, completions):
    """Each (prompt, completion) through the transformers forward, one row at a time."""
    out = []
    for g, c in zip(group, completions):
        ids = torch.tensor([prompts[g] + c])
        logp = model(ids).logits[0].float().log_softmax(-1)
        start = len(prompts[g]) - 1
        out.append(torch.stack([logp[start + t, tok] for t, tok in enumerate(c)]))
    return out


@pytest.mark.parametrize("spec", ["tiny", pytest.param("default", marks=pytest.mark.slow)])
def test_grouped_logprobs_and_gradients_match_transformers(spec):
    model, tokenizer = load_model(spec, FP32)
    torch.manual_seed(0)
    prompts = [tokenizer.encode(t) for t in ["<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
                                              "<|im_start|>user\nHi there, how are you today?<|im_end|>\n<|im_start|>assistant\n"]]
    group = [0, 0, 0, 1, 1]
    completions = [torch.randint(0, 1000, (n,)).tolist() for n in (5, 9, 3, 7, 1)]
    ref = reference(model, prompts, group, completions)
    sum(r.sum() for r in ref).backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()

    batch = make_group_batch(prompts, group, completions, tokenizer.pad_token_id)
    assert batch.prefix_ids.tolist() == prompts[0][:len(batch.prefix_ids)] and len(batch.prefix_ids) >= 3  # "<|im_start|>user\n"
    logp, entropy = completion_logprobs(model, batch, with_entropy=True)
    (logp * batch.completion_mask).sum().backward()
    for i, c in enumerate(completions):
        torch.testing.assert_close(logp[i, :len(c)], ref[i], atol=1e-4, rtol=1e-4)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref_grads[n], atol=1e-4 * ref_grads[n].abs().max().item() + 1e-8, rtol=1e-3)
    assert (entropy[batch.completion_mask.bool()] > 0).all()


def test_the_prefix_all_prompts_share_runs_once():
    """Split off once, each prompt keeping at least one token of its own; prompts that share
    nothing (or a batch of one prompt) keep their whole tokens."""
    batch = make_group_batch([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]], [0, 1, 2], [[7], [8], [9]], pad_id=0)
    assert batch.prefix_ids.tolist() == [1, 2] and batch.prompt_ids.tolist() == [[3, 4], [0, 5], [0, 3]]
    assert batch.tokens == 2 + 4 + 3  # the prefix once, each prompt's own tokens, the completions
    assert batch.rows(slice(1, 3)).prefix_ids.tolist() == [1, 2]
    assert make_group_batch([[1, 2, 3]], [0], [[4]], pad_id=0).prefix_ids.numel() == 0
    assert make_group_batch([[1, 2], [3, 2]], [0, 1], [[4], [4]], pad_id=0).prefix_ids.numel() == 0


@pytest.mark.parametrize("prompts", [[[1, 5, 9, 4], [2, 3]], [[1, 5, 9, 4, 6], [1, 5, 2], [1, 5, 9, 8]]],
                         ids=["nothing-shared", "shared-prefix"])
def test_logprobs_and_gradients_with_and_without_a_shared_prefix_match_one_row_at_a_time(prompts):
    model, _ = load_model("tiny", FP32)
    group = [0, 1, 1] + [2] * (len(prompts) > 2)
    completions = [[7, 8, 6], [5], [9, 9], [3, 3, 3, 3]][:len(group)]
    ref = reference(model, prompts, group, completions)
    sum(r.sum() for r in ref).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    batch = make_group_batch(prompts, group, completions, pad_id=0)
    logp, _ = completion_logprobs(model, batch)
    (logp * batch.completion_mask).sum().backward()
    for i, c in enumerate(completions):
        torch.testing.assert_close(logp[i, :len(c)], ref[i], atol=1e-5, rtol=1e-5)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], atol=1e-4 * expected[n].abs().max().item() + 1e-8, rtol=1e-3, msg=n)


def test_sub_batches_keep_only_their_prompts_and_widths():
    batch = make_group_batch([[1, 2, 3], [4, 5], [6]], [0, 0, 1, 2], [[7, 8, 9], [7], [8, 8], [9]], pad_id=0)
    sub = batch.rows(slice(2, 4))
    assert sub.group.tolist() == [0, 1] and sub.prompt_ids.tolist() == [[4, 5], [0, 6]]
    assert sub.completion_ids.tolist() == [[8, 8], [9, 0]]


@pytest.mark.parametrize("temperature", [1.0, 0.6])  # 0.6: the log-probs of the distribution sampled at T
def test_head_logprobs_across_chunks_match_log_softmax(temperature):
    torch.manual_seed(0)
    n = CHUNK_POSITIONS + 37  # more than one chunk
    hidden = torch.randn(1, n, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (1, n))
    logp, entropy = head_logprobs(hidden, weight, targets, with_entropy=True, temperature=temperature)
    full = (hidden @ weight.t() / temperature).log_softmax(-1)
    expected = full.gather(-1, targets[..., None]).squeeze(-1)
    torch.testing.assert_close(logp.double(), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy.double(), -(full.exp() * full).sum(-1), atol=1e-4, rtol=1e-4)
    g = torch.randn(1, n, dtype=torch.float64)
    gh, gw = torch.autograd.grad((logp * g).sum(), (hidden, weight))
    eh, ew = torch.autograd.grad((expected * g).sum(), (hidden, weight))
    torch.testing.assert_close(gh.double(), eh, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gw.double(), ew, atol=1e-4, rtol=1e-4)
    # an entropy bonus trains through the entropy: its gradient, alone and beside the log-probs'
    b = torch.randn(1, n, dtype=torch.float64)
    for wl in (0.0, 1.0):
        logp, entropy = head_logprobs(hidden, weight, targets, with_entropy=True, temperature=temperature)
        gh, gw = torch.autograd.grad((logp * g * wl).sum() + (entropy * b).sum(), (hidden, weight))
        full = (hidden @ weight.t() / temperature).log_softmax(-1)
        expected = full.gather(-1, targets[..., None]).squeeze(-1)
        eh, ew = torch.autograd.grad((expected * g * wl).sum() - ((full.exp() * full).sum(-1) * b).sum(),
                                     (hidden, weight))
        torch.testing.assert_close(gh.double(), eh, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(gw.double(), ew, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tied", [True, False])
def test_embedding_gradient_is_dense_and_exact_tied_or_not(tied):
    """The tied embedding takes a sparse gradient that lands in the head's dense one; an untied
    embedding keeps the dense path. Either way the weights get the reference gradient."""
    from transformers import LlamaForCausalLM

    from r1lite.packaged import tiny_config

    _, tokenizer = load_model("tiny", FP32)
    cfg = tiny_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    cfg.tie_word_embeddings = tied
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    prompts, group, completions = [[1, 5, 9, 4], [2, 3]], [0, 1, 1], [[7, 8, 6], [5], [9, 9]]
    sum(r.sum() for r in reference(model, prompts, group, completions)).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    batch = make_group_batch(prompts, group, completions, pad_id=0)
    (completion_logprobs(model, batch)[0] * batch.completion_mask).sum().backward()
    for n, p in model.named_parameters():
        assert p.grad.layout == torch.strided, n
        torch.testing.assert_close(p.grad, expected[n], atol=1e-4 * expected[n].abs().max().item() + 1e-8, rtol=1e-3, msg=n)


@pytest.mark.parametrize("prompts", [[[1, 5, 9, 4, 7, 7], [2, 3]], [[1, 5, 9, 4, 7, 7], [1, 5, 9, 3]]],
                         ids=["nothing-shared", "shared-prefix"])
@pytest.mark.parametrize("backward", [False, True])
def test_pass_flops_match_torch_flop_counter(backward, prompts):
    """The FLOPs the trainer meters for a train forward (and backward) are what PyTorch counts."""
    from torch.utils.flop_counter import FlopCounterMode

    from r1lite.train.policy import pass_flops

    model, tokenizer = load_model("tiny", FP32)
    batch = make_group_batch(prompts, [0, 0, 1, 1], [[7, 8, 6, 1], [5], [9, 9, 3], [4, 4, 4, 4, 4]], pad_id=0)
    with FlopCounterMode(display=False) as counter:
        logp, _ = completion_logprobs(model, batch)
        if backward:
            (logp * batch.completion_mask).sum().backward()
    assert pass_flops(model, batch, backward) == pytest.approx(counter.get_total_flops(), rel=0.05)


@pytest.mark.parametrize("spec", ["tiny", "tiny-gemma3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_checkpointing_gives_the_same_logprobs_and_gradients_bit_for_bit(spec, dtype):
    """Each decoder layer recomputed in the backward pass (the Llama path's LayerPass, the
    transformers forward's own layers for Gemma) runs the same operations on the same inputs: the
    log-probs and every gradient are identical, in fp32 and under bf16 autocast; and it keeps less."""
    from r1lite.train.policy import Policy

    model, tokenizer = load_model(spec, FP32)
    torch.manual_seed(0)
    prompts = [tokenizer.encode(t) for t in ["Q: what is 2+2? A:", "Q: name a colour, any colour you like. A:"]]
    group = [0, 0, 1, 1]
    completions = [torch.randint(0, 1000, (n,)).tolist() for n in (5, 9, 3, 7)]
    batch = make_group_batch(prompts, group, completions, tokenizer.pad_token_id)
    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)
    results = []
    for checkpointing in (False, True):
        policy = Policy(model, 1.0, checkpointing)
        model.zero_grad(set_to_none=True)
        with autocast:
            logp, entropy = policy(batch, with_entropy=True)
        ((logp * batch.completion_mask).sum() + 0.1 * entropy.sum()).backward()
        saved, weights = [], {tuple(sorted(p.shape)) for p in model.parameters()}

        def keep(t):  # activations the layers keep for the backward pass (not weights, their views nor bf16 casts)
            saved.append(0 if tuple(sorted(t.shape)) in weights else t.numel())
            return t
        with autocast, torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            policy.hidden(batch)
        results.append((logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                        sum(saved)))
    (plain, plain_grads, plain_saved), (ckpt, ckpt_grads, ckpt_saved) = results
    assert torch.equal(plain, ckpt)
    assert plain_grads.keys() == ckpt_grads.keys() and len(plain_grads) > 5
    for name, grad in plain_grads.items():
        assert torch.equal(grad, ckpt_grads[name]), name
    assert ckpt_saved < plain_saved / 3, (ckpt_saved, plain_saved)
