"""Checkpoints are complete or absent, whatever moment a run dies."""

import torch

from r1lite import checkpoint


def tiny_state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched.step()
    return model, opt, sched


def test_save_then_load_restores_everything(tmp_path):
    model, opt, sched = tiny_state()
    checkpoint.save(tmp_path, 3, model, opt, sched, {"data_position": 12})
    rng_draw = torch.rand(1)
    fresh, fresh_opt, fresh_sched = tiny_state()
    with torch.no_grad():
        fresh.weight.zero_()
    state = checkpoint.load(checkpoint.latest(tmp_path), fresh, fresh_opt, fresh_sched)
    assert state == {"step": 3, "data_position": 12}
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_opt.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]
    assert torch.equal(torch.rand(1), rng_draw)  # the RNG is back where it was at save time


def test_only_the_latest_complete_checkpoint_is_kept(tmp_path):
    model, opt, sched = tiny_state()
    for step in (2, 4):
        checkpoint.save(tmp_path, step, model, opt, sched, {})
    (tmp_path / "checkpoints" / ".step-000006.half-written").mkdir()  # a save killed mid-way
    assert checkpoint.latest(tmp_path).name == "step-000004"
    names = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert "step-000002" not in names and "latest" in names


def test_no_checkpoint_yet(tmp_path):
    assert checkpoint.latest(tmp_path) is None


def test_every_checkpoint_file_reaches_the_disk_before_the_rename(tmp_path, monkeypatch):
    """A rename can reach the disk before the data it names: after a power cut, `latest` would
    name a checkpoint of empty files. Each file is fsynced before its directory is renamed in."""
    import os

    from r1lite import files

    events = []
    real_fsync, real_replace = files.fsync_path, os.replace
    monkeypatch.setattr(files, "fsync_path", lambda p: (events.append(("fsync", os.path.basename(p))), real_fsync(p)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("rename", os.path.basename(b))), real_replace(a, b)))
    model, opt, sched = tiny_state()
    checkpoint.save(tmp_path, 1, model, opt, sched, {})
    renamed = events.index(("rename", "step-000001"))
    for name in ("weights.safetensors", "trainer.pt", "state.json"):
        assert events.index(("fsync", name)) < renamed, events
    pointer = events.index(("rename", "latest"))
    assert events[pointer - 1][0] == "fsync" and events[pointer - 1][1].startswith(".latest."), events
