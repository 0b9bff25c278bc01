"""benchmarks/r1_zero_campaign.py: each arm runs the recipe with only its own change, and pass@k
prompts a model as its arm's runs were prompted."""

import json
from pathlib import Path
from types import SimpleNamespace

from benchmarks import r1_zero_campaign as campaign
from r1lite.config import read_yaml

RECIPE = read_yaml(campaign.RECIPE)


def test_each_arm_changes_only_what_names_it():
    base = campaign.arm_recipe(RECIPE, "r1-zero", 1)
    assert base == {**RECIPE, "seed": 1}
    instruct = campaign.arm_recipe(RECIPE, "instruct", 2)
    assert instruct == {**RECIPE, **campaign.INSTRUCT, "seed": 2} and instruct["model"] == "default"
    random = campaign.arm_recipe(RECIPE, "instruct, random reward", 0)
    assert random["reward_control"] == "random" and random["rewards"] == RECIPE["rewards"]
    assert random["batch_size"] == campaign.INSTRUCT["batch_size"]
    fmt = campaign.arm_recipe(RECIPE, "format reward only", 0)
    assert "accuracy" not in fmt["rewards"] and fmt["rewards"] == {k: v for k, v in RECIPE["rewards"].items()
                                                                  if k != "accuracy"}
    assert fmt["model"] == RECIPE["model"] and "reward_control" not in fmt


def test_pass_at_k_prompts_as_the_arm_trained(tmp_path, monkeypatch):
    seen = []

    def run(cmd, **kwargs):
        seen.append(cmd)
        out = Path(cmd[cmd.index("--out") + 1])
        Path(f"{out}.summary.json").write_text(json.dumps({"n_items": 100, "format_rate": 1.0,
                                                             **{f"pass@{k}": 0.5 for k in campaign.KS}}))
    monkeypatch.setattr(campaign.subprocess, "run", run)
    args = SimpleNamespace(k_items=100)
    for arm, template, prefill in (("instruct", "chat", "--prefill-think"), ("r1-zero", "r1_zero", "--prefill-think")):
        settings = campaign.arm_recipe(RECIPE, arm, 0)
        row = campaign.pass_at_k(settings["model"], settings, tmp_path / arm, args)
        cmd = seen[-1]
        assert cmd[cmd.index("--template") + 1] == template and prefill in cmd
        assert cmd[cmd.index("--samples") + 1] == str(max(campaign.KS)) and cmd[cmd.index("--temperature") + 1] == "1"
        assert row["pass@64"] == 0.5 and row["items"] == 100
