"""Export: Hugging Face directories and GGUF files that llama.cpp loads with no warning, gives the
same tokens as PyTorch, and agrees with llama.cpp's own converter; the chat templates reproduce
r1lite's prompts; bad input fails cleanly."""

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r1lite import prompts, tasks
from r1lite.edge.chat_format import jinja_template, ollama_template, prompt_format
from r1lite.engine import Request, Sampling
from r1lite.errors import UsageError
from r1lite.models import load_model, resolve_runtime
from r1lite.prompts import encode_messages, item_prompts
from r1lite.rewards import r1_answer
from r1lite.train import sft
from r1lite.train.policy import Policy

ROOT = Path(__file__).resolve().parents[1]
FP32 = resolve_runtime("cpu", "fp32")
ROWS = [{"messages": [{"role": "user", "content": f"{prompts.R1_INSTRUCTION} {tasks.NUMBER_HINT}\n\nWhat is {a} + {b}?"}],
         "prefill": "", "completion": f"<think>{a} + {b} = {a + b}</think>\n<answer>{a + b}</answer>"}
        for a, b in [(12, 30), (5, 7), (40, 41), (9, 9), (23, 11), (60, 6), (17, 2), (31, 13)]]


@pytest.fixture(scope="session")
def llama_cpp():
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        pytest.fail("llama-cpp-python is missing: pip install -e '.[edge]' (make test builds and installs it)")
    return llama_cpp


@pytest.fixture(scope="module")
def sft_run(tiny_model, tmp_path_factory):
    """A tiny model after a few SFT steps on 8 fixed R1-format rows, as a run directory (its
    config names the R1 format, so exports apply it)."""
    run = tmp_path_factory.mktemp("export") / "run"
    model, tokenizer = tiny_model()
    pairs = [sft.encode_pair(tokenizer, r["messages"], r["prefill"], r["completion"]) for r in ROWS]
    sft.train_sft(Policy(model), tokenizer, pairs, epochs=40, lr=3e-3, batch_size=2, micro_batch_size=2, seed=0,
                  autocast=contextlib.nullcontext, device=torch.device("cpu"))
    model.save_pretrained(run / "final")
    tokenizer.save_pretrained(run / "final")
    (run / "config.yaml").write_text("model: tiny\ntask: arithmetic\ntask_options: {}\nformat: r1\nprefill_think: false\n")
    (run / "summary.json").write_text(json.dumps({"eval_after": {"pass@1": 0.5, "format_rate": 1.0, "n_items": 8}}))
    return run


@pytest.fixture(scope="module")
def exported(cli, sft_run, llama_cpp, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    files = {}
    for quant in ("f16", "q8_0", "q4_0", "q4_k_m"):
        r = cli("export", "--model", sft_run, "--to", "gguf", "--quant", quant, "--out", out / f"model.{quant}.gguf")
        assert r.returncode == 0, r.stderr[-2000:]
        files[quant] = (out / f"model.{quant}.gguf", r.stdout)
    return files


def test_gguf_round_trip_gives_pytorch_greedy_tokens_and_a_parsable_answer(sft_run, exported):
    from r1lite.edge.backends import open_model

    torch_side = open_model(str(sft_run), "cpu", "fp32")
    gguf_side = open_model(str(exported["f16"][0]))
    greedy = Sampling(max_new_tokens=40, temperature=0)
    questions = [r["messages"][0]["content"].split("\n\n")[-1] for r in ROWS]
    ours = [torch_side.engine.generate([Request(torch_side.prompt([{"role": "user", "content": q}])[0], greedy)])[0][0] for q in questions]
    theirs = [gguf_side.engine.generate([Request(gguf_side.prompt([{"role": "user", "content": q}])[0], greedy)])[0][0] for q in questions]
    assert [c.token_ids for c in ours] == [c.token_ids for c in theirs]
    assert sum(r1_answer("" + c.text) is not None for c in theirs) >= 6  # the memorised answer blocks parse


def test_llama_cpp_loads_every_export_without_tokenizer_warnings(exported):
    from r1lite.engine import llamacpp

    for quant, (path, stdout) in exported.items():
        decoder = llamacpp.LlamaCppDecoder(path, max_rows=2)
        decoder.close()
        assert not [w for w in decoder.warnings if any(k in w.lower() for k in ("token", "vocab", "pre-tok", "special"))], (quant, decoder.warnings)
    # the tiny model's 64-wide rows do not fit K-quant blocks of 256: the command says how many fell back, and to what
    assert "fell back" in exported["q4_k_m"][1] and "fell back" not in exported["q8_0"][1]


def test_llama_cpp_tokenizes_like_transformers(tiny_model, exported):
    from r1lite.engine import llamacpp

    decoder = llamacpp.LlamaCppDecoder(exported["f16"][0], max_rows=1)
    _, tokenizer = tiny_model()
    lib = decoder.lib
    for text in ["What is 12345 + 678?", "Don't   stop\n\nme now: 3.14, x_y-z!", "<think>é ünïcode 漢字</think>"]:
        buf = (lib.llama_token * 256)()
        n = lib.llama_tokenize(decoder.vocab, text.encode(), len(text.encode()), buf, 256, False, True)
        assert list(buf[:n]) == tokenizer.encode(text, add_special_tokens=False), text
    decoder.close()


def test_gguf_metadata_carries_the_model_card_and_the_run_format(tiny_model, exported, sft_run):
    from gguf import GGUFReader

    reader = GGUFReader(exported["q8_0"][0])

    def field(key):
        f = reader.fields[key]
        return bytes(f.parts[f.data[0]]).decode() if f.types[0].name == "STRING" else int(f.parts[f.data[0]][0])

    _, tokenizer = tiny_model()
    assert field("tokenizer.ggml.pre") == "smollm" and field("tokenizer.ggml.eos_token_id") == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert field("r1lite.prompt_format") == "r1" and json.loads(field("r1lite.evaluations"))["eval_after"]["pass@1"] == 0.5
    assert prompts.R1_INSTRUCTION in field("tokenizer.chat_template")
    modelfile = (exported["q8_0"][0].parent / "model.q8_0.Modelfile").read_text()
    assert modelfile.startswith("FROM ./model.q8_0.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert ".Thinking" in modelfile and "$.IsThinkSet" in modelfile and "PARAMETER think" not in modelfile


def test_our_gguf_matches_llama_cpps_own_converter(sft_run, exported, llama_cpp, tmp_path):
    """Same tensor names, shapes and types as convert_hf_to_gguf.py (F16), and as its output
    quantized by llama.cpp's quantizer (Q8_0)."""
    from gguf import GGUFReader

    from r1lite.edge.gguf_file import quantize

    converter = ROOT / ".venv" / "llama.cpp" / "convert_hf_to_gguf.py"
    if not converter.exists():
        pytest.fail(f"{converter} is missing: make test keeps llama.cpp's converter from the llama-cpp-python sdist there")
    ref16 = tmp_path / "ref.f16.gguf"
    r = subprocess.run([sys.executable, str(converter), str(sft_run / "final"), "--outtype", "f16", "--outfile", str(ref16)],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(converter.parent / "gguf-py")})
    assert r.returncode == 0, r.stderr[-3000:]
    ref8 = tmp_path / "ref.q8_0.gguf"
    quantize(ref16, ref8, "q8_0")

    def layout(path):
        return {t.name: (tuple(int(x) for x in t.shape), t.tensor_type.name) for t in GGUFReader(path).tensors}

    assert layout(exported["f16"][0]) == layout(ref16)
    assert layout(exported["q8_0"][0]) == layout(ref8)


@pytest.mark.parametrize("fmt, prefill, template", [("r1", False, "chat"), ("r1", True, "chat"), ("plain", False, "chat"),
                                                     ("plain:2", False, "chat"), ("r1", False, "r1_zero"), ("r1", True, "r1_zero")])
def test_the_exported_template_renders_r1lites_own_prompt(tiny_model, fmt, prefill, template):
    from jinja2 import Template

    _, tokenizer = tiny_model()
    task = tasks.load_task("arithmetic")
    item = task.split("test", 1)[0]
    ours = tokenizer.decode(item_prompts(tokenizer, task, [item], fmt, prefill, template=template)[0].ids)
    jinja = jinja_template(tokenizer, prompt_format(task, fmt, prefill, template))
    rendered = Template(jinja).render(messages=[{"role": "user", "content": item.question}], add_generation_prompt=True,
                                      bos_token=tokenizer.bos_token)
    assert rendered == ours


@pytest.mark.parametrize("task_name", ["arithmetic", None])
def test_the_r1_zero_template_renders_r1lites_conversations_in_jinja_and_go(tiny_model, tmp_path, task_name):
    """Multi-turn, system and thinking-off conversations in the R1 paper's template: the Jinja one as
    r1lite renders them (past the bos, which Ollama adds itself), and Go's as the Jinja one."""
    from jinja2 import Template

    from r1lite.prompts import r1_zero_text

    _, tokenizer = tiny_model()
    task = tasks.load_task(task_name) if task_name else None
    fmt = prompt_format(task, "r1", True, "r1_zero")
    render = go_renderer(tmp_path, ollama_template(tokenizer, fmt))
    conversations = {
        "first turn": {"Messages": [{"Role": "user", "Content": "What is 2 + 2?"}]},
        "think off": {"Messages": [{"Role": "user", "Content": "What is 2 + 2?"}], "IsThinkSet": True, "Think": False},
        "second turn": {"Messages": [{"Role": "user", "Content": "What is 2 + 2?"},
                                     {"Role": "assistant", "Content": "<think>2 + 2 = 4</think> <answer>4</answer>"},
                                     {"Role": "user", "Content": "And 3 + 3?"}]},
        "system": {"System": "Be brief.", "Messages": [{"Role": "user", "Content": "Hi"}]},
    }
    for name, data in conversations.items():
        r = render(data)
        messages = ([{"role": "system", "content": data["System"]}] if data.get("System") else []) + [
            {"role": m["Role"].lower(), "content": m["Content"]} for m in data["Messages"]]
        jinja = Template(jinja_template(tokenizer, fmt)).render(messages=messages, add_generation_prompt=True, bos_token="<s>",
                                                               **({"enable_thinking": False} if name == "think off" else {}))
        wrapped = [{**m, "content": fmt.prefix + m["content"] + fmt.suffix} if m["role"] == "user" else m for m in messages]
        ours = "<s>" + r1_zero_text(wrapped) + (" <think> </think>" if name == "think off" else " " + fmt.prefill)
        assert jinja == ours, name
        assert r.stdout == jinja.removeprefix("<s>") or task is None, name


def test_the_ollama_template_renders_in_go_as_the_jinja_one_does(tiny_model, tmp_path):
    """Ollama's templates are Go text/template: rendered by Go itself for a conversation with and
    without thinking (Ollama is not on this machine)."""
    from jinja2 import Template

    _, tokenizer = tiny_model()
    fmt = prompt_format(tasks.load_task("arithmetic"), "r1", True)
    render = go_renderer(tmp_path, ollama_template(tokenizer, fmt))
    conversations = {
        "first turn": {"Messages": [{"Role": "user", "Content": "What is 2 + 2?"}]},
        "think off": {"Messages": [{"Role": "user", "Content": "What is 2 + 2?"}], "IsThinkSet": True, "Think": False},
        "second turn": {"Messages": [{"Role": "user", "Content": "What is 2 + 2?"},
                                     {"Role": "assistant", "Content": "<answer>4</answer>", "Thinking": "2 + 2 = 4"},
                                     {"Role": "user", "Content": "And 3 + 3?"}]},
        "system": {"System": "Be brief.", "Messages": [{"Role": "user", "Content": "Hi"}]},
    }
    for name, data in conversations.items():
        r = render(data)
        messages = ([{"role": "system", "content": data["System"]}] if data.get("System") else []) + [
            {"role": m["Role"], "content": (f"<think>{m['Thinking']}</think>\n" if m.get("Thinking") else "") + m["Content"]}
            for m in data["Messages"]]
        expected = Template(jinja_template(tokenizer, fmt)).render(messages=messages, add_generation_prompt=True,
                                                                   **({"enable_thinking": False} if name == "think off" else {}))
        assert r.stdout == expected, name


def go_renderer(folder, template: str):
    """A function rendering an Ollama template with Go itself (GO_PROGRAM, in ``folder``) for a
    conversation's data; Ollama is not on this machine, Go is (make test installs it)."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("Go is missing: apt-get install golang-go (make test installs it)")
    (folder / "template.txt").write_text(template)
    (folder / "main.go").write_text(GO_PROGRAM)

    def render(data: dict):
        (folder / "data.json").write_text(json.dumps(data))
        r = subprocess.run([go, "run", "main.go"], cwd=folder, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "GOCACHE": str(folder / "gocache"), "GOPATH": str(folder / "gopath"),
                                "GO111MODULE": "off", "GOFLAGS": ""})
        assert r.returncode == 0, r.stderr
        return r

    return render


GO_PROGRAM = '''package main

import (
	"encoding/json"
	"os"
	"text/template"
)

type Message struct {
	Role     string
	Content  string
	Thinking string
}

type Data struct {
	System     string
	Messages   []Message
	Think      bool
	IsThinkSet bool
}

func main() {
	text, err := os.ReadFile("template.txt")
	if err != nil { panic(err) }
	raw, err := os.ReadFile("data.json")
	if err != nil { panic(err) }
	var data Data
	if err := json.Unmarshal(raw, &data); err != nil { panic(err) }
	t := template.Must(template.New("ollama").Parse(string(text)))
	if err := t.Execute(os.Stdout, data); err != nil { panic(err) }
}
'''


def test_hf_export_is_a_complete_directory_with_a_model_card(cli, sft_run, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "hf"
    r = cli("export", "--model", sft_run, "--to", "hf", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"} <= names
    card = (out / "README.md").read_text()
    assert card.startswith("---\nbase_model:") and "r1lite_commit" in card and "Prompt format:** r1" in card
    original, _ = load_model(str(sft_run), FP32)
    again = AutoModelForCausalLM.from_pretrained(out)
    ids = torch.tensor([[1, 5, 9, 30]])
    torch.testing.assert_close(again(ids).logits, original(ids).logits)


@pytest.mark.parametrize("args, needle", [
    (["--model", "/no/such/model", "--out", "{tmp}/m.f16.gguf"], "no such model"),
    (["--model", "{gpt2}", "--out", "{tmp}/m.f16.gguf"], "export supports llama, qwen2, qwen3, gemma3_text; this model is gpt2"),
    (["--model", "tiny", "--quant", "q3_k", "--out", "{tmp}/m.q3_k.gguf"], "--quant q3_k"),
    (["--model", "tiny", "--quant", "q8_0", "--out", "{tmp}/model.gguf"], "name it e.g."),
    (["--model", "tiny", "--out", "{tmp}/exists.f16.gguf"], "exists; pass --force"),
    (["--model", "tiny", "--out", "{tmp}/exists.f16.gguf/m.f16.gguf"], "is a file, so nothing can be written under it"),
    (["--model", "tiny", "--to", "hf", "--force", "--out", "{tmp}/exists.f16.gguf"], "is an existing file; give a directory"),
])
def test_bad_export_input_is_one_line_exit_2_and_leaves_nothing(quick_cli, tiny_model, args, needle, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2)).save_pretrained(gpt2)
    tiny_model()[1].save_pretrained(gpt2)
    (tmp_path / "exists.f16.gguf").write_text("old")
    before = {p.name for p in tmp_path.iterdir()}
    r = quick_cli("export", *[a.format(tmp=tmp_path, gpt2=gpt2) for a in args])
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert {p.name for p in tmp_path.iterdir()} == before and (tmp_path / "exists.f16.gguf").read_text() == "old"


@pytest.mark.parametrize("content, needle", [(b"not a gguf at all", "not a GGUF file"), (None, "truncated or damaged")])
def test_chat_refuses_a_broken_gguf_in_one_line(quick_cli, content, needle, exported, tmp_path):
    bad = tmp_path / "bad.f16.gguf"
    bad.write_bytes(content if content is not None else exported["q8_0"][0].read_bytes()[:100_000])
    r = quick_cli("chat", "--model", bad, "--prompt", "hi")
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_chat_answers_once_on_both_backends_and_the_budget_closes_the_thinking(cli, thinking_run, llama_cpp, tmp_path):
    """The budget closes the thinking (the closing sentence, then </think>) and the model goes on
    to answer; the torch and llama.cpp backends print the same text (greedy)."""
    gguf = tmp_path / "think.f16.gguf"
    assert cli("export", "--model", thinking_run, "--out", gguf).returncode == 0
    outputs = []
    for model in (thinking_run, gguf):
        r = cli("chat", "--model", model, "--prompt", "What is 3 + 4?", "--max-thinking-tokens", "20",
                    "--temperature", "0", "--max-new-tokens", "40")
        assert r.returncode == 0, r.stderr[-2000:]
        outputs.append(r.stdout)
    assert outputs[0] == outputs[1]
    thinking, _, answer = outputs[0].partition("I have to give the answer now.\n</think>")
    assert thinking.startswith("<think>") and answer.strip(), outputs[0]


def test_budget_forcing_keeps_the_thinking_within_the_budget(sft_run):
    """Forced tokens count: the thinking, the close included, is at most the budget; a budget
    shorter than the closing sentence gets only the close."""
    from r1lite.edge.backends import open_model
    from r1lite.engine.thinking import CLOSE_SENTENCE, CLOSE_THINKING

    backend = open_model("tiny", "cpu", "fp32")
    tok = backend.tokenizer
    ids = encode_messages(tok, [{"role": "user", "content": "Hi"}], "<think>")
    close = len(tok.encode(CLOSE_THINKING, add_special_tokens=False))
    sentence = len(tok.encode(CLOSE_SENTENCE, add_special_tokens=False))
    for budget in (sentence + close + 5, sentence + close - 1, 0):
        out = backend.engine.generate([Request(ids, Sampling(max_new_tokens=60, temperature=0), max_thinking_tokens=budget,
                                               thinking=True)])[0][0]
        thought = out.text[:out.text.index("</think>") + len("</think>")]
        n = len(tok.encode(thought, add_special_tokens=False))
        assert n <= max(budget, close) + 1, (budget, n, thought)
        assert (CLOSE_SENTENCE.strip() in thought) == (budget >= sentence + close)


def test_int8_weights_serve_and_chat_where_the_kernels_run_and_say_why_not_elsewhere(monkeypatch):
    """--dtype int8 (serve, chat): the engine decodes with int8 weights and answers; a wrong dtype
    and a machine without the kernels are one line each."""
    from r1lite.edge.backends import open_model
    from r1lite.engine import kernels

    if kernels.load() is not None:
        backend = open_model("tiny", "cpu", "int8")
        assert backend.engine.decoder.weights == "int8"
        assert backend.engine.decoder.head.packed.data.dtype == torch.int8
        ids = encode_messages(backend.tokenizer, [{"role": "user", "content": "Hi"}], "")
        out = backend.engine.generate([Request(ids, Sampling(max_new_tokens=12, temperature=0))])[0][0]
        assert len(out.token_ids) == 12
    with pytest.raises(UsageError, match="--dtype int4: use auto, bf16, fp32 or int8"):
        open_model("tiny", "cpu", "int4")
    monkeypatch.setattr(kernels, "load", lambda: None)
    with pytest.raises(UsageError, match="needs r1lite's CPU kernels.*use --dtype fp32"):
        open_model("tiny", "cpu", "int8")


def test_a_lora_adapter_is_merged_before_export(cli, tiny_model, tmp_path):
    """--model may be a LoRA adapter directory: the export holds base + adapter, merged."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base, tokenizer = tiny_model()
    base.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), LoraConfig(r=4, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)  # a trained adapter, not the identity
    lora.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(tmp_path / "base")}))
    ids = torch.tensor([[1, 5, 9, 30]])
    with torch.no_grad():
        expected = lora(ids).logits
    r = cli("export", "--model", tmp_path / "adapter", "--to", "hf", "--out", tmp_path / "hf")
    assert r.returncode == 0, r.stderr[-2000:]
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, expected, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(merged(ids).logits, AutoModelForCausalLM.from_pretrained(tmp_path / "base")(ids).logits, atol=1e-3)


def test_a_full_disk_during_gguf_export_is_one_line_and_leaves_no_file(tmp_path, monkeypatch):
    import errno

    from r1lite.edge import export
    from r1lite.files import DiskFull

    def fill_the_disk(src, path, facts):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "write_gguf_f16", fill_the_disk)
    out = tmp_path / "model.f16.gguf"
    with pytest.raises(DiskFull, match=r"model.f16.gguf: the disk is full .* give --out on another disk"):
        export.write_gguf(export.load_source("tiny"), out, "f16")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, content, needle", [
    ("config.yaml", "task: [arithmetic\nformat: r1\n", r"config.yaml:\d+: not valid YAML"),
    ("config.yaml", "format: r1\n", r"config.yaml: no 'task'"),
    ("summary.json", "{not json", r"summary.json: not JSON"),
])
def test_a_run_directory_with_a_damaged_config_or_summary_is_one_line(tiny_model, tmp_path, name, content, needle):
    """export reads a run's config.yaml (its prompt format) and summary.json (the model card); serve
    and chat read its config.yaml: a damaged one is one line naming it, not a traceback."""
    from r1lite.edge import backends, export
    from r1lite.errors import UsageError

    run = tmp_path / "run"
    model, tokenizer = tiny_model()
    model.save_pretrained(run / "final")
    tokenizer.save_pretrained(run / "final")
    (run / "config.yaml").write_text("model: tiny\ntask: arithmetic\ntask_options: {}\nformat: r1\n")
    (run / name).write_text(content)
    with pytest.raises(UsageError, match=needle):
        export.load_source(str(run))
    if name == "config.yaml":
        with pytest.raises(UsageError, match=needle):
            backends.run_format(str(run))


@pytest.mark.parametrize("to, out", [("hf", "hf"), ("gguf", "model.f16.gguf")])
def test_what_a_killed_export_left_half_written_is_removed_and_nothing_else(quick_cli, tmp_path, to, out):
    """A kill mid-write leaves the output's temporary file or directory (.NAME.*.tmp) beside it: the
    next export of that name removes it; another hidden file stays."""
    (tmp_path / f".{out}.x1y2.tmp").mkdir()
    (tmp_path / f".{out}.x1y2.tmp" / "half").write_bytes(b"half")
    (tmp_path / ".draft.tmp").write_text("mine")
    r = quick_cli("export", "--model", "tiny", "--to", to, "--out", tmp_path / out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".draft.tmp"]


def test_a_modelfile_stops_where_the_vocabulary_ends_a_turn(tiny_model):
    """ChatML's <|im_end|> where the vocabulary has it; else (Gemma) its own end of turn and end of text."""
    from types import SimpleNamespace

    from r1lite.edge.chat_format import turn_stops

    _, tokenizer = tiny_model()
    assert turn_stops(tokenizer) == ["<|im_end|>"]
    gemma_like = SimpleNamespace(get_vocab=lambda: {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<end_of_turn>": 106})
    assert turn_stops(gemma_like) == ["<end_of_turn>", "<eos>"]
