"""Where the built-in sampler's turns on the model run. Torch-free.

Sampling runs a turn at a time (``decode.DecodeJob.advance``). Served, each turn is a unit of the scoring
scheduler's queue: admitted against its bound once, at the first turn (a generation in flight is not
refused half-way), queued behind the tenant's other work and served round-robin across tenants, ended by
the request's deadline or by its client leaving. So a scoring request waits for at most one turn of a
generation, never a whole one. Outside a server (``ThreadTurns``), turns simply run on a worker thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from xlreward.service.scheduler import Cancelled, DeadlineExceeded, Scheduler, Unit

T = TypeVar("T")


class ModelTurns(Protocol):
    async def run(self, work: Callable[[], T], rows: int) -> T:
        """Runs ``work`` (which takes the model's lock itself) when the model is free for it; ``rows``: the
        sequences it advances, what the queue counts it as."""
        ...


class ThreadTurns:
    """Turns on a worker thread, one after another: sampling outside a server."""

    async def run(self, work: Callable[[], T], rows: int) -> T:
        return await asyncio.to_thread(work)


class GenerationTurns:
    """The scheduler's model key for generation turns: a batch holds one turn, and closes at once."""

    name = "generation"

    def new_batch_plan(self) -> TurnPlan:
        return TurnPlan()


GENERATION = GenerationTurns()


class TurnPlan:
    """A batch of one generation turn."""

    closes_early = True  # the scheduler need not wait for more units: none would join

    def __init__(self) -> None:
        self.rows = 0

    @property
    def padded_tokens(self) -> int:
        return 0  # a turn's steps are not a padded forward batch

    def add(self, unit: Unit) -> bool:
        if self.rows:
            return False
        self.rows = unit.size
        return True


class SchedulerTurns:
    """One request's turns, through the scheduler as ``tenant``, all within ``timeout`` seconds of the
    first. ``wait(ticket, seconds)`` awaits a turn's result, and cancels it if the client leaves meanwhile;
    ``gone()`` says whether the client has left, asked before each later turn (a turn is often over before
    ``wait`` first looks)."""

    def __init__(
        self,
        scheduler: Scheduler,
        tenant: str,
        timeout: float,
        wait: Callable[[Any, float], Awaitable[Any]],
        gone: Callable[[], Awaitable[bool]],
    ) -> None:
        self.scheduler = scheduler
        self.tenant = tenant
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.wait = wait
        self.gone = gone
        self.admitted = False

    async def run(self, work: Callable[[], T], rows: int) -> T:
        if self.admitted and await self.gone():
            raise Cancelled("the client disconnected before its completions were ready")
        left = max(self.deadline - time.monotonic(), 0.001)
        unit = Unit(payload=work, lengths=(1,) * max(rows, 1), model=GENERATION)
        ticket = self.scheduler.submit(self.tenant, [unit], left, admitted=self.admitted)
        self.admitted = True
        try:
            results: list[T] = await self.wait(ticket, left)
        except DeadlineExceeded:
            raise DeadlineExceeded(
                f"the generation did not finish within its {self.timeout:.0f} s deadline "
                "(XLREWARD_GENERATION_TIMEOUT_S): ask for fewer or shorter completions, or retry later"
            ) from None
        return results[0]
