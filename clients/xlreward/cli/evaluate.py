"""``xlreward eval``: win rate and length-controlled win rate per language against a baseline.

Everything a run can be refused for is checked before torch is imported (it takes seconds): the flags
while parsing, every model name (a folder that exists or a hub id), the LC variant's dependency and the
instructions. Only then are the judge and the models loaded.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

JUDGE_MODELS = ("model", "policy", "reference")  # --judge-model, --judge-policy, --judge-reference


def register(commands: Any) -> None:
    from xlreward.cli.arg_types import non_negative_float, positive_int, probability
    from xlreward.evaluation.lc_variants import DEFAULT_LC_VARIANT, DESCRIPTIONS, LC_VARIANTS
    from xlreward.evaluation.sampling import SamplingSettings

    parser = commands.add_parser(
        "eval",
        help="generate on held-out instructions per language; WR and LC against a baseline",
        description=(
            "Samples one output per held-out instruction and language from --model (or reads them from "
            "--outputs), judges it and the "
            "baseline's output (--baseline model, or --baseline-outputs from an earlier eval), and reports "
            "win rate and length-controlled win rate (AlpacaEval 2 style) per language. Writes "
            "OUT/<language>/model_outputs.json in alpaca_eval's format, OUT/results.json and, with a "
            "baseline, OUT/win_rates.png; prints a table, with progress bars on stderr. Models are "
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
    baseline.add_argument(
        "--baseline",
        help="the baseline model: a folder or a hub id (default: none: only mean judge scores)",
    )
    baseline.add_argument(
        "--baseline-outputs",
        help="folder of an earlier eval: <language>/model_outputs.json (default: none, see --baseline)",
    )
    parser.add_argument("--baseline-revision", help="hub revision of --baseline (default: main)")
    parser.add_argument(
        "--lc-variant",
        choices=LC_VARIANTS,
        default=DEFAULT_LC_VARIANT,
        help="which length-controlled win rate: "
        + "; ".join(f"{name}: {text}" for name, text in DESCRIPTIONS.items())
        + ". alpaca_eval_v1 needs alpaca_eval installed and its AlpacaEval difficulty data (fetched once); "
        "its difficulty term fits only instructions that are AlpacaEval's own, in its order",
    )
    parser.add_argument(
        "--judge",
        choices=["oracle", "classifier", "implicit"],
        default="oracle",
        help="oracle: the demo world's checker; classifier: a reward model (--judge-model); implicit: a DPO "
        "model and its reference (--judge-policy, --judge-reference)",
    )
    parser.add_argument(
        "--judge-model", help="--judge classifier: a sequence-classification reward model (default: none)"
    )
    parser.add_argument("--judge-policy", help="--judge implicit: the DPO model (default: none)")
    parser.add_argument(
        "--judge-reference", help="--judge implicit: its reference (SFT) model (default: none)"
    )
    parser.add_argument(
        "--judge-revision",
        help="hub revision of --judge-model, --judge-policy and --judge-reference (default: main)",
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="run model code from the checkpoints (all of them)"
    )
    parser.add_argument(
        "--temperature",
        type=non_negative_float,
        default=SamplingSettings.temperature,
        help="sampling temperature; 0 is greedy",
    )
    parser.add_argument("--top-p", type=probability, default=SamplingSettings.top_p, help="nucleus sampling")
    parser.add_argument(
        "--max-tokens", type=positive_int, default=SamplingSettings.max_new_tokens, help="new tokens at most"
    )
    parser.add_argument("--seed", type=int, default=SamplingSettings.seed, help="sampling seed")
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=SamplingSettings.batch_size,
        help="prompts sampled together",
    )
    parser.add_argument(
        "--limit", type=positive_int, help="at most this many instructions per language (default: all)"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the models run")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from xlreward.cli.main import CommandError

    check_names(args)  # before torch is imported: the judge and the models import it
    from xlreward.evaluation.report import PLOT_FILE, plot_results, results_table
    from xlreward.evaluation.run import EvalOptions, check_lc_variant, evaluate, load_prompts
    from xlreward.evaluation.sampling import SamplingSettings
    from xlreward.service.model_source import ModelNotFound
    from xlreward.worker.instructions import InstructionProblems

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
        lc_variant=args.lc_variant,
        progress=True,
    )
    try:
        prompts = load_prompts(options)
        if options.baseline is not None or options.baseline_outputs is not None:
            check_lc_variant(options.lc_variant, prompts)  # evaluate checks too, but after the judge loads
        judge = _judge(args)
        summary = evaluate(options, judge, prompts)
    except (InstructionProblems, ModelNotFound, ValueError) as error:  # AlpacaEvalUnavailable too
        raise CommandError(str(error)) from None
    print(results_table(summary))
    if summary["baseline"] is not None:
        plot_results(options.out / PLOT_FILE, summary)
        print(f"wrote {options.out / 'results.json'} and {options.out / PLOT_FILE}", file=sys.stderr)
    else:
        print(f"wrote {options.out / 'results.json'}", file=sys.stderr)
    return 0


def _judge(args: argparse.Namespace) -> Any:
    from xlreward.evaluation.judges import build_judge

    return build_judge(
        args.judge,
        model=args.judge_model,
        policy=args.judge_policy,
        reference=args.judge_reference,
        device=args.device,
        revision=args.judge_revision,
        trust_remote_code=args.trust_remote_code,
    )


def check_names(args: argparse.Namespace) -> None:
    """Every model named is an existing folder or a valid hub id, in the hub cache while offline
    (``check_model_available``: nothing fetched or loaded, torch not imported); a wrong name is a
    CommandError naming its flag."""
    from xlreward.cli.main import CommandError
    from xlreward.service.model_source import check_model_available

    named = [("--model", args.model, args.revision), ("--baseline", args.baseline, args.baseline_revision)]
    named += [
        (f"--judge-{role}", getattr(args, f"judge_{role}"), args.judge_revision) for role in JUDGE_MODELS
    ]
    try:
        for flag, name, revision in named:
            if name is not None:
                check_model_available(
                    name, revision=revision, what=flag, trust_remote_code=args.trust_remote_code
                )
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(str(error)) from None
