"""``xlreward iterate``: serve pi^t -> annotate -> train -> pi^{t+1}, for T iterations, resumable."""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "iterate",
        help="run the method's loop: serve, annotate, train, switch; T iterations",
        description=(
            "Runs iteration after iteration from a TOML config (see README.md; its sft and policy are "
            "folders or Hugging Face hub ids, at [train] revision): the reward service "
            "serves pi^t with its reference, the instructions are annotated through it, pi^{t+1} is trained "
            "on the pairs and served next. Each iteration's artefacts go to OUT/iter-<t>; re-running resumes."
        ),
    )
    parser.add_argument("--config", required=True, help="TOML file")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pydantic import ValidationError

    from xlreward.cli.main import CommandError
    from xlreward.service.model_source import ModelNotFound
    from xlreward.trainer.loop import IterateConfig, run_loop
    from xlreward.worker.annotate import RunConflict
    from xlreward.worker.instructions import InstructionProblems

    path = Path(args.config)
    if not path.is_file():
        raise CommandError(f"--config {path}: no such file")
    try:
        config = IterateConfig.load(path)
    except ValidationError as error:
        raise CommandError(f"{path}: {error}") from None
    try:  # the config's model names are resolved first: a wrong one fails before torch is imported
        summary = run_loop(config)
    except (InstructionProblems, RunConflict, ModelNotFound, ValueError, RuntimeError) as error:
        raise CommandError(str(error)) from None
    print(json.dumps(summary, indent=2))
    return 0
