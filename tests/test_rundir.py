"""The run directory is safe to point at: no user file is lost, nothing in it runs code, one
process at a time, and a damaged checkpoint falls back to the one before."""

import os
import subprocess
from pathlib import Path

import pytest
import torch

from r1lite.config import build
from r1lite.errors import UsageError
from r1lite.train import checkpoint, rundir
from r1lite.train.config import GRPOConfig
from r1lite.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["train", "--model", "tiny", "--task", "arithmetic", "--format", "plain", "--batch-size", "8", "--group-size",
        "4", "--max-new-tokens", "8", "--eval-items", "0", "--save-every", "1", "--no-preflight"]


def tiny_config(out: Path, **kw) -> GRPOConfig:
    return build(GRPOConfig, {"model": "tiny", "task": "arithmetic", "format": "plain", "batch_size": 8, "group_size": 4,
                              "max_new_tokens": 8, "eval_items": 0, "save_every": 1, "max_steps": 2, "out": str(out), "preflight": False,
                              **kw})


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_a_directory_of_the_users_files_is_refused_and_force_leaves_them_untouched(cli, tmp_path):
    out = tmp_path / "mine"
    (out / "checkpoints").mkdir(parents=True)
    (out / "notes.txt").write_text("my notes")
    (out / "checkpoints" / "model.bin").write_bytes(b"my weights")
    before = snapshot(out)
    line = one_line(cli(*TINY, "--max-steps", "1", "--out", str(out)))
    assert "not empty" in line and "--force" in line and snapshot(out) == before
    line = one_line(cli(*TINY, "--max-steps", "1", "--out", str(out), "--force"))
    assert "checkpoints" in line and "in the way" in line and snapshot(out) == before  # a run's own name is taken
    (out / "checkpoints" / "model.bin").rename(out / "model.bin")
    (out / "checkpoints").rmdir()
    before = snapshot(out)
    r = cli(*TINY, "--max-steps", "2", "--out", str(out), "--force")
    assert r.returncode == 0, r.stderr[-2000:]
    after = snapshot(out)
    assert all(after[name] == data for name, data in before.items())  # every file of the user's as it was
    assert (out / "final").is_dir() and len(checkpoint.kept(out)) == 2


def test_an_out_that_is_a_file_or_cannot_be_written_is_refused_before_any_work(tmp_path, monkeypatch):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        rundir.claim(target, resume=False, force=False)
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # a read-only filesystem (root passes chmod)
    with pytest.raises(UsageError, match="cannot write to .*read-only"):
        Trainer(tiny_config(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


class Planted:
    """An object whose unpickling runs code (writes a file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A tiny run of 3 steps, a checkpoint each: the two last are kept."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert Trainer(tiny_config(out, max_steps=3)).train() == 0
    return out


def copy_unfinished(run: Path, tmp_path: Path) -> Path:
    """The finished run copied elsewhere (a moved run directory), its summary emptied so it resumes."""
    import shutil

    copy = tmp_path / "moved"
    shutil.copytree(run, copy)
    (copy / "summary.json").write_text("{}")
    return copy


def test_a_moved_run_resumes_from_its_latest_checkpoint(finished_run, tmp_path):
    copy = copy_unfinished(finished_run, tmp_path)
    trainer = Trainer(tiny_config(copy, max_steps=3), resume=True)
    trainer.setup()
    assert trainer.step == 3 and [c.name for c in checkpoint.kept(copy)] == ["step-000002", "step-000003"]


def test_resume_never_unpickles_code_from_a_checkpoint(finished_run, tmp_path):
    copy = copy_unfinished(finished_run, tmp_path)
    marker = tmp_path / "pwned"
    for ckpt in checkpoint.kept(copy):
        torch.save({"optimizer": Planted(marker)}, ckpt / "trainer.pt")
    trainer = Trainer(tiny_config(copy, max_steps=3), resume=True)
    with pytest.raises(UsageError, match=r"trainer\.pt: damaged or not written by r1lite"):
        trainer.setup()
    assert not marker.exists()


def test_the_latest_pointer_cannot_leave_the_run_directory(finished_run, tmp_path):
    copy = copy_unfinished(finished_run, tmp_path)
    (copy / "checkpoints" / "latest").write_text("../../elsewhere\n")
    with pytest.raises(UsageError, match="not a checkpoint of this run"):
        checkpoint.latest(copy)


@pytest.mark.parametrize("damage", ["truncated weights", "junk state", "nan weights"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(finished_run, tmp_path, damage):
    copy = copy_unfinished(finished_run, tmp_path)
    latest = checkpoint.latest(copy)
    if damage == "truncated weights":
        data = (latest / "weights.safetensors").read_bytes()
        (latest / "weights.safetensors").write_bytes(data[:len(data) // 2])
    elif damage == "junk state":
        (latest / "state.json").write_text("{not json")
    else:
        from safetensors.torch import load_file, save_file

        weights = load_file(latest / "weights.safetensors")
        next(iter(weights.values()))[0] = float("nan")
        save_file(weights, latest / "weights.safetensors")
    trainer = Trainer(tiny_config(copy, max_steps=3), resume=True)
    trainer.setup()
    assert trainer.step == 2  # the checkpoint before; the run redoes step 3


def test_a_second_process_on_a_run_stops_in_one_line_and_a_stale_lock_is_taken_over(finished_run, tmp_path, cli):
    copy = copy_unfinished(finished_run, tmp_path)
    from rich.console import Console

    with rundir.RunLock(copy, Console(quiet=True)):
        line = one_line(cli(*TINY, "--max-steps", "3", "--out", str(copy), "--resume", str(copy)))
        assert "in use by another r1lite process" in line and f"pid {os.getpid()}" in line
    (copy / "lock").write_text("pid 999999999 on elsewhere\n")  # its process is gone: no flock is held
    r = cli(*TINY, "--max-steps", "3", "--out", str(copy), "--resume", str(copy))
    assert r.returncode == 0 and "no longer running; taking it over" in " ".join(r.stdout.split()), r.stderr[-2000:]


def test_a_kill_while_final_is_written_leaves_nothing_behind_on_the_next_run(finished_run, tmp_path):
    copy = copy_unfinished(finished_run, tmp_path)
    (copy / ".final.x1y2.tmp").mkdir()
    (copy / ".final.x1y2.tmp" / "model.safetensors").write_bytes(b"half")
    (copy / "checkpoints" / ".step-000004.ab.tmp").mkdir()
    Trainer(tiny_config(copy, max_steps=3), resume=True).setup()
    assert not (copy / ".final.x1y2.tmp").exists() and not (copy / "checkpoints" / ".step-000004.ab.tmp").exists()


def test_an_old_checkpoint_with_numpys_rng_array_still_resumes(finished_run, tmp_path):
    """Checkpoints written before the RNG key became a list hold a numpy array: allowed as plain data."""
    import numpy as np

    copy = copy_unfinished(finished_run, tmp_path)
    latest = checkpoint.latest(copy)
    state = torch.load(latest / "trainer.pt", weights_only=True)
    kind, key, pos, has_gauss, gauss = state["rng"]["numpy"]
    state["rng"]["numpy"] = (kind, np.asarray(key, dtype=np.uint32), pos, has_gauss, gauss)
    torch.save(state, latest / "trainer.pt")
    assert b"_reconstruct" in (latest / "trainer.pt").read_bytes()  # an array, pickled as numpy's
    trainer = Trainer(tiny_config(copy, max_steps=3), resume=True)
    trainer.setup()
    assert trainer.step == 3


def test_checkpoint_pruning_deletes_only_the_runs_own_checkpoints(tmp_path):
    """Two checkpoints stay (the latest and its fallback); a file of the user's in checkpoints/ stays too."""
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    (tmp_path / "checkpoints" / "keep-me").mkdir(parents=True)
    for step in (1, 2, 3):
        checkpoint.save(tmp_path, step, model, optimizer, scheduler, {"data_position": step})
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "keep-me", "latest", "step-000002", "step-000003"]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_config_values_are_refused(quick_cli, tmp_path, value):
    line = one_line(quick_cli(*TINY, f"--lr={value}", "--out", str(tmp_path / "run")))
    assert "--lr must be a finite number" in line and not (tmp_path / "run").exists()


def test_a_recipe_may_write_1e_3_without_a_dot(tmp_path):
    """YAML 1.1 reads 1e-3 as a string; a float key takes it as the number it is."""
    from r1lite.config import read_yaml

    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 1e-3\ntemperature: 0.7\n")
    assert build(GRPOConfig, read_yaml(recipe)).optim.lr == 0.001


def test_an_update_that_would_break_the_weights_stops_the_run_in_one_line(varied_task, tmp_path, monkeypatch):
    """A learning rate that blows the weights up: the step whose gradient is not finite applies
    nothing and stops the run; no checkpoint holds a non-finite weight and final/ is not written."""
    task, env, options = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(os.pathsep)[0])
    trainer = Trainer(tiny_config(tmp_path / "run", task=task, task_options=options, lr=1e30, max_steps=6))
    with pytest.raises(UsageError, match="gradient norm is .* not applied"):
        trainer.train()
    assert not (tmp_path / "run" / "final").exists()
    for ckpt in checkpoint.kept(tmp_path / "run"):
        from safetensors.torch import load_file

        assert all(torch.isfinite(t).all() for t in load_file(ckpt / "weights.safetensors").values())


def test_a_lock_left_by_a_run_killed_before_its_config_does_not_block_the_directory(tmp_path):
    """A kill between taking the lock and writing config.yaml leaves a lock file and nothing else:
    the same command (no --resume: there is no config to resume) starts the run there again."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "lock").write_text("pid 999999999 on elsewhere\n")
    rundir.claim(out, resume=False, force=False)
    (out / "notes.txt").write_text("mine")  # a file of the user's: the directory is theirs again
    with pytest.raises(UsageError, match="is not empty and holds no r1lite run"):
        rundir.claim(out, resume=False, force=False)
    rundir.claim(out, resume=False, force=True)  # the lone lock is not in the way of --force either


def test_only_the_runs_own_temporary_files_are_cleaned_up(tmp_path):
    """A hidden file of the user's beside a --force run is theirs, even when its name ends in .tmp."""
    (tmp_path / "checkpoints").mkdir()
    ours = [tmp_path / ".final.x1y2.tmp", tmp_path / ".metrics.jsonl.ab.tmp", tmp_path / ".final.cd.old",
            tmp_path / "checkpoints" / ".step-000004.ab.tmp", tmp_path / "checkpoints" / ".latest.ef.tmp"]
    theirs = [tmp_path / ".draft.tmp", tmp_path / ".backup.old", tmp_path / "checkpoints" / ".mine.tmp"]
    for p in ours[:1]:
        p.mkdir()
    for p in ours[1:] + theirs:
        p.write_text("x")
    assert sorted(rundir.clean_stale_temps(tmp_path)) == sorted(ours)
    assert all(p.exists() for p in theirs) and not any(p.exists() for p in ours)
