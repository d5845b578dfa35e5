"""``xlreward score``: offline batch scoring of a JSONL file with a policy/reference pair."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "score",
        help="score a JSONL file of (prompt, response) items offline",
        description=(
            'Scores each line {"id"?, "prompt", "response"} of --input and writes it to --output with '
            "policy_logp, reference_logp, num_response_tokens and reward = beta * (policy_logp - "
            "reference_logp) added, in input order. A bad line stops the run with its line number unless "
            "--skip-invalid."
        ),
    )
    from xlreward.cli.arg_types import non_negative_float, positive_int
    from xlreward.service.choices import DEVICES, DTYPE_HELP, DTYPES

    parser.add_argument("--policy", required=True, help="the DPO (policy) checkpoint: hub id or folder")
    parser.add_argument("--reference", required=True, help="the reference checkpoint: hub id or folder")
    parser.add_argument("--revision", help="hub revision of --policy and --reference (default: main)")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="run model code from the checkpoints"
    )
    parser.add_argument(
        "--attn-implementation",
        help="transformers' attention implementation (sdpa, eager, flash_attention_2)",
    )
    parser.add_argument("--input", required=True, help="JSONL file of items to score")
    parser.add_argument("--output", required=True, help="JSONL file to write")
    parser.add_argument("--beta", type=non_negative_float, default=0.1, help="reward scale")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where models run")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help=DTYPE_HELP)
    parser.add_argument("--skip-invalid", action="store_true", help="report and skip bad lines")
    parser.add_argument(
        "--raw", action="store_true", help="no chat template (base models): prompt + response"
    )
    parser.add_argument("--system-prompt", default=None, help="system turn for plain-text prompts")
    parser.add_argument(
        "--icr-compat",
        action="store_true",
        help="reproduce the ICR reference code's off-by-one (drops the first response token)",
    )
    parser.add_argument(
        "--max-batch-tokens",
        type=positive_int,
        help="padded tokens per forward batch (default: 4096 on CPU, 16384 on GPU)",
    )
    parser.add_argument(
        "--chunk-size",
        type=positive_int,
        help="LM-head rows per log-softmax block (default: ~256 MB of logits)",
    )
    parser.add_argument(
        "--packed",
        action="store_true",
        help="packed rows with no padding, each prompt once per row (checked against the plain forward)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from xlreward.cli.main import CommandError

    check_before_loading(args)

    from transformers.utils import logging as transformers_logging

    from xlreward.service.score_file import InvalidLine, score_file
    from xlreward.service.scoring.engine import EngineConfig
    from xlreward.service.scoring.errors import ScoringError
    from xlreward.service.scoring.loading import LoadOptions, load_engine
    from xlreward.service.scoring.templating import TemplateOptions

    transformers_logging.disable_progress_bar()  # our own bar is the one that means something here
    started = time.perf_counter()
    try:
        engine = load_engine(
            args.policy,
            args.reference,
            device=args.device,
            dtype=args.dtype,
            template=TemplateOptions(
                use_chat_template=not args.raw, system_prompt=args.system_prompt, icr_compat=args.icr_compat
            ),
            config=EngineConfig(
                beta=args.beta,
                chunk_size=args.chunk_size,
                max_batch_tokens=args.max_batch_tokens,
                packed=args.packed,
            ),
            options=LoadOptions(
                revision=args.revision,
                trust_remote_code=args.trust_remote_code,
                attn_implementation=args.attn_implementation,
            ),
        )
        report = score_file(engine, args.input, args.output, skip_invalid=args.skip_invalid)
    except (InvalidLine, ScoringError, FileNotFoundError, ValueError) as error:
        raise CommandError(str(error)) from error
    for invalid in report.skipped:
        print(f"skipped {invalid}", file=sys.stderr)
    elapsed = time.perf_counter() - started
    print(
        f"scored {report.scored} items into {args.output} ({len(report.skipped)} skipped) in {elapsed:.1f}s"
        f" on {engine.describe()}",
        file=sys.stderr,
    )
    return 0


def check_before_loading(args: argparse.Namespace) -> None:
    """What can be wrong without loading a model fails here, in well under a second, before torch is
    imported: a model named as a path with no folder behind it, an invalid hub id, a hub id missing from the
    cache while offline (HF_HUB_OFFLINE), an input that is no file, an output that is a folder."""
    from pathlib import Path

    from xlreward.cli.main import CommandError
    from xlreward.service.model_source import check_model_available

    try:
        for flag in ("policy", "reference"):
            check_model_available(
                getattr(args, flag),
                revision=args.revision,
                what=f"--{flag}",
                trust_remote_code=args.trust_remote_code,
            )
    except (FileNotFoundError, ValueError) as error:
        raise CommandError(str(error)) from None
    if not Path(args.input).is_file():
        raise CommandError(f"--input {args.input}: no such file; give the JSONL file of items to score")
    if Path(args.output).is_dir():
        raise CommandError(f"--output {args.output} is a folder; give the JSONL file to write")
