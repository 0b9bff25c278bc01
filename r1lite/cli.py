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
from dataclasses import dataclass
from pathlib import Path

from r1lite.config import add_arguments, build, keys, opt, read_yaml
from r1lite.errors import UsageError


def add_command(sub, name: str, help: str, description: str, *configs, recipe: str = "",
                skip: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    """The sub-command ``name``: one flag per flat key of ``configs`` (``--help`` shows each field's
    help), and ``--config`` where the command reads a recipe (``recipe``: that flag's help). A flag
    works by its name or a declared old spelling, never by a prefix of it."""
    p = sub.add_parser(name, help=help, description=description, allow_abbrev=False)
    if recipe:
        p.add_argument("--config", type=Path, help=recipe)
    for cls in configs:
        add_arguments(p, cls, skip)
    return p


def given(args: argparse.Namespace, cls) -> dict:
    """The flags of ``cls``'s keys given on the command line (defaults are suppressed: an absent flag is absent)."""
    known = keys(cls)
    return {k: v for k, v in vars(args).items() if k in known}


def from_flags(cls, args: argparse.Namespace):
    """``cls`` built from its flags alone (a command that reads no recipe)."""
    return build(cls, {}, given(args, cls), source="flags")


def _eval_parser(sub) -> None:
    from r1lite.evaluate import EvalOptions

    add_command(sub, "eval", "evaluate a model on a task, or score completions from elsewhere",
                "Generate and score (--model), or score a JSONL of completions (--completions).", EvalOptions)


def cmd_eval(args) -> int:
    from rich.console import Console

    from r1lite import evaluate

    return evaluate.run(from_flags(evaluate.EvalOptions, args), Console())


@dataclass
class TrainOptions:
    """``r1lite train``'s own flag; the others are :class:`r1lite.train.config.GRPOConfig`'s."""

    resume: str = opt("", "continue this run directory from its last checkpoint; give the same flags as the original "
                          "run (\"\" = a new run)")
    force: bool = opt(False, "write a new run into a non-empty --out that holds no run (its files stay untouched; "
                             "none may have a run's own names)")


def _train_parser(sub) -> None:
    from r1lite.train.config import GRPOConfig

    add_command(sub, "train", "GRPO training from a YAML recipe and flags",
                "GRPO on rule-checked rewards. Recipe keys and flags are the same names; flags override the recipe. "
                "On many processes: torchrun --nproc-per-node N -m r1lite train ... (docs/scaling.md).",
                TrainOptions, GRPOConfig, recipe="YAML recipe (keys are the flags below, with underscores)")


def cmd_train(args) -> int:
    from r1lite.train import distributed
    from r1lite.train.config import GRPOConfig, preset
    from r1lite.train.trainer import Trainer

    opts = from_flags(TrainOptions, args)
    flags = given(args, GRPOConfig)
    recipe = read_yaml(args.config) if args.config else {}
    if opts.resume:
        out = flags.get("out", recipe.get("out", opts.resume))
        if Path(out).resolve() != Path(opts.resume).resolve():
            raise UsageError(f"--resume {opts.resume} but --out {out}: a resumed run writes where it started; "
                             f"pass --out {opts.resume} or drop --out")
        flags["out"] = out
    cfg = build(GRPOConfig, recipe, flags, source=str(args.config or "config"), presets=preset)
    try:
        return Trainer(cfg, resume=bool(opts.resume), force=opts.force).train()
    finally:
        distributed.close()


def _sft_parser(sub) -> None:
    from r1lite.train.sft import SFTConfig

    add_command(sub, "sft", "supervised fine-tuning on prompt/completion JSONL",
                "Fine-tune a model on JSONL rows with 'prompt' (or chat 'messages') and 'completion' "
                "(e.g. a run's cold_start.jsonl); the model goes to <out>/final.",
                SFTConfig, recipe="YAML recipe with these keys")


def cmd_sft(args) -> int:
    from rich.console import Console

    from r1lite.train import sft

    recipe = read_yaml(args.config) if args.config else {}
    cfg = build(sft.SFTConfig, recipe, given(args, sft.SFTConfig), source=str(args.config or "config"))
    return sft.run(cfg, Console())


def _distill_parser(sub) -> None:
    from r1lite.distill.collect import DistillConfig

    add_command(sub, "distill", "verified reasoning traces from a teacher, with provenance, for sft",
                "Ask a teacher (an OpenAI-compatible URL, a local model or a GGUF) for answers to a task's prompts; "
                "keep those the task's verifier accepts, decontaminated and deduplicated, each with its provenance; "
                "a dataset card beside them. Rerun the same command to resume.", DistillConfig)


def cmd_distill(args) -> int:
    from rich.console import Console

    from r1lite.distill import collect

    return collect.run(from_flags(collect.DistillConfig, args), Console())


def _export_parser(sub) -> None:
    from r1lite.edge.export import ExportConfig

    add_command(sub, "export", "a model as a Hugging Face directory or a GGUF file",
                "Export a model (a run directory, default, an HF directory) as safetensors with a model card "
                "(--to hf), or as a GGUF file (--to gguf: f16, q8_0, q4_0, q4_k_m) with an Ollama Modelfile beside it.",
                ExportConfig)


def cmd_export(args) -> int:
    from rich.console import Console

    from r1lite.edge import export

    return export.run(from_flags(export.ExportConfig, args), Console())


def _chat_parser(sub) -> None:
    from r1lite.edge.chat import ChatConfig

    add_command(sub, "chat", "talk to a model (a GGUF file or a PyTorch model), thinking dimmed",
                "Interactive, or one answer with --prompt. The thinking is shown dimmed, the answer plain.", ChatConfig)


def cmd_chat(args) -> int:
    from rich.console import Console

    from r1lite.edge import chat

    return chat.run(from_flags(chat.ChatConfig, args), Console())


def _serve_parser(sub) -> None:
    from r1lite.serve import ServeOptions

    add_command(sub, "serve", "an OpenAI-compatible server with reasoning_content, a thinking budget and a guard",
                "Serve a model (FILE.gguf on llama.cpp, or default, gemma3-270m, tiny, tiny-gemma3, a run directory, a model directory on "
                "PyTorch) at /v1/chat/completions, with a chat page at /.", ServeOptions)


def cmd_serve(args) -> int:
    from rich.console import Console

    from r1lite import serve

    return serve.run(from_flags(serve.ServeOptions, args), Console())


@dataclass
class CostOptions:
    """``r1lite cost``'s own flags; the others are train's (:class:`r1lite.train.config.GRPOConfig`),
    read from ``--config`` and flags as ``r1lite train`` reads them."""

    reference: str = opt("", "deepseek-v3 or deepseek-r1: the published arithmetic, recomputed (\"\" = estimate the recipe)")
    devices: int = opt(1, "devices the run holds")
    pue: float = opt(1.0, "facility energy / device energy (1.0 = not counted)")
    probe: bool = opt(True, "measure the recipe on this machine for at most a minute (--no-probe: datasheet and "
                            "upper bounds)")
    completion_tokens: int | None = opt(None, "assume every completion this many tokens (unset = measured)")
    skipped_groups: float | None = opt(None, "assume this fraction of groups scores alike, 0-1 (unset = measured)")
    like: str = opt("", "a finished run directory: take completion lengths, skipped groups and cold-start traces from "
                        "it instead of the probe (a repeat or variant of a recipe); the probe still times this machine "
                        "(\"\" = none)")
    mfu: float | None = opt(None, "datasheet: fraction of peak for training passes (unset = the table's)")
    json: bool = opt(False, "print the estimates as JSON, one cost block per method (the fields of summary.json's "
                            "cost block)")


def _cost_parser(sub) -> None:
    from r1lite.train.config import GRPOConfig

    add_command(sub, "cost", "estimate a run's cost before it starts, or recompute a published one",
                "Estimate a GRPO recipe's time by phase, FLOPs, device-hours, energy and money, measured (a probe of "
                "at most a minute on this machine) and from the datasheet (--hardware); or recompute a published "
                "cost (--reference).", CostOptions, GRPOConfig,
                recipe="YAML recipe, as for train; train's flags override its keys")


def cmd_cost(args) -> int:
    import json

    from rich.console import Console

    from r1lite.cost.estimate import estimate_recipe, phase_table
    from r1lite.cost.workload import Overrides
    from r1lite.meter import published
    from r1lite.meter.hardware import CostConfig
    from r1lite.train.config import GRPOConfig, preset

    opts = from_flags(CostOptions, args)
    console = Console(stderr=opts.json)
    if opts.reference:
        if args.config:
            raise UsageError("--reference recomputes a published cost; drop --config (or --reference to estimate a recipe)")
        ref = published.find_reference(opts.reference)
        print(json.dumps(published.reference_json(ref), indent=2) if opts.json else "\n".join(published.reference_lines(ref)))
        return 0
    cfg = build(GRPOConfig, read_yaml(args.config) if args.config else {}, given(args, GRPOConfig),
                source=str(args.config or "config"), presets=preset)
    overrides = Overrides(opts.completion_tokens, opts.skipped_groups, opts.mfu, opts.like or None)
    pricing = CostConfig(hardware=cfg.cost.hardware, devices=opts.devices, watts=cfg.cost.watts,
                         usd_per_hour=cfg.cost.usd_per_hour, pue=opts.pue)
    blocks = estimate_recipe(cfg, pricing, overrides, opts.probe, console)
    if opts.json:
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
    from r1lite.compare import ReportConfig

    p = add_command(sub, "report", "re-render a run's report, or compare runs on one page",
                    "One run directory: rewrite its plots and report.html. Several: one comparison page "
                    "(curves overlaid, final metrics and cost, the config keys that differ).",
                    ReportConfig, skip=("runs",))
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help=keys(ReportConfig)["runs"].field.metadata["help"])


def cmd_report(args) -> int:
    from r1lite import compare

    return compare.run(from_flags(compare.ReportConfig, args))


COMMANDS = {"train": (_train_parser, cmd_train), "sft": (_sft_parser, cmd_sft), "eval": (_eval_parser, cmd_eval),
            "distill": (_distill_parser, cmd_distill),
            "export": (_export_parser, cmd_export), "chat": (_chat_parser, cmd_chat), "serve": (_serve_parser, cmd_serve),
            "cost": (_cost_parser, cmd_cost), "report": (_report_parser, cmd_report)}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="r1lite", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_parser, _ in COMMANDS.values():
        add_parser(sub)
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
