"""The command line as a user meets it: one-line errors, scoring files, gym tasks end to end."""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def assert_one_line_error(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_python_dash_m_and_console_script_both_work(cli):
    r = cli("--help")
    assert r.returncode == 0 and "train" in r.stdout and "eval" in r.stdout
    r = subprocess.run([str(ROOT / ".venv" / "bin" / "r1lite"), "eval", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--completions" in r.stdout


def test_bad_task_name(quick_cli):
    assert_one_line_error(quick_cli("eval", "--model", "tiny", "--task", "arithmetik"), "arithmetik", "arithmetic")


def test_bad_model(quick_cli, tmp_path):
    assert_one_line_error(quick_cli("eval", "--model", tmp_path, "--task", "arithmetic"), "config.json")
    assert_one_line_error(quick_cli("eval", "--model", "not a model", "--task", "arithmetic"), "--model")


def write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_jsonl_line_names_file_and_line(quick_cli, tmp_path):
    data = write(tmp_path / "d.jsonl", ['{"question": "q", "answer": "a"}', '{"question": "q2", "answer": '])
    assert_one_line_error(quick_cli("eval", "--model", "tiny", "--task", f"jsonl:{data}"), f"{data}:2", "not valid JSON")


def test_missing_answer_names_file_line_and_key(quick_cli, tmp_path):
    data = write(tmp_path / "d.jsonl", ['{"question": "q", "answer": "a"}', '{"question": "q2"}'])
    assert_one_line_error(quick_cli("eval", "--model", "tiny", "--task", f"jsonl:{data}"), f"{data}:2", "'answer'")


def test_unknown_verifier(quick_cli, tmp_path):
    data = write(tmp_path / "d.jsonl", ['{"question": "q", "answer": "a", "verifier": "fuzzy"}'])
    assert_one_line_error(quick_cli("eval", "--model", "tiny", "--task", f"jsonl:{data}"), f"{data}:1", "fuzzy", "exact")


def test_completions_missing_field_and_bad_json(quick_cli, tmp_path):
    comp = write(tmp_path / "c.jsonl", ['{"answer": 3, "completion": "<think>x</think><answer>3</answer>"}',
                                        '{"answer": 4}'])
    assert_one_line_error(quick_cli("eval", "--task", "arithmetic", "--completions", comp, "--out", tmp_path / "o.jsonl"),
                          f"{comp}:2", "'completion'")


def test_score_completions_from_elsewhere(cli, tmp_path):
    rows = [
        {"id": "a", "answer": 42, "completion": "<think>6*7</think>\n<answer>42</answer>", "model": "x"},
        {"id": "a", "answer": 42, "completion": "<think>hmm</think><answer>41</answer>"},
        {"id": "b", "answer": 7, "completion": "<think>7</think><answer>7</answer><answer>8</answer>"},
        {"id": "b", "answer": 7, "completion": "<answer>7</answer>"},
        {"id": "c", "answer": 1000, "completion": "<think>" + "x" * 100_000 + "</think><answer>\\boxed{1,000}</answer>"},
    ]
    comp = write(tmp_path / "c.jsonl", [json.dumps(r) for r in rows])
    out = tmp_path / "scored.jsonl"
    r = cli("eval", "--task", "arithmetic", "--completions", comp, "--out", out)
    assert r.returncode == 0, r.stderr
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [s["accuracy"] for s in scored] == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert [s["format"] for s in scored] == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert scored[0]["model"] == "x" and [s["id"] for s in scored] == ["a", "a", "b", "b", "c"]
    summary = json.loads((tmp_path / "scored.jsonl.summary.json").read_text())
    assert summary["n_items"] == 3 and summary["samples"] == 2
    assert summary["pass@1"] == pytest.approx((0.5 + 0 + 1) / 3)
    assert summary["pass@2"] == pytest.approx((1 + 0 + 1) / 3)
    assert summary["format_rate"] == pytest.approx(3 / 5)
    assert "pass@1" in r.stdout


def test_plain_format_scoring_uses_the_last_number(cli, tmp_path):
    comp = write(tmp_path / "c.jsonl", [json.dumps({"answer": 85, "completion": "47 + 38 = 85."}),
                                        json.dumps({"answer": 85, "completion": "It is 85, or maybe 86"})])
    out = tmp_path / "o.jsonl"
    assert cli("eval", "--task", "arithmetic", "--format", "plain", "--completions", comp, "--out", out).returncode == 0
    assert [json.loads(line)["accuracy"] for line in out.read_text().splitlines()] == [1.0, 0.0]


@pytest.mark.parametrize("name", ["basic_arithmetic", "chain_sum", "letter_counting", "spell_backward", "word_sorting", "gcd"])
def test_reasoning_gym_generators_run_end_to_end(cli, tmp_path, name):
    out = tmp_path / "rows.jsonl"
    r = cli("eval", "--model", "tiny", "--task", f"gym:{name}", "--limit", "3", "--samples", "2",
            "--max-new-tokens", "8", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 6 and all(isinstance(row["accuracy"], float) for row in rows)
    summary = json.loads((tmp_path / "rows.jsonl.summary.json").read_text())
    assert summary["n_items"] == 3 and "maj@2" in summary and "pass@2" in summary


def test_eval_generates_and_reports(cli, tmp_path):
    out = tmp_path / "rows.jsonl"
    r = cli("eval", "--model", "tiny", "--task", "arithmetic", "--limit", "5", "--max-new-tokens", "6", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "rows.jsonl.summary.json").read_text())
    for key in ("pass@1", "format_rate", "completion_tokens_mean", "completion_tokens_median", "think_tokens_mean",
                "tokens_per_s", "n_items"):
        assert key in summary, key
    assert summary["n_items"] == 5 and summary["completion_tokens_mean"] == 6


def test_cost_reference_reproduces_the_published_arithmetic(cli):
    r = cli("cost", "--reference", "deepseek-v3")
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert "2,788K H800 GPU-hours x $2 = $5.576M" in first
    assert "34.6% of 989 TFLOP/s" in r.stdout and "leaves out:" in r.stdout and "$500M" in r.stdout
    r = cli("cost", "--reference", "DeepSeek-R1")
    assert r.returncode == 0 and "147K H800 GPU-hours x $2 = $294K" in r.stdout.splitlines()[0]
    assert "DeepSeek-V3-Base itself" in r.stdout and "staff" in r.stdout
    data = json.loads(cli("cost", "--reference", "deepseek-v3", "--json").stdout)
    assert data["usd"] == 5_576_000 and data["total_gpu_hours"] == 2_788_000


def test_cost_bad_input_is_one_line_and_exit_2(quick_cli, tmp_path):
    assert_one_line_error(quick_cli("cost", "--model", "tiny", "--hardware", "TPU"), "--hardware TPU", "H100", "cpu-fp32")
    assert_one_line_error(quick_cli("cost", "--model", "tiny", "--usd-per-hour", "-1"), "--usd-per-hour -1", "negative")
    run = tmp_path / "run"  # train refuses them before it writes anything, so the same --out works once fixed
    assert_one_line_error(quick_cli("train", "--model", "tiny", "--hardware", "tpu", "--out", run), "--hardware tpu")
    assert_one_line_error(quick_cli("train", "--model", "tiny", "--usd-per-hour", "-2", "--out", run), "negative")
    assert not run.exists()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: tiny\nlearning_rate: 1.0e-5\n")
    assert_one_line_error(quick_cli("cost", "--config", recipe), "unknown key 'learning_rate'", "lr")
    assert_one_line_error(quick_cli("train", "--config", recipe), "unknown key 'learning_rate'")
    assert_one_line_error(quick_cli("cost", "--reference", "gpt-4"), "deepseek-v3", "deepseek-r1")
    empty = tmp_path / "empty-run"
    empty.mkdir()
    (empty / "config.yaml").write_text("model: tiny\n")
    assert_one_line_error(quick_cli("report", empty), "no metrics.jsonl")
    assert_one_line_error(quick_cli("report", empty, tmp_path / "missing"), "no metrics.jsonl")


def test_cost_json_writes_the_summary_cost_block_fields(cli):
    from r1lite.meter.hardware import HARDWARE
    from r1lite.meter.meter import CostMeter

    r = cli("cost", "--model", "Qwen3-8B", "--hardware", "h100", "--devices", "8", "--max-steps", "100",
            "--eval-items", "50", "--json")
    assert r.returncode == 0, r.stderr[-2000:]
    blocks = json.loads(r.stdout)
    assert list(blocks) == ["datasheet"]
    block = blocks["datasheet"]
    assert set(block) == set(CostMeter(HARDWARE["H100"]).report())
    assert block["estimated"] and block["hardware"] == "H100" and block["devices"] == 8
    assert set(block["seconds_by_phase"]) == {"eval", "rollout", "train"}


def test_cost_measures_a_tiny_recipe_and_prints_both_estimates(cli):
    r = cli("cost", "--model", "tiny", "--task", "arithmetic", "--max-steps", "3", "--eval-items", "4",
            "--batch-size", "8", "--group-size", "4", "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout
    for needle in ("measured (cpu", "datasheet (cpu", "rollout", "train", "eval", "wall time", "device-hours",
                   "kWh", "money", "assumptions", "probe rollout batch", "CPU kind", "skipped groups", "leaves out"):
        assert needle in out, needle


# ---------------------------------------------------------------------------------------------
# One way to build a command: its flags are the fields of its dataclass(es)


def configs():
    """Each sub-command → the dataclasses whose flat keys are its flags."""
    from r1lite import cli
    from r1lite.compare import ReportConfig
    from r1lite.distill.collect import DistillConfig
    from r1lite.edge.chat import ChatConfig
    from r1lite.edge.export import ExportConfig
    from r1lite.evaluate import EvalOptions
    from r1lite.serve import ServeOptions
    from r1lite.train.config import GRPOConfig
    from r1lite.train.sft import SFTConfig

    return {"train": (cli.TrainOptions, GRPOConfig), "sft": (SFTConfig,), "eval": (EvalOptions,),
            "distill": (DistillConfig,), "export": (ExportConfig,), "chat": (ChatConfig,), "serve": (ServeOptions,),
            "cost": (cli.CostOptions, GRPOConfig), "report": (ReportConfig,)}


RECIPES = {"train", "sft", "cost"}
"""Commands that read a YAML recipe (--config)."""
POSITIONAL = {"report": {"runs"}}


def subparsers():
    import argparse

    from r1lite import cli

    return next(a for a in cli.parser()._actions if isinstance(a, argparse._SubParsersAction)).choices


def flat_keys(command: str) -> dict:
    from r1lite.config import keys

    out = {}
    for cls in configs()[command]:
        mine = keys(cls)
        assert not set(mine) & set(out), f"{command}: {cls.__name__} repeats a key of another config"
        out.update(mine)
    return out


def spellings(key) -> set[str]:
    """The option strings a flat key may have: its flag and its old spellings (and their --no- forms)."""
    from r1lite.config import _base

    names = [n.replace("_", "-") for n in (key.name, *key.old)]
    return {"--" + n for n in names} | ({"--no-" + n for n in names} if _base(key.type)[0] is bool else set())


def test_every_command_s_flags_are_exactly_its_config_fields():
    """No hand-written flag: every option of every sub-command is a flat key of its config(s)
    (by its name or an old spelling), every key is an option (or a positional), plus --config
    where a recipe is read."""
    parsers = subparsers()
    assert set(parsers) == set(configs())
    for command, parser in parsers.items():
        expected = flat_keys(command)
        positional = {a.dest for a in parser._actions if not a.option_strings}
        assert positional == POSITIONAL.get(command, set()) and positional <= set(expected), command
        options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
        given = set()
        for action in options:
            if action.dest == "config" and command in RECIPES:
                assert action.option_strings == ["--config"], command
            else:
                assert action.dest in expected, f"{command}: {action.option_strings} is not a config field"
                assert set(action.option_strings) <= spellings(expected[action.dest]), (command, action.option_strings)
            given.add(action.dest)
        assert given == set(expected) - positional | ({"config"} if command in RECIPES else set()), command
        assert parser.allow_abbrev is False, command


@pytest.mark.parametrize("command", ["train", "eval", "chat", "serve", "distill"])
def test_max_new_tokens_is_a_completion_s_budget_everywhere(command):
    from r1lite import cli

    assert vars(cli.parser().parse_args([command, "--max-new-tokens", "7"]))["max_new_tokens"] == 7


@pytest.mark.parametrize("argv, old, new, field, value", [
    (["export", "--format", "hf", "--model", "tiny", "--out", "{tmp}/hf"], "--format", "--to", "to", "hf"),
    (["serve", "--default-max-tokens", "64", "--model", "tiny"], "--default-max-tokens", "--max-new-tokens",
     "max_new_tokens", 64),
    (["eval", "--task-opt", "digits=3", "--model", "tiny", "--task", "arithmetic"], "--task-opt", "--task-options",
     "task_options", {"digits": 3}),
    (["eval", "--batch-size", "8", "--model", "tiny", "--task", "arithmetic"], "--batch-size", "--eval-batch-size",
     "eval_batch_size", 8),
    (["distill", "--n", "5", "--teacher", "tiny", "--task", "arithmetic", "--out", "{tmp}/t.jsonl"], "--n", "--limit",
     "limit", 5),
    (["distill", "--max-tokens", "40", "--teacher", "tiny", "--task", "arithmetic", "--out", "{tmp}/t.jsonl"],
     "--max-tokens", "--max-new-tokens", "max_new_tokens", 40),
])
def test_an_old_spelling_prints_one_note_and_sets_the_new_field(argv, old, new, field, value, tmp_path, capsys):
    from r1lite import cli

    args = cli.parser().parse_args([a.format(tmp=tmp_path) for a in argv])
    (cls,) = configs()[args.command]
    cfg = cli.from_flags(cls, args)
    assert capsys.readouterr().err.strip().splitlines() == [
        f"note: flag '{old}' is now '{new}'; the old name works for this release only"]
    assert getattr(cfg, field) == value


@pytest.mark.parametrize("command", ["train", "sft", "eval", "distill", "export", "chat", "serve", "cost", "report"])
def test_help_exits_0_and_shows_every_flag_and_no_old_spelling(command, capsys):
    import re

    from r1lite import cli

    with pytest.raises(SystemExit) as e:
        cli.parser().parse_args([command, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for key in flat_keys(command).values():
        if key.name not in POSITIONAL.get(command, set()):
            assert "--" + key.name.replace("_", "-") in text, (command, key.name)
        for old in key.old:
            assert not re.search(rf"(?<![\w-])--{re.escape(old.replace('_', '-'))}(?![\w-])", text), (command, old)


def test_a_flag_works_by_its_name_not_by_a_prefix_of_it():
    from r1lite import cli

    with pytest.raises(SystemExit) as e:
        cli.parser().parse_args(["eval", "--max-new", "8"])
    assert e.value.code == 2


def test_a_cold_start_from_a_teacher_sets_distill_s_keys_by_their_names(capsys):
    """The run's own keys reach DistillConfig under its field names (no old-name note)."""
    from r1lite.config import build
    from r1lite.train.coldstart import distill_config
    from r1lite.train.config import GRPOConfig

    cfg = distill_config(build(GRPOConfig, {"model": "tiny", "cold_start_teacher": "tiny", "cold_start_items": 6,
                                            "max_new_tokens": 48}))
    assert (cfg.limit, cfg.max_new_tokens) == (6, 48) and capsys.readouterr().err == ""


@pytest.mark.parametrize("command", [["eval", "--model", "tiny-gemma3", "--task", "arithmetic"],
                                     ["train", "--model", "tiny-gemma3", "--max-steps", "1"]])
def test_r1_zero_with_a_plain_format_is_refused_before_any_model_loads(command, quick_cli, tmp_path, no_model_loads):
    out = ["--out", tmp_path / ("rows.jsonl" if command[0] == "eval" else "run")]
    for fmt in ("plain", "plain:2"):
        r = quick_cli(*command, *out, "--template", "r1_zero", "--format", fmt)
        assert_one_line_error(r, "template r1_zero", f"format {fmt}", "r1 format only")
    assert not (tmp_path / "run").exists()


def test_eval_of_a_base_model_under_r1_zero_end_to_end(quick_cli, tmp_path):
    """tiny-gemma3's template is r1_zero (auto), recorded in the summary and on every row; a random
    model writes no </answer>, so its completions run to the budget."""
    out = tmp_path / "rows.jsonl"
    r = quick_cli("eval", "--model", "tiny-gemma3", "--task", "arithmetic", "--limit", "4", "--max-new-tokens", "16",
                  "--device", "cpu", "--out", out)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "template r1_zero" in " ".join(r.stdout.split())  # rich wraps the line
    summary = json.loads((tmp_path / "rows.jsonl.summary.json").read_text())
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert (summary["template"], summary["format"], summary["n_items"]) == ("r1_zero", "r1", 4)
    assert len(rows) == 4 and {row["template"] for row in rows} == {"r1_zero"}
    assert all(row["completion_tokens"] <= 16 for row in rows)
