"""Model specs, the embedded model's cache and tokenizer, device and dtype resolution."""

import pytest
import torch

from r1lite.errors import UsageError
from r1lite.models import load_model, load_tokenizer, resolve_runtime
from r1lite.packaged import (
    TURN_END,
    check_special_tokens,
    embedded_checkpoint,
    stop_token_ids,
)


def test_runtime_says_why():
    rt = resolve_runtime("cpu", "auto")
    assert rt.device.type == "cpu" and rt.dtype in (torch.float32, torch.bfloat16)
    assert "bf16" in rt.reason
    assert resolve_runtime("cpu", "fp32").dtype == torch.float32
    with pytest.raises(UsageError, match="--dtype fp8"):
        resolve_runtime("cpu", "fp8")
    with pytest.raises(UsageError, match="--device tpu"):
        resolve_runtime("tpu", "auto")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without a GPU")
def test_asking_for_cuda_without_a_gpu_fails_loudly():
    with pytest.raises(UsageError, match="no CUDA GPU"):
        resolve_runtime("cuda", "auto")


def test_embedded_model_is_a_plain_llama_with_chatml_tokens():
    path = embedded_checkpoint()
    assert (path / "model.safetensors").exists()
    model, tokenizer = load_model("default", resolve_runtime("cpu", "fp32"))
    assert type(model).__name__ == "LlamaForCausalLM"
    assert getattr(model, "hf_quantizer", None) is None and not getattr(model.config, "quantization_config", None)
    assert tokenizer.eos_token == TURN_END and tokenizer.pad_token is not None
    assert tokenizer.convert_tokens_to_ids(TURN_END) in stop_token_ids(tokenizer, model)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008


def test_wrong_eos_from_a_gguf_tokenizer_is_fixed():
    tokenizer = load_tokenizer("default")
    tokenizer.eos_token = "<|endoftext|>"
    tokenizer.pad_token = None
    check_special_tokens(tokenizer)
    assert tokenizer.eos_token == TURN_END and tokenizer.pad_token == TURN_END


def test_tiny_model_is_seeded_and_small():
    rt = resolve_runtime("cpu", "fp32")
    a, _ = load_model("tiny", rt, seed=1)
    b, _ = load_model("tiny", rt, seed=1)
    c, _ = load_model("tiny", rt, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.model.layers[0].mlp.up_proj.weight, c.model.layers[0].mlp.up_proj.weight)
    assert sum(p.numel() for p in a.parameters()) < 4_000_000


def test_local_directory_and_run_directory(tmp_path):
    model, tokenizer = load_model("tiny", resolve_runtime("cpu", "fp32"))
    model.save_pretrained(tmp_path / "final")
    tokenizer.save_pretrained(tmp_path / "final")
    loaded, _ = load_model(str(tmp_path), resolve_runtime("cpu", "fp32"))  # a run directory: its final/
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


def test_offline_hub_id_gives_a_clear_error_at_once(monkeypatch):
    from r1lite import models

    def no_download(*args, local_files_only=False, **kwargs):
        if local_files_only:
            raise OSError("not in the local cache")
        raise AssertionError("an unreachable hub must not be tried")

    monkeypatch.setattr(models, "_hub_unreachable", lambda: "huggingface.co: Name or service not known")
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", no_download)
    with pytest.raises(UsageError, match="offline"):
        load_model("HuggingFaceTB/not-a-real-model-r1lite", resolve_runtime("cpu", "fp32"))


def test_hub_check_reports_an_unreachable_endpoint(monkeypatch):
    from r1lite import models

    monkeypatch.setenv("HF_ENDPOINT", "https://127.0.0.1:9")  # the discard port: nothing listens on loopback
    assert "127.0.0.1" in models._hub_unreachable(timeout=2.0)
