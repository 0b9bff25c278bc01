import json
import math

import pytest

from r1lite.cost import (
    DEEPSEEK_R1_GPU_HOURS, DEEPSEEK_V3_GPU_HOURS, HARDWARE, CostConfig, CostMeter, RunPlan, estimate, format_cost,
    forward_flops, generate_flops, hardware_kind, matmul_params, plan_work, price, train_flops,
)
from r1lite.errors import UsageError


class FakeClock:
    """A clock the test moves by hand, so nothing sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# SmolLM2-135M: 30 layers, width 576, vocabulary 49152, tied embeddings, 134,515,008 parameters.
SMOL = dict(n_params=matmul_params(134_515_008, 49_152, 576, tied_embeddings=True), n_layers=30, d_model=576)


def test_forward_flops_known_case():
    # 8 sequences x 256 tokens, causal (each token sees 128 positions on average)
    tokens = 8 * 256
    expected = 2 * 134_515_008 * tokens + 4 * 30 * 128 * 576 * tokens
    assert forward_flops(**SMOL, tokens=tokens, context=128) == expected
    assert train_flops(**SMOL, tokens=tokens, context=128) == 3 * expected
    assert math.isclose(train_flops(**SMOL, tokens=tokens, context=128), 1.71e12, rel_tol=0.01)


def test_matmul_params_drops_only_an_untied_input_embedding():
    assert matmul_params(1000, 10, 20, tied_embeddings=True) == 1000
    assert matmul_params(1000, 10, 20, tied_embeddings=False) == 800


def test_generate_flops_is_prefill_plus_decode():
    prompt, completion = 100, 64
    prefill = forward_flops(**SMOL, tokens=prompt, context=prompt / 2)
    decode = forward_flops(**SMOL, tokens=completion, context=prompt + completion / 2)
    assert generate_flops(**SMOL, prompt_tokens=prompt, completion_tokens=completion, sequences=16) == pytest.approx(
        16 * (prefill + decode))


def test_deepseek_arithmetic():
    h800 = HARDWARE["H800"]
    assert (h800.watts, h800.usd_per_hour) == (700, 2.0)
    assert sum(DEEPSEEK_V3_GPU_HOURS.values()) == 2_788_000
    assert price(2_788_000, h800) == pytest.approx(5_576_000)
    assert sum(DEEPSEEK_R1_GPU_HOURS.values()) == 147_000
    assert price(147_000, h800) == pytest.approx(294_000)
    assert price(147_000, h800, usd_per_hour=1.0) == pytest.approx(147_000)


def test_table_has_the_promised_rows():
    assert {"cpu", "H800", "H100", "H200", "A100", "L4", "RTX4090"} <= set(HARDWARE)
    for hw in HARDWARE.values():
        assert hw.watts > 0 and hw.usd_per_hour > 0 and hw.source
        assert hw.decode_flops_per_s < hw.train_flops_per_s < hw.peak_flops


def test_hardware_kind_matches_whole_names_only():
    assert hardware_kind("NVIDIA A100-SXM4-80GB") == "A100"
    assert hardware_kind("NVIDIA L4") == "L4"
    assert hardware_kind("cpu-fp32") == "cpu-fp32" and HARDWARE["cpu-fp32"].peak_flops < HARDWARE["cpu"].peak_flops
    with pytest.raises(UsageError, match="--hardware"):
        hardware_kind("NVIDIA L40S")


def test_config_overrides_and_rejects_bad_values():
    hw = CostConfig(hardware="cpu", watts=45, usd_per_hour=0).resolve("cpu")
    assert (hw.watts, hw.usd_per_hour) == (45, 0)
    assert "overridden" in hw.source
    assert CostConfig().resolve("NVIDIA H200") is HARDWARE["H200"]
    for bad in (dict(hardware="TPU"), dict(devices=0), dict(watts=0), dict(usd_per_hour=-1), dict(pue=0.9)):
        with pytest.raises(UsageError):
            CostConfig(**bad)


def test_meter_counts_phases_with_a_fake_clock():
    clock = FakeClock()
    meter = CostMeter(HARDWARE["cpu"], devices=2, pue=1.5, clock=clock)
    clock.now += 10  # setup, outside any phase
    for _ in range(3):
        with meter.phase("rollout"):
            clock.now += 20
            meter.add_flops("rollout", 1e12)
        with meter.phase("train"):
            clock.now += 40
            meter.add_flops("train", 3e12)
    report = meter.report()
    assert report["wall_seconds"] == 190
    assert report["seconds_by_phase"] == {"rollout": 60, "train": 120}
    assert report["flops"] == {"total": 12e12, "by_phase": {"rollout": 3e12, "train": 9e12}}
    assert report["device_hours"] == pytest.approx(190 * 2 / 3600)
    assert report["kwh"] == pytest.approx(190 * 2 / 3600 * 30 * 1.5 / 1000)
    assert report["usd"] == pytest.approx(190 * 2 / 3600 * 0.08)
    assert report["achieved_flops_per_s"] == pytest.approx(12e12 / 190)
    assert not report["estimated"]
    assert not any("PUE" in item for item in report["leaves_out"])  # PUE was set, so it is counted
    json.dumps(report)  # JSON-ready


def test_meter_report_shape_and_leaves_out():
    report = CostMeter(HARDWARE["H100"], clock=FakeClock()).report()
    assert set(report) >= {"hardware", "devices", "watts_per_device", "usd_per_hour_per_device", "wall_seconds",
                           "device_hours", "kwh", "usd", "flops", "seconds_by_phase", "achieved_flops_per_s",
                           "leaves_out"}
    leaves = " ".join(report["leaves_out"])
    for phrase in ("failed runs", "data preparation", "idle time", "staff", "buying the hardware", "PUE"):
        assert phrase in leaves


def test_phases_do_not_nest_and_time_is_kept_on_error():
    clock = FakeClock()
    meter = CostMeter(HARDWARE["cpu"], clock=clock)
    with pytest.raises(RuntimeError, match="do not nest"):
        with meter.phase("train"):
            with meter.phase("eval"):
                pass
    with pytest.raises(ZeroDivisionError):
        with meter.phase("eval"):
            clock.now += 5
            1 / 0
    assert meter.seconds_by_phase["eval"] == 5


def test_state_dict_round_trip_keeps_counting():
    clock = FakeClock()
    meter = CostMeter(HARDWARE["cpu"], clock=clock)
    with meter.phase("train"):
        clock.now += 100
        meter.add_flops("train", 5e12)
    state = json.loads(json.dumps(meter.state_dict()))  # checkpoints store it as JSON

    clock.now += 3600  # the machine was down for an hour: not counted
    resumed = CostMeter(HARDWARE["cpu"], clock=clock)
    clock.now += 5  # the resumed process loads its model and checkpoint: counted
    resumed.load_state_dict(state)
    with resumed.phase("train"):
        clock.now += 50
        resumed.add_flops("train", 2e12)
    report = resumed.report()
    assert report["wall_seconds"] == 155
    assert report["flops"]["by_phase"] == {"train": 7e12}
    assert report["seconds_by_phase"] == {"train": 150}
    assert any("interruption" in item for item in report["leaves_out"])

    with pytest.raises(UsageError, match="--hardware cpu"):
        CostMeter(HARDWARE["H100"], clock=clock).load_state_dict(state)


def test_estimate_shape_and_scaling():
    plan = RunPlan(**SMOL, steps=50, prompts_per_step=2, samples_per_prompt=8, prompt_tokens=80,
                   completion_tokens=128, inner_updates=1, eval_items=48, evals=2)
    cpu = estimate(plan, HARDWARE["cpu"])
    assert cpu["estimated"] is True
    assert set(cpu["flops"]["by_phase"]) == {"rollout", "train", "eval"}
    assert cpu["wall_seconds"] == pytest.approx(sum(cpu["seconds_by_phase"].values()))
    assert cpu["usd"] == pytest.approx(cpu["device_hours"] * 0.08)
    assert set(cpu) == set(CostMeter(HARDWARE["cpu"], clock=FakeClock()).report())  # same shape as a measured run
    json.dumps(cpu)
    # twice the inner updates: twice the training FLOPs; KL's reference pass adds a third of one update
    twice = plan_work(RunPlan(**{**plan.__dict__, "inner_updates": 2}))["train"].dense_flops
    with_kl = plan_work(RunPlan(**{**plan.__dict__, "scoring_passes": 1}))["train"].dense_flops
    once = plan_work(plan)["train"].dense_flops
    assert twice == pytest.approx(2 * once) and with_kl == pytest.approx(once * 4 / 3)
    # more GPUs cut FLOP-bound time, but not decoding latency
    one, eight = estimate(plan, HARDWARE["H100"]), estimate(plan, HARDWARE["H100"], devices=8)
    assert eight["seconds_by_phase"]["train"] == pytest.approx(one["seconds_by_phase"]["train"] / 8)
    assert eight["seconds_by_phase"]["rollout"] == pytest.approx(one["seconds_by_phase"]["rollout"], rel=0.01)


def test_run_plan_rejects_bad_values():
    with pytest.raises(UsageError, match="--samples-per-prompt 0"):
        RunPlan(**SMOL, steps=1, samples_per_prompt=0)


def test_format_cost_line():
    clock = FakeClock()
    meter = CostMeter(HARDWARE["cpu"], clock=clock)
    meter.add_flops("train", 1.2e15)
    clock.now += 3600
    line = format_cost(meter.report())
    assert line.startswith("cost: 1.2 PFLOP, 1 device-hours (cpu ×1, 60 min wall), 0.03 kWh, $0.08 at $0.08/h")
    assert "excludes failed runs" in line and "\n" not in line
    plan = RunPlan(**SMOL, steps=10, prompt_tokens=50, completion_tokens=50)
    assert format_cost(estimate(plan, HARDWARE["cpu"])).startswith("estimated cost: ")
