"""``xlreward serve``: the reward server (FastAPI under uvicorn)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

# The settings that are also flags; each flag's type, choices, default and help come from the setting.
FLAGS = (
    "models",
    "policy",
    "reference",
    "revision",
    "trust_remote_code",
    "attn_implementation",
    "host",
    "port",
    "device",
    "reference_device",
    "device_map",
    "dtype",
    "beta",
    "packed",
)


def register(commands: Any) -> None:
    from xlreward.cli.settings_flags import add_settings_flags
    from xlreward.service.settings import ServiceSettings

    parser = commands.add_parser(
        "serve",
        help="serve POST /reward and /generate for named reward models (or one policy/reference pair)",
        description=(
            "Starts the reward server for the models of --models FILE (implicit pairs and classifier RMs, "
            "each under a name requests give as \"model\"), or for one implicit pair named 'default' "
            "(--policy, --reference). Every flag, and every other setting (batching, queue bound, API keys, "
            "generation backend), also comes from an XLREWARD_* environment variable, e.g. "
            'XLREWARD_MAX_BATCH_TOKENS=32768 or XLREWARD_API_KEYS=\'{"key": "team-a"}\'. Flags win.'
        ),
    )
    add_settings_flags(parser, ServiceSettings, FLAGS, env_prefix="XLREWARD_")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"], help="server log level"
    )
    parser.add_argument(
        "--parent-pid",
        type=int,
        help="stop when this process (the one starting the server, e.g. a training loop) exits, even if it "
        "is killed (default: run until stopped)",
    )
    parser.set_defaults(run=run)


def logging_config(level: str) -> dict[str, Any]:
    """uvicorn's logging configuration with the server's own ``xlreward.*`` loggers on its stderr handler
    (model loading, switches, failures), which would otherwise show warnings only."""
    from copy import deepcopy

    from uvicorn.config import LOGGING_CONFIG

    config = deepcopy(LOGGING_CONFIG)
    config["loggers"]["xlreward"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def run(args: argparse.Namespace) -> int:
    from xlreward.cli.main import CommandError
    from xlreward.cli.settings_flags import build_settings, settings_overrides
    from xlreward.service.settings import ServiceSettings

    settings = build_settings(ServiceSettings, settings_overrides(args, FLAGS))

    if args.parent_pid is not None:
        from xlreward.service.parent_watch import watch_parent

        try:
            watch_parent(args.parent_pid)
        except ValueError as error:
            raise CommandError(f"--parent-pid: {error}") from None

    import uvicorn

    from xlreward.service.app import create_app

    if not settings.api_keys:
        print(
            f"xlreward serve: no API keys are set, so the server binds to loopback only ({settings.host}); "
            "set XLREWARD_API_KEYS to share it",
            file=sys.stderr,
        )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        log_config=logging_config(args.log_level),
        timeout_graceful_shutdown=10,
    )
    return 0
