"""The estimate counts the work a run does with the meter's own formulas; the probe measures it."""

import dataclasses
import json

import pytest

from r1lite.config import build, with_values
from r1lite.cost.estimate import estimate, estimate_recipe
from r1lite.cost.work import (
    PhaseWork,
    RunPrompts,
    Speed,
    checkpoints,
    datasheet_speed,
    generation_work,
    phase_seconds,
    run_work,
    sft_work,
    train_work,
)
from r1lite.cost.workload import (
    Overrides,
    Workload,
    apply_overrides,
    skipped_at,
    step_points,
)
from r1lite.errors import UsageError
from r1lite.meter.flops import SHAPES, full_weights
from r1lite.meter.hardware import HARDWARE, CostConfig
from r1lite.meter.meter import CostMeter
from r1lite.train.config import GRPOConfig


def grpo_config(**keys) -> GRPOConfig:
    """A GRPOConfig from flat keys, as a recipe gives them."""
    return build(GRPOConfig, keys)


def tokens_computed(rows: int, T: int, start: int) -> float:
    """A FLOP counter that counts token positions, so the batching model is easy to follow."""
    return float(rows * T)


def test_generation_work_follows_the_engine_batching():
    # two prompts sharing 2 tokens, 2 samples each: prefill = the prefix once (2) + each suffix (2 x 1)
    # rows finish after 3, 1, 3, 1 tokens; after the first token 2 of 4 rows are live (<= 3/4): they leave
    work = generation_work([[1, 2, 3], [1, 2, 4]], 2, [3, 1], max_rows=8, flops=tokens_computed)
    assert work.dense_flops == 2 + 2
    assert (work.decode_flops, work.decode_steps) == (2 + 2, 2)
    # at most 2 rows at once: each prompt alone (no shared prefix), its two samples decode together
    alone = generation_work([[1, 2, 3], [1, 2, 4]], 2, [3, 3], max_rows=2, flops=tokens_computed)
    assert alone.dense_flops == 3 + 3 and (alone.decode_flops, alone.decode_steps) == (2 * 2 * 2, 4)


def small_prompts(n: int = 8, width: int = 20) -> RunPrompts:
    prompts = [[7] * (width - 1) + [i] for i in range(n)]
    return RunPrompts({"r1": prompts, "plain:2": prompts}, prompts, prompts, prompts, [])


def test_run_work_skips_groups_holds_a_reference_and_refills():
    shape, weights = SHAPES["SmolLM2-135M"], full_weights(SHAPES["SmolLM2-135M"])
    flops = lambda rows, T, start: 1e9 * rows * T  # noqa: E731
    cfg = grpo_config(max_steps=10, batch_size=16, group_size=8, eval_items=8, cold_start_items=0)
    half = Workload([20], [20], 0.5, 0.0)
    none = Workload([20], [20], 0.0, 0.0)
    train = lambda c, w: run_work(c, shape, weights, small_prompts(), w, flops).phases["train"].dense_flops  # noqa: E731
    assert train(cfg, half) == pytest.approx(train(cfg, none) / 2)
    kl = with_values(cfg, beta=0.04)
    twice = with_values(cfg, mu=2)  # two updates and one forward for the old log-probs
    forward = train(twice, none) - 2 * train(cfg, none)
    assert 0 < forward < train(cfg, none) / 2
    assert train(kl, half) == pytest.approx(train(cfg, none) + forward)  # every group, plus the reference's forward
    dapo = with_values(cfg, dynamic_sampling=True, max_refill_rounds=1)
    work = run_work(dapo, shape, weights, small_prompts(), half, flops).phases
    plain = run_work(cfg, shape, weights, small_prompts(), half, flops).phases
    assert work["rollout"].flops == pytest.approx(plain["rollout"].flops * 1.5)  # a second round for half the groups
    assert work["train"].dense_flops == pytest.approx(plain["train"].dense_flops * 1.5)  # 1 - 0.5^2 of them kept
    assert set(plain) == {"eval", "rollout", "train"} and plain["train"].updates == 10


def test_an_rl_budget_ends_the_estimate_where_the_trainer_stops_and_curve_points_are_counted():
    """``max_rl_flops``: the trainer stops after the first step whose rollouts and train passes reach
    it, so the estimate does too (its steps, FLOPs and checkpoints); ``eval_every`` adds evaluations."""
    shape, weights = SHAPES["SmolLM2-135M"], full_weights(SHAPES["SmolLM2-135M"])
    flops = lambda rows, T, start: 1e9 * rows * T  # noqa: E731
    cfg = grpo_config(max_steps=10, batch_size=16, group_size=8, eval_items=8, cold_start_items=0, save_every=4)
    w = Workload([20], [20], 0.0, 0.0)
    run = lambda c: run_work(c, shape, weights, small_prompts(), w, flops)  # noqa: E731
    full = run(cfg)
    per_step = (full.phases["rollout"].flops + full.phases["train"].flops) / 10
    assert full.steps == 10 and checkpoints(cfg, full.steps) == 3  # 4, 8, 10
    for budget, steps in ((3.5, 4), (4.0, 4), (0.2, 1), (25.0, 10)):  # the step that reaches it is the last
        short = run(with_values(cfg, max_rl_flops=budget * per_step))
        assert short.steps == steps, budget
        assert short.phases["rollout"].flops + short.phases["train"].flops == pytest.approx(steps * per_step)
        assert short.phases["train"].updates == steps and short.phases["eval"].flops == full.phases["eval"].flops
    assert checkpoints(cfg, 4) == 1
    one_eval = generation_work(small_prompts().eval["r1"], 1, [20], cfg.sampling.eval_batch_size, flops).flops
    curve = run(with_values(cfg, eval_every=3))  # after steps 3, 6 and 9 (not after the last)
    assert curve.phases["eval"].flops == pytest.approx(full.phases["eval"].flops + 3 * one_eval)
    assert run(with_values(cfg, eval_every=5)).phases["eval"].flops == pytest.approx(full.phases["eval"].flops + one_eval)


def test_groups_come_to_score_alike_as_rollouts_move_toward_greedy_answers():
    """An R1-Zero run: each rollout is the greedy answer as often as the lengths have moved toward
    it, else a sample like the untrained model's; a group of 8 whose samples are right half the
    time almost never scores alike, one of greedy answers always does."""
    shape, weights = SHAPES["SmolLM2-135M"], full_weights(SHAPES["SmolLM2-135M"])
    flops = lambda rows, T, start: 1e9 * rows * T  # noqa: E731
    sampled = dict(sampled_rewards=[0.0, 1.0] * 8, final_rewards=[1.0, 0.0])
    w = Workload([40], [40], 0.0, 0.0, final_lengths=[10], **sampled)
    assert skipped_at(w, 0.0, 8) == pytest.approx(2 * 0.5 ** 8)
    assert skipped_at(w, 1.0, 8) == 1.0
    alike = [s for _, _, s in step_points(w, 8, 64, 8)]
    assert alike == sorted(alike) and alike[0] < 0.05 and alike[-1] > 0.5
    assert skipped_at(Workload([40], [40], 0.3, 0.0, final_lengths=[10], **sampled), 0.0, 8) == 0.3  # the probe's floor
    cfg = grpo_config(max_steps=8, batch_size=16, group_size=8, eval_items=8, cold_start_items=0)
    run = lambda c, w: run_work(c, shape, weights, small_prompts(), w, flops).phases  # noqa: E731
    constant = Workload([40], [40], 0.0, 0.0, final_lengths=[10])
    assert run(cfg, w)["rollout"].flops == pytest.approx(run(cfg, constant)["rollout"].flops)
    expected = sum(steps * train_work(shape, weights, small_prompts().train, lengths, 2 * (1 - alike), 8,
                                      cfg.optim.micro_batch_size, 0, 1).dense_flops
                   for lengths, steps, alike in step_points(w, 8, 64, 8))  # each step's kept groups of its lengths
    assert run(cfg, w)["train"].dense_flops == pytest.approx(expected)
    assert run(cfg, w)["train"].dense_flops < 0.9 * run(cfg, constant)["train"].dense_flops
    dapo = with_values(cfg, dynamic_sampling=True, max_refill_rounds=1)
    assert run(dapo, w)["rollout"].flops > 1.1 * run(cfg, w)["rollout"].flops  # alike groups are refilled
    fixed = apply_overrides(w, Overrides(skipped_groups=0.2))
    assert [s for _, _, s in step_points(fixed, 8, 64, 8)] == [0.2] * 8  # --skipped-groups: the whole run


def test_a_training_phases_first_step_costs_once():
    speed = Speed("measured probe", 1e9, 1e9, optimizer_seconds=0.5, first_step_seconds=4.0)
    assert phase_seconds(PhaseWork(dense_flops=10e9, updates=3), speed, 30, 1) == pytest.approx(10 + 1.5 + 4)
    assert phase_seconds(PhaseWork(dense_flops=10e9, decode_steps=5), speed, 30, 1) == pytest.approx(10)


def test_sft_work_matches_what_sft_meters(tiny_model, tmp_path):
    from r1lite.models import resolve_runtime
    from r1lite.train.policy import Policy, model_shape, model_weights
    from r1lite.train.sft import train_sft

    runtime = resolve_runtime("cpu", "fp32")
    model, tokenizer = tiny_model()
    pairs = [([5] * 9 + [i], [11] * 6 + [tokenizer.eos_token_id]) for i in range(12)]  # 10-token prompts, 7-token traces
    history = train_sft(Policy(model), tokenizer, pairs, epochs=2, lr=1e-4, batch_size=4, micro_batch_size=4, seed=0,
                        autocast=runtime.autocast, device=runtime.device)
    work = sft_work(model_shape(model), model_weights(model), [p for p, _ in pairs], [7], traces=12, batch_size=4, epochs=2)
    assert work.dense_flops == pytest.approx(sum(r["flops"] for r in history), rel=1e-6)
    assert work.updates == len(history) == 6


def test_checkpoint_count_and_datasheet_timing():
    assert checkpoints(grpo_config(max_steps=10, save_every=0)) == 1
    assert checkpoints(grpo_config(max_steps=10, save_every=4, cold_start_items=8)) == 4  # cold start, 4, 8, 10
    work = {"train": PhaseWork(dense_flops=HARDWARE["H100"].train_flops_per_s * 100, updates=5),
            "rollout": PhaseWork(dense_flops=0.0, decode_flops=1.0, decode_steps=1000, batches=1),
            "eval": PhaseWork(dense_flops=0.0, decode_flops=1.0, decode_steps=1000, batches=8)}
    cfg = grpo_config(max_steps=5, save_every=0)
    block = estimate(cfg, work, datasheet_speed(HARDWARE["H100"]), HARDWARE["H100"], 4, 1.0, 30, ["an assumption"])
    assert block["seconds_by_phase"]["train"] == pytest.approx(25)  # 4 devices
    assert block["seconds_by_phase"]["rollout"] == pytest.approx(1000 * 30 * 0.5e-3)  # one batch: its floor, not shared
    assert block["seconds_by_phase"]["eval"] == pytest.approx(1000 * 30 * 0.5e-3 / 4)  # 8 batches on 4 devices
    assert block["estimated"] and block["method"] == "datasheet" and "an assumption" in block["assumptions"]
    assert "4 devices" in " ".join(block["assumptions"])
    half = datasheet_speed(HARDWARE["H100"], mfu=0.5)
    assert half.train_flops_per_s == pytest.approx(0.5 * HARDWARE["H100"].peak_flops) and "--mfu" in half.notes[0]


def test_overrides_replace_measured_figures_and_reject_bad_ones():
    w = apply_overrides(Workload([10, 20], [30], 0.4, 1.0), Overrides(completion_tokens=48, skipped_groups=0.0))
    assert (w.base_lengths, w.trained_lengths, w.skipped_groups) == ([48], [48], 0.0)
    assert any("--completion-tokens 48" in n for n in w.notes)
    for bad in (dict(completion_tokens=0), dict(skipped_groups=1.5), dict(mfu=0)):
        with pytest.raises(UsageError):
            Overrides(**bad)


def fake_run(folder, rows: list[dict], summary: dict):
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "compl')  # cut off


def test_like_takes_a_finished_runs_lengths_skipped_groups_and_traces(tmp_path):
    from rich.console import Console

    from r1lite.cost.workload import run_workload

    cfg = grpo_config(batch_size=8, group_size=4, cold_start_items=100, eval_items=10, max_steps=4, save_every=0,
                      out=str(tmp_path / "x"))
    rows = [{"step": 1, "completion_len_mean": 20.0, "loss_tokens": 160, "groups_kept": 2, "groups_sampled": 2},
            {"step": 2, "completion_len_mean": 10.0, "loss_tokens": 40, "groups_kept": 2, "groups_sampled": 2}]
    fake_run(tmp_path / "a", rows, {"eval_base_plain": {"completion_tokens_mean": 30.5},
                                    "cold_start": {"items": 200, "traces": 50}})
    w = run_workload(tmp_path / "a", cfg)
    assert sum(w.trained_lengths) / len(w.trained_lengths) == pytest.approx(15.0)
    assert sum(w.base_lengths) / len(w.base_lengths) == pytest.approx(30.5)
    assert w.skipped_groups == pytest.approx(0.25)  # step 1 trained all 160 tokens, step 2 half of its 80
    assert w.traces_per_item == pytest.approx(0.25) and "2 GRPO steps" in w.notes[0]
    dynamic = [{**r, "groups_sampled": 4} for r in rows]  # dynamic sampling dropped half the groups it drew
    fake_run(tmp_path / "b", dynamic, {})
    assert run_workload(tmp_path / "b", cfg).skipped_groups == pytest.approx(0.5)
    blocks = {like: estimate_recipe(cfg, CostConfig(), Overrides(like=like), probe=False, console=Console(quiet=True))
              for like in (None, str(tmp_path / "a"))}
    upper, liked = (blocks[k]["datasheet"] for k in blocks)
    assert liked["flops"]["by_phase"]["train"] < upper["flops"]["by_phase"]["train"] / 2  # 15 of 48 tokens, 25% skipped
    assert any("like " in n for n in liked["assumptions"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no summary.json"):
        run_workload(tmp_path / "empty", cfg)
    fake_run(tmp_path / "c", [], {})
    with pytest.raises(UsageError, match="no GRPO steps"):
        run_workload(tmp_path / "c", cfg)


def tiny_config(tmp_path, task: str, **kw) -> GRPOConfig:
    base = dict(model="tiny", task=task, format="plain", batch_size=8, group_size=4, micro_batch_size=4, preflight=False,
                rollout_batch_size=8, max_new_tokens=12, eval_items=6, max_steps=3, beta=0.04, lr=1e-3,
                save_every=0, device="cpu", dtype="fp32", out=str(tmp_path / "run"))
    return build(GRPOConfig, {**base, **kw})


def test_estimated_flops_match_a_tiny_runs_metered_flops(varied_task, tmp_path, monkeypatch):
    """The acceptance's FLOP check in small: a KL reference keeps every group (no skipped-group noise);
    the tiny random model rarely stops early, so the probe's lengths are the run's."""
    from rich.console import Console

    from r1lite.train.trainer import Trainer

    task, env, options = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    cfg = tiny_config(tmp_path, task, task_options=options)
    blocks = estimate_recipe(cfg, CostConfig(), Overrides(), probe=True, console=Console(quiet=True))
    assert set(blocks) == {"measured", "datasheet"}
    predicted = blocks["measured"]["flops"]
    assert Trainer(cfg, console=Console(quiet=True)).train() == 0
    cost = json.loads((tmp_path / "run" / "summary.json").read_text())["cost"]
    metered = cost["flops"]
    assert set(predicted["by_phase"]) == set(metered["by_phase"]) == {"eval", "rollout", "train"}
    for phase, flops in metered["by_phase"].items():
        assert predicted["by_phase"][phase] == pytest.approx(flops, rel=0.10), phase
    assert predicted["total"] == pytest.approx(metered["total"], rel=0.10)
    assert blocks["datasheet"]["flops"] == predicted  # one count of the work, two speeds
    assert set(blocks["measured"]) - {"peak_rss_mib", "peak_rss_mib_by_phase"} == set(CostMeter(HARDWARE["cpu"]).report())
    if "peak_rss_mib_by_phase" in cost:  # Linux: the memory the run's process held, each phase
        assert set(blocks["measured"]) == set(cost) - {"peak_rss_note", "teacher"}  # the summary's cost block fields
        estimated, held = blocks["measured"]["peak_rss_mib_by_phase"], cost["peak_rss_mib_by_phase"]
        assert set(estimated) == set(held)
        print({k: (round(estimated[k]), round(held[k])) for k in held})
        for phase, mib in held.items():
            assert estimated[phase] == pytest.approx(mib, rel=0.25), phase
    notes = " ".join(blocks["measured"]["assumptions"])
    assert "probe rollout batch" in notes and "CPU kind" in notes and "every group trains" in notes


def test_a_cold_start_from_data_is_estimated_from_the_files_traces(varied_task, tmp_path, monkeypatch):
    """cold_start_data: the SFT on the file's traces (its prompts, its lengths) and the evaluation
    after it are in the estimate, as the run meters them."""
    from rich.console import Console

    from r1lite.train.trainer import Trainer

    task, env, options = varied_task
    monkeypatch.syspath_prepend(env["PYTHONPATH"].split(":")[0])
    traces = tmp_path / "traces.jsonl"
    traces.write_text("".join(json.dumps({"prompt": f"Write something about item {i}.",
                                          "completion": f"Item {i} is a thing, and {'so on ' * (3 + i % 4)}."}) + "\n"
                              for i in range(12)))
    cfg = tiny_config(tmp_path, task, task_options=options, cold_start_data=str(traces), cold_start_epochs=2,
                      cold_start_batch_size=4, max_steps=1)
    blocks = estimate_recipe(cfg, CostConfig(), Overrides(), probe=True, console=Console(quiet=True))
    predicted = blocks["measured"]["flops"]["by_phase"]
    assert Trainer(cfg, console=Console(quiet=True)).train() == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    metered = summary["cost"]["flops"]["by_phase"]
    assert set(predicted) == set(metered) == {"eval", "sft", "rollout", "train"}
    assert predicted["sft"] == pytest.approx(metered["sft"], rel=0.10)
    assert predicted["eval"] == pytest.approx(metered["eval"], rel=0.10)  # eval_after_sft counted
    assert summary["cold_start"]["sft_steps"] == 6 and "eval_after_sft" in summary
    notes = " ".join(blocks["measured"]["assumptions"])
    assert f"after the cold start on {traces} (12 traces" in notes


def test_a_model_not_here_is_estimated_from_its_shape(tmp_path):
    from rich.console import Console

    cfg = grpo_config(model="Qwen/Qwen2.5-7B-Instruct", max_steps=10, eval_items=20, out=str(tmp_path / "x"))
    blocks = estimate_recipe(cfg, CostConfig(hardware="h100", devices=8), Overrides(), probe=True,
                             console=Console(quiet=True))
    assert set(blocks) == {"datasheet"} and blocks["datasheet"]["hardware"] == "H100"
    notes = " ".join(blocks["datasheet"]["assumptions"])
    assert "Qwen2.5-7B" in notes and "upper bounds" in notes
    small = estimate_recipe(with_values(cfg, model="Qwen3-0.6B"), CostConfig(hardware="h100", devices=8),
                            Overrides(), probe=True, console=Console(quiet=True))
    assert small["datasheet"]["flops"]["total"] < blocks["datasheet"]["flops"]["total"] / 5
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "qwen3", "hidden_act": "silu", "num_hidden_layers": 28, "hidden_size": 1024,
                                  "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                                  "intermediate_size": 3072, "vocab_size": 151936, "tie_word_embeddings": True}))
    local = estimate_recipe(with_values(cfg, model=str(config)), CostConfig(hardware="h100", devices=8),
                            Overrides(), probe=True, console=Console(quiet=True))
    assert local["datasheet"]["flops"]["total"] == pytest.approx(small["datasheet"]["flops"]["total"])


def test_probe_times_a_train_step_even_when_every_group_scores_alike(tmp_path):
    from rich.console import Console

    from r1lite.cost.probe import run_probe

    cfg = tiny_config(tmp_path, "arithmetic", beta=0.0, format="r1")  # a random model never scores: all alike
    probe = run_probe(cfg, Console(quiet=True))
    assert probe.workload.skipped_groups == 1.0
    assert probe.speed.train_flops_per_s > 0 and probe.speed.generate_flops_per_s > 0
    assert probe.speed.first_step_seconds >= 0
    w = probe.workload  # no cold start: the greedy answers' rewards, scored as rollouts are
    assert len(w.final_rewards) == cfg.eval.items and set(w.final_rewards) == {0.0}
    assert len(w.sampled_rewards) == cfg.optim.batch_size
    assert len(probe.workload.base_lengths) == cfg.optim.batch_size
    assert probe.seconds < 60



def test_trace_stats_keep_each_items_shortest_verified_answer():
    from types import SimpleNamespace

    from r1lite.cost.probe import probe_config, trace_stats
    from r1lite.models import load_tokenizer
    from r1lite.train.sft import r1_trace

    tokenizer = load_tokenizer("tiny")

    def group(texts, accuracies, finish="stop"):
        return {"completions": [SimpleNamespace(text=t, finish=finish) for t in texts], "seen": {"accuracy": accuracies}}

    groups = [group(["3 + 4 = 7.", "It is 7.", "7", "8"], [1.0, 1.0, 1.0, 0.0]),  # keeps "7", the shortest
              group(["5", "6", "9", "1"], [0.0] * 4),  # nothing verified: no trace
              group(["2 + 2 = 4", "4"], [1.0, 1.0], finish="length")]  # cut off: not a trace
    cfg = grpo_config(cold_start_items=16, cold_start_samples=2, cold_start_per_item=1)
    lengths, per_item = trace_stats(groups, tokenizer, cfg)
    assert lengths == [len(tokenizer.encode(r1_trace("7"), add_special_tokens=False)) + 1]
    assert per_item == pytest.approx((1 - 0.25 ** 2) / 3)  # P(at least one of 2 samples right) = 1 - (1 - 3/4)^2
    probed = probe_config(grpo_config(cold_start_items=16, format="r1", prefill_think=True), "/tmp/x")
    assert (probed.format, probed.prefill_think, probed.sampling.temperature,
            probed.cold_start.items) == ("plain", False, 0.7, 0)


def test_a_cold_start_recipe_is_probed_from_groups_as_the_rollout_scores_them(tmp_path):
    """trace_stats reads the groups rollout.score_group makes (a structure change once crashed
    `r1lite cost` on every cold-start recipe), and its expected traces per item follow the binomial."""
    from r1lite import tasks
    from r1lite.cost.probe import trace_stats
    from r1lite.engine import Completion
    from r1lite.models import load_tokenizer
    from r1lite.train.rollout import score_group

    tokenizer = load_tokenizer("tiny")
    cfg = tiny_config(tmp_path, "arithmetic", cold_start_items=4, cold_start_samples=4, cold_start_per_item=1,
                      format="plain")
    task = tasks.load_task("arithmetic")
    item = task.split("train", 1, seed=0)[0]
    right, wrong = f"The sum is {item.answer}.", f"The sum is {int(item.answer) + 1}."
    group = score_group(cfg, task, item, [1], "", [Completion([5, 6], right, "stop"), Completion([5], wrong, "stop"),
                                                   Completion([5, 6, 7], right, "length"), Completion([5], wrong, "stop")])
    lengths, per_item = trace_stats([group], tokenizer, cfg)
    assert len(lengths) == 1  # the one right answer that stopped (the truncated one is not a trace)
    assert per_item == pytest.approx(1 - 0.75 ** 4)  # p = 1/4: at least one of 4 samples right
    from rich.console import Console

    from r1lite.cost.probe import run_probe

    probe = run_probe(cfg, Console(quiet=True))  # the tiny random model: no verified answer, upper bounds
    assert probe.workload.traces_per_item == 1.0


def test_phase_peaks_scale_the_probes_memory_to_each_phase():
    """By hand: 1,000 MiB resident (50 of it the engine's copy of the weights); a rollout batch of 2,000 KV positions 200 MiB over it (0.1 MiB a
    position); an optimizer state of 300 MiB; a train step of 100 tokens 150 MiB over its start, 40 of
    it gradients (1.1 MiB a token)."""
    from r1lite.cost.memory import MemoryProbe, kv_positions, phase_peaks

    m = MemoryProbe(setup_peak=1100.0, resident=1000.0, rollout_peak=1200.0, rollout_positions=2000, optimizer=300.0,
                    train_peak=1450.0, train_before=1300.0, train_tokens=100, gradients=40.0, engine=50.0)
    prompts = RunPrompts({"r1": [[1] * 10] * 6}, [[2] * 5] * 4, [[3] * 8] * 4, [[4] * 12] * 4, [[5] * 9] * 3)
    w = Workload([20], [16], 0.0, 1.0)
    cfg = grpo_config(max_steps=2, batch_size=8, group_size=4, micro_batch_size=4, rollout_batch_size=8,
                      eval_batch_size=4, eval_items=6, max_new_tokens=30, cold_start_items=4, cold_start_samples=2,
                      cold_start_batch_size=2, cold_start_min_accuracy=0.5, cold_start_max_accuracy=0.6,
                      cold_start_check_items=3, eval_base_plain=False)
    peaks = phase_peaks(cfg, m, prompts, w)
    assert kv_positions([[1] * 10] * 6, 1, 4, 30) == 4 * 40
    assert peaks["setup"] == 1300.0  # the optimizer's state outweighs the loading peak
    assert peaks["eval"] == pytest.approx(1000 + 0.1 * 4 * 40)  # 4 rows of 10 + 30 columns; the last after the optimizer's state goes
    curve = phase_peaks(with_values(cfg, eval_every=1), m, prompts, w)["eval"]  # evaluations between steps hold it
    assert curve == pytest.approx(1000 + 300 + 0.1 * 4 * 40)
    assert peaks["cold_start_sampling"] == pytest.approx(1000 + 0.1 * 4 * 35)  # 2 samples x 4 prompts, 4 rows at most
    held = 1000 + 300  # the copies of the weights it may go back to are in files
    # the SFT's passes run without the engine's copy (50), its checks' decoding with it
    assert peaks["sft"] == pytest.approx(max(held - 50 + 40 + 1.1 * (2 * 16 + 2 * 8), held + 0.1 * 3 * 39))
    assert peaks["rollout"] == pytest.approx(1000 + 300 + 0.1 * 8 * 42)  # 2 prompts x 4 samples, 12 + 30 wide
    assert peaks["train"] == pytest.approx(1000 - 50 + 300 + 40 + 1.1 * (4 * 16 + 12))  # one group of 4 a pass
    assert phase_peaks(cfg, dataclasses.replace(m, checkpoint_peak=1900.0), prompts, w)["setup"] == 1900.0  # measured
    rl_free = phase_peaks(with_values(cfg, max_steps=0), m, prompts, w)
    assert "train" not in rl_free and rl_free["eval"] == pytest.approx(1000 + 0.1 * 4 * 40)
