"""Unit states beside the Celery queues, so that whoever follows a run can tell a queued unit from one whose
worker died, and a re-run does not queue a unit twice.

Celery alone cannot: a task whose worker is SIGKILLed stays unacknowledged in Redis until the broker's
visibility timeout (an hour by default, because a healthy unit may run that long) before anyone runs it
again. So each unit of a Celery run has one state in a Redis hash beside the queues (same Redis: when the
queues vanish in a broker restart, the states vanish with them, and the waiter notices), last write wins:

- ``queued``: a message for the unit's next step was sent (written AFTER sending, so a crash in between
  leaves the unit without a state, which is re-sent: a duplicate, never a loss);
- ``running``: a task started it; the task also holds a lease key with a TTL that a heartbeat thread
  renews until the task returns. Running without a lease means the worker died. A task that failed and
  will be retried leaves its lease to last the retry's longest countdown plus the TTL: Celery holds a
  retry's message in the memory of the worker that fetched it, unacknowledged, until its countdown ends,
  so if that worker dies the message waits out the visibility timeout, and the lapsed lease is what
  tells the waiter to send the unit again;
- ``failed``: a task gave up on it (a non-transient error, or its retries ran out), with the error;
- no state: never sent, finished (a task that finishes its step deletes the state), or forgotten by
  a Redis that restarted empty.

Results are written once (``store.ResultStore``), so sending a unit again that was in fact still alive
costs a little time and nothing else.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import suppress
from types import TracebackType
from typing import Any

QUEUED, RUNNING, FAILED = "queued", "running", "failed"
# A lease outlives three missed renewals: a worker busy in a long forward pass, a slow Redis round trip
# or a GC pause must miss 3 in a row before its unit counts as lost. 20 s + the waiter's poll keeps a
# dead worker's unit re-sent well within a minute, against the hour of the broker's visibility timeout.
LEASE_TTL_S = 20
LEASE_RENEW_S = 5

# Marks units queued, unless another task holds the unit's lease (it started in the meantime: it stays
# "running"). ARGV[1]: the caller's lease token, released first ("" for none); ARGV[2]: the state.
_MARK_QUEUED = """
for i, unit in ipairs(ARGV) do
  if i > 2 then
    local lease = KEYS[i - 1]
    if ARGV[1] ~= '' and redis.call('GET', lease) == ARGV[1] then redis.call('DEL', lease) end
    if redis.call('EXISTS', lease) == 0 then redis.call('HSET', KEYS[1], unit, ARGV[2]) end
  end
end
"""
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end"
# Extends the lease to ARGV[2] seconds if the caller (token ARGV[1]) still holds it.
_EXTEND = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('EXPIRE', KEYS[1], ARGV[2]) end"


class UnitMarks:
    """The unit states and leases of one run's store (``store.RedisStore.prefix``)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.states_key = f"{prefix}:units"
        self.lease_prefix = f"{prefix}:lease:"

    def lease_key(self, unit: str) -> str:
        return self.lease_prefix + unit

    def mark_queued(self, units: Iterable[str], token: str = "") -> None:
        units = list(units)
        if units:
            state = json.dumps({"state": QUEUED, "at": time.time()})
            keys = [self.states_key, *(self.lease_key(unit) for unit in units)]
            self.client.eval(_MARK_QUEUED, len(keys), *keys, token, state, *units)

    def states(self) -> dict[str, dict[str, Any]]:
        return {str(unit): json.loads(raw) for unit, raw in self.client.hgetall(self.states_key).items()}

    def leased(self, units: Iterable[str]) -> set[str]:
        units = list(units)
        pipe = self.client.pipeline(transaction=False)
        for unit in units:
            pipe.exists(self.lease_key(unit))
        return {unit for unit, alive in zip(units, pipe.execute(), strict=True) if alive}

    def hold(self, unit: str, will_retry: RetryWait) -> Lease:
        """The state and lease of a task working on ``unit`` (a context manager); ``will_retry(error)``:
        None if the task queue will not run the task again after it raises ``error``, else the longest it
        waits before it does, in seconds."""
        return Lease(self, unit, will_retry)


# After a task raises: None if it will not run again, else the longest its retry waits, in seconds.
RetryWait = Callable[[BaseException], float | None]


class Lease:
    """Marks the unit running and renews its lease until the task returns; then the unit is finished
    (state deleted), held for its retry (running, the lease lasting the retry's countdown), queued for its
    next step (``hand_over``) or failed."""

    def __init__(self, marks: UnitMarks, unit: str, will_retry: RetryWait) -> None:
        self.marks, self.unit, self.will_retry = marks, unit, will_retry
        holder = f"{socket.gethostname()}:{os.getpid()}"
        self.token = f"{holder}:{uuid.uuid4().hex}"
        self.state = json.dumps({"state": RUNNING, "by": holder, "at": time.time()})
        self.handed_over = False
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._renew, name=f"lease {unit}", daemon=True)

    def __enter__(self) -> Lease:
        pipe = self.marks.client.pipeline(transaction=True)
        pipe.set(self.marks.lease_key(self.unit), self.token, ex=LEASE_TTL_S)
        pipe.hset(self.marks.states_key, self.unit, self.state)
        pipe.execute()
        self._heartbeat.start()
        return self

    def _renew(self) -> None:
        from redis.exceptions import RedisError

        while not self._stop.wait(LEASE_RENEW_S):
            # Redis restarting: renew on the next beat (into the new Redis), or the lease lapses.
            with suppress(RedisError):
                self.marks.client.set(self.marks.lease_key(self.unit), self.token, ex=LEASE_TTL_S)

    def _stop_renewing(self) -> None:
        self._stop.set()
        self._heartbeat.join()

    def hand_over(self, send: Callable[[], None]) -> None:
        """This task's step is done: ``send()`` the unit's next step, then mark it queued (sent first, so
        a crash in between leaves it running without a lease: re-sent, not lost)."""
        self._stop_renewing()
        send()
        self.marks.mark_queued([self.unit], self.token)
        self.handed_over = True

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        from redis.exceptions import RedisError

        self._stop_renewing()
        if self.handed_over or isinstance(error, RedisError):
            return  # Redis failed us: leave the lease to lapse (or Redis forgot the unit) and be re-sent
        with suppress(RedisError):  # as above
            if error is None:
                self._finish()
            elif (wait := self.will_retry(error)) is not None:
                self._hold_for_retry(wait)
            else:
                self._fail(error)

    def _hold_for_retry(self, wait: float) -> None:
        """Keeps the lease (state running) until the retry starts and takes its own, or lapses if the
        worker holding the retry dies first (see the module docstring)."""
        seconds = math.ceil(wait) + LEASE_TTL_S
        self.marks.client.eval(_EXTEND, 1, self.marks.lease_key(self.unit), self.token, seconds)

    def _finish(self) -> None:
        pipe = self.marks.client.pipeline(transaction=True)
        pipe.eval(_RELEASE, 1, self.marks.lease_key(self.unit), self.token)
        pipe.hdel(self.marks.states_key, self.unit)
        pipe.execute()

    def _fail(self, error: BaseException) -> None:
        state = {"state": FAILED, "at": time.time(), "error": f"{type(error).__name__}: {error}"[:500]}
        pipe = self.marks.client.pipeline(transaction=True)
        pipe.eval(_RELEASE, 1, self.marks.lease_key(self.unit), self.token)
        pipe.hset(self.marks.states_key, self.unit, json.dumps(state))
        pipe.execute()
