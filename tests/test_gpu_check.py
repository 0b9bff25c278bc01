"""The GPU check's dry run (``benchmarks/gpu_check.py --device cpu --tiny``), so the script cannot rot
between GPU runs: every section runs or is skipped with a reason, the one file it writes holds
them all, and a section that fails is recorded, leaves the others running and makes the exit 1."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SECTIONS = ["engine", "grpo", "speed", "memory"]


def dry_run(out: Path, *flags: str) -> tuple[subprocess.CompletedProcess, dict]:
    r = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(out), *flags],
                       check=False, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert [p.name for p in out.iterdir()] == ["gpu_check.json"], (list(out.iterdir()), r.stderr[-3000:])
    return r, json.loads((out / "gpu_check.json").read_text())


def checks(record: dict) -> dict:
    """Every check of a section record, at any depth, by its path."""
    found = {name: c["ok"] for name, c in record.get("checks", {}).items()}
    for key, value in record.items():
        if isinstance(value, dict) and key != "checks":
            found.update({f"{key}/{name}": ok for name, ok in checks(value).items()})
    return found


def test_the_dry_run_runs_every_section_and_exits_0(tmp_path):
    r, result = dry_run(tmp_path)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert set(SECTIONS) <= result.keys()
    assert {result[s]["status"] for s in ("engine", "grpo", "speed")} == {"ok"}, {s: result[s] for s in SECTIONS}
    assert result["memory"]["status"] == "skipped" and "CPU" in result["memory"]["reason"]
    found = {f"{s}/{name}": ok for s in SECTIONS for name, ok in checks(result[s]).items()}
    assert all(found.values()), found
    for shape in ("SmolLM2-135M", "Qwen2.5-0.5B", "Qwen3-0.6B"):
        assert found[f"engine/shapes/{shape}/fp32_greedy_identical"]
    for name in ("loss_finite", "weights_change", "resume_exits_0", "torchrun_one_step", "gloo_all_reduce"):
        assert found[f"grpo/{name}"], name
    assert found.get("grpo/resume_identical_weights") or "inconclusive" in result["grpo"]["resume"]
    for shape in result["speed"]["shapes"].values():
        assert all(row["r1lite_tokens_per_s"] > 0 for row in shape["rollout"])
        assert 0 < shape["train_step"]["mfu"]
    assert len(result["commit"]) == 40 and result["environment"]["torch"]


def test_a_failing_section_is_recorded_and_the_others_still_run(tmp_path):
    """One section hangs past its cap, one raises; the next still runs, unselected ones are named."""
    r, result = dry_run(tmp_path, "--sections", "engine", "grpo", "memory", "--plant-failure", "engine:hang",
                        "--cap", "engine=2", "--plant-failure", "grpo")
    assert r.returncode == 1, r.stdout[-4000:] + r.stderr[-4000:]
    assert set(SECTIONS) <= result.keys()
    engine, grpo = result["engine"], result["grpo"]
    assert engine["status"] == "failed" and "time cap of 2 s" in engine["error"] and engine["seconds"] < 10, engine
    assert grpo["status"] == "failed" and "PlantedFailure" in grpo["error"], grpo
    assert result["memory"]["status"] == "skipped" and result["memory"]["reason"]
    assert result["speed"] == {"status": "skipped", "reason": "not selected (--sections)"}


def test_the_memory_search_finds_the_largest_batch_that_fits():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from gpu_check_speed import largest_batch
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    tried = []

    def fits(rows):
        tried.append(rows)
        return rows <= 1000

    found = largest_batch(fits, 64, 1 << 16, lambda: 1.0)
    assert found["largest"] <= 1000 < found["first_failing"] and found["resolution"] <= 1000 // 32
    assert len(tried) <= 12
    assert largest_batch(lambda rows: False, 64, 1 << 16, lambda: 1.0)["largest"] is None
    assert largest_batch(lambda rows: True, 64, 256, lambda: 1.0) == {
        "largest": 256, "first_failing": None, "trials": [[64, True], [128, True], [256, True]], "resolution": None}
