"""The GPU check's ``grpo`` section: the real trainer on the device, through ``r1lite train``.

On the SmolLM2-135M shape with random weights, a JSONL task whose Python verifier rewards an even
number of vowels (:func:`even_vowels`: a random model's rewards vary within a group, so the
advantages and gradients are not zero):

- ``full``: N steps with a checkpoint every N/2; the loss is finite, the weights change, and the
  meter reports device-hours and energy (NVML's counter on a GPU: ``energy_source`` must say so);
- ``cut``: the same command stopped by SIGTERM during step N/2 (it saves a checkpoint and exits
  143), then the same command with ``--resume``: its final weights must equal ``full``'s bit for
  bit. Both runs' step-N/2 checkpoints are compared too: if two identical runs already differ
  there, the device is not deterministic for these kernels and the resume comparison says
  nothing (recorded as such, not as a failure);
- ``torchrun --nproc-per-node 1 -m r1lite train`` for one step. One process joins no process
  group (:func:`r1lite.train.distributed.start`), so NCCL (gloo on a CPU) is probed apart: one
  all-reduce in a one-rank group.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
from gpu_check_models import ROOT, SMOLLM2
from safetensors.torch import load_file

BENCHMARKS = Path(__file__).resolve().parent


def even_vowels(response: str, answer) -> float:
    """1 when the response has an even number of vowels (the answer is not read).

    >>> even_vowels("aeb", None), even_vowels("a", None)
    (1.0, 0.0)
    """
    return float(sum(ch in "aeiou" for ch in response) % 2 == 0)


def write_task(folder: Path) -> list[str]:
    """The task's flags: a JSONL file of questions scored by :func:`even_vowels`."""
    data = folder / "vowels.jsonl"
    data.write_text("".join(json.dumps({"question": f"Write something about item {i}.", "answer": "any"}) + "\n"
                            for i in range(200)))
    return ["--task", f"jsonl:{data}", "--task-options", f"verifier=python:{Path(__file__).stem}:even_vowels"]


def train_flags(ctx, model_dir: Path, task: list[str], steps: int) -> list[str]:
    s = ctx.sizes
    return ["train", "--model", str(model_dir), *task, "--format", "plain", "--group-size", str(s.grpo_group),
            "--batch-size", str(s.grpo_batch), "--micro-batch-size", str(s.grpo_batch),
            "--max-new-tokens", str(s.grpo_new_tokens), "--top-k", "20", "--lr", "1e-5", "--seed", "0",
            "--eval-items", "0", "--max-steps", str(steps), "--save-every", str(max(1, steps // 2)),
            "--device", ctx.device.type, "--no-preflight"]


def run(record: dict, ctx) -> str | None:
    from r1lite import cli

    steps = ctx.sizes.grpo_steps
    model_dir = ctx.saved(SMOLLM2)
    task = write_task(ctx.tmp)
    full, cut = ctx.tmp / "grpo-full", ctx.tmp / "grpo-cut"
    record["steps"], record["shape"] = steps, SMOLLM2

    t = time.perf_counter()
    code = cli.main([*train_flags(ctx, model_dir, task, steps), "--out", str(full)])
    record["full"] = {"exit": code, "seconds": time.perf_counter() - t}
    ctx.expect(record, "full_run_exits_0", code == 0, exit=code)
    ctx.save()
    if code != 0:
        return None
    rows = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["loss"] is not None]
    ctx.expect(record, "loss_finite", bool(losses) and all(math.isfinite(v) for v in losses),
               trained_steps=len(losses), losses=losses)
    start = load_file(model_dir / "model.safetensors")
    final = load_file(full / "final" / "model.safetensors")
    ctx.expect(record, "weights_change", max_difference(start, final) > 0, max_abs_change=max_difference(start, final))
    cost = json.loads((full / "summary.json").read_text())["cost"]
    record["meter"] = {k: cost[k] for k in ("hardware", "device_hours", "kwh", "energy_source", "wall_seconds", "mfu")}
    ctx.expect(record, "device_hours_metered", cost["device_hours"] > 0)
    if ctx.device.type == "cuda":
        ctx.expect(record, "nvml_energy", cost["energy_source"].startswith("measured: NVML") and cost["kwh"] > 0)
    else:
        record["nvml_energy"] = "skipped: a CPU run has no NVML counter (the meter read: " + cost["energy_source"] + ")"
    ctx.save()

    resume(record, ctx, model_dir, task, steps, full, cut)
    ctx.save()
    torchrun(record, ctx, model_dir, task)
    ctx.save()
    probe_collective(record, ctx)
    return None


def resume(record: dict, ctx, model_dir: Path, task: list[str], steps: int, full: Path, cut: Path) -> None:
    """Stop a run with SIGTERM during step steps/2, resume it, compare with the run never stopped."""
    from r1lite import cli
    from r1lite.train.trainer import Trainer

    flags = [*train_flags(ctx, model_dir, task, steps), "--out", str(cut)]
    real = Trainer.rollout
    half = max(1, steps // 2)

    def stopped(self):
        if self.step + 1 == half:  # the signal arrives during this step: it ends, is saved, and the run stops
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self)

    Trainer.rollout = stopped
    try:
        stop_code = cli.main(flags)
    finally:
        Trainer.rollout = real
    t = time.perf_counter()
    resume_code = cli.main([*flags, "--resume", str(cut)])
    record["cut"] = {"stop_exit": stop_code, "resume_exit": resume_code, "resume_seconds": time.perf_counter() - t}
    ctx.expect(record, "sigterm_saves_and_exits_143", stop_code == 143, exit=stop_code)
    ctx.expect(record, "resume_exits_0", resume_code == 0, exit=resume_code)
    if resume_code != 0:
        return
    name = f"checkpoints/step-{half:06d}/weights.safetensors"
    before = max_difference(load_file(full / name), load_file(cut / name))
    after = max_difference(load_file(full / "final" / "model.safetensors"), load_file(cut / "final" / "model.safetensors"))
    record["resume"] = {"max_abs_difference_at_the_cut": before, "max_abs_difference_final": after}
    if before > 0:
        record["resume"]["inconclusive"] = (f"two identical runs already differ by {before:.3g} at step {half}: "
                                            "this device is not deterministic for these kernels")
    else:
        ctx.expect(record, "resume_identical_weights", after == 0, max_abs_difference=after)
    resumed = json.loads((cut / "summary.json").read_text())["cost"]
    record["resume"]["meter_after_resume"] = {k: resumed[k] for k in ("device_hours", "kwh", "energy_source")}


def torchrun(record: dict, ctx, model_dir: Path, task: list[str]) -> None:
    """``torchrun --nproc-per-node 1 -m r1lite train`` for one step, in a process of its own."""
    out = ctx.tmp / "grpo-torchrun"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
               "-m", "r1lite", *train_flags(ctx, model_dir, task, 1), "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(BENCHMARKS), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the threads this process computes with
    t = time.perf_counter()
    code, tail = run_bounded(command, env, max(10.0, ctx.left() - 15))
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    record["torchrun"] = {"command": "torchrun --nproc-per-node 1 -m r1lite train ... --max-steps 1",
                          "exit": code, "seconds": time.perf_counter() - t, "runtime": summary.get("runtime"),
                          "process_group": "none: with one process r1lite joins no process group "
                                           "(r1lite.train.distributed.start); the collective is probed apart"}
    ok = code == 0 and summary.get("steps") == 1 and summary.get("world_size") == 1
    ctx.expect(record, "torchrun_one_step", ok, exit=code, output_tail=None if ok else tail)


def probe_collective(record: dict, ctx) -> None:
    """One all-reduce in a one-rank process group on the backend r1lite picks for this device."""
    import torch.distributed as dist

    backend = ctx.runtime.backend
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device.index or 0)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                            timeout=timedelta(seconds=60))
    try:
        t = torch.arange(4, dtype=torch.float32, device=ctx.device)
        dist.all_reduce(t)
        values = t.tolist()
    finally:
        dist.destroy_process_group()
    ctx.expect(record, f"{backend}_all_reduce", values == [0.0, 1.0, 2.0, 3.0], backend=backend, values=values)


def run_bounded(command: list[str], env: dict, timeout: float) -> tuple[int | None, str]:
    """Run ``command`` in a session of its own; past ``timeout`` seconds the whole session is ended.
    Returns (exit status or None when it was ended, the last 3,000 characters of its output)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=ROOT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        return proc.returncode, output[-3000:]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        return None, output[-3000:]
    except BaseException:  # the section's time cap: no process of it outlives the check
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest absolute difference between same-named tensors (inf when the names differ)."""
    if a.keys() != b.keys():
        return math.inf
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
