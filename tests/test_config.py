"""Recipes and flags: every key checked, flags override, explicit zeros survive."""

import argparse
from dataclasses import dataclass

import pytest

from r1lite.config import (
    add_arguments,
    build,
    dump_yaml,
    keys,
    opt,
    part,
    read_yaml,
    to_dict,
)
from r1lite.errors import UsageError
from r1lite.train.config import GRPOConfig


def parse(*argv):
    p = argparse.ArgumentParser()
    add_arguments(p, GRPOConfig)
    return vars(p.parse_args(list(argv)))


def test_flags_override_recipe_and_zero_is_not_swallowed():
    cfg = build(GRPOConfig, {"lr": 1e-5, "beta": 0.04, "max_steps": 7}, parse("--beta", "0", "--lr", "2e-5"))
    assert cfg.loss.beta == 0.0 and cfg.optim.lr == 2e-5 and cfg.optim.max_steps == 7


def test_bool_dict_and_list_flags():
    cfg = build(GRPOConfig, {}, parse("--lora", "--task-options", "digits=3", "--task-options", "ops=+-",
                                      "--stop", "</answer>", "--rewards", "accuracy=1", "--rewards", "format=0"))
    assert cfg.optim.lora and cfg.task_options == {"digits": 3, "ops": "+-"} and cfg.sampling.stop == ["</answer>"]
    assert cfg.loss.rewards == {"accuracy": 1, "format": 0}
    assert build(GRPOConfig, {"lora": True}, parse("--no-lora")).optim.lora is False


def test_ints_are_accepted_for_floats_but_not_the_reverse():
    assert build(GRPOConfig, {"lr": 1}).optim.lr == 1.0
    with pytest.raises(UsageError, match="key 'max_steps' must be an integer"):
        build(GRPOConfig, {"max_steps": 1.5}, source="r.yaml")
    with pytest.raises(UsageError, match="key 'lora' must be true or false"):
        build(GRPOConfig, {"lora": "yes"}, source="r.yaml")


def test_yaml_round_trip_and_errors(tmp_path):
    path = tmp_path / "r.yaml"
    cfg = build(GRPOConfig, {"max_steps": 3})
    path.write_text(dump_yaml(cfg))
    assert build(GRPOConfig, read_yaml(path)) == cfg
    path.write_text("- a list\n")
    with pytest.raises(UsageError, match="mapping"):
        read_yaml(path)
    with pytest.raises(UsageError, match="no such file"):
        read_yaml(tmp_path / "missing.yaml")


def test_every_recipe_in_the_repo_is_valid():
    from pathlib import Path

    recipes = sorted((Path(__file__).parents[1] / "recipes").glob("*.yaml"))
    assert recipes
    for path in recipes:
        build(GRPOConfig, read_yaml(path), source=str(path))


@dataclass
class _Slice:
    """A slice with a renamed key and one whose flat name is its own."""

    lr: float = opt(1e-3, "learning rate", old=("learning_rate",))
    data: str = opt("", "traces", key="slice_data")


@dataclass
class _Whole:
    seed: int = opt(0, "seed")
    inner: _Slice = part(_Slice, "slice_")

    def __post_init__(self):
        if self.inner.lr > 1:
            raise UsageError("lr must be <= 1")


def test_slices_read_and_write_flat_keys(capsys):
    """A slice's fields are flat keys prefix + name (or their own key); an old name still works with
    one line; to_dict gives back the flat form, and build of it gives the same config."""
    assert [(k.name, k.path) for k in keys(_Whole).values()] == [
        ("seed", ("seed",)), ("slice_lr", ("inner", "lr")), ("slice_data", ("inner", "data"))]
    cfg = build(_Whole, {"seed": 3, "slice_data": "x.jsonl"}, {"slice_lr": 0.5})
    assert cfg.seed == 3 and cfg.inner == _Slice(0.5, "x.jsonl")
    assert to_dict(cfg) == {"seed": 3, "slice_lr": 0.5, "slice_data": "x.jsonl"}
    assert build(_Whole, to_dict(cfg)) == cfg
    old = build(_Whole, {"slice_learning_rate": 0.25}, source="r.yaml")
    assert old.inner.lr == 0.25
    assert capsys.readouterr().err.strip() == (
        "note: r.yaml: key 'slice_learning_rate' is now 'slice_lr'; the old name works for this release only")
    with pytest.raises(UsageError, match="lr must be"):
        build(_Whole, {"slice_lr": 2})


def test_an_old_flag_spelling_works_with_a_note_and_is_hidden_from_help(capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser, _Whole)
    assert "--slice-learning-rate" not in parser.format_help() and "--slice-lr" in parser.format_help()
    flags = vars(parser.parse_args(["--slice-learning-rate", "0.125"]))
    assert build(_Whole, {}, flags).inner.lr == 0.125
    assert "'--slice-learning-rate' is now '--slice-lr'" in capsys.readouterr().err
