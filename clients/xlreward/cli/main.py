"""Entry point of the ``xlreward`` console script."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from xlreward.cli import (
    annotate,
    best_of_n,
    demo,
    evaluate,
    iterate,
    rl,
    score,
    serve,
    train,
    train_rm,
    worker,
)
from xlreward.cli.help_format import CommandParser


class CommandError(Exception):
    """A failure to report as one line on stderr with exit status 2 (bad input, bad setup)."""


def _version() -> str:
    try:
        return version("xlreward")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="xlreward",
        description="Implicit cross-lingual rewarding: score responses with a DPO model and its reference.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    score.register(commands)
    serve.register(commands)
    annotate.register(commands)
    best_of_n.register(commands)
    worker.register(commands)
    train.register(commands)
    train_rm.register(commands)
    iterate.register(commands)
    rl.register(commands)
    evaluate.register(commands)
    demo.register(commands)
    _show_worker_setting_defaults(commands)
    return parser


def _show_worker_setting_defaults(commands: Any) -> None:
    """annotate's and best-of-n's settings flags default to None (unset, so XLREWARD_* variables apply);
    their help shows the ``WorkerSettings`` default instead, from the settings themselves."""
    from xlreward.cli.settings_flags import note_setting_defaults
    from xlreward.worker.settings import WorkerSettings

    for name, flags in (("annotate", annotate.SETTING_FLAGS), ("best-of-n", best_of_n.SETTING_FLAGS)):
        note_setting_defaults(commands.choices[name], WorkerSettings, flags)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
    except CommandError as error:
        print(f"xlreward {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"xlreward {args.command}: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    # Run as `python -m xlreward.cli.main` (torchrun, the servers the loop starts), this file is __main__,
    # and its CommandError would not be the one the commands raise: run the imported module's main.
    from xlreward.cli.main import main as imported_main

    sys.exit(imported_main())
