"""R1's cold start: SFT on verified traces, checked until it lands between its bars and its ceiling
(r1lite.train.coldstart), and the run around it: its checkpoint, a stop in the middle, a resume."""

import contextlib
import json
import os
import signal

import pytest
import torch
from rich.console import Console

from r1lite.config import build
from r1lite.models import resolve_runtime
from r1lite.train import coldstart, sft
from r1lite.train.config import GRPOConfig
from r1lite.train.distributed import World
from r1lite.train.policy import Policy
from r1lite.train.trainer import Trainer

ROWS = [{"item_id": str(i), "messages": [{"role": "user", "content": f"What is {i} + {i}?"}], "prefill": "",
         "completion": f"<think>{i} + {i} = {2 * i}</think><answer>{2 * i}</answer>"} for i in range(8)]


def run_config(tmp_path, **kw) -> GRPOConfig:
    """A tiny GRPO run with a self-sampled cold start on 8 items."""
    return build(GRPOConfig, {"model": "tiny", "task": "arithmetic", "format": "plain", "batch_size": 8,
                              "group_size": 4, "max_new_tokens": 12, "eval_items": 0, "lr": 1e-3,
                              "out": str(tmp_path / "run"), "max_steps": 2, "cold_start_items": 8,
                              "cold_start_lr": 5e-3, "cold_start_epochs": 2, "preflight": False, **kw})


# -- the landing: pure arithmetic on a straight line of weights -------------------------------------

@pytest.mark.parametrize("found, points, t", [
    (["above", "below", "within"], [0.5, 0.25, 0.375], 0.375),  # lands at the third check
    (["above"] * 4, [0.5, 0.25, 0.125, 0.0625], 0.0625),  # never between: the nearest point above
    (["above", "below", "below", "below"], [0.5, 0.25, 0.375, 0.4375], 0.5),  # last below: back up to 0.5
])
def test_the_landing_bisects_toward_the_anchor_and_goes_on_from_where_it_stopped(found, points, t):
    """No model: the weights are one tensor on the line from the anchor (0) to the check past the
    ceiling (1); each check reads a scripted verdict, and the weights end exactly at ``t``."""
    params = [torch.ones(3)]
    verdicts, asked = iter(found), []

    def check(epochs, t, between):
        asked.append(t)
        assert between == [1.0, 1.5] and epochs == pytest.approx(1.0 + 0.5 * t)
        assert torch.allclose(params[0], torch.full((3,), t))  # the weights are at the point checked
        return next(verdicts)

    landed = coldstart.land(params, [torch.zeros(3)], 1.0, 1.5, check, Console(quiet=True))
    assert asked == points and landed == {"t": t, "between": [1.0, 1.5]}
    assert torch.equal(params[0], torch.full((3,), t))


def test_the_shelf_gives_its_copies_back_bit_for_bit_and_touches_no_other_file(tmp_path):
    """Copies in files: each read back exactly, dropped when no longer kept, a stopped run's own
    copies cleared at the start; another rank's copy and a user's file stay, and so does the
    directory that holds them."""
    folder = tmp_path / "cold-start-weights"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "rank0-3.pt").write_bytes(b"a stopped run's copy")
    (folder / "rank1-0.pt").write_bytes(b"another rank's")
    shelf = coldstart.Shelf(folder, "rank0")
    assert not (folder / "rank0-3.pt").exists()
    params = [torch.randn(4, 3), torch.randn(5, dtype=torch.float64)]
    first = shelf.put(params)
    second = shelf.put([p * 3 for p in params])
    shelf.keep_only(second)
    assert not (folder / f"rank0-{first}.pt").exists()
    assert all(torch.equal(a, 3 * b) and a.dtype == b.dtype for a, b in zip(shelf.get(second), params))
    shelf.close()
    assert sorted(f.name for f in folder.iterdir()) == ["notes.txt", "rank1-0.pt"]


# -- the SFT loop, on the tiny model, with scripted checks ------------------------------------------

class NoMeter:
    """The meter's phase() where nothing is metered."""

    def phase(self, name: str):
        return contextlib.nullcontext()


def fine_tune(tiny_model, tmp_path, readings: list[float], shelved: bool = False, **kw):
    """The cold start's SFT of a fresh tiny model on ROWS with checks that read ``readings`` (format
    100%): (its record, the weights at each check, the weights it ends with). ``shelved``: the
    weights it may go back to are kept in files (at most two at a check), gone at the end."""
    cfg = run_config(tmp_path, format="r1", cold_start_epochs=1, cold_start_min_accuracy=0.5,
                     cold_start_check_every=0.5, cold_start_batch_size=2, **kw)
    model, tokenizer = tiny_model()
    values, seen = iter(readings), []

    scratch = tmp_path / "shelf" if shelved else None

    def check():
        seen.append([p.detach().clone() for p in model.parameters()])
        assert scratch is None or len(list(scratch.iterdir())) <= 2
        return {"format_rate": 1.0, "accuracy": next(values)}

    runtime = resolve_runtime("cpu", "fp32")
    phase = coldstart.ColdStart(Policy(model), tokenizer, check, NoMeter(), Console(quiet=True), runtime, World(),
                                scratch=scratch)
    record, flops = coldstart.fine_tune(cfg, phase, [dict(r) for r in ROWS])
    assert flops > 0 and not (scratch and scratch.exists())
    return record, seen, [p.detach().clone() for p in model.parameters()]


def same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_the_checks_ask_for_more_until_one_reaches_the_bar(tiny_model, tmp_path):
    """After the planned epoch, then every half epoch (2 SFT steps of 4 an epoch), while a check is
    below the accuracy bar; the first that reaches it ends the cold start."""
    record, _, _ = fine_tune(tiny_model, tmp_path, [0.2, 0.4, 0.5, 0.7], cold_start_max_epochs=4)
    assert [c["epochs"] for c in record["checks"]] == [1.0, 1.5, 2.0]
    assert [c["accuracy"] for c in record["checks"]] == [0.2, 0.4, 0.5]
    assert record["epochs"] == 2.0 and record["sft_steps"] == 8 and record["kept_epochs"] is None


@pytest.mark.parametrize("shelved", [False, True])
def test_at_its_cap_below_the_bars_the_best_checked_weights_go_on(tiny_model, tmp_path, shelved):
    """The cap is checked too; no check reached the bar, so the weights of the best check (1.5
    epochs) go on, not those the last epoch left."""
    record, seen, end = fine_tune(tiny_model, tmp_path, [0.2, 0.45, 0.3], shelved, cold_start_max_epochs=2)
    assert [c["epochs"] for c in record["checks"]] == [1.0, 1.5, 2.0]
    assert record["kept_epochs"] == 1.5 and record["epochs"] == 2.0
    assert not same(seen[1], seen[2]) and same(end, seen[1])


@pytest.mark.parametrize("shelved", [False, True])
def test_past_the_ceiling_the_weights_land_between_the_check_before_and_it(tiny_model, tmp_path, shelved):
    """1.0 epochs below the bar (the anchor), 1.5 past the ceiling: the bisection checks t = 0.5,
    0.25, then 0.375 lands, and SFT ends exactly on the interpolated weights."""
    record, seen, end = fine_tune(tiny_model, tmp_path, [0.2, 0.8, 0.7, 0.4, 0.55], shelved, cold_start_max_epochs=4,
                                  cold_start_max_accuracy=0.6)
    assert [c.get("t") for c in record["checks"]] == [None, None, 0.5, 0.25, 0.375]
    assert record["landed"] == {"t": 0.375, "between": [1.0, 1.5]} and record["epochs"] == 1.5
    for p, a, b in zip(end, seen[0], seen[1]):
        assert torch.equal(p, torch.lerp(a, b, 0.375))  # a shelved anchor comes back bit for bit


def test_the_first_sft_steps_are_those_of_a_plain_run(tiny_model, tmp_path):
    """The checks do not disturb training: the cold start's first steps have the losses of a plain
    SFT of the same epochs (same data order, same optimizer state)."""
    record, _, _ = fine_tune(tiny_model, tmp_path, [0.2, 0.5], cold_start_max_epochs=4)
    model, tokenizer = tiny_model()
    pairs = [sft.encode_pair(tokenizer, r["messages"], r["prefill"], r["completion"]) for r in ROWS]
    plain = sft.train_sft(Policy(model), tokenizer, pairs, epochs=2, lr=5e-3, batch_size=2, micro_batch_size=16,
                          seed=0, autocast=contextlib.nullcontext, device=torch.device("cpu"))
    assert record["final_loss"] == pytest.approx(plain[5]["loss"], rel=1e-5) and record["sft_steps"] == 6


# -- in a run ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bar, epochs", [(1.0, 3), (0.0, 2)])
def test_a_run_checks_the_format_on_train_prompts_until_the_cap(tmp_path, monkeypatch, bar, epochs):
    """The real check: the tiny random model never writes the format, so with a format bar the cold
    start runs to its cap, checked after its epochs and at the cap; without one no check runs."""
    monkeypatch.setattr(sft, "self_traces", lambda *a, **k: [dict(r) for r in ROWS])
    cfg = run_config(tmp_path, format="r1", max_steps=1, cold_start_min_format=bar, cold_start_max_epochs=3,
                     cold_start_check_items=4)
    assert Trainer(cfg).train() == 0
    cold = json.loads((tmp_path / "run" / "summary.json").read_text())["cold_start"]
    per_epoch = -(-len(ROWS) // 8)
    assert cold["epochs"] == epochs and cold["sft_steps"] == epochs * per_epoch
    assert [c["epochs"] for c in cold["checks"]] == ([2, 3] if bar else [])
    assert all(c["format_rate"] == 0.0 for c in cold["checks"])
    assert cold["kept_epochs"] == (2 if bar else None)  # no check better than the first: its weights go on
    assert not list((tmp_path / "run").glob("cold-start-weights*"))  # the shelf is cleared


@pytest.mark.parametrize("lora", [False, True])
def test_the_kl_reference_is_the_model_rl_starts_from(tmp_path, monkeypatch, lora):
    """After a cold start the reference is the cold-started model, not the untouched base: the KL
    of the first RL step is 0. A resumed run gets the same reference back from the run directory."""
    monkeypatch.setattr(sft, "self_traces", lambda *a, **k: [dict(r) for r in ROWS])
    trainer = Trainer(run_config(tmp_path, beta=0.05, lora=lora, lora_r=4, max_steps=2, save_every=1))
    saved, finish = {}, trainer.finish

    def keep_the_reference():  # the run drops it before its last evaluation
        saved.update(trainer.reference.weights())
        finish()

    monkeypatch.setattr(trainer, "finish", keep_the_reference)
    assert trainer.train() == 0  # the whole run: base eval, cold start, RL, finish
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["cold_start"]["sft_steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # on the untouched base it was ~0.01
    assert saved and trainer.reference is None
    (tmp_path / "run" / "summary.json").write_text("{}")  # resume the finished run's last checkpoint
    again = Trainer(run_config(tmp_path, beta=0.05, lora=lora, lora_r=4, max_steps=2, save_every=1), resume=True)
    again.setup()
    assert again.reference.step == 0
    assert all(torch.equal(saved[n], t) for n, t in again.reference.weights().items())


def test_a_stop_while_the_cold_start_checkpoint_is_written_redoes_the_cold_start(tmp_path, monkeypatch):
    """The summary must not say the cold start is done before its checkpoint exists: a resumed
    run would train the base model while its report showed the cold start's evaluation."""
    from r1lite.train import checkpoint

    calls = []
    monkeypatch.setattr(sft, "self_traces", lambda *a, **k: calls.append(1) or [dict(r) for r in ROWS])
    real_save = checkpoint.save

    def killed_while_saving(*a, **k):
        raise KeyboardInterrupt  # the process dies in the middle of the save

    monkeypatch.setattr(checkpoint, "save", killed_while_saving)
    with pytest.raises(KeyboardInterrupt):
        Trainer(run_config(tmp_path, max_steps=1)).train()
    summary_file = tmp_path / "run" / "summary.json"
    assert not (json.loads(summary_file.read_text()) if summary_file.exists() else {}).get("cold_start_done")
    monkeypatch.setattr(checkpoint, "save", real_save)
    assert Trainer(run_config(tmp_path, max_steps=1), resume=True).train() == 0 and len(calls) == 2
    state = json.loads(next((tmp_path / "run" / "checkpoints").glob("step-*/state.json")).read_text())
    assert state["cold_start_done"] and json.loads(summary_file.read_text())["cold_start_done"]


def test_a_signal_during_the_cold_start_saves_it_and_stops(tmp_path, monkeypatch):
    """Signal handlers are in place from the start: a SIGINT during the cold start finishes it,
    writes its checkpoint, and exits 130 with the resume hint."""
    def traces_then_signal(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        return [dict(r) for r in ROWS]

    monkeypatch.setattr(sft, "self_traces", traces_then_signal)
    assert Trainer(run_config(tmp_path, max_steps=3)).train() == 130
    state = json.loads(next((tmp_path / "run" / "checkpoints").glob("step-*/state.json")).read_text())
    assert state["step"] == 0 and state["cold_start_done"]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
