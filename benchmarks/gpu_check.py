"""The CUDA paths proven in one prepared command: engine parity, the real trainer, speed and memory.

Four sections, each under a time cap of its own and each recorded whatever the others do; the
JSON is rewritten as results come in, so a run cut short still returns what it measured:

- ``engine``: greedy tokens identical to transformers ``generate`` in fp32, agreement in bf16, the
  step-level form, budget forcing (:mod:`gpu_check_engine`);
- ``grpo``: 10 steps of the real trainer, a SIGTERM and ``--resume`` to identical weights, the
  meter's device-hours and NVML energy, ``torchrun --nproc-per-node 1`` for one step
  (:mod:`gpu_check_train`);
- ``speed``: rollout tokens/s against ``generate`` at batch 1, 16, 64 and 256, and a train step's
  tokens/s and model FLOPs utilisation against a bf16 matmul peak measured in the same run;
- ``memory``: the largest rollout batch that fits for the Qwen2.5-0.5B shape at 512 new tokens
  (:mod:`gpu_check_speed`).

The models are SmolLM2-135M, Qwen2.5-0.5B and Qwen3-0.6B with random weights drawn on the device
from their configs (:mod:`gpu_check_models`); nothing is downloaded. Exit status: 0 when every
section ran or was skipped with a reason, 1 when one failed (a check did not hold, an error, or
its time cap), 2 for bad usage.

Here, once per tree (needs the embedded model; a few MB, git-ignored)::

    python benchmarks/gpu_check.py --prepare .gpu_check

On the GPU machine, from the root of the tree, with ``.gpu_check`` carried beside it (the only
path that travels besides the tree) and a time limit of 420 s; HASH is ``git rev-parse HEAD``
here, as that machine has no ``.git``, and ``$OUT`` the folder whose files come back::

    set -o pipefail; PYTHONUNBUFFERED=1 PYTHONPATH=. python3 benchmarks/gpu_check.py --device cuda --commit HASH --out $OUT 2>&1 | tee $OUT/gpu_check.log

Expected: about 3 minutes on one H100 or H200 (an estimate until the first run; the caps, engine
55 s, grpo 100 s, speed 85 s and memory 40 s, bound it at 5 minutes with the start-up). Then
commit ``gpu_check.json`` as ``benchmarks/results/gpu-<gpu name>.json`` and the README's GPU row.

The dry run (the suite runs it: ``tests/test_gpu_check.py``), the same code on two-layer models,
under 2 minutes on a 2-core CPU; it writes only ``DIR/gpu_check.json``::

    python benchmarks/gpu_check.py --device cpu --tiny --out DIR
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import os
import platform
import re
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import gpu_check_engine
import gpu_check_speed
import gpu_check_train
import torch
from common import git_commit, machine
from gpu_check_models import (
    ABSENT_ON_GPU,
    CARRIED,
    folder_bytes,
    load_tokenizer,
    prepare,
    random_model,
    save_model,
)

from r1lite.errors import UsageError
from r1lite.models import resolve_runtime


@dataclass(frozen=True)
class Sizes:
    """How much each section computes (a GPU run, or the tiny dry run)."""

    engine_prompts: int
    """Prompts of the parity checks (half short, half longer than the prefix they share)."""
    engine_new_tokens: int
    grpo_steps: int
    grpo_batch: int
    """Completions per GRPO step (prompts x group)."""
    grpo_group: int
    grpo_new_tokens: int
    speed_batches: tuple[int, ...]
    speed_new_tokens: int
    train_batch: int
    """Completions in the timed train step (one micro-batch)."""
    train_group: int
    train_new_tokens: int
    peak_matmul: int
    """n of the n x n x n matmul whose FLOP/s is the peak."""
    caps: dict
    """Seconds each section may take."""


GPU = Sizes(engine_prompts=8, engine_new_tokens=32, grpo_steps=10, grpo_batch=32, grpo_group=8, grpo_new_tokens=32,
            speed_batches=(1, 16, 64, 256), speed_new_tokens=128, train_batch=64, train_group=8, train_new_tokens=256,
            peak_matmul=8192, caps={"engine": 55, "grpo": 100, "speed": 85, "memory": 40})
TINY = Sizes(engine_prompts=4, engine_new_tokens=8, grpo_steps=10, grpo_batch=8, grpo_group=4, grpo_new_tokens=8,
             speed_batches=(1, 4), speed_new_tokens=8, train_batch=8, train_group=4, train_new_tokens=8,
             peak_matmul=512, caps={"engine": 45, "grpo": 100, "speed": 40, "memory": 10})
SECTIONS = {"engine": gpu_check_engine.run, "grpo": gpu_check_train.run, "speed": gpu_check_speed.run_speed,
            "memory": gpu_check_speed.run_memory}


class SectionTimeout(BaseException):
    """A section reached its time cap (a BaseException, so no ``except Exception`` inside swallows it)."""


class PlantedFailure(Exception):
    """A failure ``--plant-failure`` asked for, to show that the others are still recorded."""


class Check:
    """What the sections share: the device, the sizes, the tokenizer, the models, the clock, the record."""

    def __init__(self, args, runtime, sizes: Sizes, assets: Path, tmp: Path, result: dict, out: Path):
        self.runtime, self.device, self.sizes = runtime, runtime.device, sizes
        self.tiny, self.assets, self.tmp = args.tiny, assets, tmp
        self.result, self.out = result, out
        self._models: dict = {}
        self._saved: dict = {}
        self.section, self.deadline = "", 0.0

    @functools.cached_property
    def tokenizer(self):
        """SmolLM2's tokenizer (loaded by the first section that needs it: a failure is that section's)."""
        return load_tokenizer(self.assets)

    def model(self, name: str):
        """The random model of ``name`` on the device (built once, seed 0)."""
        if name not in self._models:
            self._models[name] = random_model(self.assets, name, self.tiny, self.device, self.tokenizer)
        return self._models[name]

    def saved(self, name: str) -> Path:
        """:meth:`model` as a Hugging Face directory, for ``--model DIR``."""
        if name not in self._saved:
            self._saved[name] = save_model(self.model(name), self.tokenizer, self.tmp / "models" / name)
        return self._saved[name]

    def keep_only(self, names: list[str]) -> None:
        """Free the other models' memory (a memory probe measures what is left beside one)."""
        self._models = {k: v for k, v in self._models.items() if k in names}
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def cap(self) -> float:
        return self.sizes.caps[self.section]

    def left(self) -> float:
        """Seconds left before the running section's cap."""
        return self.deadline - time.monotonic()

    def expect(self, record: dict, name: str, ok: bool, **details) -> None:
        """Record check ``name`` of a section: whether it held, and what it saw."""
        record.setdefault("checks", {})[name] = {"ok": bool(ok), **{k: v for k, v in details.items() if v is not None}}

    def save(self) -> None:
        write_json(self.out, self.result)


def write_json(path: Path, result: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
    os.replace(tmp, path)


@contextlib.contextmanager
def time_cap(seconds: float):
    def expire(signum, frame):
        raise SectionTimeout(f"the time cap of {seconds:g} s was reached")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def failed_checks(record: dict) -> list[str]:
    """Names of the record's checks that did not hold, at any depth (``shapes`` hold their own)."""
    names = [k for k, v in record.get("checks", {}).items() if not v["ok"]]
    for key, value in record.items():
        if isinstance(value, dict) and key != "checks":
            names += [f"{key}/{n}" for n in failed_checks(value)]
    return names


def run_section(name: str, check: Check, planted: dict[str, str]) -> None:
    record = check.result[name] = {"status": "running", "cap_seconds": check.sizes.caps[name]}
    check.save()
    check.section, check.deadline = name, time.monotonic() + check.sizes.caps[name]
    t = time.perf_counter()
    loaded = set(sys.modules)
    try:
        with time_cap(check.sizes.caps[name]):
            if name in planted:
                if planted[name] == "hang":
                    time.sleep(10 * check.sizes.caps[name])
                raise PlantedFailure(f"planted by --plant-failure {name}")
            reason = SECTIONS[name](record, check)
        failed = failed_checks(record)
        imported = [m for m in ABSENT_ON_GPU if m in sys.modules and m not in loaded]
        if imported:
            failed.append(f"imports {', '.join(imported)}, which the GPU machine lacks")
        if reason:
            record.update(status="skipped", reason=reason)
        elif failed:
            record.update(status="failed", failed=failed)
        else:
            record["status"] = "ok"
    except (Exception, SectionTimeout) as e:  # noqa: BLE001 - whatever stops a section is its record
        record.update(status="failed", error=f"{type(e).__name__}: {e}",
                      traceback=traceback.format_exc(limit=-12).splitlines()[-40:])
    record["seconds"] = time.perf_counter() - t
    check.save()


def environment(runtime) -> dict:
    import transformers

    env = {"runtime": runtime.describe(), "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version(), "cuda": torch.version.cuda,
           "float32_matmul_precision": torch.get_float32_matmul_precision(), "machine": machine()}
    if runtime.device.type == "cuda":
        props = torch.cuda.get_device_properties(runtime.device)
        env["gpu"] = {"name": props.name, "memory_bytes": props.total_memory, "capability": f"{props.major}.{props.minor}",
                      "multiprocessors": props.multi_processor_count, "driver": driver_version()}
    return env


def driver_version() -> str:
    try:
        import pynvml
    except ImportError:
        return "unknown: pynvml is not installed"
    try:
        pynvml.nvmlInit()
        return str(pynvml.nvmlSystemGetDriverVersion())
    except pynvml.NVMLError as e:
        return f"unknown: NVML said {e}"


def commit_of(given: str | None) -> dict:
    """The commit the result names: ``--commit``, else this tree's git HEAD (and whether it is dirty)."""
    if given:
        if not re.fullmatch(r"[0-9a-f]{7,40}", given):
            raise UsageError(f"--commit {given}: give the commit as 7 to 40 hex digits (git rev-parse HEAD)")
        return {"commit": given, "commit_source": "--commit"}
    try:
        sha, dirty = git_commit()
    except OSError:
        sha, dirty = "", False
    if not sha:
        raise UsageError("no git repository here: pass --commit HASH (git rev-parse HEAD where the tree came from)")
    return {"commit": sha, "dirty": dirty, "commit_source": "git"}


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--prepare", type=Path, metavar="DIR", help="fill the carried folder DIR (run here, then exit)")
    p.add_argument("--out", type=Path, help="folder for gpu_check.json (made if missing)")
    p.add_argument("--device", default="cuda", help="cuda (the GPU run) or cpu (the dry run)")
    p.add_argument("--tiny", action="store_true", help="two-layer models, small batches: the dry run's sizes")
    p.add_argument("--assets", type=Path, help=f"the carried folder (default {CARRIED.name}; with --tiny and none "
                                               "there, one is prepared in a temporary folder)")
    p.add_argument("--commit", help="the commit of the tree, where there is no .git (default: git rev-parse HEAD)")
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS),
                   help="sections to run (the others are recorded as not selected)")
    p.add_argument("--cap", action="append", default=[], metavar="SECTION=SECONDS",
                   help="override a section's time cap in seconds (repeatable)")
    p.add_argument("--plant-failure", action="append", default=[], metavar="SECTION[:hang]",
                   help="make a section fail at its start (raise), or hang until its cap (:hang): proves that a "
                        "failure is recorded and the other sections still run (repeatable)")
    args = p.parse_args(argv)
    if args.prepare is None and args.out is None:
        p.error("give --out DIR (or --prepare DIR)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.prepare is not None:
        manifest = prepare(args.prepare)
        print(f"prepared {args.prepare}: {len(manifest['files'])} files, {manifest['bytes'] / 2 ** 20:.1f} MiB; "
              f"carry it: carry [\"{args.prepare}\"]")
        return 0
    try:
        planted = dict((p.split(":") + ["raise"])[:2] for p in args.plant_failure)
        if set(planted.values()) - {"raise", "hang"}:
            raise UsageError("--plant-failure SECTION or SECTION:hang")
        caps = {section: float(seconds) for section, seconds in (c.split("=") for c in args.cap)}
        unknown = (set(planted) | set(caps)) - set(SECTIONS)
        if unknown:
            raise UsageError(f"unknown section {', '.join(sorted(unknown))}; use {', '.join(SECTIONS)}")
        commit = commit_of(args.commit)
        runtime = resolve_runtime(args.device, "auto")
    except (UsageError, ValueError) as e:  # ValueError: a --cap that is not SECTION=SECONDS
        print(f"error: {e}", file=sys.stderr)
        return 2
    base = TINY if args.tiny else GPU
    if args.tiny:  # two-layer models gain nothing from threads, and threads that wait on a busy machine's cores lose
        torch.set_num_threads(1)
    sizes = Sizes(**{**asdict(base), "caps": {**base.caps, **caps}})
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "gpu_check.json"
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        assets = args.assets or CARRIED
        prepared = ""
        if not assets.is_dir():
            if not args.tiny:
                print(f"error: {assets} is missing: run `python benchmarks/gpu_check.py --prepare {CARRIED.name}` where "
                      "the embedded model is, and carry it", file=sys.stderr)
                return 2
            prepared = f"prepared for this run ({assets} is missing)"
            assets = Path(tmp) / "assets"
            prepare(assets)
            print(f"{prepared}: the carried folder's contents are in {assets}")
        result = {"benchmark": "gpu_check", **commit, "command": " ".join(["benchmarks/gpu_check.py", *sys.argv[1:]]),
                  "sizes": asdict(sizes), "assets": {"bytes": folder_bytes(assets), "note": prepared or str(assets)},
                  "environment": environment(runtime), **{name: {"status": "pending"} for name in SECTIONS}}
        check = Check(args, runtime, sizes, assets, Path(tmp), result, out)
        check.save()
        print(f"gpu_check: {runtime.describe()}; sections {', '.join(args.sections)}", flush=True)
        for name in SECTIONS:
            if name in args.sections:
                run_section(name, check, planted)
            else:
                result[name] = {"status": "skipped", "reason": "not selected (--sections)"}
                check.save()
    failed = [name for name in SECTIONS if result[name]["status"] == "failed"]
    for name in SECTIONS:
        r = result[name]
        why = r.get("reason") or r.get("error") or ", ".join(r.get("failed", []))
        print(f"{name:7s} {r['status']:8s} {r.get('seconds', 0):6.1f} s  {why}".rstrip())
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
