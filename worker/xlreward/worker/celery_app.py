"""The Celery app: JSON only, Redis broker and result backend by URL, late acknowledgement with
redelivery on worker loss (the tasks are idempotent), prefetch 1, one queue for generation and one for
annotation (scoring). A best-of-n unit (sample once, score with every model) is one task on the
generation queue. Task events (for Flower) when ``XLREWARD_EVENTS`` / ``xlreward worker --events`` asks.
Celery's own command line finds this app, built from the environment, as ``celery -A xlreward.worker.app``.

Each task holds its unit's lease while it runs (``leases``): the visibility timeout stays long (a healthy
unit may run for many minutes), and it is the waiting run that re-sends a dead worker's unit, once its
lease lapses, instead of the broker an hour later."""

from __future__ import annotations

from functools import cache
from typing import Any

from celery import Celery, Task

from xlreward.client import (
    APIConnectionError,
    RateLimitError,
    RewardClient,
    ServerError,
    ServiceUnavailableError,
)
from xlreward.worker.best_of_n import BestOfNJob, run_best_of_n_unit
from xlreward.worker.jobs import UnitJob
from xlreward.worker.leases import Lease, UnitMarks
from xlreward.worker.pipeline import run_generation, run_scoring
from xlreward.worker.settings import WorkerSettings
from xlreward.worker.store import RedisStore

GENERATION_QUEUE = "generation"
ANNOTATION_QUEUE = "annotation"
GENERATE_TASK = "xlreward.generate"
SCORE_TASK = "xlreward.score"
BEST_OF_N_TASK = "xlreward.best_of_n"
# What the client already retried and still failed on; Celery retries it again later, with backoff.
TRANSIENT = (APIConnectionError, RateLimitError, ServiceUnavailableError, ServerError)
RETRY_BACKOFF_MAX_S = 120
CLIENT_TIMEOUT_S = 1800.0  # one unit's generation (10 x 2400 tokens) can take minutes


@cache
def _client(url: str, api_key: str | None, retries: int) -> RewardClient:
    """One HTTP client per worker process and service (connection reuse across tasks)."""
    return RewardClient(url, api_key=api_key, max_retries=retries, timeout=CLIENT_TIMEOUT_S)


def create_celery(settings: WorkerSettings) -> Celery:
    if not settings.broker_url:
        raise ValueError(
            "no broker URL: set XLREWARD_BROKER_URL (or `xlreward worker --broker`), for example "
            "redis://host:6379/0"
        )
    app = Celery("xlreward", broker=settings.broker_url, backend=settings.broker_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        task_routes={
            GENERATE_TASK: {"queue": GENERATION_QUEUE},
            SCORE_TASK: {"queue": ANNOTATION_QUEUE},
            BEST_OF_N_TASK: {"queue": GENERATION_QUEUE},
        },
        task_default_queue=ANNOTATION_QUEUE,
        worker_hijack_root_logger=False,
        # Monitoring (Flower, `celery events`): the worker's task events, and a task-sent event from
        # whoever queues a task (annotate, or a generate task handing its unit to scoring) so a monitor
        # sees queued tasks too, not only started ones.
        worker_send_task_events=settings.events,
        task_send_sent_event=settings.events,
    )
    _register_tasks(app, settings)
    return app


def _register_tasks(app: Celery, settings: WorkerSettings) -> None:
    retry_options: dict[str, Any] = {
        "acks_late": True,
        "autoretry_for": TRANSIENT,
        "retry_backoff": True,
        "retry_backoff_max": RETRY_BACKOFF_MAX_S,
        "max_retries": settings.task_retries,
    }

    def context(payload: dict[str, Any]) -> tuple[UnitJob, RedisStore, RewardClient]:
        job = UnitJob.model_validate(payload)
        assert job.store_url is not None, "Celery units keep their results in Redis"
        client = _client(job.service_url, settings.service_api_key, settings.service_retries)
        return job, RedisStore(job.store_url, job.store_id), client

    @app.task(name=GENERATE_TASK, bind=True, **retry_options)
    def generate(task: Task, payload: dict[str, Any]) -> None:
        """Sample the unit's responses, then hand it to the annotation queue (unless it is a generation-only
        unit)."""
        job, store, client = context(payload)
        with lease(task, store, job.key) as held:
            run_generation(job, store, client)
            if job.score_after_generation:
                held.hand_over(lambda: app.send_task(SCORE_TASK, args=[payload], queue=ANNOTATION_QUEUE))

    @app.task(name=SCORE_TASK, bind=True, **retry_options)
    def score(task: Task, payload: dict[str, Any]) -> None:
        """Score the unit's samples against its reward prompt."""
        job, store, client = context(payload)
        with lease(task, store, job.key):
            run_scoring(job, store, client)

    @app.task(name=BEST_OF_N_TASK, bind=True, **retry_options)
    def best_of_n(task: Task, payload: dict[str, Any]) -> None:
        """Sample a best-of-n unit's candidates once and score them with every model (idempotent: each
        step is stored once)."""
        job = BestOfNJob.model_validate(payload)
        assert job.store_url is not None, "Celery units keep their results in Redis"
        client = _client(job.service_url, settings.service_api_key, settings.service_retries)
        store = RedisStore(job.store_url, job.store_id)
        with lease(task, store, job.key):
            run_best_of_n_unit(job, store, client)


def lease(task: Task, store: RedisStore, unit: str) -> Lease:
    """The unit's lease for this task; after an error, held until the retry starts if Celery will retry
    the task (autoretry_for, retries left), else failed."""

    def will_retry(error: BaseException) -> float | None:
        retries_left = task.max_retries is None or task.request.retries < task.max_retries
        if not (isinstance(error, TRANSIENT) and retries_left):
            return None
        # autoretry's backoff: a countdown drawn up to 2 ** retries seconds, capped at the maximum
        return float(min(RETRY_BACKOFF_MAX_S, 2**task.request.retries))

    return UnitMarks(store.client, store.prefix).hold(unit, will_retry)
