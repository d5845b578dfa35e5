"""``xlreward annotate``: turn instructions into multilingual preference pairs through the reward service."""

from __future__ import annotations

import argparse
import sys
from typing import Any

SETTING_FLAGS = {
    "broker": "broker_url",
    "service": "service_url",
    "samples": "samples",
    "seed": "seed",
    "temperature": "temperature",
    "max_tokens": "max_tokens",
    "mode": "reward_mode",
}
STATUS_EVERY_S = 10.0  # without a terminal (a Job's log), the run's counts at most this often


def register(commands: Any) -> None:
    from xlreward.worker.pair_format import DEFAULT_PAIR_FORMAT, PAIR_FORMATS  # torch-free, stdlib only

    parser = commands.add_parser(
        "annotate",
        help="sample, score and pair responses per language (embedded, or on Celery workers)",
        description=(
            "Samples --samples responses per (instruction, language) through the reward service, scores them "
            "against the English instruction (cross-lingual reward), and writes one length-controlled "
            "preference pair per unit to OUT/pairs.jsonl with OUT/summary.json. Without a broker the work "
            "runs in this process; with --broker (or XLREWARD_BROKER_URL) `xlreward worker` processes do "
            "it. Re-running the same command resumes: finished units are not redone."
        ),
    )
    parser.add_argument("--instructions", nargs="+", required=True, metavar="FILE", help="JSONL files")
    parser.add_argument("--languages", required=True, help="comma-separated codes, e.g. en,es,ru,de,fr")
    parser.add_argument("--out", required=True, help="output folder (resumable)")
    parser.add_argument("--service", help="reward service URL [XLREWARD_SERVICE_URL]")
    parser.add_argument("--broker", help="Redis URL of the Celery broker [XLREWARD_BROKER_URL]")
    parser.add_argument("--samples", type=int, help="samples per unit [XLREWARD_SAMPLES]")
    parser.add_argument("--seed", type=int, help="base sampling seed [XLREWARD_SEED]")
    parser.add_argument("--temperature", type=float, help="sampling temperature [XLREWARD_TEMPERATURE]")
    parser.add_argument("--max-tokens", type=int, help="new tokens per sample [XLREWARD_MAX_TOKENS]")
    parser.add_argument(
        "--mode", choices=["cross_lingual", "monolingual"], help="reward prompt [XLREWARD_REWARD_MODE]"
    )
    parser.add_argument(
        "--reference-format",
        action="store_true",
        help='ICR reference files: one per language, <code>.jsonl, lines {"instruction", "instruction_id"}',
    )
    parser.add_argument(
        "--format",
        dest="pair_format",
        choices=PAIR_FORMATS,
        default=DEFAULT_PAIR_FORMAT,
        help="how pairs.jsonl holds prompt/chosen/rejected: chat messages, which TRL renders with the "
        "model's chat template as xlreward sampled and scored them (conversational), or plain strings, "
        "which TRL tokenizes WITHOUT a template (standard); the other fields are the same. Changing it on "
        "a finished run rewrites pairs.jsonl and redoes nothing",
    )
    parser.add_argument("--wait", action="store_true", help="with a broker: wait for the workers and pair")
    parser.add_argument("--timeout", type=float, default=None, help="give up waiting after this many seconds")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from xlreward.cli.main import CommandError
    from xlreward.cli.settings_flags import build_settings
    from xlreward.worker.annotate import RunConflict, plan_run
    from xlreward.worker.instructions import InstructionProblems
    from xlreward.worker.settings import WorkerSettings

    overrides = {
        field: getattr(args, flag) for flag, field in SETTING_FLAGS.items() if getattr(args, flag) is not None
    }
    settings = build_settings(WorkerSettings, overrides)
    languages = [code.strip() for code in args.languages.split(",") if code.strip()]
    try:
        plan = plan_run(
            args.instructions,
            languages=languages,
            out_dir=Path(args.out),
            settings=settings,
            reference_format=args.reference_format,
            pair_format=args.pair_format,
        )
    except (InstructionProblems, RunConflict) as error:
        raise CommandError(str(error)) from None
    if settings.broker_url:
        return _run_with_workers(plan, settings, args)
    return _run_embedded(plan, settings)


def _say(message: str) -> None:
    print(f"xlreward annotate: {message}", file=sys.stderr)


def _bar(plan: Any) -> Any:
    from tqdm import tqdm

    done = len(plan.jobs) - len(plan.pending())
    return tqdm(total=len(plan.jobs), initial=done, unit="unit", desc="annotating", disable=None)


def _run_embedded(plan: Any, settings: Any) -> int:
    from xlreward.worker.annotate import embedded_client, run_embedded

    _say(
        "no broker configured: running the annotation in this process (embedded mode); set --broker or "
        "XLREWARD_BROKER_URL to use `xlreward worker` processes"
    )
    with embedded_client(settings) as client, _bar(plan) as bar:
        run_embedded(plan, client, bar.update)
    return _finish(plan)


def _run_with_workers(plan: Any, settings: Any, args: argparse.Namespace) -> int:
    from xlreward.cli.main import CommandError
    from xlreward.worker.annotate import dispatch, wait_for_units
    from xlreward.worker.celery_app import create_celery

    _say(f"dispatching to Celery workers through {settings.broker_url}")
    app = create_celery(settings)
    try:
        sent = dispatch(plan, app)
    except Exception as error:  # kombu/redis connection errors have no common public base
        raise CommandError(f"cannot reach the broker at {settings.broker_url}: {error}") from None
    others = "; the others are finished, queued or running already" if sent < len(plan.jobs) else ""
    _say(f"{sent} of {len(plan.jobs)} units sent to the workers (run {plan.spec.run_id}){others}")
    if not args.wait:
        _say("re-run the same command with --wait to follow the run and write the pairs")
        return 0
    follow_run(
        lambda progress, report: wait_for_units(
            plan, app, progress, args.timeout, report=report, broker_wait_s=settings.broker_wait_s
        )
    )
    return _finish(plan)


def follow_run(wait: Any, command: str = "annotate", desc: str = "annotating") -> None:
    """Runs ``wait(progress, report)`` (a Celery run's waiter, ``xlreward.worker.follow``) under a progress
    bar: units done, and in flight / queued / re-dispatched beside it. Without a terminal (a Job's log) the
    same counts go out as a line whenever they change, and each re-dispatch as a line of its own. Exits
    2 on a timeout, a broker that stays away or units that failed, saying how to resume."""
    import shlex
    import time

    from tqdm import tqdm

    from xlreward.cli.main import CommandError
    from xlreward.worker.follow import BrokerUnavailable, RunStatus, UnitsFailed

    resume = shlex.join(["xlreward", *sys.argv[1:]])
    last: dict[str, Any] = {"line": "", "at": 0.0}

    def say(message: str) -> None:
        tqdm.write(f"xlreward {command}: {message}", file=sys.stderr)

    def report(status: RunStatus) -> None:
        bar.total, bar.n = status.total, status.done
        bar.set_postfix_str(status.describe(), refresh=True)
        if status.note:
            say(status.note)
        line = f"{status.done}/{status.total} done, {status.describe()}"
        if bar.disable and line != last["line"] and time.monotonic() - last["at"] > STATUS_EVERY_S:
            say(line)
            last.update(line=line, at=time.monotonic())

    with tqdm(unit="unit", desc=desc, disable=None) as bar:
        try:
            final = wait(lambda _: None, report)
        except TimeoutError as error:
            raise CommandError(f"{error}; re-run to resume: {resume}") from None
        except BrokerUnavailable as error:
            raise CommandError(f"{error}; once Redis is back, resume with: {resume}") from None
        except UnitsFailed as error:
            raise CommandError(f"{error}: {resume}") from None
    say(f"all {final.total} units done ({final.redispatched} re-dispatched on the way)")


def _finish(plan: Any) -> int:
    from xlreward.worker.annotate import collect

    summary = collect(plan)
    for language, stats in summary["languages"].items():
        drops = ", ".join(f"{n} {why}" for why, n in stats["drops"].items() if n) or "none"
        _say(f"{language}: {stats['pairs']} pairs, alpha {stats['alpha']:.3f}, dropped: {drops}")
    _say(f"wrote {plan.out_dir / 'pairs.jsonl'} and {plan.out_dir / 'summary.json'}")
    return 0
