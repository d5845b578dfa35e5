"""``xlreward demo``: the method in miniature (a synthetic three-language world), offline, end to end."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "demo",
        help="run the method in miniature, offline: build tiny models, iterate twice, evaluate",
        description=(
            "Builds a synthetic English/Spanish/German world with an oracle judge, pretrains and SFTs a "
            "tiny model (pi_ref), aligns it on English only (pi^0), then runs `xlreward iterate` (reward "
            "service, workers, DPO + NLL) for two cross-lingual iterations and one monolingual ablation, "
            "evaluates every model against pi^0, and writes OUT/summary.json and OUT/win_rates.png."
        ),
    )
    parser.add_argument("--out", default="runs/demo", help="output folder")
    parser.add_argument("--cache", default=".cache/xlreward/demo", help="where the built models are cached")
    parser.add_argument("--broker", help="Redis URL: annotate with Celery workers instead of in-process")
    parser.add_argument(
        "--seeds",
        type=seed_list,
        help="comma-separated seeds, e.g. 0,1,2: the demo once per seed in OUT/seed-<n>, then the mean and "
        "spread of every number and the targets over them in OUT/sweep.json (default: seed 0 only, in OUT)",
    )
    parser.add_argument(
        "--native-kernels",
        action="store_true",
        help="compute with the fastest CPU kernels this machine has instead of the AVX2 ones every x86-64 "
        "machine has (the table then depends on the processor; see xlreward/demo/kernels.py)",
    )
    parser.set_defaults(run=run)


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give whole numbers separated by commas, e.g. 0,1,2"
        ) from None
    if any(seed < 0 for seed in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct seeds of 0 or more")
    return seeds


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from xlreward.cli.main import CommandError
    from xlreward.demo.kernels import model_build_threads, one_thread_per_process, pin_portable_kernels

    if not args.native_kernels:
        pin_portable_kernels()  # before anything imports torch
    build_threads = model_build_threads()  # before one_thread_per_process sets the count it looks for
    one_thread_per_process()
    from xlreward.demo.run import DemoRun, run_demo, run_sweep

    if args.broker and not args.broker.startswith(("redis://", "rediss://")):
        raise CommandError(f"--broker {args.broker}: give a Redis URL such as redis://127.0.0.1:6379/0")
    try:
        run = DemoRun(
            out=Path(args.out), cache=Path(args.cache), broker=args.broker, build_threads=build_threads
        )
        if args.seeds:
            run_sweep(run, args.seeds)
        else:
            run_demo(run)
    except RuntimeError as error:
        raise CommandError(str(error)) from None
    return 0  # whether the targets are met is printed and in summary.json: a result, not a failure
