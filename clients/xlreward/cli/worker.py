"""``xlreward worker``: a Celery worker for the annotation queues."""

from __future__ import annotations

import argparse
from typing import Any

# The settings that are also flags; each flag's type, default and help come from the setting.
FLAGS = ("events",)


def register(commands: Any) -> None:
    from xlreward.cli.settings_flags import add_settings_flags
    from xlreward.worker.settings import WorkerSettings

    parser = commands.add_parser(
        "worker",
        help="run a Celery worker for annotation runs (needs a Redis broker)",
        description="Consumes generation and annotation tasks from the broker; talks to the reward service "
        "named in each run. Settings come from XLREWARD_* variables (XLREWARD_SERVICE_API_KEY, ...). "
        "Celery's own command line reaches the same app: celery -A xlreward.worker.app inspect ping "
        "(or registered, active, events, flower); Flower and `celery events` see tasks only with --events.",
    )
    parser.add_argument("--broker", help="Redis URL [XLREWARD_BROKER_URL]")
    parser.add_argument("--queues", default="generation,annotation", help="comma-separated queues")
    parser.add_argument("--concurrency", type=int, default=1, help="tasks at a time (default 1)")
    parser.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    parser.add_argument("--loglevel", default="INFO")
    add_settings_flags(parser, WorkerSettings, FLAGS, env_prefix="XLREWARD_")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from xlreward.cli.main import CommandError
    from xlreward.cli.settings_flags import build_settings, settings_overrides
    from xlreward.worker.celery_app import create_celery
    from xlreward.worker.settings import WorkerSettings

    overrides = settings_overrides(args, FLAGS) | ({"broker_url": args.broker} if args.broker else {})
    settings = build_settings(WorkerSettings, overrides)
    try:
        app = create_celery(settings)
    except ValueError as error:
        raise CommandError(str(error)) from None
    # Task events come from the app's configuration (create_celery), so no -E here.
    app.worker_main(
        [
            "worker",
            f"--queues={args.queues}",
            f"--concurrency={args.concurrency}",
            f"--pool={args.pool}",
            f"--loglevel={args.loglevel}",
            "--without-gossip",
            "--without-mingle",
        ]
    )
    return 0
