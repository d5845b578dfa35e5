"""Cross-request dynamic batching: one loop, testable without HTTP.

Requests (``Ticket``) arrive from the event loop as lists of work units: a single item, or a group of
responses sharing one prompt, each for one model. A worker thread closes a batch when its plan is full or
the oldest unit has waited ``batch_wait`` seconds, fills it fairly (the tenant served the fewest tokens so far
offers the next unit, so a tenant with ten thousand queued items cannot hold back another tenant's one), runs
it, and hands each request its results when its last unit is done. A running batch pauses at its yield
points (between forwards, ``scoring.yield_points``) to run a batch of waiting units whose tenants have been
served less than its own, so a small request waits for one forward of a long batch, not all of it.

A batch holds units of one model, and the model's own planner decides what fits (``BatchPlan``): the
scheduler offers it units until one does not fit, and the runner runs that plan as it is, so one
scheduler batch is one forward plan and the batch metrics report what ran. Units without a model
(``Unit.model`` None, the scheduler's own tests) are planned by ``LengthBudget``: rows x longest row
within ``max_batch_tokens``.

Every ticket ends exactly once: with its results, or with an error (queue full, deadline passed, cancelled
by a disconnecting client, shut down, or a failed forward). Nothing is dropped silently.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from xlreward.service.scoring.yield_points import yielding_to

Result = TypeVar("Result")


class SchedulerError(Exception):
    """Base of the ways a ticket can end without results."""


class QueueFull(SchedulerError):
    def __init__(self, queued: int, limit: int, retry_after: int) -> None:
        super().__init__(
            f"the server's queue holds {queued} of at most {limit} items: retry after {retry_after} s"
        )
        self.retry_after = retry_after


class DeadlineExceeded(SchedulerError):
    pass


class Cancelled(SchedulerError):
    pass


class ShuttingDown(SchedulerError):
    pass


@dataclass(frozen=True)
class Unit:
    """What the scheduler batches: ``lengths`` of the sequences it holds (one, or a group's responses),
    an opaque payload for the runner, and the model it is for (batches hold units of one model)."""

    payload: Any
    lengths: tuple[int, ...]
    is_group: bool = False
    model: Any = None  # a ``PlannedModel``; None: planned by ``LengthBudget``

    @property
    def size(self) -> int:
        return len(self.lengths)


class BatchPlan(Protocol):
    """What a batch will run: takes units while they fit (the first always does). ``closes_early``: the
    batch runs as soon as it holds its first unit, and is not a forward batch (a generation turn): it is
    left out of the batch metrics and of the throughput that Retry-After is estimated from."""

    closes_early: bool

    @property
    def padded_tokens(self) -> int: ...

    def add(self, unit: Unit) -> bool: ...


class PlannedModel(Protocol):
    name: str

    def new_batch_plan(self) -> BatchPlan: ...


class LengthBudget:
    """Rows x longest row within ``max_tokens``: the plan of units that name no model."""

    closes_early = False

    def __init__(self, max_tokens: int) -> None:
        self.max_tokens = max_tokens
        self.rows = 0
        self.longest = 0

    @property
    def padded_tokens(self) -> int:
        return self.rows * self.longest

    def add(self, unit: Unit) -> bool:
        longest = max(self.longest, *unit.lengths)
        if self.rows and (self.rows + unit.size) * longest > self.max_tokens:
            return False
        self.rows, self.longest = self.rows + unit.size, longest
        return True


@dataclass(eq=False)
class Ticket(Generic[Result]):
    """One request's units and where its results go."""

    tenant: str
    units: list[Unit]
    deadline: float  # time.monotonic()
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Result]]
    results: list[Result | None] = field(default_factory=list)
    remaining: int = 0
    done: bool = False

    def __post_init__(self) -> None:
        self.results = [None] * len(self.units)
        self.remaining = len(self.units)

    def finish(self, error: BaseException | None = None) -> None:
        """Resolve the future once, from any thread."""
        if self.done:
            return
        self.done = True
        try:
            if error is not None:
                self.loop.call_soon_threadsafe(_set_exception, self.future, error)
            else:
                self.loop.call_soon_threadsafe(_set_result, self.future, list(self.results))
        except RuntimeError:  # the event loop is closed: nobody is waiting any more
            pass


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
        future.exception()  # a cancelled ticket's future has no reader left: do not log it as lost


@dataclass(frozen=True)
class BatchEntry:
    ticket: Ticket[Any]
    index: int  # which of the ticket's units

    @property
    def unit(self) -> Unit:
        return self.ticket.units[self.index]


@dataclass(frozen=True)
class BatchStats:
    model: str
    items: int
    padded_tokens: int  # what the batch's plan ran: positions per model side, padding included
    requests: int
    tenants: tuple[str, ...]
    seconds: float  # the runner's time on the batch (the models' busy time)


# Runs a batch's units as its plan planned them; one result per unit.
Runner = Callable[[Sequence[Unit], BatchPlan], Sequence[Any]]
Observer = Callable[[BatchStats], None]


@dataclass
class _Queues:
    """Per-tenant FIFO queues served in fair order (start-time fair queueing, costed in tokens); guarded by
    the scheduler's lock.

    Each tenant has a tag: the tokens it has been served, on a shared virtual clock. The tenant with the
    smallest tag is offered the next unit, and its tag grows by that unit's tokens. A tenant that becomes
    active starts at the clock (the tag of the last batch's first unit), so idle time earns no credit and a
    tenant that sends one small item leads the next batch however much another tenant has queued. The tags
    of a bounded set of tenants (the API keys' names) are kept."""

    by_tenant: dict[str, deque[BatchEntry]] = field(default_factory=dict)
    items: int = 0
    tags: dict[str, float] = field(default_factory=dict)
    clock: float = 0.0

    def push(self, ticket: Ticket[Any]) -> None:
        if ticket.tenant not in self.by_tenant:
            self.tags[ticket.tenant] = max(self.tags.get(ticket.tenant, 0.0), self.clock)
        queue = self.by_tenant.setdefault(ticket.tenant, deque())
        queue.extend(BatchEntry(ticket, index) for index in range(len(ticket.units)))
        self.items += sum(unit.size for unit in ticket.units)

    def pop(self, tenant: str) -> BatchEntry:
        entry = self.by_tenant[tenant].popleft()
        self.items -= entry.unit.size
        if not self.by_tenant[tenant]:
            del self.by_tenant[tenant]
        return entry

    def charge(self, tenant: str, unit: Unit) -> None:
        self.tags[tenant] += sum(unit.lengths)  # an active tenant always has a tag (``push``)

    def next_tenant(self, skip: set[str], below: float = math.inf) -> str | None:
        """The active tenant, not in ``skip`` and with a tag under ``below``, with the smallest tag (ties:
        by name)."""
        candidates = [tenant for tenant in self.by_tenant if tenant not in skip and self.tags[tenant] < below]
        if not candidates:
            return None
        return min(candidates, key=lambda tenant: (self.tags[tenant], tenant))


class Scheduler:
    """Coalesces units from concurrent tickets into forward batches and runs them on one thread."""

    def __init__(
        self,
        runner: Runner,
        *,
        max_batch_tokens: int,
        batch_wait: float,
        max_queue_items: int,
        observer: Observer | None = None,
    ) -> None:
        self._runner = runner
        self._max_batch_tokens = max_batch_tokens
        self._batch_wait = batch_wait
        self._max_queue_items = max_queue_items
        self._observer = observer
        self._queues = _Queues()
        self._oldest: float | None = None  # monotonic time the oldest queued unit arrived
        self._lock = threading.Condition()
        self._stopping = False
        self._items_per_second = 0.0
        self._yielded_seconds = 0.0  # time the running batch spent running other batches at its yield points
        self._thread = threading.Thread(target=self._loop, name="xlreward-scheduler", daemon=True)

    # --- event-loop side ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def queued_items(self) -> int:
        return self._queues.items

    def submit(
        self, tenant: str, units: list[Unit], timeout: float, *, admitted: bool = False
    ) -> Ticket[Any]:
        """Queue a request's units; raises ``QueueFull`` rather than wait. Call from the event loop.
        ``admitted``: the request already passed the queue's bound (a generation's later turns), so it is
        queued whatever the queue holds."""
        loop = asyncio.get_running_loop()
        ticket: Ticket[Any] = Ticket(tenant, units, time.monotonic() + timeout, loop, loop.create_future())
        size = sum(unit.size for unit in units)
        with self._lock:
            if self._stopping:
                raise ShuttingDown("the server is shutting down: retry against another replica")
            if not admitted and self._queues.items + size > self._max_queue_items:
                raise QueueFull(self._queues.items, self._max_queue_items, self._retry_after(size))
            if not units:
                ticket.finish()
                return ticket
            self._queues.push(ticket)
            self._oldest = self._oldest or time.monotonic()
            self._lock.notify()
        return ticket

    def cancel(self, ticket: Ticket[Any], error: SchedulerError) -> None:
        """End a ticket early (client gone, deadline passed); its queued units are skipped, not run."""
        with self._lock:
            ticket.finish(error)

    def stop(self) -> None:
        """Stop the loop; queued tickets end with ``ShuttingDown``."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def _retry_after(self, size: int) -> int:
        """Seconds until the queue has room for ``size`` more items at the recent scoring rate: when this
        request would fit, not when the whole queue is drained (which overstated the wait many times)."""
        if self._items_per_second <= 0:
            return 1
        excess = self._queues.items + size - self._max_queue_items
        return max(1, math.ceil(excess / self._items_per_second))

    # --- worker side -------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            taken = self._next_batch()
            if taken is None:
                return
            batch, plan = taken
            if batch and plan is not None:
                self._run(batch, plan)

    def _next_batch(self) -> tuple[list[BatchEntry], BatchPlan | None] | None:
        with self._lock:
            while not self._queues.items and not self._stopping:
                self._lock.wait()
            if self._stopping:
                self._fail_all(ShuttingDown("the server is shutting down: retry against another replica"))
                return None
            self._wait_to_fill()
            taken = self._take()
            self._oldest = time.monotonic() if self._queues.items else None
            return taken

    def _wait_to_fill(self) -> None:
        """Hold the batch open until its plan is full or the oldest unit has waited long enough."""
        close_at = (self._oldest or time.monotonic()) + self._batch_wait
        while not self._stopping and not self._plan_is_full():
            left = close_at - time.monotonic()
            if left <= 0:
                return
            self._lock.wait(timeout=left)

    def _new_plan(self, unit: Unit) -> BatchPlan:
        return LengthBudget(self._max_batch_tokens) if unit.model is None else unit.model.new_batch_plan()

    def _plan_is_full(self) -> bool:
        """Whether the queued units of the first queued unit's model already fill a plan."""
        plan: BatchPlan | None = None
        model = None
        for queue in self._queues.by_tenant.values():
            for entry in queue:
                if plan is None:
                    plan, model = self._new_plan(entry.unit), entry.unit.model
                if entry.unit.model is model and (not plan.add(entry.unit) or plan.closes_early):
                    return True
        return False

    def _take(self, below: float = math.inf) -> tuple[list[BatchEntry], BatchPlan | None]:
        """Fill one batch in fair order (``_Queues``): the tenant served least so far offers its next unit,
        as far as the plan of the first unit's model takes them. A tenant whose next unit does not fit, or
        is for another model, sits out the rest of this batch (its queue stays FIFO). Units of tickets that
        already ended (cancelled, past their deadline) are dropped, never run. ``below``: only tenants whose
        tag is under it (a batch run at a yield point)."""
        batch: list[BatchEntry] = []
        plan: BatchPlan | None = None
        model = None
        now = time.monotonic()
        blocked: set[str] = set()
        while (tenant := self._queues.next_tenant(blocked, below)) is not None:
            entry = self._queues.by_tenant[tenant][0]
            if entry.ticket.done or entry.ticket.deadline < now:
                self._queues.pop(tenant)
                entry.ticket.finish(DeadlineExceeded("the request's deadline passed while it was queued"))
                continue
            if plan is None:
                plan, model = self._new_plan(entry.unit), entry.unit.model
                self._queues.clock = max(self._queues.clock, self._queues.tags[tenant])
            if entry.unit.model is not model or not plan.add(entry.unit):
                blocked.add(tenant)
                continue
            self._queues.charge(tenant, entry.unit)
            batch.append(self._queues.pop(tenant))
        return batch, plan

    def _run(self, batch: list[BatchEntry], plan: BatchPlan, *, nested: bool = False) -> None:
        """Runs one batch and ends its tickets. At the batch's yield points (between forwards), waiting
        units that would lead the next batch run first (``_run_waiting``); a batch run there is ``nested``
        and does not yield in turn, so at most two batches are in flight."""
        started = time.monotonic()
        if not nested:
            self._yielded_seconds = 0.0
        running = {entry.ticket.tenant for entry in batch}
        try:
            with yielding_to(None if nested else lambda: self._run_waiting(running)):
                results = self._runner([entry.unit for entry in batch], plan)
            if len(results) != len(batch):
                raise RuntimeError(f"the runner returned {len(results)} results for {len(batch)} units")
        except Exception as error:  # a failed forward fails its tickets, never the loop
            with self._lock:
                for entry in batch:
                    entry.ticket.finish(error)
            return
        elapsed = max(time.monotonic() - started - (0.0 if nested else self._yielded_seconds), 1e-6)
        items = sum(entry.unit.size for entry in batch)
        if not plan.closes_early:
            self._items_per_second = 0.8 * self._items_per_second + 0.2 * items / elapsed
        if self._observer is not None and not plan.closes_early:
            # before the answers go out, so /metrics already counts this batch
            self._observer(self._stats(batch, plan, elapsed))
        with self._lock:
            for entry, result in zip(batch, results, strict=True):
                ticket = entry.ticket
                ticket.results[entry.index] = result
                ticket.remaining -= 1
                if ticket.remaining == 0:
                    ticket.finish()

    def _run_waiting(self, running: set[str]) -> None:
        """At a yield point of a running batch: run one batch of the waiting units whose tenants have been
        served less than every tenant in the running batch, so they would lead the next batch anyway.

        Fair queueing alone orders batches; this bounds how long a small request waits behind a long batch
        that has already started to one forward, not the whole batch. The running batch's tenants have
        been charged for it, so their own queued units never qualify (a lone flood is never interrupted),
        and a tenant stops qualifying once it has been served as much as they have."""
        with self._lock:
            if self._stopping or not self._queues.items:
                return
            bar = min(self._queues.tags[tenant] for tenant in running)
            batch, plan = self._take(below=bar)
            if not self._queues.items:
                self._oldest = None
        if batch and plan is not None:
            started = time.monotonic()
            self._run(batch, plan, nested=True)
            self._yielded_seconds += time.monotonic() - started

    def _stats(self, batch: list[BatchEntry], plan: BatchPlan, seconds: float) -> BatchStats:
        model = batch[0].unit.model
        tickets = {id(entry.ticket): entry.ticket.tenant for entry in batch}
        return BatchStats(
            model=model.name if model is not None else "-",
            items=sum(entry.unit.size for entry in batch),
            padded_tokens=plan.padded_tokens,
            requests=len(tickets),
            tenants=tuple(sorted(set(tickets.values()))),
            seconds=seconds,
        )

    def _fail_all(self, error: SchedulerError) -> None:
        for queue in self._queues.by_tenant.values():
            for entry in queue:
                entry.ticket.finish(error)
        self._queues = _Queues()


async def wait_for_ticket(scheduler: Scheduler, ticket: Ticket[Result], timeout: float) -> list[Result]:
    """Await a ticket's results; past its deadline, end it with ``DeadlineExceeded``."""
    try:
        return await asyncio.wait_for(asyncio.shield(ticket.future), timeout=timeout)
    except TimeoutError:
        scheduler.cancel(ticket, DeadlineExceeded("the request's deadline passed before it was scored"))
        raise DeadlineExceeded(
            f"the request was not scored within its {timeout:.0f} s deadline: the server is busy; "
            "retry later or send fewer items per request"
        ) from None
