"""``xlreward eval``: win rate and length-controlled win rate per language against a baseline."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "eval",
        help="generate on held-out instructions per language; WR and LC against a baseline",
        description=(
            "Samples one output per held-out instruction and language from --model, judges it and the "
            "baseline's output (--baseline model, or --baseline-outputs from an earlier eval), and reports "
            "win rate and length-controlled win rate (AlpacaEval 2 style) per language. Writes "
            "OUT/<language>/model_outputs.json in alpaca_eval's format and OUT/results.json."
        ),
    )
    parser.add_argument("--model", required=True, help="checkpoint folder of the model to evaluate")
    parser.add_argument("--instructions", required=True, nargs="+", help="JSONL {id, language, instruction}")
    parser.add_argument("--languages", required=True, nargs="+", help="language codes, e.g. en es de")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--name", help="generator name in model_outputs.json (default: the model folder's name)"
    )
    baseline = parser.add_mutually_exclusive_group()
    baseline.add_argument("--baseline", help="checkpoint folder of the baseline model")
    baseline.add_argument(
        "--baseline-outputs", help="folder of an earlier eval: <language>/model_outputs.json"
    )
    parser.add_argument("--judge", choices=["oracle", "classifier", "implicit"], default="oracle")
    parser.add_argument("--judge-model", help="--judge classifier: a sequence-classification reward model")
    parser.add_argument("--judge-policy", help="--judge implicit: the DPO model")
    parser.add_argument("--judge-reference", help="--judge implicit: its reference (SFT) model")
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
    from xlreward.evaluation.judges import build_judge
    from xlreward.evaluation.run import EvalOptions, evaluate
    from xlreward.evaluation.sampling import SamplingSettings
    from xlreward.worker.instructions import InstructionProblems

    for flag, value in (("--model", args.model), ("--baseline", args.baseline)):
        if value is not None and not Path(value).is_dir():
            raise CommandError(f"{flag} {value}: no such checkpoint folder")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.max_tokens < 1 or args.batch_size < 1:
        raise CommandError(
            "--temperature must be >= 0, --top-p in (0, 1], --max-tokens and --batch-size >= 1"
        )
    options = EvalOptions(
        instructions=[Path(p) for p in args.instructions],
        languages=args.languages,
        model=Path(args.model),
        out=Path(args.out),
        name=args.name,
        baseline=Path(args.baseline) if args.baseline else None,
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
    )
    try:
        judge = build_judge(
            args.judge,
            model=_path(args.judge_model),
            policy=_path(args.judge_policy),
            reference=_path(args.judge_reference),
            device=args.device,
        )
        summary = evaluate(options, judge)
    except (InstructionProblems, ValueError) as error:
        raise CommandError(str(error)) from None
    print(json.dumps(summary["languages"], indent=2))
    return 0


def _path(value: str | None) -> Any:
    from pathlib import Path

    return Path(value) if value else None
