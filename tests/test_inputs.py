"""Input files and output locations: every bad one stops the command with one line, before any work."""

import json
import os
from pathlib import Path

import pytest

from r1lite.config import read_yaml
from r1lite.errors import UsageError
from r1lite.files import read_jsonl, writable
from r1lite.tasks import load_task


def test_non_utf8_bytes_in_jsonl_name_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"question": "a", "answer": "1"}\n{"question": "caf\xe9", "answer": "2"}\n')
    with pytest.raises(UsageError, match=r"d.jsonl:2: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"):
        load_task(f"jsonl:{path}")


def test_non_utf8_bytes_in_yaml_name_the_line(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"lr: 1e-3\ntask: caf\xe9\n")
    with pytest.raises(UsageError, match=r"r.yaml:2: not UTF-8 text"):
        read_yaml(path)


def test_deeply_nested_yaml_is_one_line(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("a: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(UsageError, match=r"deep.yaml: the YAML is nested too deeply"):
        read_yaml(path)


def test_deeply_nested_jsonl_value_is_one_line(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_text('{"question": "q", "answer": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(UsageError, match=r"deep.jsonl:1: the JSON value is nested too deeply"):
        list(read_jsonl(path))


@pytest.mark.parametrize("name, row", [("jsonl", {"question": 12, "answer": "x"}),
                                       ("gsm8k", {"question": 12, "answer": "#### 1"})])
def test_a_question_that_is_a_number_is_one_line(tmp_path, name, row):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(UsageError, match=r"d.jsonl:1: the question is int 12, not text"):
        load_task(f"{name}:{path}")


def test_huge_digits_are_refused(tmp_path):
    with pytest.raises(UsageError, match=r"arithmetic: digits must be at least 1 and at most 18, got \[500, 500\]"):
        load_task("arithmetic", {"digits": 500})


def test_writable_refuses_a_path_under_a_file_and_a_directory_for_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UsageError, match=r"--out .*f/x.jsonl: .*f is a file, so nothing can be written under it"):
        writable(tmp_path / "f" / "x.jsonl")
    with pytest.raises(UsageError, match=r"--out .* is an existing directory; give a file name"):
        writable(tmp_path)
    with pytest.raises(UsageError, match=r"--out .*f is an existing file; give a directory"):
        writable(tmp_path / "f", directory=True)
    writable(tmp_path / "new" / "deeper" / "x.jsonl")
    writable(tmp_path / "f")  # an existing file is replaced


def test_writable_refuses_a_read_only_place(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(UsageError, match=r"cannot write to .*x.jsonl \(.* is read-only or not ours\); choose another --out"):
        writable(tmp_path / "x.jsonl")


def test_a_written_directorys_weights_are_readable_by_all_like_its_other_files(tmp_path):
    import torch
    from safetensors.torch import save_file

    from r1lite.files import atomic_dir

    with atomic_dir(tmp_path / "out") as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text("{}")
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()} == {
        "model.safetensors": 0o644, "config.json": 0o644}


# ---------------------------------------------------------------------------------------------- damaged model directories


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory, tiny_model) -> Path:
    """The tiny model saved as a Hugging Face directory, once; tests damage copies of it."""
    folder = tmp_path_factory.mktemp("tiny") / "model"
    model, tokenizer = tiny_model()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def damaged_copy(saved: Path, where: Path, damage: str) -> Path:
    """A copy of ``saved`` at ``where`` with one damage: a config.json cut off mid-object, the
    weights cut to half their length, or the tokenizer files gone."""
    import shutil

    shutil.copytree(saved, where)
    if damage == "junk config.json":
        (where / "config.json").write_text('{"model_type": "llama", "hidden_size": ')
    elif damage == "truncated weights":
        weights = where / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:weights.stat().st_size // 2])
    else:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (where / name).unlink()
    return where


DAMAGED = {  # command: (damage, a run directory around the model?, the words the one line must hold)
    "chat": ("truncated weights", False, "model/model.safetensors: truncated or not a safetensors file"),
    "eval": ("junk config.json", False, "model/config.json: not valid JSON"),
    "export": ("no tokenizer", False, "model: no tokenizer files (tokenizer.json)"),
    "serve": ("truncated weights", True, "run/final/model.safetensors: truncated or not a safetensors file"),
}


@pytest.mark.parametrize("command", list(DAMAGED))
def test_a_damaged_model_directory_is_one_line_naming_the_file_and_the_fix(command, saved_tiny, cli, free_port, tmp_path):
    damage, in_run, needle = DAMAGED[command]
    model = damaged_copy(saved_tiny, tmp_path / ("run/final" if in_run else "model"), damage)
    spec = model.parent if in_run else model
    args = {"chat": ["--prompt", "Hi"], "eval": ["--task", "arithmetic", "--limit", "2"],
            "export": ["--to", "hf", "--out", tmp_path / "out"], "serve": ["--port", free_port(), "--guard", "off"]}[command]
    r = cli(command, "--model", spec, *args, *(() if command == "export" else ("--device", "cpu", "--dtype", "fp32")),
            timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(lines) == 1, (r.returncode, r.stderr[-3000:])
    assert needle in lines[0] and lines[0].endswith("re-export the model or point --model at another directory"), lines[0]
    assert not (tmp_path / "out").exists()
