"""``xlreward rl``: GRPO (TRL) of a policy on instruction prompts, rewarded by a model an xlreward server
serves (METHOD.md section 2, "Reuse Your Rewards"); see ``xlreward.trainer.rl`` and README.md."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "rl",
        help="train a policy with GRPO (TRL), rewarded through an xlreward server",
        description=(
            "Runs GRPO from a TOML config (see README.md): the policy (a folder or a Hugging Face hub id, "
            "also the KL reference) samples completions for the instructions in each language; a reward "
            "model served by `xlreward serve` ([reward] service_url, or models_file: started for the run) "
            "scores them against the prompt or the English instruction. Writes OUT/model (LoRA merged), "
            "rl_config.json, metrics.jsonl, final_metrics.json and OUT/checkpoints; re-running the same "
            "config resumes from the last checkpoint, and does nothing once finished."
        ),
    )
    parser.add_argument("--config", required=True, help="TOML file")
    parser.add_argument("--out", default=None, help="output folder, instead of the file's `out`")
    parser.set_defaults(run=run)


def describe_validation_error(error: Any) -> str:
    """A pydantic ValidationError as one line: ``[grpo] lorra: extra inputs are not permitted; ...``."""
    problems = []
    for detail in error.errors():
        loc = [str(part) for part in detail["loc"]]
        if loc and loc[0] in ("reward", "grpo"):  # a TOML table: [grpo] lr
            where = " ".join([f"[{loc[0]}]", ".".join(loc[1:])]).strip()
        else:
            where = ".".join(loc)
        message = detail["msg"].removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where else message)
    return "; ".join(problems)


def run(args: argparse.Namespace) -> int:
    import tomllib
    from pathlib import Path

    from pydantic import ValidationError

    from xlreward.cli.main import CommandError
    from xlreward.trainer.options import TrainSetupError
    from xlreward.trainer.rl import RLConfig, run_rl
    from xlreward.worker.instructions import InstructionProblems

    path = Path(args.config)
    if not path.is_file():
        raise CommandError(f"--config {path}: no such file")
    try:
        config = RLConfig.load(path, out=Path(args.out) if args.out else None)
    except tomllib.TOMLDecodeError as error:
        raise CommandError(f"{path}: not valid TOML: {error}") from None
    except ValidationError as error:
        raise CommandError(f"{path}: {describe_validation_error(error)}") from None
    try:  # the policy, the instructions and the reward server are checked before torch is imported
        final = run_rl(config)
    except (TrainSetupError, InstructionProblems) as error:
        raise CommandError(str(error)) from None
    print(json.dumps(final, indent=2))
    return 0
