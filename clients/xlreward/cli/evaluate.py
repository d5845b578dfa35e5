"""``xlreward eval``: win rate and length-controlled win rate per language against a baseline."""

from __future__ import annotations

import argparse
import json
from typing import Any

JUDGE_MODELS = ("model", "policy", "reference")  # --judge-model, --judge-policy, --judge-reference


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "eval",
        help="generate on held-out instructions per language; WR and LC against a baseline",
        description=(
            "Samples one output per held-out instruction and language from --model (or reads them from "
            "--outputs), judges it and the "
            "baseline's output (--baseline model, or --baseline-outputs from an earlier eval), and reports "
            "win rate and length-controlled win rate (AlpacaEval 2 style) per language. Writes "
            "OUT/<language>/model_outputs.json in alpaca_eval's format and OUT/results.json. Models are "
            "folders or Hugging Face hub ids (org/name), read from the hub cache (fetched unless "
            "HF_HUB_OFFLINE=1) and loaded from there."
        ),
    )
    evaluated = parser.add_mutually_exclusive_group(required=True)
    evaluated.add_argument("--model", help="the model to evaluate: a folder or a hub id")
    evaluated.add_argument(
        "--outputs",
        help="judge these outputs instead of sampling a model: a folder of <language>/model_outputs.json "
        "(alpaca_eval's format, as `xlreward best-of-n` and `xlreward eval` write them)",
    )
    parser.add_argument("--revision", help="hub revision of --model (default: main)")
    parser.add_argument("--instructions", required=True, nargs="+", help="JSONL {id, language, instruction}")
    parser.add_argument("--languages", required=True, nargs="+", help="language codes, e.g. en es de")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--name", help="generator name in model_outputs.json (default: the last part of --model)"
    )
    baseline = parser.add_mutually_exclusive_group()
    baseline.add_argument("--baseline", help="the baseline model: a folder or a hub id")
    baseline.add_argument(
        "--baseline-outputs", help="folder of an earlier eval: <language>/model_outputs.json"
    )
    parser.add_argument("--baseline-revision", help="hub revision of --baseline (default: main)")
    parser.add_argument("--judge", choices=["oracle", "classifier", "implicit"], default="oracle")
    parser.add_argument("--judge-model", help="--judge classifier: a sequence-classification reward model")
    parser.add_argument("--judge-policy", help="--judge implicit: the DPO model")
    parser.add_argument("--judge-reference", help="--judge implicit: its reference (SFT) model")
    parser.add_argument(
        "--judge-revision", help="hub revision of --judge-model, --judge-policy and --judge-reference"
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="run model code from the checkpoints (all of them)"
    )
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch-size", type=int, default=64, help="prompts sampled together")
    parser.add_argument("--limit", type=int, help="at most this many instructions per language")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from xlreward.cli.main import CommandError

    check_names(args)  # before torch is imported: evaluation.run imports it
    from xlreward.evaluation.judges import build_judge
    from xlreward.evaluation.run import EvalOptions, evaluate
    from xlreward.evaluation.sampling import SamplingSettings
    from xlreward.service.model_source import ModelNotFound
    from xlreward.worker.instructions import InstructionProblems

    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.max_tokens < 1 or args.batch_size < 1:
        raise CommandError(
            "--temperature must be >= 0, --top-p in (0, 1], --max-tokens and --batch-size >= 1"
        )
    options = EvalOptions(
        instructions=[Path(p) for p in args.instructions],
        languages=args.languages,
        model=args.model,
        out=Path(args.out),
        name=args.name,
        outputs=Path(args.outputs) if args.outputs else None,
        baseline=args.baseline,
        baseline_outputs=Path(args.baseline_outputs) if args.baseline_outputs else None,
        sampling=SamplingSettings(
            temperature=args.temperature,
            top_p=args.top_p,
            max_new_tokens=args.max_tokens,
            seed=args.seed,
            batch_size=args.batch_size,
        ),
        device=args.device,
        limit=args.limit,
        revision=args.revision,
        baseline_revision=args.baseline_revision,
        trust_remote_code=args.trust_remote_code,
    )
    try:
        judge = build_judge(
            args.judge,
            model=args.judge_model,
            policy=args.judge_policy,
            reference=args.judge_reference,
            device=args.device,
            revision=args.judge_revision,
            trust_remote_code=args.trust_remote_code,
        )
        summary = evaluate(options, judge)
    except (InstructionProblems, ModelNotFound, ValueError) as error:
        raise CommandError(str(error)) from None
    print(json.dumps(summary["languages"], indent=2))
    return 0


def check_names(args: argparse.Namespace) -> None:
    """Every model named is an existing folder or a valid hub id (``check_model_name``: nothing fetched,
    torch not imported); a wrong name is a CommandError naming its flag."""
    from xlreward.cli.main import CommandError
    from xlreward.service.model_source import check_model_name

    named = [("--model", args.model, args.revision), ("--baseline", args.baseline, args.baseline_revision)]
    named += [
        (f"--judge-{role}", getattr(args, f"judge_{role}"), args.judge_revision) for role in JUDGE_MODELS
    ]
    try:
        for flag, name, revision in named:
            if name is not None:
                check_model_name(name, revision=revision, what=flag)
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(str(error)) from None
