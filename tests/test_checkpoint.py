"""Checkpoints are complete or absent, whatever moment a run dies."""

import torch

from r1lite.train import checkpoint


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


def test_the_latest_complete_checkpoint_and_the_one_before_are_kept(tmp_path):
    """Two checkpoints stay: the latest, and the one before it as the fallback when the latest is
    damaged; older ones go."""
    model, opt, sched = tiny_state()
    for step in (2, 4, 6):
        checkpoint.save(tmp_path, step, model, opt, sched, {})
    (tmp_path / "checkpoints" / ".step-000008.half-written").mkdir()  # a save killed mid-way
    assert checkpoint.latest(tmp_path).name == "step-000006"
    assert checkpoint.before(checkpoint.latest(tmp_path)).name == "step-000004"
    names = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert {"latest", "step-000004", "step-000006"} <= names and "step-000002" not in names


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


def test_a_full_disk_fails_in_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    """torch reports a full disk as its own RuntimeError: the save names the checkpoint, says the
    disk is full, leaves no half-written directory and keeps the checkpoint before it."""
    import shutil

    import pytest

    from r1lite import files

    model, opt, sched = tiny_state()
    checkpoint.save(tmp_path, 2, model, opt, sched, {})
    real_save = torch.save

    def full(obj, path, *a, **k):
        real_save(obj, path, *a, **k)  # what a full disk leaves: a partial file, then torch's error
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    monkeypatch.setattr(torch, "save", full)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=3 << 20))
    with pytest.raises(files.DiskFull, match=r"step-000004: the disk is full \(3 MiB free"):
        checkpoint.save(tmp_path, 4, model, opt, sched, {})
    assert checkpoint.latest(tmp_path).name == "step-000002"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step-000002"]

    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=50 << 30))  # space left: not a full disk
    with pytest.raises(RuntimeError, match="PytorchStreamWriter") as raised:
        checkpoint.save(tmp_path, 4, model, opt, sched, {})
    assert not isinstance(raised.value, files.DiskFull)


def test_no_space_from_the_os_is_a_full_disk_whatever_the_free_space(tmp_path, monkeypatch):
    """ENOSPC (or a quota's EDQUOT) names a full disk even where df shows room (quotas, inodes)."""
    import errno

    import pytest

    from r1lite import files

    def enospc(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(files.DiskFull, match="notes.txt: the disk is full"):
        files.atomic_write(tmp_path / "notes.txt", enospc)
    assert list(tmp_path.iterdir()) == []
