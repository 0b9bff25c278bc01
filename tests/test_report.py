import json
import math

import pytest

from r1lite.errors import UsageError
from r1lite.meter.hardware import HARDWARE
from r1lite.meter.meter import CostMeter
from r1lite.report import (
    TABLE_HEADER,
    before_after_table,
    headline,
    moving_average,
    read_metrics,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SUMMARY = {
    "eval_base_plain": {"pass@1": 0.25, "format_rate": 0.0, "completion_tokens_mean": 41.2, "n_items": 48,
                        "format": "plain", "task": "add2"},
    "eval_before": {"pass@1": 0.104, "format_rate": 0.125, "maj@8": 0.15, "completion_tokens_mean": 87.6,
                    "n_items": 48, "format": "r1", "task": "add2"},
    "eval_after_sft": {"pass@1": 0.3125, "format_rate": 0.9, "completion_tokens_mean": 60.0, "n_items": 48},
    "eval_after": {"pass@1": 0.5625, "format_rate": 0.979, "completion_tokens_mean": 112.3, "n_items": 48},
}


def metric_row(step: int) -> dict:
    row = {
        "step": step, "reward_mean": 0.2 + 0.03 * step, "reward_std": 0.3, "accuracy": 0.1 + 0.02 * step,
        "format_rate": min(1.0, 0.1 + 0.05 * step), "completion_len_mean": 60 + 2 * step, "completion_len_max": 128,
        "truncated_frac": 0.05, "clip_frac": 0.01, "kl": 0.001 * step, "entropy": 1.2 - 0.01 * step,
        "grad_norm": 0.8, "lr": 1e-5, "step_seconds": 8.5 + (step % 3), "tokens_per_s": 250.0,
        "rewards/accuracy_mean": 0.1 + 0.02 * step, "rewards/format_mean": 0.1 + 0.04 * step,
        "think_chars_mean": 40.0 + step, "empty_think_frac": 0.5 / step, "sample": f"<think>step {step} & co</think>",
    }
    if step % 5 == 0:
        row["kl"] = None  # any key may be null in a row
        del row["entropy"]
    return row


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "add2-grpo"
    run.mkdir()
    (run / "metrics.jsonl").write_text("".join(json.dumps(metric_row(s)) + "\n" for s in range(1, 21)))
    meter = CostMeter(HARDWARE["cpu"], clock=iter([0.0, 0.0, 600.0, 600.0]).__next__)
    with meter.phase("rollout"):
        meter.add_flops("rollout", 2e14)
    (run / "summary.json").write_text(json.dumps({**SUMMARY, "cost": meter.report()}))
    (run / "config.yaml").write_text("task: add2\nmodel: default\ngrpo:\n  lr: 1.0e-05\n  group_size: 8\n")
    return run


def test_before_after_table_rows():
    rows = before_after_table(SUMMARY)
    assert [r[0] for r in rows] == ["base model, plain prompt", "base model, R1 format", "after cold-start SFT",
                                    "after GRPO"]
    assert rows[1] == ("base model, R1 format", "10.4%", "12.5%", "88", "48")
    assert rows[3] == ("after GRPO", "56.2%", "97.9%", "112", "48")
    assert all(len(r) == len(TABLE_HEADER) for r in rows)
    assert before_after_table({}) == []


def test_headline_in_points():
    assert "+45.8 points" in headline(SUMMARY)
    assert headline({"eval_after": {"pass@1": 0.5}}) is None


def test_moving_average_smooths():
    assert moving_average([0.0, 10.0, 0.0, 10.0], 2) == [0.0, 5.0, 5.0, 5.0]


def test_report_on_a_full_run(run_dir):
    path = write_report(run_dir)
    assert path == run_dir / "report.html"
    plots = run_dir / "plots"
    for name in ("reward_accuracy", "rewards_by_function", "format_rate", "completion_length", "kl", "step_time",
                 "thinking", "empty_think"):
        png = (plots / f"{name}.png").read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 1000
    page = path.read_text()
    for row in before_after_table(SUMMARY):
        for cell in row:
            assert f"<td>{cell}</td>" in page
    assert "add2-grpo" in page and "task: add2" in page
    assert "+45.8 points" in page
    samples = page.split("<h2>Sampled completions</h2>")[1].split("<h2>")[0]  # start, middle, end; escaped
    assert [f"step {s}" for s in (1, 11, 20)] == [h.split("</h3>")[0] for h in samples.split("<h3>")[1:]]
    assert "&lt;think&gt;step 20 &amp; co&lt;/think&gt;" in samples
    assert "src='plots/reward_accuracy.png'" in page
    assert "<details><summary>Resolved config" in page and "group_size: 8" in page
    assert "cost: 200 TFLOP" in page and "Not counted" in page and "staff time" in page
    assert "$5,576,000" in page and "$294,000" in page  # DeepSeek reference points
    assert "Cost per held-out accuracy point" in page  # 600 s of rollouts: GRPO's row
    assert "<td>GRPO</td><td>+25.0</td>" in page and "power x time" in page
    if "peak_rss_mib_by_phase" in json.loads((run_dir / "summary.json").read_text())["cost"]:  # where /proc reads
        assert "<th>peak resident memory</th>" in page and "<td>rollout</td><td>200 TFLOP</td><td>10 min</td><td>" in page
    leftovers = [p.name for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_report_with_missing_keys_and_files(tmp_path):
    run = tmp_path / "sparse"
    run.mkdir()
    rows = [{"step": 1, "reward_mean": 0.1}, {"reward_mean": None}, {"step": 3, "reward_mean": 0.3, "kl": math.nan}]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n{\"step\": 4, \"rew")
    page = write_report(run).read_text()
    assert (run / "plots" / "reward_accuracy.png").read_bytes().startswith(PNG_MAGIC)
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["reward_accuracy.png"]  # nothing else has data
    assert "No evaluation in summary.json" in page and "No cost block" in page
    assert "metrics.jsonl:4 is cut off" in page  # an interrupted write is reported, not hidden

    (run / "metrics.jsonl").unlink()
    (run / "summary.json").write_text(json.dumps({"eval_after": {"pass@1": 0.5}}))
    page = write_report(run).read_text()
    assert "<td>50.0%</td>" in page and "No training metrics" in page


def test_report_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(UsageError, match="run directory"):
        write_report(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("not json\n{}\n")
    with pytest.raises(UsageError, match="metrics.jsonl:1"):
        read_metrics(tmp_path / "metrics.jsonl")


# ---------------------------------------------------------------------------------------------
# Comparing runs


@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    """Three tiny GRPO runs on a task whose rewards vary, differing in seed and learning rate."""
    import sys
    import textwrap

    from rich.console import Console

    from r1lite.config import build
    from r1lite.train.config import GRPOConfig
    from r1lite.train.trainer import Trainer

    root = tmp_path_factory.mktemp("compare")
    (root / "coin_verifier.py").write_text(textwrap.dedent('''
        def even_length(response, answer):
            return float(len(response) % 2 == 0)
    '''))
    rows = [f'{{"question": "Say something about {i}.", "answer": "x"}}' for i in range(60)]
    (root / "coin.jsonl").write_text("\n".join(rows) + "\n")
    sys.path.insert(0, str(root))
    runs = []
    for name, seed, lr in (("lr1e-3-s0", 0, 1e-3), ("lr1e-3-s1", 1, 1e-3), ("lr3e-3-s0", 0, 3e-3)):
        cfg = build(GRPOConfig, dict(model="tiny", task=f"jsonl:{root / 'coin.jsonl'}", format="plain", batch_size=8,
                                     task_options={"verifier": "python:coin_verifier:even_length"},
                                     group_size=4, micro_batch_size=8, max_new_tokens=10, eval_items=6, max_steps=4,
                                     lr=lr, seed=seed, save_every=0, device="cpu", dtype="fp32", out=str(root / name)))
        assert Trainer(cfg, console=Console(quiet=True)).train() == 0
        runs.append(root / name)
    sys.path.remove(str(root))
    return runs


def test_comparison_page_of_three_runs_renders_in_chromium(three_runs, chromium_browser, tmp_path, screenshot_dir):
    from r1lite.compare import CURVES, write_comparison

    out = tmp_path / "page" / "compare.html"
    assert write_comparison(three_runs, out) == out
    page = out.read_text()
    for run in three_runs:
        assert run.name in page
    assert "<td>lr</td><td>0.001</td><td>0.001</td><td>0.003</td>" in page  # the keys that differ
    assert "<td>seed</td><td>0</td><td>1</td><td>0</td>" in page
    assert "<td>model</td>" not in page  # the same in all three
    assert "per point: GRPO" in page and "after GRPO" in page
    shown = {c.file for c in CURVES if (out.parent / "compare_plots" / c.file).exists()}
    assert shown == {c.file for c in CURVES} - {"kl.png"}  # no KL without a reference model

    view = chromium_browser.new_page(viewport={"width": 1200, "height": 900})
    view.goto(out.as_uri())
    images = view.eval_on_selector_all("img", "imgs => imgs.map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])")
    assert len(images) == len(shown)
    for src, complete, width in images:
        assert complete and width > 0, src
    view.screenshot(path=str(screenshot_dir / "report_compare.png"), full_page=True)
    view.close()


def test_one_run_directory_rerenders_its_report(three_runs, cli):
    run = three_runs[0]
    (run / "report.html").unlink()
    r = cli("report", str(run))
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run / "report.html").exists() and "report:" in r.stdout
    page = (run / "report.html").read_text()
    assert "Cost per held-out accuracy point" in page
