"""Recipes and flags: every key checked, flags override, explicit zeros survive."""

import argparse

import pytest

from r1lite.config import add_arguments, build, dump_yaml, read_yaml
from r1lite.errors import UsageError
from r1lite.train.config import GRPOConfig


def parse(*argv):
    p = argparse.ArgumentParser()
    add_arguments(p, GRPOConfig)
    return vars(p.parse_args(list(argv)))


def test_flags_override_recipe_and_zero_is_not_swallowed():
    cfg = build(GRPOConfig, {"lr": 1e-5, "beta": 0.04, "max_steps": 7}, parse("--beta", "0", "--lr", "2e-5"))
    assert cfg.beta == 0.0 and cfg.lr == 2e-5 and cfg.max_steps == 7


def test_bool_dict_and_list_flags():
    cfg = build(GRPOConfig, {}, parse("--lora", "--task-options", "digits=3", "--task-options", "ops=+-",
                                      "--stop", "</answer>", "--rewards", "accuracy=1", "--rewards", "format=0"))
    assert cfg.lora and cfg.task_options == {"digits": 3, "ops": "+-"} and cfg.stop == ["</answer>"]
    assert cfg.rewards == {"accuracy": 1, "format": 0}
    assert build(GRPOConfig, {"lora": True}, parse("--no-lora")).lora is False


def test_ints_are_accepted_for_floats_but_not_the_reverse():
    assert build(GRPOConfig, {"lr": 1}).lr == 1.0
    with pytest.raises(UsageError, match="key 'max_steps' must be an integer"):
        build(GRPOConfig, {"max_steps": 1.5}, source="r.yaml")
    with pytest.raises(UsageError, match="key 'lora' must be true or false"):
        build(GRPOConfig, {"lora": "yes"}, source="r.yaml")


def test_yaml_round_trip_and_errors(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(dump_yaml(GRPOConfig(max_steps=3)))
    assert build(GRPOConfig, read_yaml(path)) == GRPOConfig(max_steps=3)
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
