"""GRPO runs on the tiny model: they train, checkpoint, resume exactly, and refuse bad configs."""

from pathlib import Path
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
from r1lite import grpo
from r1lite.grpo import GRPOConfig
from r1lite.trainer import WALL_CLOCK_KEYS, Trainer

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
    for _ in range(4):
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
    trainer = Trainer(small_config(task, tmp_path / name, batch_size=16, **kw))
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
    trainer = Trainer(small_config(task, tmp_path / name, batch_size=16, max_steps=10))
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
    with_kl = Trainer(small_config(task, tmp_path / "b", beta=0.05))
    with_kl.setup()
    assert with_kl.reference is not None and not any(p.requires_grad for p in with_kl.reference.parameters())
    groups, _ = with_kl.rollout()
    assert with_kl.train_step(groups)["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at step 1
    lora = Trainer(small_config(task, tmp_path / "c", beta=0.05, lora=True, lora_r=4))
    lora.setup()
    assert lora.reference is None  # the base with adapters disabled is the reference
    assert lora.train_step(lora.rollout()[0])["kl"] is not None


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
])
def test_invalid_configs_fail_before_loading_a_model(cli, tmp_path, flags, yaml_text, needle):
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
