"""Entry point of the ``xlreward`` console script."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version

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


class CommandError(Exception):
    """A failure to report as one line on stderr with exit status 2 (bad input, bad setup)."""


def _version() -> str:
    try:
        return version("xlreward")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    return parser


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
    sys.exit(main())
