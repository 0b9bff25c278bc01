"""Many processes on the standard engine (torch.distributed, gloo on the CPU): two processes train
the same weights as one, a run killed on two resumes on one and on two, and a bad launch stops
with one line on rank 0 instead of hanging.

One torch.multiprocessing harness runs the jobs: each process sets the environment torchrun would
(``RANK``, ``WORLD_SIZE``, ...) and calls ``r1lite.cli.main``, job after job; a "solo" job runs a
separate one-process run on each of them. One test starts torchrun itself. GPU tests skip without
CUDA.
"""

import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 10
"""--dist-timeout of the bad launches, seconds: they must end within it (the other jobs keep the
default, so a loaded machine cannot make them time out)."""
BASE = ["train", "--model", "tiny", "--format", "plain", "--group-size", "4", "--batch-size", "16",
        "--micro-batch-size", "4", "--max-new-tokens", "12", "--top-k", "20", "--lr", "1e-3", "--seed", "3",
        "--dtype", "fp32", "--eval-items", "0", "--max-steps", "3", "--save-every", "0"]
"""fp32, one group per micro-batch (so one process runs exactly the passes the ranks share out) and
top-k 20: the random tiny model's next-token distribution is nearly uniform over 49k tokens, where
a difference in the last bits of a sum can move an inverse-CDF draw to the neighbouring token;
over 20 tokens it cannot."""
CONFIGS = {
    "grpo-full": ["--algorithm", "grpo", "--eval-items", "5"],  # KL to a frozen copy; 5 items: uneven eval shards
    "grpo-lora": ["--algorithm", "grpo", "--lora", "--lora-r", "4"],  # KL by swapping the adapters
    "dapo-full": ["--algorithm", "dapo"],  # token-mean loss, dynamic sampling refilled on the whole batch
    "dapo-lora": ["--algorithm", "dapo", "--lora", "--lora-r", "4"],
}
FSDP = ("grpo-full", "dapo-lora")
KILLED = ["--algorithm", "dapo", "--save-every", "2", "--fsdp", "--dist-timeout", str(TIMEOUT)]
"""Killed on two processes (FSDP) during step 3, after its step-2 checkpoint; dapo-full otherwise."""


# -- the harness --------------------------------------------------------------------------------


def _rank_main(rank: int, jobs: list[dict], out: str, start) -> None:
    """One process of a launch: its part of each job in turn, output in ``out/<job>.<rank>.*``.
    ``start``: a barrier, so that the ranks begin each job together (not while one of them still
    writes the previous job's report)."""
    torch.set_num_threads(1)
    from r1lite import cli
    from r1lite.train.trainer import Trainer

    for i, job in enumerate(jobs):
        argv = job["argv"][rank]
        if argv is None:
            continue
        if job["together"]:
            start.wait()
        size = len(job["argv"]) if job["together"] else 1
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(job["port"]), WORLD_SIZE=str(size),
                          RANK=str(rank if size > 1 else 0), LOCAL_RANK=str(rank if size > 1 else 0))
        if job.get("die_at_step") and rank == 1:
            real = Trainer.rollout

            def dying(self, step=job["die_at_step"], real=real):
                if self.step + 1 == step:
                    Path(out, f"{i}.died").write_text(str(time.time()))
                    os._exit(1)
                return real(self)

            Trainer.rollout = dying
        saved = os.dup(1), os.dup(2)
        with open(Path(out, f"{i}.{rank}.out"), "w") as stdout, open(Path(out, f"{i}.{rank}.err"), "w") as stderr:
            os.dup2(stdout.fileno(), 1)
            os.dup2(stderr.fileno(), 2)
            try:
                code = cli.main(argv)
            except BaseException:  # a crash: its traceback in the job's err file, and on to the next job
                traceback.print_exc()
                code = "crashed"
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
        Path(out, f"{i}.{rank}.json").write_text(json.dumps({"code": code, "end": time.time()}))


def launch(jobs: list[dict], out: Path, ports: list[int], processes: int = 2, limit: float = 900) -> list[list[dict]]:
    """Run ``jobs`` on ``processes`` spawned processes, job i rendezvousing on ``ports[i]``; per job,
    per rank: code, end time, out, err. A job is ``{"argv": [argv of rank 0, of rank 1 (None: sits
    out)], "together": one job of both, or each its own one-process run}``."""
    out.mkdir(parents=True, exist_ok=True)
    for job, port in zip(jobs, ports, strict=True):
        job["port"] = port
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(processes)
    procs = [ctx.Process(target=_rank_main, args=(rank, jobs, str(out), start)) for rank in range(processes)]
    for p in procs:
        p.start()
    deadline = time.time() + limit
    for p in procs:
        p.join(max(1.0, deadline - time.time()))
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert not hung, f"a launch hung; outputs in {out}"
    results = []
    for i in range(len(jobs)):
        ranks = []
        for rank in range(processes):
            done = out / f"{i}.{rank}.json"
            ranks.append({**(json.loads(done.read_text()) if done.exists() else {"code": None, "end": None}),
                          "out": (out / f"{i}.{rank}.out").read_text() if (out / f"{i}.{rank}.out").exists() else "",
                          "err": (out / f"{i}.{rank}.err").read_text() if (out / f"{i}.{rank}.err").exists() else ""})
        results.append(ranks)
    return results


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "final" / "model.safetensors")


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(module_varied_task, free_ports, tmp_path_factory):
    """Every job of the module's first launch: one-process references, the same configs on two
    processes (and with FSDP), two bad launches, and a run whose rank 1 dies. Returns (run
    directory, job results by name)."""
    task, env, options = module_varied_task
    sys.path.insert(0, env["PYTHONPATH"].split(os.pathsep)[0])  # the verifier, for the spawned processes too
    sys.path.insert(0, str(ROOT))  # this module, which they import
    root = tmp_path_factory.mktemp("runs")

    def argv(config: list[str], out: str, *extra: str) -> list[str]:
        return [*BASE, "--task", task, "--task-options", f"verifier={options['verifier']}", *config, *extra, "--out", str(root / out)]

    bad = [*CONFIGS["dapo-full"], "--dist-timeout", str(TIMEOUT)]
    jobs = {
        "refs-grpo": {"argv": [argv(CONFIGS["grpo-full"], "1-grpo-full"), argv(CONFIGS["grpo-lora"], "1-grpo-lora")],
                      "together": False},
        "refs-dapo": {"argv": [argv(CONFIGS["dapo-full"], "1-dapo-full"), argv(CONFIGS["dapo-lora"], "1-dapo-lora")],
                      "together": False},
        **{f"two-{n}": {"argv": [argv(c, f"2-{n}")] * 2, "together": True} for n, c in CONFIGS.items()},
        **{f"fsdp-{n}": {"argv": [argv(CONFIGS[n], f"fsdp-{n}", "--fsdp")] * 2, "together": True} for n in FSDP},
        "mismatch": {"argv": [argv(bad, "mismatch"), argv(bad, "mismatch", "--lr", "0.01")], "together": True},
        "indivisible": {"argv": [argv(bad, "indivisible", "--batch-size", "12")] * 2, "together": True},
        "killed": {"argv": [argv(KILLED, "killed")] * 2, "together": True, "die_at_step": 3},  # last: rank 1 ends here
    }
    results = launch(list(jobs.values()), root / "logs", free_ports(len(jobs)))
    return root, dict(zip(jobs, results)), task


# -- equality with one process --------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_processes_train_the_same_weights_as_one(runs, name):
    root, results, _ = runs
    for job in (f"two-{name}", "refs-grpo" if name.startswith("grpo") else "refs-dapo"):
        assert [r["code"] for r in results[job]] == [0, 0], results[job]
    assert max_difference(weights(root / f"2-{name}"), weights(root / f"1-{name}")) <= 1e-5
    one, two = rows(root / f"1-{name}"), rows(root / f"2-{name}")
    for a, b in zip(one, two, strict=True):  # the same completions and rewards, the same update
        assert (a["groups_kept"], a["groups_sampled"], a["completion_len_mean"]) == \
               (b["groups_kept"], b["groups_sampled"], b["completion_len_mean"])
        assert a["reward_mean"] == pytest.approx(b["reward_mean"], abs=1e-6)
        assert a["loss_tokens"] == b["loss_tokens"] and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert any(r["grad_norm"] for r in one)  # advantages were not all zero


@pytest.mark.parametrize("name", FSDP)
def test_fsdp_on_two_processes_trains_the_same_weights_as_one(runs, name):
    root, results, _ = runs
    assert [r["code"] for r in results[f"fsdp-{name}"]] == [0, 0], results[f"fsdp-{name}"]
    assert max_difference(weights(root / f"fsdp-{name}"), weights(root / f"1-{name}")) <= 1e-5


def test_evaluations_are_sharded_and_match_one_process(runs):
    root, _, _ = runs
    one, two = (json.loads((root / f"{n}-grpo-full" / "summary.json").read_text()) for n in (1, 2))
    for key in ("eval_before", "eval_after"):
        assert two[key]["n_items"] == 5
        for metric in ("pass@1", "format_rate", "completion_tokens_mean"):
            assert two[key][metric] == one[key][metric], (key, metric)


def test_rank_zero_alone_writes_and_the_job_is_metered_whole(runs):
    """summary.json and the report give the world size; the cost counts both ranks' device time
    and FLOPs (the same work as one process, on twice the devices)."""
    root, results, _ = runs
    one, two = (json.loads((root / f"{n}-dapo-full" / "summary.json").read_text()) for n in (1, 2))
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["cost"]["devices"] == 2 and two["cost"]["device_hours"] > 1.5 * two["cost"]["wall_seconds"] / 3600
    for phase in ("rollout", "train"):
        ratio = two["cost"]["flops"]["by_phase"][phase] / one["cost"]["flops"]["by_phase"][phase]
        assert 0.8 < ratio < 1.6, (phase, ratio)  # rank 1's counted too (with padding: smaller batches pad more)
    assert "world size 2" in (root / "2-dapo-full" / "report.html").read_text()
    rank1 = results["two-dapo-full"][1]
    assert rank1["out"] == "" and "error" not in rank1["err"]
    assert "r1lite train" in results["two-dapo-full"][0]["out"]


# -- resume at another world size -----------------------------------------------------------------


@pytest.fixture(scope="module")
def resumed(runs, free_ports, module_varied_task):
    """The killed run resumed on one process and, with FSDP, on two (a second launch)."""
    root, results, task = runs
    options = module_varied_task[2]
    assert results["killed"][0]["code"] == 1
    flags = [*BASE, "--task", task, "--task-options", f"verifier={options['verifier']}", *KILLED]
    for name in ("resumed-1", "resumed-2"):  # one killed run, resumed twice: two copies of it
        shutil.copytree(root / "killed", root / name)
        config = yaml.safe_load((root / name / "config.yaml").read_text())
        (root / name / "config.yaml").write_text(yaml.safe_dump({**config, "out": str(root / name)}, sort_keys=False))
    at_one = [*flags, "--out", str(root / "resumed-1"), "--resume", str(root / "resumed-1"), "--no-fsdp"]
    at_two = [*flags, "--out", str(root / "resumed-2"), "--resume", str(root / "resumed-2")]
    jobs = [{"argv": [at_two, at_two], "together": True}, {"argv": [at_one, None], "together": False}]
    return launch(jobs, root / "logs-resumed", free_ports(len(jobs)))


def test_a_run_killed_on_two_processes_resumes_on_one_and_on_two(runs, resumed):
    root, _, _ = runs
    state = json.loads((root / "killed" / "checkpoints" / "step-000002" / "state.json").read_text())
    assert state["step"] == 2 and state["world_size"] == 2
    assert [r["code"] for r in resumed[0]] == [0, 0] and resumed[1][0]["code"] == 0, resumed
    whole = weights(root / "1-dapo-full")  # the same run, never interrupted, on one process
    for name in ("resumed-1", "resumed-2"):
        assert max_difference(weights(root / name), whole) <= 1e-5, name
        assert [r["step"] for r in rows(root / name)] == [1, 2, 3]
    assert "saved by 2 processes" in resumed[1][0]["out"]


# -- bad launches ---------------------------------------------------------------------------------


def one_line_error(result: list[dict], code: int) -> str:
    """Rank 0's error line; every rank exits ``code`` and rank 1 prints no error."""
    assert [r["code"] for r in result] == [code, code], result
    lines = result[0]["err"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result[0]["err"]
    assert "error" not in result[1]["err"] and "Traceback" not in result[0]["err"] + result[1]["err"]
    return lines[0]


def test_a_world_size_that_does_not_divide_the_prompts_is_refused(runs):
    _, results, _ = runs
    line = one_line_error(results["indivisible"], 2)
    assert "2 processes do not divide the 3 prompts" in line


def test_ranks_launched_with_different_flags_are_refused(runs):
    root, results, _ = runs
    line = one_line_error(results["mismatch"], 2)
    assert "rank 1 was launched with lr=0.01, rank 0 with lr=0.001" in line
    assert not (root / "mismatch").exists()


def test_a_rank_that_dies_stops_rank_zero_with_one_line_within_the_timeout(runs):
    root, results, _ = runs
    rank0 = results["killed"][0]
    assert rank0["code"] == 1, rank0
    lines = rank0["err"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: rank 0: a collective failed"), rank0["err"]
    died = float((root / "logs" / f"{list(results).index('killed')}.died").read_text())
    assert rank0["end"] - died < TIMEOUT + 5  # gloo sees the closed connection at once; the timeout bounds a hang


# -- torchrun ---------------------------------------------------------------------------------------


def test_torchrun_runs_r1lite_train_on_two_processes(runs, module_varied_task):
    root, _, task = runs
    _, env, options = module_varied_task
    out = root / "torchrun"
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--nproc-per-node", "2", "-m", "r1lite", *BASE, "--task", task, "--task-options", f"verifier={options['verifier']}",
                        *CONFIGS["dapo-lora"], "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, **env, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    assert max_difference(weights(out), weights(root / "1-dapo-lora")) <= 1e-5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_one_gpu_trains_in_bf16(cli, module_varied_task, tmp_path):
    task, env, options = module_varied_task
    r = cli(*BASE, "--task", task, "--task-options", f"verifier={options['verifier']}", *CONFIGS["dapo-full"], "--device", "cuda", "--dtype", "bf16", "--out", tmp_path / "run",
            env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["runtime"].startswith("cuda bfloat16")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs (NCCL)")
def test_two_gpus_train_the_same_weights_as_one(module_varied_task, tmp_path):
    task, env, options = module_varied_task
    flags = [*BASE, "--task", task, "--task-options", f"verifier={options['verifier']}", *CONFIGS["dapo-full"], "--device", "cuda"]
    torchrun = Path(sys.executable).with_name("torchrun")
    for command, out in (([str(torchrun), "--nproc-per-node", "2", "-m", "r1lite"], "two"), ([sys.executable, "-m", "r1lite"], "one")):
        r = subprocess.run([*command, *flags, "--out", str(tmp_path / out)], capture_output=True, text=True, cwd=ROOT,
                           env={**os.environ, **env}, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    assert max_difference(weights(tmp_path / "two"), weights(tmp_path / "one")) <= 1e-4  # CUDA sums: not bit-stable
