"""GRPO runs on the tiny model: they train, checkpoint, resume exactly, and refuse bad configs."""

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from r1lite.config import build
from r1lite.train import grpo
from r1lite.train.config import GRPOConfig, preset
from r1lite.train.policy import make_group_batch
from r1lite.train.trainer import WALL_CLOCK_KEYS, Trainer

ROOT = Path(__file__).resolve().parents[1]

SMALL = ["--model", "tiny", "--format", "plain", "--batch-size", "8", "--group-size", "4", "--no-preflight",
         "--max-new-tokens", "12", "--eval-items", "4", "--lr", "1e-3", "--seed", "3"]


def small_config(task, tmp_path, **kw) -> GRPOConfig:
    base = dict(model="tiny", task=task, format="plain", batch_size=8, group_size=4, max_new_tokens=12,
                eval_items=0, lr=1e-3, out=str(tmp_path / "run"), max_steps=2, preflight=False)
    return build(GRPOConfig, {**base, **kw})


def test_train_runs_end_to_end_with_built_in_defaults(cli, tmp_path):
    out = tmp_path / "run"
    r = cli("train", "--model", "tiny", "--task", "arithmetic", "--max-steps", "4", "--no-preflight", "--out", out,
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
        if wanted(grpo.informative_groups(torch.cat([g["reward"] for g in groups]), trainer.cfg.optim.group_size)):
            return groups
    pytest.fail(f"need a batch with {what}")


def test_parameters_change_after_a_step(varied_task, tmp_path, monkeypatch):
    task, env, options = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    trainer = Trainer(small_config(task, tmp_path, task_options=options))
    trainer.setup()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train_step(_rollout_until(trainer, lambda keep: keep.any(), "varied rewards"))
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])]
    assert len(changed) == len(before)


def test_a_decoding_that_fails_inside_engine_weights_raises_its_own_error(tmp_path):
    """The engine's copy is dropped after a failed decoding too, and the failure is what surfaces
    (not the unload's refusal while the failed requests still sit in the engine)."""
    trainer = Trainer(small_config("arithmetic", tmp_path))
    trainer.setup()

    forward, calls = trainer.engine.decoder.forward, []

    def broken(*args, **kwargs):  # a few steps in: a batch is running and requests wait
        calls.append(1)
        if len(calls) > 3:
            raise ValueError("the decoder broke")
        return forward(*args, **kwargs)
    trainer.engine.decoder.forward = broken
    with pytest.raises(ValueError, match="the decoder broke"):
        trainer.rollout()
    assert not trainer.engine.has_work and trainer.engine.decoder.layers is None


@pytest.mark.parametrize("algorithm", ["gspo", "cispo"])
def test_gspo_and_cispo_presets_train_with_mu_4(algorithm, varied_task, tmp_path, monkeypatch):
    """The presets' four updates on one batch: old log-probs stored, the loss finite, every weight moves."""
    task, env, options = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    trainer = Trainer(build(GRPOConfig, {**dict(model="tiny", task=task, format="plain", batch_size=8, group_size=4,
                                                max_new_tokens=12, eval_items=0, lr=1e-3, out=str(tmp_path / "run")),
                                         "algorithm": algorithm, "task_options": options}, presets=preset))
    assert trainer.cfg.optim.mu == 4
    trainer.setup()
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    result = trainer.train_step(_rollout_until(trainer, lambda keep: keep.any(), "varied rewards"))
    assert math.isfinite(result["loss"]) and result["loss_tokens"] > 0
    assert all(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())


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
    task, env, options = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    groups, skipped = _one_step_weights(task, tmp_path, "skip", micro_batch_size=16, task_options=options)
    _, chunked = _one_step_weights(task, tmp_path, "chunked", groups, micro_batch_size=4, task_options=options)
    monkeypatch.setattr(grpo, "informative_groups", lambda r, g: torch.ones(len(r) // g, dtype=torch.bool))
    _, full = _one_step_weights(task, tmp_path, "full", groups, micro_batch_size=16, task_options=options)
    assert any(g.abs().sum() > 0 for g in full.values())
    for n in full:
        torch.testing.assert_close(skipped[n], full[n], rtol=1e-4, atol=1e-7, msg=n)
        torch.testing.assert_close(chunked[n], full[n], rtol=1e-4, atol=1e-7, msg=n)


def _two_steps(task, options, tmp_path, name, monkeypatch, force_full: bool):
    """A normal step, then a step where every group has equal rewards; the weights after both."""
    trainer = Trainer(small_config(task, tmp_path / name, batch_size=16, max_steps=10, dtype="fp32", task_options=options))  # exact: fp32
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
    task, env, options = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    first, skipped, out = _two_steps(task, options, tmp_path, "skip", monkeypatch, force_full=False)
    _, full, _ = _two_steps(task, options, tmp_path, "full", monkeypatch, force_full=True)
    assert out["train_tokens"] == 0 and out["entropy"] is None
    assert any(not torch.equal(first[n], skipped[n]) for n in first)  # momentum moved the weights
    for n in full:
        torch.testing.assert_close(skipped[n], full[n], rtol=1e-5, atol=1e-8, msg=n)


def test_beta_zero_holds_no_reference_model(varied_task, tmp_path, monkeypatch):
    task, env, options = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    no_kl = Trainer(small_config(task, tmp_path, beta=0.0, task_options=options))
    no_kl.setup()
    assert no_kl.reference is None
    for lora in (False, True):
        with_kl = Trainer(small_config(task, tmp_path / f"b{lora}", beta=0.05, lora=lora, lora_r=4, max_steps=1, task_options=options))
        with_kl.setup()
        with_kl.grpo_loop()
        assert with_kl.reference.step == 0
        assert read_rows(tmp_path / f"b{lora}" / "run" / "metrics.jsonl")[0]["kl"] == pytest.approx(0.0, abs=1e-6)
        if not lora:
            assert not any(p.requires_grad for p in with_kl.reference.frozen.parameters())


def test_the_last_evaluation_runs_without_the_optimizer_state(varied_task, tmp_path, monkeypatch):
    """AdamW's state (two fp32 copies of the weights) and the reference are in the last checkpoint:
    the evaluation after training does not hold them beside its own working set."""
    task, env, options = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    trainer = Trainer(small_config(task, tmp_path, beta=0.05, eval_items=4, task_options=options))
    held, run_eval = {}, trainer.run_eval

    def spy(key, fmt):
        held[key] = (len(trainer.optimizer.state), trainer.reference is not None)
        return run_eval(key, fmt)

    monkeypatch.setattr(trainer, "run_eval", spy)
    assert trainer.train() == 0
    assert held["eval_before"] == (0, True) and held["eval_after"] == (0, False)
    saved = torch.load(tmp_path / "run" / "checkpoints" / "step-000002" / "trainer.pt", weights_only=True)
    assert len(saved["optimizer"]["state"]) == len(trainer.params)  # a resume finds it there


def test_the_reference_is_reset_to_the_policy_every_n_steps(varied_task, tmp_path, monkeypatch):
    task, env, options = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    trainer = Trainer(small_config(task, tmp_path, beta=0.05, ref_reset_every=2, max_steps=3, save_every=0, task_options=options))
    trainer.setup()
    trainer.grpo_loop()
    rows = read_rows(tmp_path / "run" / "metrics.jsonl")
    assert trainer.reference.step == 2 and rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert rows[2]["kl"] < rows[1]["kl"] or rows[1]["kl"] == 0  # the reference moved up to the policy of step 2
    assert [f.name for f in (tmp_path / "run" / "reference").iterdir()] == ["step-000002.safetensors"]


def test_training_log_probs_use_the_sampling_temperature(varied_task, tmp_path, monkeypatch):
    """Rollouts sample from softmax(logits / T); the gradient, ratio, KL and entropy must be taken
    under the same distribution."""
    from r1lite.train.policy import completion_logprobs

    task, env, options = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    trainer = Trainer(small_config(task, tmp_path, temperature=0.5, beta=0.05, dtype="fp32", task_options=options))
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
        expected = completion_logprobs(copy.deepcopy(trainer.model).eval(), batch)[0]
    trainer.train_step(groups)
    torch.testing.assert_close(seen[0], expected[:, :seen[0].shape[1]], atol=1e-5, rtol=1e-5)


def test_dynamic_sampling_drops_zero_variance_groups(varied_task, tmp_path, monkeypatch):
    task, env, options = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    trainer = Trainer(small_config(task, tmp_path, dynamic_sampling=True, max_refill_rounds=8, task_options=options))
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


def test_killed_run_resumes_to_identical_weights_and_metrics(cli, varied_task, tmp_path):
    task, env, options = varied_task
    flags = ["train", *SMALL, "--task", task, "--task-options", f"verifier={options['verifier']}", "--max-steps", "6", "--save-every", "2"]
    whole = tmp_path / "whole"
    r = cli(*flags, "--out", whole, env=env)
    assert r.returncode == 0, r.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "r1lite", *flags, "--out", str(killed)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, **env}, cwd=ROOT)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not metrics.exists() or len(metrics.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(read_rows(metrics)) >= 3  # killed after step 3: its row is past the step-2 checkpoint
    r = cli(*flags, "--out", killed, "--resume", killed, env=env)
    assert r.returncode == 0, r.stderr[-2000:]

    a = load_file(whole / "final" / "model.safetensors")
    b = load_file(killed / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert strip_clock(read_rows(whole / "metrics.jsonl")) == strip_clock(read_rows(metrics))

    # resuming a finished run changes nothing (but the lock, which names the process holding the run)
    stamp = {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file() and p.name != "lock"}
    r = cli(*flags, "--out", killed, "--resume", killed, env=env)
    assert r.returncode == 0 and "nothing to do" in r.stdout
    assert stamp == {p: p.stat().st_mtime_ns for p in killed.rglob("*") if p.is_file() and p.name != "lock"}


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(varied_task, tmp_path):
    task, env, options = varied_task
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "r1lite", "train", *SMALL, "--task", task, "--task-options", f"verifier={options['verifier']}", "--max-steps", "50",
                             "--save-every", "0", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **env}, cwd=ROOT)
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


def test_resume_with_different_flags_is_refused(cli, quick_cli, tmp_path):
    out = tmp_path / "run"
    assert cli("train", "--model", "tiny", "--task", "arithmetic", "--max-steps", "1", "--eval-items", "0",
               "--max-new-tokens", "4", "--batch-size", "4", "--group-size", "2", "--no-preflight",
               "--out", out).returncode == 0
    r = quick_cli("train", "--model", "tiny", "--task", "arithmetic", "--max-steps", "1", "--eval-items", "0",
                  "--max-new-tokens", "8", "--batch-size", "4", "--group-size", "2", "--out", out, "--resume", out)
    assert r.returncode == 2 and "max_new_tokens" in r.stderr and "Traceback" not in r.stderr
    r = quick_cli("train", "--model", "tiny", "--task", "arithmetic", "--max-steps", "1", "--out", out)
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
    (["--task", "arithmetic", "--task-options", "digits=x"], None, "option digits='x'"),
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
    task, env, options = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    cfg = small_config(task, tmp_path, max_steps=4, save_every=1, task_options=options)
    first = Trainer(cfg)
    first.setup()
    cfg.optim.max_steps = 2  # stop the loop after two steps, as a kill would
    first.grpo_loop()
    cfg.optim.max_steps = 4
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

    task, env, options = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    out = tmp_path / "run"
    flags = ["train", *SMALL, "--task", task, "--task-options", f"verifier={options['verifier']}", "--max-steps", "2", "--save-every", "1", "--eval-items", "0",
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
    dapo = build(GRPOConfig, {"algorithm": "dapo", "max_new_tokens": 100}, presets=preset)
    loss = dapo.loss
    assert (loss.loss_type, loss.epsilon_high, loss.dynamic_sampling, loss.overlong_buffer, loss.beta) == ("dapo", 0.28, True, 20, 0.0)
    dr = build(GRPOConfig, {"algorithm": "dr_grpo"}, presets=preset)
    assert (dr.loss.loss_type, dr.loss.scale_rewards) == ("dr_grpo", "none")
    r1 = build(GRPOConfig, {"algorithm": "r1"}, {"lr": 1e-5}, presets=preset)
    assert (r1.optim.lr, r1.loss.beta, r1.optim.group_size, r1.optim.prompts_per_step, r1.sampling.temperature,
            r1.loss.ref_reset_every) == (1e-5, 0.001, 16, 32, 1.0, 400)
    r1_g8 = build(GRPOConfig, {"algorithm": "r1", "group_size": 8}, presets=preset)
    assert (r1_g8.optim.group_size, r1_g8.optim.prompts_per_step) == (8, 32)
    gspo = build(GRPOConfig, {"algorithm": "gspo"}, presets=preset)
    assert (gspo.loss.importance_sampling_level, gspo.loss.loss_type, gspo.loss.epsilon, gspo.loss.epsilon_high,
            gspo.loss.beta, gspo.optim.mu) == ("sequence", "grpo", 3e-4, 4e-4, 0.0, 4)
    cispo = build(GRPOConfig, {"algorithm": "cispo"}, {"mu": 2}, presets=preset)
    assert (cispo.loss.surrogate, cispo.loss.loss_type, cispo.loss.epsilon_high, cispo.loss.beta,
            cispo.optim.mu) == ("cispo", "dapo", 4.0, 0.0, 2)
    none = build(GRPOConfig, {"loss_type": "dapo"}, presets=preset)
    assert (none.loss.epsilon_high, none.loss.dynamic_sampling, none.loss.overlong_buffer) == (0.2, False, 0)  # today's fields


# reward mean, completion length mean, loss, gradient norm, entropy of steps 1-4 (step 3: every group
# had equal rewards, so no pass ran); measured on an AVX-512 BF16 EPYC, the same on AVX2
PINNED_GRPO = [[1.0375, 12.0, 6.519e-09, 0.3939134, 10.790106], [1.0375, 12.0, 6.519e-09, 0.4067211, 10.790100],
               [1.1, 12.0, 0.0, 0.0, None], [0.7875, 12.0, 9.313e-09, 0.5440509, 10.790148]]


def test_a_seeded_tiny_run_reproduces_its_pinned_first_steps(varied_task, tmp_path, monkeypatch):
    """Numeric drift anywhere (sampling, the decode kernels, the training forward, the loss, AdamW)
    moves these figures: rewards and lengths pin the rollouts, loss, gradient norm and entropy the
    update. fp32 on our decode kernels, whose tokens are the same on every x86-64 CPU kind."""
    from r1lite.engine import kernels

    if kernels.load() is None:
        pytest.skip("the pinned rollouts were sampled on the CPU kernels, which cannot be built here")
    task, env, options = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    trainer = Trainer(small_config(task, tmp_path, max_steps=4, batch_size=16, dtype="fp32", seed=3, save_every=0, task_options=options))
    trainer.setup()
    trainer.grpo_loop()
    rows = read_rows(tmp_path / "run" / "metrics.jsonl")
    got = [[r[k] for k in ("reward_mean", "completion_len_mean", "loss", "grad_norm", "entropy")] for r in rows]
    for step, (ours, pinned) in enumerate(zip(got, PINNED_GRPO, strict=True), 1):
        for a, b in zip(ours, pinned):  # None: no pass ran (entropy unmeasured)
            assert (a is None and b is None) or a == pytest.approx(b, rel=1e-4, abs=1e-6), f"step {step}: {ours} vs pinned {pinned}"


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


def test_the_preflight_stops_a_run_whose_first_step_has_no_gradient(cli, tmp_path):
    """The tiny random model never earns an arithmetic reward: every group scores alike, so the run
    stops before its first update with the fixes named; --no-preflight trains anyway."""
    flags = ["train", "--model", "tiny", "--task", "arithmetic", "--batch-size", "8", "--group-size", "4",
             "--max-new-tokens", "8", "--eval-items", "0", "--max-steps", "2"]
    stopped = cli(*flags, "--out", tmp_path / "stopped")
    assert stopped.returncode == 2, stopped.stderr[-2000:]
    line = stopped.stderr.strip().splitlines()[-1]
    assert "pre-flight: all 2 groups of the first step scored alike" in line and "Traceback" not in stopped.stderr
    for fix in ("cold start", "--task-options", "group_size", "temperature", "format reward", "--no-preflight"):
        assert fix in line, fix
    assert not (tmp_path / "stopped" / "metrics.jsonl").exists()  # no step was taken
    assert json.loads((tmp_path / "stopped" / "summary.json").read_text())["preflight"]["groups_alike"] == 1.0
    trained = cli(*flags, "--no-preflight", "--out", tmp_path / "stopped", "--resume", tmp_path / "stopped")
    assert trained.returncode == 0, trained.stderr[-2000:]  # the stopped run resumes with the check off
    summary = json.loads((tmp_path / "stopped" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["preflight"]["groups"] == 2
    assert "pre-flight: reward mean 0, 100% of 2 groups scored alike" in trained.stdout


def test_the_random_reward_control_draws_0_or_1_at_the_real_running_mean():
    """The spurious-rewards control: each completion's reward is 0/1 at random with the real reward's
    running mean (earlier steps and this one) as probability, seeded per group, the real one kept."""
    from r1lite.train.rollout import random_rewards

    def seen(values):
        return {"seen": [{"reward": torch.full((8,), v)} for v in values]}

    info = seen([1.0, 0.0, 0.5, 0.5])
    mine = [{"reward": info["seen"][2]["reward"]}, {"reward": info["seen"][3]["reward"]}]  # this rank: 2 and 3
    running = [3.0, 24]  # earlier steps: 24 completions, mean 0.125
    random_rewards(mine, info, running, seed=7, step=3, start=2)
    assert running == [19.0, 56]  # 3 + 8 + 4 + 4 over 24 + 32
    assert [float(g["real_reward"][0]) for g in info["seen"]] == [1.0, 0.0, 0.5, 0.5]
    drawn = torch.cat([g["reward"] for g in info["seen"]])
    assert set(drawn.tolist()) <= {0.0, 1.0} and 0 < drawn.sum() < 32
    assert all(m["reward"] is info["seen"][2 + i]["reward"] for i, m in enumerate(mine))
    again = seen([1.0, 0.0, 0.5, 0.5])
    random_rewards([], again, [3.0, 24], seed=7, step=3, start=0)
    assert torch.equal(torch.cat([g["reward"] for g in again["seen"]]), drawn)  # seeded: ranks and resumes agree
    many = seen([0.3] * 500)
    random_rewards([], many, [0.0, 0], seed=1, step=1, start=0)
    assert abs(float(torch.cat([g["reward"] for g in many["seen"]]).mean()) - 0.3) < 0.03
    full = seen([1.1, 1.1])  # accuracy + format above 1: probability 1
    random_rewards([], full, [0.0, 0], seed=1, step=1, start=0)
    assert all(bool((g["reward"] == 1).all()) for g in full["seen"])


def test_a_random_reward_run_trains_on_the_draws_and_logs_the_real_reward(varied_task, tmp_path, monkeypatch):
    task, env, options = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    trainer = Trainer(small_config(task, tmp_path, task_options=options, reward_control="random", save_every=1))
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all("real_reward_mean" in r for r in rows)
    state = json.loads(next((tmp_path / "run").glob("checkpoints/*2/state.json")).read_text())
    assert state["reward_running"][1] == 2 * 8  # both steps' completions counted, and kept for a resume
    with pytest.raises(Exception, match="dynamic_sampling"):
        small_config(task, tmp_path, reward_control="random", dynamic_sampling=True)


def test_a_flops_budget_stops_the_rl_stage_and_eval_every_draws_the_curve(varied_task, tmp_path, monkeypatch):
    """max_rl_flops ends GRPO at the first step whose metered RL FLOPs reach it (runs compared on one
    budget); eval_every adds held-out points between the before and after evaluations."""
    task, env, options = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    free = Trainer(small_config(task, tmp_path / "free", task_options=options, max_steps=3))
    free.train()
    rows = [json.loads(line) for line in (tmp_path / "free" / "run" / "metrics.jsonl").read_text().splitlines()]
    flops = [r["rl_flops"] for r in rows]
    assert flops[0] > 0 and flops == sorted(set(flops))  # cumulative, every step adds
    budget = Trainer(small_config(task, tmp_path / "budget", task_options=options, max_steps=10,
                                  max_rl_flops=flops[1], eval_items=4, eval_every=1))
    budget.train()
    summary = json.loads((tmp_path / "budget" / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["rl_flops"] == flops[1]
    assert [p["step"] for p in summary["eval_curve"]] == [1] and summary["eval_curve"][0]["rl_flops"] == flops[0]
    assert {"pass@1", "format_rate", "completion_tokens_mean"} <= set(summary["eval_curve"][0])
    assert (tmp_path / "budget" / "run" / "final" / "config.json").exists()


def test_max_steps_0_writes_the_starting_point_without_a_grpo_step(tmp_path):
    """max_steps 0: the evaluations (and any cold start) only; final/ is a model later runs start from."""
    trainer = Trainer(small_config("arithmetic", tmp_path, max_steps=0, eval_items=4))
    assert trainer.train() == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps"] == 0 and summary["rl_flops"] == 0 and "eval_after" in summary
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_step_metrics_report_thinking_length_empty_thinks_and_a_sample():
    from r1lite.train.rollout import step_metrics

    def group(thinks, sample):
        n = len(thinks)
        return {"reward": torch.zeros(n), "parts": {}, "accuracy": [0.0] * n, "format": [1] * n, "lengths": [5] * n,
                "truncated": [False] * n, "think_chars": thinks, "sample": sample}

    info = {"seen": [group([None, 0], "<think></think>a"), group([5, 7], "b")], "groups_kept": 2, "groups_sampled": 2,
            "rollout_tokens": 20}
    row = step_metrics(1, info, None, {"step": 1.0, "rollout": 1.0, "train": 0.0}, 1e-5)
    assert row["think_chars_mean"] == 4.0 and row["empty_think_frac"] == 1 / 3  # of the 3 closed blocks
    assert row["sample"] == "<think></think>a"


def test_answer_format_rewards_a_checkable_answer_not_a_placeholder(tmp_path):
    """answer_format: 1 for an answer of the kind the task checks (a number here), right or wrong;
    0 for the template's placeholder that format rewards alone pay for."""
    from types import SimpleNamespace

    from r1lite import tasks
    from r1lite.train.rollout import score_group

    cfg = small_config("arithmetic", tmp_path, format="r1", rewards={"answer_format": 1.0, "format_partial": 0.2})
    task = tasks.load_task("arithmetic")
    item = tasks.make_item("What is 40 + 38?", 78, {})
    texts = [" 40+38</think> <answer>78</answer>", " hm</think> <answer>77</answer>",
             " reasoning </think> <answer> answer </answer>", " 78"]
    completions = [SimpleNamespace(text=t, token_ids=[1, 2], finish="stop") for t in texts]
    group = score_group(cfg, task, item, [1], "<think>", completions)
    assert group["seen"]["parts"]["answer_format"] == [1.0, 1.0, 0.0, 0.0]
    assert group["seen"]["parts"]["format_partial"][:3] == [1.0, 1.0, 1.0]  # the placeholder earns the tags
