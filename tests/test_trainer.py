"""GRPO runs on the tiny model: they train, checkpoint, resume exactly, and refuse bad configs."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
from r1lite.train import grpo
from r1lite.train.config import GRPOConfig, preset
from r1lite.train.policy import Policy, make_group_batch
from r1lite.train.trainer import WALL_CLOCK_KEYS, Trainer

SMALL = ["--model", "tiny", "--format", "plain", "--batch-size", "8", "--group-size", "4",
         "--max-new-tokens", "12", "--eval-items", "4", "--lr", "1e-3", "--seed", "3"]


def small_config(task, tmp_path, **kw) -> GRPOConfig:
    base = dict(model="tiny", task=task, format="plain", batch_size=8, group_size=4, max_new_tokens=12,
                eval_items=0, lr=1e-3, out=str(tmp_path / "run"), max_steps=2)
    return GRPOConfig(**{**base, **kw})


def test_train_runs_end_to_end_with_built_in_defaults(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("train", "--model", "tiny", "--task", "arithmetic", "--max-steps", "4", "--out", str(out),
            "--eval-items", "8", "--max-new-tokens", "16")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["steps"] == 4
    assert {"eval_before", "eval_after", "cost"} <= set(summary)
    assert summary["cost"]["flops"]["total"] > 0 and summary["cost"]["usd"] > 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("reward_mean", "reward_std", "accuracy", "format_rate", "completion_len_mean", "completion_len_max",
                "truncated_frac", "clip_frac", "entropy", "grad_norm", "lr", "step_seconds", "tokens_per_s",
                "rewards/accuracy_mean", "rewards/format_mean"):
        assert key in rows[0], key
    assert (out / "final" / "model.safetensors").exists() and (out / "final" / "config.json").exists()
    assert (out / "report.html").exists() and (out / "config.yaml").exists()
    assert "report:" in r.stdout and "cost:" in r.stdout


def _rollout_until(trainer, wanted, what: str) -> list[dict]:
    """Draw rollouts (half the test task's rows always score 1) until ``wanted(informative groups)``."""
    for _ in range(12):
        groups, _ = trainer.rollout()
        if wanted(grpo.informative_groups(torch.cat([g["reward"] for g in groups]), trainer.cfg.group_size)):
            return groups
    pytest.fail(f"need a batch with {what}")


def test_parameters_change_after_a_step(varied_task, tmp_path, monkeypatch):
    task, env = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    trainer = Trainer(small_config(task, tmp_path))
    trainer.setup()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train_step(_rollout_until(trainer, lambda keep: keep.any(), "varied rewards"))
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)


def _one_step_weights(task, tmp_path, name, groups=None, **kw):
    trainer = Trainer(small_config(task, tmp_path / name, batch_size=16, dtype="fp32", **kw))  # exact: fp32
    trainer.setup()
    if groups is None:
        groups = _rollout_until(trainer, lambda keep: keep.any() and not keep.all(),
                                "both informative and zero-variance groups")
    grads = {}
    # compare gradients, not weights: Adam's first step is blind to the gradient's scale
    trainer.optimizer.step = lambda: grads.update({n: p.grad.clone() for n, p in trainer.model.named_parameters()})
    trainer.train_step(groups)
    return groups, grads


@pytest.mark.filterwarnings("ignore:Seems like:UserWarning")
def test_micro_batches_and_skipped_groups_leave_the_update_unchanged(varied_task, tmp_path, monkeypatch):
    """Chunking a step into micro-batches, and leaving zero-advantage groups out of the passes
    (beta = 0), give the same gradient as one pass over every group."""
    task, env = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    groups, skipped = _one_step_weights(task, tmp_path, "skip", micro_batch_size=16)
    _, chunked = _one_step_weights(task, tmp_path, "chunked", groups, micro_batch_size=4)
    monkeypatch.setattr(grpo, "informative_groups", lambda r, g: torch.ones(len(r) // g, dtype=torch.bool))
    _, full = _one_step_weights(task, tmp_path, "full", groups, micro_batch_size=16)
    assert any(g.abs().sum() > 0 for g in full.values())
    for n in full:
        torch.testing.assert_close(skipped[n], full[n], rtol=1e-4, atol=1e-7, msg=n)
        torch.testing.assert_close(chunked[n], full[n], rtol=1e-4, atol=1e-7, msg=n)


def _two_steps(task, tmp_path, name, monkeypatch, force_full: bool):
    """A normal step, then a step where every group has equal rewards; the weights after both."""
    trainer = Trainer(small_config(task, tmp_path / name, batch_size=16, max_steps=10, dtype="fp32"))  # exact: fp32
    trainer.setup()
    groups = _rollout_until(trainer, lambda keep: keep.any(), "an informative group")
    trainer.train_step(groups)
    after_first = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    flat = [dict(g, reward=torch.zeros_like(g["reward"])) for g in groups]
    with monkeypatch.context() as m:
        if force_full:
            m.setattr(grpo, "informative_groups", lambda r, g: torch.ones(len(r) // g, dtype=torch.bool))
        out = trainer.train_step(flat)
    return after_first, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}, out


def test_a_step_with_no_informative_group_skips_the_passes_and_still_steps_adam(varied_task, tmp_path, monkeypatch):
    """All advantages 0 (beta = 0): no forward/backward, yet the weights move exactly as after a
    computed zero gradient (Adam's momentum from the step before)."""
    task, env = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    first, skipped, out = _two_steps(task, tmp_path, "skip", monkeypatch, force_full=False)
    _, full, _ = _two_steps(task, tmp_path, "full", monkeypatch, force_full=True)
    assert out["train_tokens"] == 0 and out["entropy"] is None
    assert any(not torch.equal(first[n], skipped[n]) for n in first)  # momentum moved the weights
    for n in full:
        torch.testing.assert_close(skipped[n], full[n], rtol=1e-5, atol=1e-8, msg=n)


def test_beta_zero_holds_no_reference_model(varied_task, tmp_path, monkeypatch):
    task, env = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    no_kl = Trainer(small_config(task, tmp_path, beta=0.0))
    no_kl.setup()
    assert no_kl.reference is None
    for lora in (False, True):
        with_kl = Trainer(small_config(task, tmp_path / f"b{lora}", beta=0.05, lora=lora, lora_r=4, max_steps=1))
        with_kl.setup()
        with_kl.grpo_loop()
        assert with_kl.reference.step == 0
        assert read_rows(tmp_path / f"b{lora}" / "run" / "metrics.jsonl")[0]["kl"] == pytest.approx(0.0, abs=1e-6)
        if not lora:
            assert not any(p.requires_grad for p in with_kl.reference.frozen.parameters())


COLD_START_ROWS = [{"item_id": str(i), "messages": [{"role": "user", "content": f"What is {i} + {i}?"}], "prefill": "",
                    "completion": f"<think>{i} + {i} = {2 * i}</think><answer>{2 * i}</answer>"} for i in range(8)]


def cold_start_config(tmp_path, **kw):
    return small_config("arithmetic", tmp_path, **{"cold_start_items": 8, "cold_start_lr": 5e-3, "cold_start_epochs": 2, **kw})


@pytest.mark.parametrize("lora", [False, True])
def test_the_kl_reference_is_the_model_rl_starts_from(tmp_path, monkeypatch, lora):
    """After a cold start the reference is the cold-started model, not the untouched base: the KL
    of the first RL step is 0. A resumed run gets the same reference back from the run directory."""
    from r1lite.train import sft

    monkeypatch.setattr(sft, "self_traces", lambda *a, **k: [dict(r) for r in COLD_START_ROWS])
    trainer = Trainer(cold_start_config(tmp_path, beta=0.05, lora=lora, lora_r=4, max_steps=2, save_every=1))
    trained = []
    real_train_sft = sft.train_sft
    monkeypatch.setattr(sft, "train_sft", lambda model, *a, **k: trained.append(1) or real_train_sft(model, *a, **k))
    assert trainer.train() == 0 and trained  # the whole run: base eval, cold start, RL, finish
    rows = read_rows(tmp_path / "run" / "metrics.jsonl")
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # on the untouched base it was ~0.01
    saved = trainer.reference.weights()
    (tmp_path / "run" / "summary.json").write_text("{}")  # resume the finished run's last checkpoint
    again = Trainer(cold_start_config(tmp_path, beta=0.05, lora=lora, lora_r=4, max_steps=2, save_every=1), resume=True)
    again.setup()
    assert again.reference.step == 0
    assert all(torch.equal(saved[n], t) for n, t in again.reference.weights().items())


def test_the_reference_is_reset_to_the_policy_every_n_steps(varied_task, tmp_path, monkeypatch):
    task, env = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    trainer = Trainer(small_config(task, tmp_path, beta=0.05, ref_reset_every=2, max_steps=3, save_every=0))
    trainer.setup()
    trainer.grpo_loop()
    rows = read_rows(tmp_path / "run" / "metrics.jsonl")
    assert trainer.reference.step == 2 and rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert rows[2]["kl"] < rows[1]["kl"] or rows[1]["kl"] == 0  # the reference moved up to the policy of step 2
    assert [f.name for f in (tmp_path / "run" / "reference").iterdir()] == ["step-000002.safetensors"]


def test_a_stop_while_the_cold_start_checkpoint_is_written_redoes_the_cold_start(tmp_path, monkeypatch):
    """The summary must not say the cold start is done before its checkpoint exists: a resumed
    run would train the base model while its report showed the cold start's evaluation."""
    from r1lite.train import checkpoint, sft

    calls = []
    monkeypatch.setattr(sft, "self_traces", lambda *a, **k: calls.append(1) or [dict(r) for r in COLD_START_ROWS])
    real_save = checkpoint.save

    def killed_while_saving(*a, **k):
        raise KeyboardInterrupt  # the process dies in the middle of the save

    monkeypatch.setattr(checkpoint, "save", killed_while_saving)
    with pytest.raises(KeyboardInterrupt):
        Trainer(cold_start_config(tmp_path, max_steps=1)).train()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text()) if (tmp_path / "run" / "summary.json").exists() else {}
    assert not summary.get("cold_start_done")
    monkeypatch.setattr(checkpoint, "save", real_save)
    trainer = Trainer(cold_start_config(tmp_path, max_steps=1), resume=True)
    assert trainer.train() == 0 and len(calls) == 2  # the cold start ran again
    state = json.loads(next((tmp_path / "run" / "checkpoints").glob("step-*/state.json")).read_text())
    assert state["cold_start_done"] and json.loads((tmp_path / "run" / "summary.json").read_text())["cold_start_done"]


def test_a_signal_during_the_cold_start_saves_it_and_stops(tmp_path, monkeypatch):
    """Signal handlers are in place from the start: a SIGINT during the cold start finishes it,
    writes its checkpoint, and exits 130 with the resume hint."""
    import os

    from r1lite.train import sft

    def traces_then_signal(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)
        return [dict(r) for r in COLD_START_ROWS]

    monkeypatch.setattr(sft, "self_traces", traces_then_signal)
    assert Trainer(cold_start_config(tmp_path, max_steps=3)).train() == 130
    state = json.loads(next((tmp_path / "run" / "checkpoints").glob("step-*/state.json")).read_text())
    assert state["step"] == 0 and state["cold_start_done"]
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_training_log_probs_use_the_sampling_temperature(varied_task, tmp_path, monkeypatch):
    """Rollouts sample from softmax(logits / T); the gradient, ratio, KL and entropy must be taken
    under the same distribution."""
    from r1lite.train.policy import completion_logprobs

    task, env = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    trainer = Trainer(small_config(task, tmp_path, temperature=0.5, beta=0.05, dtype="fp32"))
    trainer.setup()
    seen = []
    real = grpo.policy_loss
    monkeypatch.setattr(grpo, "policy_loss", lambda logp, old, ref, *a: seen.append((logp.detach(), ref)) or real(logp, old, ref, *a))
    groups = _rollout_until(trainer, lambda keep: keep.any(), "varied rewards")
    batch = make_group_batch([g["prompt"] for g in groups], [i // 4 for i in range(8)],
                             [c.token_ids for g in groups for c in g["completions"]], trainer.tokenizer.pad_token_id)
    with torch.no_grad():
        at_t = completion_logprobs(trainer.model, batch, temperature=0.5)[0]
        at_1 = completion_logprobs(trainer.model, batch)[0]
    trainer.train_step(groups)
    logp, ref = seen[0]
    width = logp.shape[1]
    torch.testing.assert_close(logp, at_t[:, :width], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ref, at_t[:, :width], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logp, at_1[:, :width], atol=1e-3)


def test_the_generic_training_path_runs_without_dropout(tmp_path, monkeypatch):
    """A non-Llama model (GPT-2, dropout 0.1) trains on the log-probs of the model as it samples:
    the train step's log-probs equal an eval-mode forward."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from r1lite.models import load_tokenizer
    from r1lite.train.policy import completion_logprobs

    tokenizer = load_tokenizer("tiny")
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=512,
                                      resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1))
    gpt2.save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    trainer = Trainer(small_config("arithmetic", tmp_path, model=str(tmp_path / "gpt2"), beta=0.05, dtype="fp32"))
    trainer.setup()
    seen = []
    real = grpo.policy_loss
    monkeypatch.setattr(grpo, "policy_loss", lambda logp, *a: seen.append(logp.detach()) or real(logp, *a))
    groups, _ = trainer.rollout()
    batch = make_group_batch([g["prompt"] for g in groups], [i // 4 for i in range(8)],
                             [c.token_ids for g in groups for c in g["completions"]], tokenizer.pad_token_id)
    with torch.no_grad():  # a copy in eval mode: the trainer's own model keeps whatever mode it has
        expected = completion_logprobs(__import__("copy").deepcopy(trainer.model).eval(), batch)[0]
    trainer.train_step(groups)
    torch.testing.assert_close(seen[0], expected[:, :seen[0].shape[1]], atol=1e-5, rtol=1e-5)


def test_dynamic_sampling_drops_zero_variance_groups(varied_task, tmp_path, monkeypatch):
    task, env = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    trainer = Trainer(small_config(task, tmp_path, dynamic_sampling=True, max_refill_rounds=8))
    trainer.setup()
    groups, info = trainer.rollout()
    # half the prompts ("fixed" rows) always score 1: their groups must all be gone
    assert info["groups_sampled"] > info["groups_kept"] == 2
    for g in groups:
        assert float(g["reward"].std()) > 0
    assert any(float(g["reward"].std()) == 0 for g in info["seen"])


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def strip_clock(rows):
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK_KEYS and not k.endswith("tokens_per_s")} for r in rows]


def test_killed_run_resumes_to_identical_weights_and_metrics(varied_task, tmp_path):
    task, env = varied_task
    flags = ["train", *SMALL, "--task", task, "--max-steps", "6", "--save-every", "2"]
    whole = tmp_path / "whole"
    r = subprocess.run([sys.executable, "-m", "r1lite", *flags, "--out", str(whole)], capture_output=True,
                       text=True, env={**__import__("os").environ, **env}, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "r1lite", *flags, "--out", str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**__import__("os").environ, **env}, cwd=ROOT)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(read_rows(metrics)) >= 3  # killed after step 3: its row is past the step-2 checkpoint
    r = subprocess.run([sys.executable, "-m", "r1lite", *flags, "--out", str(killed), "--resume", str(killed)],
                       capture_output=True, text=True, env={**__import__("os").environ, **env}, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]

    a = load_file(whole / "final" / "model.safetensors")
    b = load_file(killed / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert strip_clock(read_rows(whole / "metrics.jsonl")) == strip_clock(read_rows(metrics))

    # resuming a finished run changes nothing
    stamp = {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()}
    r = subprocess.run([sys.executable, "-m", "r1lite", *flags, "--out", str(killed), "--resume", str(killed)],
                       capture_output=True, text=True, env={**__import__("os").environ, **env}, cwd=ROOT, timeout=600)
    assert r.returncode == 0 and "nothing to do" in r.stdout
    assert stamp == {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file()}


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(varied_task, tmp_path):
    task, env = varied_task
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "r1lite", "train", *SMALL, "--task", task, "--max-steps", "50",
                             "--save-every", "0", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**__import__("os").environ, **env}, cwd=ROOT)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or not metrics.read_text().strip()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    state = json.loads((out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip() / "state.json").read_text())
    assert state["step"] == len(read_rows(metrics)) >= 1
    assert "--resume" in stdout


def test_resume_with_different_flags_is_refused(cli, tmp_path):
    out = tmp_path / "run"
    assert cli("train", "--model", "tiny", "--task", "arithmetic", "--max-steps", "1", "--eval-items", "0",
               "--max-new-tokens", "4", "--batch-size", "4", "--group-size", "2", "--out", str(out)).returncode == 0
    r = cli("train", "--model", "tiny", "--task", "arithmetic", "--max-steps", "1", "--eval-items", "0",
            "--max-new-tokens", "8", "--batch-size", "4", "--group-size", "2", "--out", str(out), "--resume", str(out))
    assert r.returncode == 2 and "max_new_tokens" in r.stderr and "Traceback" not in r.stderr
    r = cli("train", "--model", "tiny", "--task", "arithmetic", "--max-steps", "1", "--out", str(out))
    assert r.returncode == 2 and "already holds a run" in r.stderr


@pytest.mark.parametrize("flags, yaml_text, needle", [
    (["--group-size", "1", "--batch-size", "4"], None, "group_size=1"),
    (["--epsilon", "0.2", "--epsilon-high", "0.1"], None, "epsilon_high"),
    (["--loss-type", "ppo"], None, "loss_type 'ppo'"),
    (["--batch-size", "10", "--group-size", "4"], None, "not divisible"),
    ([], "lr: fast\n", "key 'lr' must be a number"),
    ([], "group_size: 2.5\n", "key 'group_size' must be an integer"),
    ([], "learning_rate: 0.1\n", "unknown key 'learning_rate'"),
    ([], "lr: [0.1\n", "not valid YAML"),
    (["--format", "plain:7"], None, "format 'plain:7' is unknown"),
    (["--device", "cuda"], None, "--device cuda"),
    (["--temperature", "0"], None, "temperature=0"),
    (["--task", "arithmetic", "--task-opt", "digits=x"], None, "option digits='x'"),
    ([], "algorithm: ppo\n", "algorithm 'ppo' is unknown"),
    (["--beta", "0", "--ref-reset-every", "10"], None, "ref_reset_every=10"),
    ([], "cold_start_min_format: 95\n", "cold_start_min_format=95.0 is a rate"),
    ([], "cold_start_min_format: 0.9\ncold_start_max_epochs: 1\n", "cold_start_max_epochs=1 < cold_start_epochs=2"),
    ([], "cold_start_min_accuracy: 55\n", "cold_start_min_accuracy=55.0 is a rate"),
    ([], "cold_start_min_accuracy: 0.5\ncold_start_max_epochs: 1\n", "cold_start_max_epochs=1 < cold_start_epochs=2"),
    ([], "cold_start_check_every: 0\n", "cold_start_check_every=0.0 must be > 0"),
    ([], "cold_start_min_accuracy: 0.5\ncold_start_max_accuracy: 60\n", "cold_start_max_accuracy=60.0 is a rate"),
    ([], "cold_start_max_accuracy: 0.6\n", "set cold_start_min_accuracy too"),
    ([], "cold_start_min_accuracy: 0.6\ncold_start_max_accuracy: 0.55\n", "must be above cold_start_min_accuracy=0.6"),
])
def test_invalid_configs_fail_before_anything_is_written_or_loaded(cli, tmp_path, flags, yaml_text, needle):
    args = ["train", "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "run"), *flags]
    if yaml_text is not None:
        recipe = tmp_path / "recipe.yaml"
        recipe.write_text(yaml_text)
        args += ["--config", str(recipe)]
    r = cli(*args)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_cut_off_last_metrics_line_is_dropped_on_resume(varied_task, tmp_path, monkeypatch, capsys):
    """A kill while a metrics row is appended leaves half a line: resume drops it and says so."""
    task, env = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    cfg = small_config(task, tmp_path, max_steps=4, save_every=1)
    first = Trainer(cfg)
    first.setup()
    cfg.max_steps = 2  # stop the loop after two steps, as a kill would
    first.grpo_loop()
    cfg.max_steps = 4
    metrics = tmp_path / "run" / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"step": 3, "reward_me')
    again = Trainer(cfg, resume=True)
    again.setup()
    assert again.step == 2 and len(read_rows(metrics)) == 2
    assert "metrics.jsonl:3 is cut off" in capsys.readouterr().out


def test_a_full_disk_stops_the_run_in_one_line_and_it_resumes(varied_task, tmp_path, monkeypatch, capsys):
    """The disk fills while the second checkpoint is written: the run stops with one line naming
    the file, the full disk and the --resume that continues it; after that the run finishes."""
    import errno

    from r1lite.cli import main
    from r1lite.train import checkpoint

    task, env = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    out = tmp_path / "run"
    flags = ["train", *SMALL, "--task", task, "--max-steps", "2", "--save-every", "1", "--eval-items", "0",
             "--out", str(out)]
    real_save_file, calls = checkpoint.save_file, []

    def full_on_the_second(tensors, path, *a, **k):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save_file(tensors, path, *a, **k)

    monkeypatch.setattr(checkpoint, "save_file", full_on_the_second)
    assert main(flags) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "step-000002: the disk is full" in err and f"--resume {out} continues from its last checkpoint (step-000001)" in err
    assert checkpoint.latest(out).name == "step-000001"
    assert main([*flags, "--resume", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["finished"]


def test_algorithm_presets_set_the_published_fields_and_explicit_keys_win():
    from r1lite.config import build

    dapo = build(GRPOConfig, {"algorithm": "dapo", "max_new_tokens": 100}, presets=preset)
    assert (dapo.loss_type, dapo.epsilon_high, dapo.dynamic_sampling, dapo.overlong_buffer, dapo.beta) == ("dapo", 0.28, True, 20, 0.0)
    dr = build(GRPOConfig, {"algorithm": "dr_grpo"}, presets=preset)
    assert (dr.loss_type, dr.scale_rewards) == ("dr_grpo", "none")
    r1 = build(GRPOConfig, {"algorithm": "r1"}, {"lr": 1e-5}, presets=preset)
    assert (r1.lr, r1.beta, r1.group_size, r1.prompts_per_step, r1.temperature, r1.ref_reset_every) == (1e-5, 0.001, 16, 32, 1.0, 400)
    r1_g8 = build(GRPOConfig, {"algorithm": "r1", "group_size": 8}, presets=preset)
    assert (r1_g8.group_size, r1_g8.prompts_per_step) == (8, 32)
    none = build(GRPOConfig, {"loss_type": "dapo"}, presets=preset)
    assert (none.epsilon_high, none.dynamic_sampling, none.overlong_buffer) == (0.2, False, 0)  # today's fields


# reward mean, completion length mean, loss, gradient norm, entropy of steps 1-4 (step 3: every group
# had equal rewards, so no pass ran); measured on an AVX-512 BF16 EPYC, the same on AVX2
PINNED_GRPO = [[1.0375, 12.0, 6.519e-09, 0.3939134, 10.790106], [1.0375, 12.0, 6.519e-09, 0.4067211, 10.790100],
               [1.1, 12.0, 0.0, 0.0, None], [0.7875, 12.0, 9.313e-09, 0.5440509, 10.790148]]
PINNED_SFT = [10.836705, 10.618560, 10.444869, 10.316196]  # token-mean NLL of the 4 optimizer steps


def test_a_seeded_tiny_run_reproduces_its_pinned_first_steps(varied_task, tmp_path, monkeypatch):
    """Numeric drift anywhere (sampling, the decode kernels, the training forward, the loss, AdamW)
    moves these figures: rewards and lengths pin the rollouts, loss, gradient norm and entropy the
    update. fp32 on our decode kernels, whose tokens are the same on every x86-64 CPU kind."""
    from r1lite.engine import kernels

    if kernels.load() is None:
        pytest.skip("the pinned rollouts were sampled on the CPU kernels, which cannot be built here")
    task, env = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    trainer = Trainer(small_config(task, tmp_path, max_steps=4, batch_size=16, dtype="fp32", seed=3, save_every=0))
    trainer.setup()
    trainer.grpo_loop()
    rows = read_rows(tmp_path / "run" / "metrics.jsonl")
    got = [[r[k] for k in ("reward_mean", "completion_len_mean", "loss", "grad_norm", "entropy")] for r in rows]
    for step, (ours, pinned) in enumerate(zip(got, PINNED_GRPO, strict=True), 1):
        for a, b in zip(ours, pinned):  # None: no pass ran (entropy unmeasured)
            assert (a is None and b is None) or a == pytest.approx(b, rel=1e-4, abs=1e-6), f"step {step}: {ours} vs pinned {pinned}"


def test_seeded_sft_reproduces_its_pinned_losses():
    from r1lite.models import load_model, resolve_runtime
    from r1lite.train import sft

    model, tokenizer = load_model("tiny", resolve_runtime("cpu", "fp32"), seed=0)
    pairs = [sft.encode_pair(tokenizer, r["messages"], r["prefill"], r["completion"]) for r in COLD_START_ROWS]
    history = sft.train_sft(Policy(model), tokenizer, pairs, epochs=2, lr=1e-3, batch_size=4, micro_batch_size=2, seed=0,
                            autocast=__import__("contextlib").nullcontext, device=torch.device("cpu"))
    assert [r["loss"] for r in history] == pytest.approx(PINNED_SFT, rel=1e-4)


def test_sft_trains_more_epochs_while_asked_up_to_the_cap():
    """``again`` is asked after the planned epochs and after each extra one; the optimizer carries on
    (the first planned epochs are those of a plain 2-epoch run), and ``max_epochs`` caps it."""
    from r1lite.models import load_model, resolve_runtime
    from r1lite.train import sft

    def run(again, max_epochs):
        model, tokenizer = load_model("tiny", resolve_runtime("cpu", "fp32"), seed=0)
        pairs = [sft.encode_pair(tokenizer, r["messages"], r["prefill"], r["completion"]) for r in COLD_START_ROWS]
        asked = []
        history = sft.train_sft(Policy(model), tokenizer, pairs, epochs=2, lr=1e-3, batch_size=4, micro_batch_size=2,
                                seed=0, autocast=__import__("contextlib").nullcontext, device=torch.device("cpu"),
                                max_epochs=max_epochs, again=lambda done: asked.append(done) or again(done))
        return sorted({r["epoch"] for r in history}), asked, [r["loss"] for r in history]

    epochs, asked, losses = run(lambda done: done < 3, max_epochs=5)
    assert epochs == [0, 1, 2] and asked == [2, 3]
    assert losses[:len(PINNED_SFT)] == pytest.approx(PINNED_SFT, rel=1e-4)
    epochs, asked, _ = run(lambda done: True, max_epochs=4)
    assert epochs == [0, 1, 2, 3] and asked == [2, 3]
    epochs, asked, _ = run(lambda done: False, max_epochs=4)
    assert epochs == [0, 1] and asked == [2]


def test_sft_checks_every_fraction_of_an_epoch():
    """With ``check_every`` 0.5 ``again`` is asked after the planned epochs and every half epoch
    after them (rounded to whole steps), the steps run on through the next epoch's order, and the
    cap still holds; the first steps are those of a plain run."""
    from r1lite.models import load_model, resolve_runtime
    from r1lite.train import sft

    def run(again, epochs, max_epochs):
        model, tokenizer = load_model("tiny", resolve_runtime("cpu", "fp32"), seed=0)
        pairs = [sft.encode_pair(tokenizer, r["messages"], r["prefill"], r["completion"]) for r in COLD_START_ROWS]
        asked = []
        history = sft.train_sft(Policy(model), tokenizer, pairs, epochs=epochs, lr=1e-3, batch_size=2,
                                micro_batch_size=2, seed=0, autocast=__import__("contextlib").nullcontext,
                                device=torch.device("cpu"), max_epochs=max_epochs, check_every=0.5,
                                again=lambda done: asked.append(done) or again(done))
        return len(history), [r["epoch"] for r in history], asked

    steps, epochs, asked = run(lambda done: done < 2, epochs=1, max_epochs=4)  # 4 steps an epoch
    assert asked == [1.0, 1.5, 2.0] and steps == 8 and epochs == [0] * 4 + [1] * 4
    steps, _, asked = run(lambda done: done < 1.5, epochs=1, max_epochs=4)
    assert asked == [1.0, 1.5] and steps == 6
    steps, _, asked = run(lambda done: True, epochs=1, max_epochs=2)
    assert asked == [1.0, 1.5] and steps == 8  # not asked at the cap


@pytest.mark.parametrize("bar, epochs", [(1.0, 3), (0.0, 2)])
def test_the_cold_start_trains_on_until_the_format_check_passes(tmp_path, monkeypatch, bar, epochs):
    """With cold_start_min_format the cold start decodes train prompts after its epochs and trains
    another while their format rate is below the bar (the tiny random model never writes the
    format: it runs to cold_start_max_epochs, checked before each extra epoch and at the cap);
    without it no check runs."""
    from r1lite.train import sft

    monkeypatch.setattr(sft, "self_traces", lambda *a, **k: [dict(r) for r in COLD_START_ROWS])
    cfg = cold_start_config(tmp_path, format="r1", max_steps=1, cold_start_min_format=bar, cold_start_max_epochs=3,
                            cold_start_check_items=4)
    trainer = Trainer(cfg)
    assert trainer.train() == 0
    cold = json.loads((tmp_path / "run" / "summary.json").read_text())["cold_start"]
    per_epoch = -(-len(COLD_START_ROWS) // cfg.cold_start_batch_size)
    assert cold["epochs"] == epochs and cold["sft_steps"] == epochs * per_epoch
    assert [c["epochs"] for c in cold["checks"]] == ([2, 3] if bar else [])
    assert all(c["format_rate"] == 0.0 for c in cold["checks"])
    assert cold["kept_epochs"] == (2 if bar else None)  # no check better than the first: its weights go on


def checks_read(monkeypatch, readings: list[float]) -> dict:
    """A self-sampled cold start on COLD_START_ROWS whose checks read ``readings`` (format 100%);
    the returned dict gets the weights at each check ("checked") and those evaluated after the SFT
    ("after_sft")."""
    from r1lite.train import coldstart, sft

    monkeypatch.setattr(sft, "self_traces", lambda *a, **k: [dict(r) for r in COLD_START_ROWS])
    values = iter(readings)
    seen: dict = {}

    def fingerprint(trainer):
        return [p.detach().clone() for p in trainer.model.parameters()]

    def fake_check(trainer):
        seen.setdefault("checked", []).append(fingerprint(trainer))
        return {"format_rate": 1.0, "accuracy": next(values)}

    run_eval = Trainer.run_eval

    def recording_eval(self, key, *args, **kwargs):
        if key == "eval_after_sft":
            seen["after_sft"] = fingerprint(self)
        return run_eval(self, key, *args, **kwargs)

    monkeypatch.setattr(coldstart, "check", fake_check)
    monkeypatch.setattr(Trainer, "run_eval", recording_eval)
    return seen


def test_a_cold_start_at_its_cap_goes_on_from_its_best_checked_weights(tmp_path, monkeypatch):
    """When no check reaches the bars by cold_start_max_epochs, the cap is checked too and RL starts
    from the weights of the best check, not from wherever the last epoch left them."""
    seen = checks_read(monkeypatch, [0.2, 0.45, 0.3])
    cfg = cold_start_config(tmp_path, format="r1", max_steps=1, cold_start_epochs=1, cold_start_min_accuracy=0.5,
                            cold_start_check_every=0.5, cold_start_max_epochs=2, cold_start_batch_size=2)
    assert Trainer(cfg).train() == 0
    cold = json.loads((tmp_path / "run" / "summary.json").read_text())["cold_start"]
    assert [c["epochs"] for c in cold["checks"]] == [1.0, 1.5, 2.0]
    assert cold["kept_epochs"] == 1.5 and cold["epochs"] == 2.0
    best, last = seen["checked"][1], seen["checked"][2]
    assert any(not torch.equal(a, b) for a, b in zip(best, last))
    assert all(torch.equal(a, b) for a, b in zip(seen["after_sft"], best))


def test_the_cold_start_trains_on_until_the_check_reaches_its_accuracy_bar(tmp_path, monkeypatch):
    """With cold_start_min_accuracy the check after the planned epochs and every
    cold_start_check_every epochs after them asks for more while the accuracy on its train prompts
    is below the bar, and the cold start stops at the first check that reaches it; every check is
    in the summary."""
    from r1lite.train import coldstart, sft

    monkeypatch.setattr(sft, "self_traces", lambda *a, **k: [dict(r) for r in COLD_START_ROWS])
    readings = iter([{"format_rate": 1.0, "accuracy": a} for a in (0.2, 0.4, 0.5, 0.7)])
    monkeypatch.setattr(coldstart, "check", lambda trainer: next(readings))
    cfg = cold_start_config(tmp_path, format="r1", max_steps=1, cold_start_epochs=1, cold_start_min_accuracy=0.5,
                            cold_start_check_every=0.5, cold_start_max_epochs=4, cold_start_batch_size=2)
    assert Trainer(cfg).train() == 0
    cold = json.loads((tmp_path / "run" / "summary.json").read_text())["cold_start"]
    assert [c["epochs"] for c in cold["checks"]] == [1.0, 1.5, 2.0]
    assert [c["accuracy"] for c in cold["checks"]] == [0.2, 0.4, 0.5]
    assert cold["epochs"] == 2.0 and cold["sft_steps"] == 8


@pytest.mark.parametrize("readings, points, t", [
    ([0.2, 0.8, 0.7, 0.4, 0.55], [0.5, 0.25, 0.375], 0.375),  # above, below, between: lands at the third
    ([0.2, 0.8, 0.7, 0.7, 0.7, 0.7], [0.5, 0.25, 0.125, 0.0625], 0.0625),  # never between: the nearest above
    ([0.2, 0.8, 0.7, 0.4, 0.45, 0.3], [0.5, 0.25, 0.375, 0.4375], 0.5),  # last below: back up to the nearest above
])
def test_a_cold_start_past_its_ceiling_bisects_back_toward_the_check_before(tmp_path, monkeypatch, readings, points,
                                                                            t):
    """With cold_start_max_accuracy a check that meets the bar above the ceiling does not end the
    cold start there: the weights step back along the straight line to those of the check before
    (bisected: half way, then a quarter or three quarters...) until a check lands between bar and
    ceiling, and RL starts from exactly those interpolated weights."""
    seen = checks_read(monkeypatch, readings)
    cfg = cold_start_config(tmp_path, format="r1", max_steps=1, cold_start_epochs=1, cold_start_min_accuracy=0.5,
                            cold_start_max_accuracy=0.6, cold_start_check_every=0.5, cold_start_max_epochs=4,
                            cold_start_batch_size=2)
    assert Trainer(cfg).train() == 0
    cold = json.loads((tmp_path / "run" / "summary.json").read_text())["cold_start"]
    assert [c["accuracy"] for c in cold["checks"]] == readings
    assert [c.get("t") for c in cold["checks"]] == [None, None, *points]
    assert cold["landed"] == {"t": t, "between": [1.0, 1.5]} and cold["epochs"] == 1.5
    start, end = seen["checked"][0], seen["checked"][1]
    assert any(not torch.equal(a, b) for a, b in zip(start, end))
    for p, a, b in zip(seen["after_sft"], start, end):
        torch.testing.assert_close(p, torch.lerp(a, b, t))


def test_every_seed_is_scored_on_the_same_held_out_items(tmp_path):
    items = []
    for seed in (1, 2):
        trainer = Trainer(small_config("arithmetic", tmp_path / str(seed), seed=seed, eval_items=16))
        trainer.setup()
        items.append([i.id for i in trainer.eval_items])
    assert items[0] == items[1] and len(items[0]) == 16
    other = Trainer(small_config("arithmetic", tmp_path / "3", seed=1, eval_items=16, eval_seed=5))
    other.setup()
    assert [i.id for i in other.eval_items] != items[0]
