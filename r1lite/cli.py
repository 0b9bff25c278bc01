"""The ``r1lite`` command: one console script, one sub-command per capability.

    r1lite train   GRPO (R1-Zero, or R1 with a cold-start stage) from a YAML recipe and flags
    r1lite sft     supervised fine-tuning on prompt/completion JSONL
    r1lite distill verified reasoning traces from a teacher (an endpoint or a local model), with provenance
    r1lite eval    evaluate a model on a task, or score completions produced elsewhere
    r1lite export  a model as a Hugging Face directory or a GGUF file (llama.cpp, Ollama)
    r1lite chat    talk to a model (GGUF or PyTorch), thinking dimmed
    r1lite serve   an OpenAI-compatible server: reasoning_content, thinking budget, content guard
    r1lite cost    estimate a run's cost before it starts, or recompute a published one
    r1lite report  re-render a run's report, or compare runs on one page

Bad input prints one line (``error: …``) and exits with status 2; no traceback. Under torchrun
an error every rank meets, or a rank that stops, is reported by rank 0 alone (status 2, or 1 for
a failed collective).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from r1lite.errors import UsageError


def _eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a model on a task, or score completions from elsewhere",
                       description="Generate and score (--model), or score a JSONL of completions (--completions).")
    p.add_argument("--model", help="default, tiny, a local HF directory, a run directory, or a hub id")
    p.add_argument("--task", required=True, help="arithmetic, countdown, gsm8k:PATH, math:PATH, svamp:PATH, jsonl:PATH, gym:NAME")
    p.add_argument("--task-opt", action="append", default=[], metavar="KEY=VALUE", help="task option; repeat for more")
    p.add_argument("--format", default="r1", help="r1 (<think>/<answer>), plain, plain:1 or plain:2 (default: r1)")
    p.add_argument("--prefill-think", action="store_true", help="open the assistant turn with <think>")
    p.add_argument("--split", default="test", choices=("test", "train", "all"), help="which items (default: test = held out)")
    p.add_argument("--limit", type=int, default=100, help="items to evaluate (-1 = the whole split; default: 100)")
    p.add_argument("--samples", type=int, default=1, help="samples per item; 1 = greedy (default: 1)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="token budget per completion (default: 256)")
    p.add_argument("--temperature", type=float, default=None, help="sampling temperature (default: 0 for 1 sample, 0.6 for more)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling (default: 1 for 1 sample, 0.95 for more)")
    p.add_argument("--seed", type=int, default=0, help="seed for item choice and sampling (default: 0)")
    p.add_argument("--batch-size", type=int, default=64, help="most sequences decoded together (default: 64)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--dtype", default="auto", help="auto (bf16 where fast), bf16 or fp32")
    p.add_argument("--completions", type=Path, help="score this JSONL (rows with answer and completion) instead of generating")
    p.add_argument("--out", type=Path, help="JSONL of scored rows; the summary goes to <out>.summary.json")


def cmd_eval(args) -> int:
    from rich.console import Console

    from r1lite import evaluate, tasks
    from r1lite.config import parse_key_values

    console = Console()
    task = tasks.load_task(args.task, parse_key_values(args.task_opt, "--task-opt"))
    if args.format not in tasks.FORMATS:
        raise UsageError(f"--format {args.format}: use one of {', '.join(tasks.FORMATS)}")
    if args.completions:
        if args.model:
            raise UsageError("--completions scores existing completions; drop --model (or drop --completions to generate)")
        if not args.out:
            raise UsageError("--completions needs --out FILE for the scored rows")
        summary = evaluate.score_file(task, args.format, args.completions, args.out)
        console.print(evaluate.summary_table(summary, f"{task.name} · {args.format} · scored {args.completions}"))
        console.print(f"rows: {args.out}\nsummary: {evaluate.summary_path(args.out)}")
        return 0
    if not args.model:
        raise UsageError("eval needs --model M to generate, or --completions FILE to score existing completions")
    if args.samples < 1:
        raise UsageError(f"--samples {args.samples}: must be >= 1")
    if args.limit == 0 or args.limit < -1:
        raise UsageError(f"--limit {args.limit}: give a positive number of items, or -1 for the whole split")
    from r1lite.engine import make_engine
    from r1lite.models import load_model, resolve_runtime, stop_token_ids
    from r1lite.progress import progress

    runtime = resolve_runtime(args.device, args.dtype)
    items = task.split(args.split, None if args.limit == -1 else args.limit, seed=args.seed)
    console.print(f"r1lite eval: {len(items)} {args.split} items of {task.name}, {args.samples} sample(s) each, "
                  f"format {args.format}, on {runtime.describe()}")
    model, tokenizer = load_model(args.model, runtime)
    engine = make_engine(model, tokenizer, runtime.dtype, stop_token_ids(tokenizer, model), args.batch_size)
    with progress(console, "eval", len(items) * args.samples, "seq") as update:
        rows, summary = evaluate.evaluate(
            engine, tokenizer, task, items, args.format, samples=args.samples, max_new_tokens=args.max_new_tokens,
            temperature=args.temperature, top_p=args.top_p, seed=args.seed, prefill_think=args.prefill_think,
            on_progress=update)
    summary = {"model": args.model, "split": args.split, **summary}
    console.print(evaluate.summary_table(summary, f"{args.model} · {task.name} · {args.format}"))
    if args.out:
        from r1lite.files import write_json, write_jsonl

        write_jsonl(args.out, rows)
        write_json(evaluate.summary_path(args.out), summary)
        console.print(f"rows: {args.out}\nsummary: {evaluate.summary_path(args.out)}")
    return 0


def _train_parser(sub) -> None:
    from r1lite.config import add_arguments
    from r1lite.train.config import GRPOConfig

    p = sub.add_parser("train", help="GRPO training from a YAML recipe and flags",
                       description="GRPO on rule-checked rewards. Recipe keys and flags are the same names; "
                                   "flags override the recipe. On many processes: torchrun --nproc-per-node N "
                                   "-m r1lite train ... (docs/scaling.md).")
    p.add_argument("--config", type=Path, help="YAML recipe (keys are the flags below, with underscores)")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue RUN_DIR from its last checkpoint; give the same flags as the original run")
    add_arguments(p, GRPOConfig)


def cmd_train(args) -> int:
    from r1lite.config import build, read_yaml
    from r1lite.train import distributed
    from r1lite.train.config import GRPOConfig, preset
    from r1lite.train.trainer import Trainer

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config", "resume")}
    recipe = read_yaml(args.config) if args.config else {}
    if args.resume is not None:
        out = flags.get("out", recipe.get("out", str(args.resume)))
        if Path(out).resolve() != args.resume.resolve():
            raise UsageError(f"--resume {args.resume} but --out {out}: a resumed run writes where it started; "
                             f"pass --out {args.resume} or drop --out")
        flags["out"] = out
    cfg = build(GRPOConfig, recipe, flags, source=str(args.config or "config"), presets=preset)
    try:
        return Trainer(cfg, resume=args.resume is not None).train()
    finally:
        distributed.close()


def _sft_parser(sub) -> None:
    from r1lite.config import add_arguments
    from r1lite.train.sft import SFTConfig

    p = sub.add_parser("sft", help="supervised fine-tuning on prompt/completion JSONL",
                       description="Fine-tune a model on JSONL rows with 'prompt' (or chat 'messages') and 'completion' "
                                   "(e.g. a run's cold_start.jsonl); the model goes to <out>/final.")
    p.add_argument("--config", type=Path, help="YAML recipe with these keys")
    add_arguments(p, SFTConfig)


def cmd_sft(args) -> int:
    from rich.console import Console

    from r1lite.config import build, read_yaml
    from r1lite.train import sft

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    cfg = build(sft.SFTConfig, read_yaml(args.config) if args.config else {}, flags, source=str(args.config or "config"))
    return sft.run(cfg, Console())


def _distill_parser(sub) -> None:
    from r1lite.config import add_arguments
    from r1lite.distill.collect import DistillConfig

    p = sub.add_parser("distill", help="verified reasoning traces from a teacher, with provenance, for sft",
                       description="Ask a teacher (an OpenAI-compatible URL, a local model or a GGUF) for answers to a "
                                   "task's prompts; keep those the task's verifier accepts, decontaminated and deduplicated, "
                                   "each with its provenance; a dataset card beside them. Rerun the same command to resume.")
    add_arguments(p, DistillConfig)


def cmd_distill(args) -> int:
    from rich.console import Console

    from r1lite.config import build
    from r1lite.distill import collect

    flags = {k: v for k, v in vars(args).items() if k != "command"}
    return collect.run(build(collect.DistillConfig, {}, flags, source="flags"), Console())


def _export_parser(sub) -> None:
    from r1lite.config import add_arguments
    from r1lite.edge.export import ExportConfig

    p = sub.add_parser("export", help="a model as a Hugging Face directory or a GGUF file",
                       description="Export a model (a run directory, default, an HF directory) as safetensors with a model "
                                   "card, or as a GGUF file (f16, q8_0, q4_0, q4_k_m) with an Ollama Modelfile beside it.")
    add_arguments(p, ExportConfig)


def cmd_export(args) -> int:
    from rich.console import Console

    from r1lite.config import build
    from r1lite.edge import export

    flags = {k: v for k, v in vars(args).items() if k != "command"}
    return export.run(build(export.ExportConfig, {}, flags, source="flags"), Console())


def _chat_parser(sub) -> None:
    from r1lite.edge import chat

    chat.add_parser(sub)


def cmd_chat(args) -> int:
    from rich.console import Console

    from r1lite.edge import chat

    return chat.run(args, Console())


def _serve_parser(sub) -> None:
    from r1lite import serve

    serve.add_parser(sub)


def cmd_serve(args) -> int:
    from rich.console import Console

    from r1lite import serve

    return serve.run(args, Console())


COST_FLAGS = ("command", "config", "reference", "devices", "pue", "probe", "completion_tokens", "skipped_groups", "mfu",
              "like", "json")
"""``r1lite cost``'s own flags; the rest are train's."""


def _cost_parser(sub) -> None:
    from r1lite.config import add_arguments
    from r1lite.train.config import GRPOConfig

    p = sub.add_parser("cost", help="estimate a run's cost before it starts, or recompute a published one",
                       description="Estimate a GRPO recipe's time by phase, FLOPs, device-hours, energy and money, "
                                   "measured (a probe of at most a minute on this machine) and from the datasheet "
                                   "(--hardware); or recompute a published cost (--reference).")
    p.add_argument("--config", type=Path, help="YAML recipe, as for train; train's flags override its keys")
    p.add_argument("--reference", metavar="NAME", help="deepseek-v3 or deepseek-r1: the published arithmetic, recomputed")
    p.add_argument("--devices", type=int, default=1, help="devices the run holds (default: 1)")
    p.add_argument("--pue", type=float, default=1.0, help="facility energy / device energy (default: 1.0 = not counted)")
    p.add_argument("--probe", action=argparse.BooleanOptionalAction, default=True,
                   help="measure the recipe on this machine for at most a minute (--no-probe: datasheet and upper bounds)")
    p.add_argument("--completion-tokens", type=int, help="assume every completion this many tokens (default: measured)")
    p.add_argument("--skipped-groups", type=float, help="assume this fraction of groups scores alike, 0-1 (default: measured)")
    p.add_argument("--like", metavar="RUN_DIR", help="take completion lengths, skipped groups and cold-start traces "
                                                     "from this finished run instead of the probe (a repeat or variant "
                                                     "of a recipe); the probe still times this machine")
    p.add_argument("--mfu", type=float, help="datasheet: fraction of peak for training passes (default: the table's)")
    p.add_argument("--json", action="store_true", help="print the estimates as JSON, one cost block per method "
                                                       "(the fields of summary.json's cost block)")
    add_arguments(p, GRPOConfig)


def cmd_cost(args) -> int:
    import json

    from rich.console import Console

    from r1lite.config import build, read_yaml
    from r1lite.cost.estimate import estimate_recipe, phase_table
    from r1lite.cost.workload import Overrides
    from r1lite.meter import published
    from r1lite.meter.hardware import CostConfig
    from r1lite.train.config import GRPOConfig, preset

    console = Console(stderr=args.json)
    if args.reference:
        if args.config:
            raise UsageError("--reference recomputes a published cost; drop --config (or --reference to estimate a recipe)")
        ref = published.find_reference(args.reference)
        print(json.dumps(published.reference_json(ref), indent=2) if args.json else "\n".join(published.reference_lines(ref)))
        return 0
    flags = {k: v for k, v in vars(args).items() if k not in COST_FLAGS}
    cfg = build(GRPOConfig, read_yaml(args.config) if args.config else {}, flags, source=str(args.config or "config"),
                presets=preset)
    overrides = Overrides(args.completion_tokens, args.skipped_groups, args.mfu, args.like)
    pricing = CostConfig(hardware=cfg.hardware, devices=args.devices, watts=cfg.watts, usd_per_hour=cfg.usd_per_hour,
                         pue=args.pue)
    blocks = estimate_recipe(cfg, pricing, overrides, args.probe, console)
    if args.json:
        print(json.dumps(blocks, indent=2))
        return 0
    console.print(phase_table(blocks))
    common = [line for line in blocks["datasheet"]["assumptions"]
              if all(line in b["assumptions"] for b in blocks.values())]
    console.print("[bold]assumptions[/]")
    for line in common:
        console.print(f"  - {line}", highlight=False)
    for method, block in blocks.items():
        for line in block["assumptions"]:
            if line not in common:
                console.print(f"  - {method}: {line.removeprefix(method + ': ')}", highlight=False)
    console.print(f"[bold]leaves out[/]: {'; '.join(blocks['datasheet']['leaves_out'])}", highlight=False)
    return 0


def _report_parser(sub) -> None:
    p = sub.add_parser("report", help="re-render a run's report, or compare runs on one page",
                       description="One run directory: rewrite its plots and report.html. Several: one comparison page "
                                   "(curves overlaid, final metrics and cost, the config keys that differ).")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR", help="run directories (r1lite train --out)")
    p.add_argument("--out", type=Path, help="the page to write (default: RUN_DIR/report.html for one run, "
                                            "compare.html for several)")


def cmd_report(args) -> int:
    from r1lite import compare, report

    for run in args.runs:
        compare.check_run_dir(run)
    if len(args.runs) == 1 and args.out is None:
        path = report.write_report(args.runs[0])
    else:
        path = compare.write_comparison(args.runs, args.out or Path("compare.html"))
    print(f"report: {path}")
    return 0


COMMANDS = {"train": (_train_parser, cmd_train), "sft": (_sft_parser, cmd_sft), "eval": (_eval_parser, cmd_eval),
            "distill": (_distill_parser, cmd_distill),
            "export": (_export_parser, cmd_export), "chat": (_chat_parser, cmd_chat), "serve": (_serve_parser, cmd_serve),
            "cost": (_cost_parser, cmd_cost), "report": (_report_parser, cmd_report)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="r1lite", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for build, _ in COMMANDS.values():
        build(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from r1lite.train import distributed

    args = parser().parse_args(argv)
    try:
        return COMMANDS[args.command][1](args)
    except UsageError as e:
        distributed.report_error(e)
        return 2
    except distributed.CollectiveFailed as e:
        distributed.report_error(e)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
