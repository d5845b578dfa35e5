"""Task messages that a worker fetched from Redis and never started: what a lease cannot see.

A worker takes a unit's lease when its task starts (``leases``), but it fetches the task's message a moment
earlier. A worker SIGKILLed in between leaves the message unacknowledged in the broker's memory of
deliveries, invisible to other workers until the visibility timeout (an hour by default), and the unit
"queued" with no lease, as if it were still waiting its turn. Kombu's Redis transport records each delivery
in the ``unacked`` hash (delivery tag -> [message, exchange, routing key]) and the ``unacked_index`` sorted
set (delivery tag -> when it was delivered). A message delivered longer ago than a lease lives, whose unit
holds no lease, was fetched by a worker that died before starting it (or one holding it for a retry's
countdown without a lease, which ``leases`` prevents): the waiter sends that unit again. A duplicate is
harmless: results are written once.
"""

from __future__ import annotations

import base64
import json
import time
from contextlib import suppress
from typing import Any

from xlreward.worker.store import unit_key

# kombu's Redis transport's default key names (``Channel.unacked_key``, ``Channel.unacked_index_key``)
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"


def stranded_units(client: Any, store_id: str, older_than_s: float) -> dict[str, float]:
    """Units of run ``store_id`` whose task message a worker fetched more than ``older_than_s`` seconds
    ago and has not acknowledged, with when it was fetched (the latest, for a unit fetched twice). Running
    or not: the caller tells them apart by their leases, and a unit queued again after that delivery by
    the time it was queued."""
    delivered = client.zrangebyscore(UNACKED_INDEX, "-inf", time.time() - older_than_s, withscores=True)
    if not delivered:
        return {}
    units: dict[str, float] = {}
    raws = client.hmget(UNACKED, [tag for tag, _ in delivered])
    for (_, at), raw in zip(delivered, raws, strict=True):
        job = _job_of(raw)
        if job is not None and job.get("store_id") == store_id:
            key = unit_key(job["id"], job["language"])
            units[key] = max(at, units.get(key, 0.0))
    return units


def _job_of(raw: str | bytes | None) -> dict[str, Any] | None:
    """The unit payload of one delivered Celery task message (protocol 2: the body is [args, kwargs,
    embed], and a unit task's first argument is its job), or None for anything else."""
    if raw is None:
        return None
    with suppress(ValueError, KeyError, TypeError, IndexError):
        message = json.loads(raw)[0]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        job = json.loads(body)[0][0]
        if isinstance(job, dict) and "id" in job and "language" in job:
            return job
    return None
