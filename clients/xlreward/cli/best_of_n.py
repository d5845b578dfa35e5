"""``xlreward best-of-n``: rerank n samples per (instruction, language) with one or more reward models."""

from __future__ import annotations

import argparse
import sys
from typing import Any

# flag -> WorkerSettings field: the value, its environment variable and its default come from the settings.
SETTING_FLAGS = {
    "broker": "broker_url",
    "service": "service_url",
    "api_key": "service_api_key",
    "seed": "seed",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "max_tokens": "max_tokens",
}
DEFAULT_N = 16


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "best-of-n",
        help="best-of-n reranking over instruction files with one or more reward models",
        description=(
            "Samples --n candidates per (instruction, language) once through the service's /best-of-n with "
            "the first --model, scores the same candidates with every other --model, and writes each "
            "model's best candidates as OUT/<model>/<language>/model_outputs.json (alpaca_eval's format), "
            "candidate 0 as OUT/single/<language>/model_outputs.json (the best-of-1 baseline), every "
            "candidate with its scores to OUT/candidates.jsonl and OUT/summary.json. Reward prompt "
            "(--reward-prompt): 'prompt' scores against the target-language instruction (as Reuse Your "
            "Rewards does with a classifier RM), 'english' against the English instruction behind the "
            "language directive (implicit cross-lingual rewarding); 'auto' picks 'prompt' for a "
            "classifier and 'english' for an implicit model. Without a broker the work runs in this "
            "process; with --broker `xlreward worker` processes do it. Re-running resumes."
        ),
    )
    parser.add_argument("--instructions", nargs="+", required=True, metavar="FILE", help="JSONL files")
    parser.add_argument("--languages", required=True, help="comma-separated codes, e.g. en,es,de")
    parser.add_argument(
        "--model", nargs="+", required=True, metavar="M", help="served reward models; the first samples"
    )
    parser.add_argument("--n", type=int, default=DEFAULT_N, help="candidates per unit")
    parser.add_argument("--out", required=True, help="output folder (resumable)")
    parser.add_argument("--service", help="reward service URL [XLREWARD_SERVICE_URL]")
    parser.add_argument("--broker", help="Redis URL of the Celery broker [XLREWARD_BROKER_URL]")
    parser.add_argument("--api-key", help="the service's API key [XLREWARD_SERVICE_API_KEY]")
    parser.add_argument("--sampler", help="the served implicit model that samples (default: the service's)")
    parser.add_argument(
        "--sampler-role",
        choices=["policy", "reference"],
        default="policy",
        help="sample its policy or SFT model",
    )
    parser.add_argument(
        "--reward-prompt",
        choices=["auto", "prompt", "english"],
        default="auto",
        help="see above",
    )
    parser.add_argument("--temperature", type=float, help="sampling temperature [XLREWARD_TEMPERATURE]")
    parser.add_argument("--top-p", type=float, help="nucleus sampling [XLREWARD_TOP_P]")
    parser.add_argument("--top-k", type=int, help="top-k sampling [XLREWARD_TOP_K]")
    parser.add_argument("--max-tokens", type=int, help="new tokens per candidate [XLREWARD_MAX_TOKENS]")
    parser.add_argument("--seed", type=int, help="base sampling seed [XLREWARD_SEED]")
    parser.add_argument(
        "--reference-format",
        action="store_true",
        help='ICR reference files: one per language, <code>.jsonl, lines {"instruction", "instruction_id"}',
    )
    parser.add_argument("--wait", action="store_true", help="with a broker: wait for the workers and write")
    parser.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from xlreward.cli.main import CommandError
    from xlreward.cli.settings_flags import build_settings
    from xlreward.worker.annotate import RunConflict
    from xlreward.worker.best_of_n import ModelProblem, plan_best_of_n
    from xlreward.worker.instructions import InstructionProblems
    from xlreward.worker.settings import WorkerSettings

    overrides = {
        field: getattr(args, flag) for flag, field in SETTING_FLAGS.items() if getattr(args, flag) is not None
    }
    settings = build_settings(WorkerSettings, overrides)
    try:
        plan = plan_best_of_n(
            args.instructions,
            languages=[code.strip() for code in args.languages.split(",") if code.strip()],
            models=args.model,
            n=args.n,
            out_dir=Path(args.out),
            settings=settings,
            reward_prompt=args.reward_prompt,
            sampler=args.sampler,
            sampler_role=args.sampler_role,
            reference_format=args.reference_format,
        )
    except (InstructionProblems, RunConflict, ModelProblem) as error:
        raise CommandError(str(error)) from None
    if settings.broker_url:
        return _run_with_workers(plan, settings, args)
    return _run_embedded(plan, settings)


def _say(message: str) -> None:
    print(f"xlreward best-of-n: {message}", file=sys.stderr)


def _bar(plan: Any) -> Any:
    from tqdm import tqdm

    done = len(plan.jobs) - len(plan.pending())
    return tqdm(total=len(plan.jobs), initial=done, unit="unit", desc="best-of-n", disable=None)


def _run_embedded(plan: Any, settings: Any) -> int:
    from xlreward.worker.annotate import embedded_client
    from xlreward.worker.best_of_n import run_embedded

    if plan.pending():
        _say("no broker configured: running in this process (embedded mode); set --broker to use workers")
        with embedded_client(settings) as client, _bar(plan) as bar:
            run_embedded(plan, client, bar.update)
    return _finish(plan)


def _run_with_workers(plan: Any, settings: Any, args: argparse.Namespace) -> int:
    from xlreward.cli.annotate import follow_run
    from xlreward.cli.main import CommandError
    from xlreward.worker.best_of_n import dispatch, wait_for_units
    from xlreward.worker.celery_app import create_celery

    _say(f"dispatching to Celery workers through {settings.broker_url}")
    app = create_celery(settings)
    try:
        sent = dispatch(plan, app)
    except Exception as error:  # kombu/redis connection errors have no common public base
        raise CommandError(f"cannot reach the broker at {settings.broker_url}: {error}") from None
    _say(f"{sent} of {len(plan.jobs)} units sent to the workers (run {plan.spec.run_id})")
    if not args.wait and plan.pending():
        _say("re-run the same command with --wait to follow the run and write the outputs")
        return 0
    follow_run(
        lambda progress, report: wait_for_units(
            plan, app, progress, args.timeout, report=report, broker_wait_s=settings.broker_wait_s
        ),
        command="best-of-n",
        desc="best-of-n",
    )
    return _finish(plan)


def _finish(plan: Any) -> int:
    from xlreward.worker.best_of_n import collect

    summary = collect(plan)
    for model, languages in summary["scores"].items():
        means = ", ".join(f"{code} {stats['mean_best_score']:.3f}" for code, stats in languages.items())
        _say(f"{model}: mean best score {means}")
    _say(f"wrote {plan.out_dir}/<model>/<language>/model_outputs.json, candidates.jsonl and summary.json")
    return 0
