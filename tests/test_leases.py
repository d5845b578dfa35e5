"""A unit's lease after its task raises, on a real Redis: held through a retry's countdown, so a worker
that dies holding the retry's message is noticed when the lease lapses (not an hour later, when the broker's
visibility timeout ends); released when the task will not run again."""

from __future__ import annotations

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
