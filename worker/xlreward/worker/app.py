"""The Celery app for Celery's own command line, built from the ``XLREWARD_*`` environment (the same
settings as ``xlreward worker``)::

    export XLREWARD_BROKER_URL=redis://redis:6379/0
    celery -A xlreward.worker.app inspect ping        # or: inspect registered, inspect active
    celery -A xlreward.worker.app events              # or: flower (installed separately)
    celery -A xlreward.worker.app worker -E --queues generation,annotation

``app`` is built on first use, not at import, so importing this module reads no environment and connects
to nothing. Without a broker URL (or with an invalid setting) it exits with one line on stderr, status 2,
instead of the traceback Celery would print for any error while it loads an app.
"""

from __future__ import annotations

import sys
from functools import cache
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from celery import Celery


def __getattr__(name: str) -> Celery:
    """``app``, built once; Celery's ``-A xlreward.worker.app`` looks for exactly this attribute."""
    if name == "app":
        return _app_from_environment()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@cache
def _app_from_environment() -> Celery:
    from pydantic import ValidationError

    from xlreward.worker.celery_app import create_celery
    from xlreward.worker.settings import WorkerSettings

    try:
        return create_celery(WorkerSettings())
    except ValidationError as error:
        _fail("invalid settings: " + "; ".join(_describe(detail) for detail in error.errors()))
    except ValueError as error:  # create_celery's own checks (no broker URL)
        _fail(str(error))


def _describe(detail: Any) -> str:
    field = str(detail["loc"][0]) if detail["loc"] else "settings"
    return f"{field} [XLREWARD_{field.upper()}]: {detail['msg'].removeprefix('Value error, ')}"


def _fail(message: str) -> NoReturn:
    print(f"{__name__}: error: {message}", file=sys.stderr)
    raise SystemExit(2)
