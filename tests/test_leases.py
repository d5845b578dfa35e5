"""What tells the waiter a worker died with a unit, on a real Redis: a unit's lease after its task raises
(held through a retry's countdown, so a worker that dies holding the retry's message is noticed when the
lease lapses, not an hour later when the broker's visibility timeout ends; released when the task will not
run again), and a task message fetched by a worker that died before starting it."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
import redis

from xlreward.worker.leases import FAILED, LEASE_TTL_S, RUNNING, UnitMarks


@pytest.fixture
def marks():  # type: ignore[no-untyped-def]
    client = redis.Redis.from_url("redis://127.0.0.1:6379/12", decode_responses=True)
    prefix = f"test-leases:{uuid.uuid4().hex}"
    yield UnitMarks(client, prefix)
    for key in client.scan_iter(f"{prefix}*"):
        client.delete(key)


def raise_in_task(marks: UnitMarks, retry_wait: float | None) -> None:
    with pytest.raises(ConnectionError), marks.hold("u", lambda error: retry_wait):
        raise ConnectionError("the service is down")


def test_a_retried_unit_keeps_its_lease_for_the_retry_countdown(marks) -> None:  # type: ignore[no-untyped-def]
    raise_in_task(marks, retry_wait=30.0)
    assert marks.states()["u"]["state"] == RUNNING
    assert marks.leased(["u"]) == {"u"}
    assert LEASE_TTL_S + 25 < marks.client.ttl(marks.lease_key("u")) <= LEASE_TTL_S + 30


def test_a_unit_that_will_not_run_again_fails_and_releases_its_lease(marks) -> None:  # type: ignore[no-untyped-def]
    raise_in_task(marks, retry_wait=None)
    assert marks.states()["u"]["state"] == FAILED
    assert marks.leased(["u"]) == set()


DELIVERY_BROKER = "redis://127.0.0.1:6379/12"
FETCH_AND_DIE = """
import os, sys
from xlreward.worker.celery_app import create_celery
from xlreward.worker.settings import WorkerSettings
app = create_celery(WorkerSettings(broker_url=sys.argv[1]))
with app.connection() as connection:
    queue = connection.SimpleQueue(sys.argv[2], no_ack=False)
    queue.get(timeout=10)  # fetched, never acknowledged
    os._exit(9)  # as a SIGKILLed worker: no ack, no restore
"""


def test_a_message_fetched_by_a_worker_that_died_is_found_stranded() -> None:
    """A real task message fetched through kombu by a process that then dies: the waiter's view of the
    broker finds its unit (a unit the lease cannot see: the task never started)."""
    from xlreward.worker.celery_app import GENERATE_TASK, GENERATION_QUEUE, create_celery
    from xlreward.worker.deliveries import stranded_units
    from xlreward.worker.settings import WorkerSettings
    from xlreward.worker.store import unit_key

    client = redis.Redis.from_url(DELIVERY_BROKER, decode_responses=True)
    client.delete("unacked", "unacked_index", GENERATION_QUEUE)
    store_id = uuid.uuid4().hex
    app = create_celery(WorkerSettings(broker_url=DELIVERY_BROKER))
    job = {"id": "u1", "language": "es", "store_id": store_id}
    app.send_task(GENERATE_TASK, args=[job], queue=GENERATION_QUEUE)
    fetch = [sys.executable, "-c", FETCH_AND_DIE, DELIVERY_BROKER, GENERATION_QUEUE]
    died = subprocess.run(fetch, timeout=60)
    assert died.returncode == 9
    try:
        assert stranded_units(client, store_id, older_than_s=0).keys() == {unit_key("u1", "es")}
        assert stranded_units(client, "another-run", older_than_s=0) == {}
        assert stranded_units(client, store_id, older_than_s=3600) == {}  # not fetched that long ago
    finally:
        client.delete("unacked", "unacked_index", GENERATION_QUEUE)
