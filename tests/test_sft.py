"""SFT and the cold start from the model's own verified answers."""

import contextlib
import json

import pytest
import torch

from r1lite import tasks
from r1lite.engine import Completion
from r1lite.rewards import r1_answer, r1_format
from r1lite.train import sft
from r1lite.train.policy import Policy

ROWS = [{"messages": [{"role": "user", "content": f"What is {i} + {i}?"}], "prefill": "",
         "completion": f"<think>{i} + {i} = {2 * i}</think><answer>{2 * i}</answer>"} for i in range(8)]
PINNED_SFT = [10.836705, 10.618560, 10.444869, 10.316196]  # token-mean NLL of the 4 optimizer steps


def test_cold_start_keeps_only_verified_answers_rewritten_in_r1_format(monkeypatch):
    task = tasks.load_task("arithmetic")
    items = [tasks.make_item("What is 47 + 38?", 85, {}), tasks.make_item("What is 10 + 11?", 21, {})]
    samples = {
        items[0].question: ["47 + 38 = 85", "The sum of 47 and 38 is 85.", "47 + 38 = 84", "85 and then some 86"],
        items[1].question: ["10 + 11 = 22", "It is 20", "21" * 0 + "twenty-one", "10 + 11 = 21 ..."],
    }

    class FakeEngine:
        def generate(self, requests, **kw):
            assert [r.n for r in requests] == [4, 4]
            return [[Completion([1, 2], text, "stop") for text in samples[q]] for q in samples]

    class Tok:
        def apply_chat_template(self, messages, **kw):
            return messages[0]["content"]
        chat_template = "x"

        def encode(self, text, add_special_tokens=False):
            return [1]

    rows = sft.self_traces(FakeEngine(), Tok(), task, items, phrasing="plain", samples=4, temperature=0.7, max_new_tokens=32,
                           seed=0, per_item=1, model_name="default")
    assert len(rows) == 2
    first, second = rows
    assert first["completion"] == "<think>\n47 + 38 = 85\n</think>\n<answer>85</answer>"  # the shortest correct one
    assert second["completion"] == "<think>\n10 + 11 = 21 ...\n</think>\n<answer>21</answer>"
    for row in rows:
        assert r1_format(row["completion"]) == 1.0 and r1_answer(row["completion"]) is not None
        assert row["provenance"]["teacher"] == "default" and row["provenance"]["prompt_format"] == "plain"
        assert "<think>" in row["messages"][0]["content"]  # trained on the R1 prompt


def test_sft_command_lowers_the_loss_and_saves_a_model(cli, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"Say {w}.", "completion": f"<think>ok</think><answer>{w}</answer>"})
                              for w in ("red", "green", "blue", "black")) + "\n")
    out = tmp_path / "sft"
    r = cli("sft", "--model", "tiny", "--data", data, "--epochs", "8", "--lr", "1e-2", "--batch-size", "4",
            "--gradient-checkpointing", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 8 and losses[-1] < 0.5 * losses[0]
    assert (out / "final" / "model.safetensors").exists()


def test_sft_data_errors_name_the_line(quick_cli, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n{"completion": "c"}\n')
    r = quick_cli("sft", "--model", "tiny", "--data", data, "--out", tmp_path / "o")
    assert r.returncode == 2 and f"{data}:2" in r.stderr and "'prompt'" in r.stderr


@pytest.mark.parametrize("checkpointing", [False, True])
def test_seeded_sft_reproduces_its_pinned_losses(tiny_model, checkpointing):
    """The same losses with gradient checkpointing (``r1lite sft --gradient-checkpointing``)."""
    model, tokenizer = tiny_model()
    pairs = [sft.encode_pair(tokenizer, r["messages"], r["prefill"], r["completion"]) for r in ROWS]
    history = sft.train_sft(Policy(model, checkpointing=checkpointing), tokenizer, pairs, epochs=2, lr=1e-3, batch_size=4, micro_batch_size=2, seed=0,
                            autocast=contextlib.nullcontext, device=torch.device("cpu"))
    assert [r["loss"] for r in history] == pytest.approx(PINNED_SFT, rel=1e-4)


def test_an_out_that_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch):
    """A read-only --out (root passes chmod, so os.access stands in for a read-only filesystem) is
    one line before the model is loaded, not a traceback after the training."""
    import os

    from rich.console import Console

    from r1lite import models
    from r1lite.errors import UsageError

    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded before --out was checked"))
    with pytest.raises(UsageError, match=r"cannot write to .* \(.* is read-only or not ours\); choose another --out"):
        sft.run(sft.SFTConfig(data=str(data), model="tiny", out=str(tmp_path / "o")), Console(quiet=True))


def test_a_metrics_file_of_the_users_in_out_is_refused_before_any_work(tmp_path, monkeypatch):
    """sft writes <out>/metrics.jsonl: one already there (no final/ beside it: no sft run finished
    there) is someone else's, and stays."""
    from rich.console import Console

    from r1lite import models
    from r1lite.errors import UsageError

    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "metrics.jsonl").write_text('{"mine": true}\n')
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded before --out was checked"))
    with pytest.raises(UsageError, match=r"metrics.jsonl exists .* choose another --out"):
        sft.run(sft.SFTConfig(data=str(data), model="tiny", out=str(tmp_path / "o")), Console(quiet=True))
    assert (tmp_path / "o" / "metrics.jsonl").read_text() == '{"mine": true}\n'


def test_what_a_killed_sft_left_half_written_is_removed_and_nothing_else(tmp_path):
    """A kill while final/ was written leaves .final.*.tmp beside it: the next run removes it; a
    hidden file of the user's stays."""
    from rich.console import Console

    data = tmp_path / "pairs.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    out = tmp_path / "o"
    (out / ".final.x1y2.tmp").mkdir(parents=True)
    (out / ".final.x1y2.tmp" / "model.safetensors").write_bytes(b"half")
    (out / ".draft.tmp").write_text("mine")
    assert sft.run(sft.SFTConfig(data=str(data), model="tiny", out=str(out), epochs=1, device="cpu", dtype="fp32"),
                   Console(quiet=True)) == 0
    assert sorted(p.name for p in out.iterdir()) == [".draft.tmp", "final", "metrics.jsonl"]
