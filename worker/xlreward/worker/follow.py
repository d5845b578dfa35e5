"""Dispatching a Celery run's units and following them to the end, through worker deaths and broker
restarts (the unit states of ``leases``, and the results mirrored by ``store.MirroredStore``).

Each poll the waiter mirrors newly finished results into the output folder, then re-sends every unit
that is not finished and is *lost*: running without a live lease (its worker died), queued but stranded
(a worker fetched its message and died before starting it: ``deliveries``), or without any state (Redis
restarted empty and forgot it and its queued message; the mirrored results are written back first, so
nothing finished is redone). While Redis does not answer it retries for ``broker_wait_s``
(``WorkerSettings``), then gives up with ``BrokerUnavailable``. Dispatching sends the same lost units
plus the failed and never-sent ones: never a unit that is queued or running, so a re-run does not queue
anything twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlreward.worker.deliveries import stranded_units
from xlreward.worker.leases import FAILED, LEASE_TTL_S, QUEUED, RUNNING, UnitMarks
from xlreward.worker.store import Kind, MirroredStore, ResultStore

POLL_S = 1.0
# Clock skew allowed between the machine that marked a unit queued and the worker that fetched its message.
CLOCK_SKEW_S = 5.0
DISPATCH_CHUNK = 64  # units sent before they are marked queued: a crash in between re-sends at most these


class BrokerUnavailable(RuntimeError):
    """Redis did not answer for ``broker_wait_s``; the finished results are safe in the output folder."""


class UnitsFailed(RuntimeError):
    """Every unit still unfinished failed on a worker (a non-transient error, or retries exhausted)."""


@dataclass(frozen=True)
class TrackedRun:
    """A Celery run as dispatching and waiting see it. ``send(units)``: queue each unit's next step."""

    units: list[str]
    store: MirroredStore
    kinds: tuple[Kind, ...]  # the result kinds its units write (mirrored and restored)
    finished: Callable[[], set[str]]  # the finished units (in Redis or the mirror)
    send: Callable[[list[str]], None]
    out_dir: Path

    @property
    def marks(self) -> UnitMarks:
        return UnitMarks(self.store.primary.client, self.store.primary.prefix)


@dataclass(frozen=True)
class RunStatus:
    """A poll's view of the run, for progress lines. ``note``: what this poll did, worth a log line."""

    total: int
    done: int
    in_flight: int = 0
    queued: int = 0
    failed: int = 0
    redispatched: int = 0
    broker_down_s: float | None = None
    note: str | None = None

    def describe(self) -> str:
        if self.broker_down_s is not None:
            return f"broker unreachable for {self.broker_down_s:.0f} s, retrying"
        failed = f", failed {self.failed}" if self.failed else ""
        return f"in flight {self.in_flight}, queued {self.queued}, re-dispatched {self.redispatched}{failed}"


@dataclass(frozen=True)
class UnitStates:
    done: set[str]
    in_flight: set[str]
    queued: set[str]
    failed: dict[str, str]  # unit -> error
    lost: list[str]  # running without a lease (dead worker)
    forgotten: list[str] = field(default_factory=list)  # no state at all: never sent, or Redis lost it


def unit_states(run: TrackedRun) -> UnitStates:
    """Reads the states and leases before the results, so that a unit finishing in between (which drops
    its state and lease) counts as finished, not lost. A unit whose lease is alive is in flight whatever
    its state says (a heartbeat renews the lease even in a Redis that restarted empty)."""
    marks = run.marks
    finished_before = run.finished()
    states = marks.states()
    fetched = stranded_units(marks.client, run.store.primary.store_id, older_than_s=LEASE_TTL_S)
    # A queued unit whose message a worker fetched (after it was queued) and has held for a lease's life.
    stranded = {
        unit
        for unit, at in fetched.items()
        if _state(states, unit) == QUEUED and at >= states[unit].get("at", 0.0) - CLOCK_SKEW_S
    }
    # Queued units hold no lease (``leases.UnitMarks.mark_queued`` never overwrites a live one): skipping
    # them keeps a poll of a big run to a few lookups.
    unsure = [
        unit
        for unit in run.units
        if unit not in finished_before and (_state(states, unit) != QUEUED or unit in stranded)
    ]
    leased = marks.leased(unsure)
    done = run.finished()
    unfinished = [unit for unit in run.units if unit not in done]
    state = {unit: _state(states, unit) for unit in unfinished if unit not in leased}
    return UnitStates(
        done=set(run.units) - set(unfinished),
        in_flight=leased - done,
        queued={unit for unit, name in state.items() if name == QUEUED and unit not in stranded},
        failed={unit: states[unit].get("error", "") for unit, name in state.items() if name == FAILED},
        lost=[unit for unit, name in state.items() if name == RUNNING or unit in stranded],
        forgotten=[unit for unit, name in state.items() if name is None],
    )


def _state(states: dict[str, dict[str, Any]], unit: str) -> str | None:
    return states[unit]["state"] if unit in states else None


def send_units(run: TrackedRun, units: list[str]) -> None:
    """Sends, then marks queued (a crash in between leaves sent units unmarked: re-sent, not lost)."""
    marks = run.marks
    for start in range(0, len(units), DISPATCH_CHUNK):
        chunk = units[start : start + DISPATCH_CHUNK]
        run.send(chunk)
        marks.mark_queued(chunk)


def dispatch_units(run: TrackedRun) -> int:
    """Sends every unfinished unit that is neither queued nor running; returns how many."""
    states = unit_states(run)
    if states.forgotten:
        run.store.restore(run.kinds)  # results Redis lost (a restart) or never had (an embedded start)
    units = [*states.forgotten, *states.lost, *states.failed]
    send_units(run, units)
    return len(units)


def follow(
    run: TrackedRun,
    progress: Callable[[int], Any],
    timeout: float | None = None,
    report: Callable[[RunStatus], Any] | None = None,
    broker_wait_s: float = 120.0,
) -> RunStatus:
    """Waits until every unit is finished, mirroring results and re-sending lost units on the way.
    ``progress(n)``: n more units finished; ``report``: the status after each poll. Raises TimeoutError
    after ``timeout`` s, ``BrokerUnavailable`` after ``broker_wait_s`` s without Redis, or
    ``UnitsFailed``; returns the final status."""
    errors = broker_errors()
    deadline = None if timeout is None else time.monotonic() + timeout
    seen: int | None = None
    redispatched, down_since = 0, None
    while True:
        try:
            status, states = _poll(run, redispatched)
            down_since = None
        except errors as error:
            lost_now = down_since is None
            down_since = down_since or time.monotonic()
            waited = time.monotonic() - down_since
            if waited > broker_wait_s:
                raise BrokerUnavailable(
                    f"the broker has not answered for {waited:.0f} s ({error}); the finished units are kept "
                    f"in {run.out_dir / 'state'}"
                ) from None
            if report:
                note = (
                    f"lost the broker ({error}); retrying for up to {broker_wait_s:.0f} s"
                    if lost_now
                    else None
                )
                report(RunStatus(total=len(run.units), done=seen or 0, broker_down_s=waited, note=note))
            time.sleep(POLL_S)
            continue
        redispatched = status.redispatched
        progress(0 if seen is None else status.done - seen)
        seen = status.done
        if report:
            report(status)
        if status.done == status.total:
            return status
        if states.failed and status.done + status.failed == status.total:
            unit, message = min(states.failed.items())
            raise UnitsFailed(
                f"{status.failed} units failed on the workers, {unit} with {message}; see the workers' logs, "
                "then re-run to try them again"
            )
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"{status.total - status.done} units still unfinished after {timeout:.0f} s")
        time.sleep(POLL_S)


def _poll(run: TrackedRun, redispatched: int) -> tuple[RunStatus, UnitStates]:
    """One look: mirror the new results, classify the units, re-send the lost ones."""
    run.store.sync(run.kinds)
    states = unit_states(run)
    notes = []
    if states.forgotten:
        run.store.restore(run.kinds)
        notes.append(f"{len(states.forgotten)} units the broker no longer knew (Redis restarted empty?)")
    if states.lost:
        notes.append(f"{len(states.lost)} units whose worker stopped renewing its lease")
    resent = [*states.forgotten, *states.lost]
    send_units(run, resent)
    if len(states.done) == len(run.units):
        run.store.sync(run.kinds)  # the last ones, so the outputs can be written from the folder alone
    status = RunStatus(
        total=len(run.units),
        done=len(states.done),
        in_flight=len(states.in_flight),
        queued=len(states.queued) + len(resent),
        failed=len(states.failed),
        redispatched=redispatched + len(resent),
        note=("re-dispatched " + " and ".join(notes)) if notes else None,
    )
    return status, states


def broker_errors() -> tuple[type[BaseException], ...]:
    """What an unreachable or restarting Redis raises, through redis-py or through Celery's kombu."""
    from kombu.exceptions import OperationalError
    from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

    return (ConnectionError, TimeoutError, BusyLoadingError, OperationalError, OSError)


def tracked_store(store: ResultStore) -> MirroredStore:
    assert isinstance(store, MirroredStore), "a Celery run keeps its results in Redis, mirrored"
    return store
