"""The batching loop alone, with a recording runner in place of the models (a unit test of one loop)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from xlreward.service.scheduler import (
    BatchStats,
    Cancelled,
    DeadlineExceeded,
    LengthBudget,
    QueueFull,
    Scheduler,
    ShuttingDown,
    Unit,
    wait_for_ticket,
)
from xlreward.service.scoring.yield_points import yield_point


class Recorder:
    """Runner that returns each unit's payload and records the batches it was given; ``gate`` holds the
    first batch until released, so tests can queue work behind a running batch."""

    def __init__(self, hold_first: bool = False) -> None:
        self.batches: list[list[object]] = []
        self.gate = threading.Event()
        if not hold_first:
            self.gate.set()

    def __call__(self, units, plan):  # type: ignore[no-untyped-def]
        self.gate.wait(timeout=10)
        self.batches.append([unit.payload for unit in units])
        return [unit.payload for unit in units]


def units(tag: str, count: int, length: int = 10) -> list[Unit]:
    return [Unit(f"{tag}{i}", (length,)) for i in range(count)]


def make(runner: Recorder, **options: float) -> Scheduler:
    settings = {"max_batch_tokens": 100, "batch_wait": 0.02, "max_queue_items": 1000, **options}
    scheduler = Scheduler(
        runner,
        max_batch_tokens=int(settings["max_batch_tokens"]),
        batch_wait=settings["batch_wait"],
        max_queue_items=int(settings["max_queue_items"]),
    )
    scheduler.start()
    return scheduler


def test_concurrent_requests_share_batches_and_get_their_own_results() -> None:
    runner = Recorder()
    scheduler = make(runner, batch_wait=0.2)

    async def main() -> list[list[object]]:
        tickets = [scheduler.submit("t", units(f"r{i}-", 2), timeout=10) for i in range(4)]
        return list(await asyncio.gather(*(wait_for_ticket(scheduler, t, 10) for t in tickets)))

    results = asyncio.run(main())
    scheduler.stop()
    assert results == [[f"r{i}-0", f"r{i}-1"] for i in range(4)]
    assert max(len(batch) for batch in runner.batches) > 2  # larger than any single request


def test_batches_respect_the_padded_token_budget() -> None:
    runner = Recorder()
    scheduler = make(runner, max_batch_tokens=100)

    async def main() -> None:
        ticket = scheduler.submit("t", units("a", 25, length=10), timeout=10)
        await wait_for_ticket(scheduler, ticket, 10)

    asyncio.run(main())
    scheduler.stop()
    assert sorted(len(batch) for batch in runner.batches) == [5, 10, 10]


def test_tenants_take_turns_so_a_flood_does_not_starve_a_small_request() -> None:
    runner = Recorder(hold_first=True)
    scheduler = make(runner, max_batch_tokens=40)

    async def main() -> None:
        blocker = scheduler.submit("a", units("block", 1), timeout=10)
        await asyncio.sleep(0.1)  # the blocker's batch is now running (held at the gate)
        flood = scheduler.submit("a", units("flood", 40), timeout=10)
        small = scheduler.submit("b", units("small", 1), timeout=10)
        runner.gate.set()
        await asyncio.gather(*(wait_for_ticket(scheduler, t, 10) for t in (blocker, flood, small)))

    asyncio.run(main())
    scheduler.stop()
    # The flood was queued first, yet B's item leads the very next batch (B has been served the fewest
    # tokens), and A's units fill the rest of it.
    assert runner.batches[1][:2] == ["small0", "flood0"]
    assert len(runner.batches) >= 1 + 40 // 4


class TwoForwards:
    """Runner whose batches run as two forwards with a yield point between them, as a model pair's do;
    the batch of ``hold`` stops before its yield point until ``go`` is set."""

    def __init__(self, hold: str) -> None:
        self.hold = hold
        self.events: list[tuple[str, list[object]]] = []
        self.held = threading.Event()
        self.go = threading.Event()

    def __call__(self, units, plan):  # type: ignore[no-untyped-def]
        names = [unit.payload for unit in units]
        self.events.append(("first", names))
        if self.hold in names:
            self.held.set()
            self.go.wait(timeout=10)
        yield_point()
        self.events.append(("second", names))
        return names


def test_a_small_request_runs_at_the_yield_point_of_a_batch_already_running() -> None:
    """B's item arrives while A's batch is between its two forwards: it runs there, before A's second
    forward, instead of waiting for A's whole batch. A's own queued units never run at A's yield points (a
    lone flood is not interrupted), and the nested batch does not yield in turn."""
    runner = TwoForwards(hold="A0")
    scheduler = make(runner, max_batch_tokens=10)  # one 10-token unit a batch

    async def main() -> None:
        flood = scheduler.submit("a", units("A", 3), timeout=10)
        await asyncio.to_thread(runner.held.wait, 10)  # A0's first forward has run
        small = scheduler.submit("b", units("B", 1), timeout=10)
        runner.go.set()
        assert await wait_for_ticket(scheduler, small, 10) == ["B0"]
        assert await wait_for_ticket(scheduler, flood, 10) == ["A0", "A1", "A2"]

    asyncio.run(main())
    scheduler.stop()
    assert runner.events == [
        ("first", ["A0"]),
        ("first", ["B0"]),
        ("second", ["B0"]),
        ("second", ["A0"]),
        ("first", ["A1"]),
        ("second", ["A1"]),
        ("first", ["A2"]),
        ("second", ["A2"]),
    ]


def test_tenants_share_batches_by_tokens_served_not_by_units() -> None:
    """Fair queueing is costed in tokens: while A's long units and B's short ones are both queued, B gets
    about as many tokens into the batches as A (five 10-token units per 50-token unit of A's), and a
    tenant's idle time earns it no credit to flood with later."""
    runner = Recorder(hold_first=True)
    scheduler = make(runner, max_batch_tokens=10_000)

    async def main() -> None:
        blocker = scheduler.submit("c", units("block", 1), timeout=10)
        await asyncio.sleep(0.1)  # the blocker's batch is now running (held at the gate)
        long = scheduler.submit("a", units("A", 20, length=50), timeout=10)
        short = scheduler.submit("b", units("B", 100, length=10), timeout=10)
        runner.gate.set()
        await asyncio.gather(*(wait_for_ticket(scheduler, t, 10) for t in (blocker, long, short)))

    asyncio.run(main())
    scheduler.stop()
    order = [payload for batch in runner.batches[1:] for payload in batch]
    first_twelve = order[:12]
    # tags: A pays 50 a unit, B 10; the smaller tag goes first, ties by name
    assert first_twelve == ["A0", "B0", "B1", "B2", "B3", "B4", "A1", "B5", "B6", "B7", "B8", "B9"]


def test_queue_bound_raises_queue_full_with_retry_after() -> None:
    runner = Recorder(hold_first=True)
    scheduler = make(runner, max_queue_items=5)

    async def main() -> None:
        first = scheduler.submit("t", units("a", 1), timeout=10)
        await asyncio.sleep(0.1)  # running, so out of the queue
        queued = scheduler.submit("t", units("b", 5), timeout=10)
        with pytest.raises(QueueFull) as info:
            scheduler.submit("t", units("c", 1), timeout=10)
        assert info.value.retry_after >= 1
        runner.gate.set()
        await asyncio.gather(wait_for_ticket(scheduler, first, 10), wait_for_ticket(scheduler, queued, 10))

    asyncio.run(main())
    scheduler.stop()


def test_deadline_and_cancellation_end_tickets_and_skip_their_work() -> None:
    runner = Recorder(hold_first=True)
    scheduler = make(runner)

    async def main() -> None:
        running = scheduler.submit("t", units("run", 1), timeout=10)
        await asyncio.sleep(0.1)
        late = scheduler.submit("t", units("late", 3), timeout=0.05)
        gone = scheduler.submit("t", units("gone", 3), timeout=10)
        scheduler.cancel(gone, Cancelled("client left"))
        with pytest.raises(DeadlineExceeded, match="deadline"):
            await wait_for_ticket(scheduler, late, 0.05)
        with pytest.raises(Cancelled):
            await gone.future
        runner.gate.set()
        await wait_for_ticket(scheduler, running, 10)
        await asyncio.sleep(0.2)

    asyncio.run(main())
    scheduler.stop()
    ran = [payload for batch in runner.batches for payload in batch]
    assert ran == ["run0"]  # the late and cancelled units never reached the models


def test_a_failed_forward_fails_its_requests_and_the_loop_goes_on() -> None:
    calls = []

    def flaky(batch, plan):  # type: ignore[no-untyped-def]
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return [unit.payload for unit in batch]

    scheduler = Scheduler(flaky, max_batch_tokens=100, batch_wait=0.0, max_queue_items=100)
    scheduler.start()

    async def main() -> list[object]:
        first = scheduler.submit("t", units("x", 1), timeout=10)
        with pytest.raises(RuntimeError, match="out of memory"):
            await wait_for_ticket(scheduler, first, 10)
        second = scheduler.submit("t", units("y", 1), timeout=10)
        return await wait_for_ticket(scheduler, second, 10)

    assert asyncio.run(main()) == ["y0"]
    scheduler.stop()


def test_stop_ends_queued_tickets_with_shutting_down() -> None:
    runner = Recorder(hold_first=True)
    scheduler = make(runner)

    async def main() -> None:
        scheduler.submit("t", units("run", 1), timeout=10)
        await asyncio.sleep(0.1)
        queued = scheduler.submit("t", units("q", 2), timeout=10)
        stopper = threading.Thread(target=scheduler.stop)
        stopper.start()
        await asyncio.sleep(0.1)
        runner.gate.set()
        with pytest.raises(ShuttingDown):
            await asyncio.wait_for(queued.future, 10)
        stopper.join()
        with pytest.raises(ShuttingDown):
            scheduler.submit("t", units("z", 1), timeout=10)

    asyncio.run(main())


class BudgetModel:
    """A model whose planner is a plain length budget of its own."""

    def __init__(self, name: str, budget: int) -> None:
        self.name = name
        self.budget = budget

    def new_batch_plan(self) -> LengthBudget:
        return LengthBudget(self.budget)


def test_a_batch_holds_one_model_and_its_planner_decides_what_fits() -> None:
    """Units of two models never share a batch; each model's planner (not the scheduler's budget) sizes
    its batches, and the stats report the plan's padded tokens and the model."""
    runner = Recorder(hold_first=True)
    small, large = BudgetModel("small", 20), BudgetModel("large", 1000)
    stats: list[BatchStats] = []
    scheduler = Scheduler(
        runner, max_batch_tokens=100, batch_wait=0.0, max_queue_items=1000, observer=stats.append
    )
    scheduler.start()

    async def main() -> None:
        blocker = scheduler.submit("t0", [Unit("x", (1,))], timeout=10)
        tickets = [
            scheduler.submit("a", [Unit(f"s{i}", (10,), model=small) for i in range(4)], timeout=10),
            scheduler.submit("b", [Unit(f"l{i}", (10,), model=large) for i in range(30)], timeout=10),
        ]
        await asyncio.sleep(0.05)
        runner.gate.set()
        await asyncio.gather(*(wait_for_ticket(scheduler, t, 10) for t in [blocker, *tickets]))

    asyncio.run(main())
    scheduler.stop()
    for batch in runner.batches[1:]:
        kinds = {str(payload)[0] for payload in batch}
        assert len(kinds) == 1
        assert len(batch) <= (2 if kinds == {"s"} else 30)
    assert any(len(batch) == 30 for batch in runner.batches)  # past the scheduler's own 100 tokens
    assert {s.model for s in stats} == {"-", "small", "large"}
    assert all(s.padded_tokens == s.items * (1 if s.model == "-" else 10) for s in stats)


def test_fairness_between_tenants_holds_across_models() -> None:
    """A tenant flooding one model does not hold back another tenant's request for another model: the
    turn passes to the other tenant, whose batch (of its own model) runs next."""
    runner = Recorder(hold_first=True)
    x, y = BudgetModel("x", 40), BudgetModel("y", 40)
    scheduler = Scheduler(runner, max_batch_tokens=100, batch_wait=0.0, max_queue_items=1000)
    scheduler.start()

    async def main() -> None:
        blocker = scheduler.submit("a", [Unit("block", (1,), model=x)], timeout=10)
        await asyncio.sleep(0.05)  # the blocker's batch is now running (held at the gate)
        flood = scheduler.submit("a", [Unit(f"x{i}", (10,), model=x) for i in range(40)], timeout=10)
        small = scheduler.submit("b", [Unit("y0", (10,), model=y)], timeout=10)
        runner.gate.set()
        await asyncio.gather(*(wait_for_ticket(scheduler, t, 10) for t in (blocker, flood, small)))

    asyncio.run(main())
    scheduler.stop()
    position = next(i for i, batch in enumerate(runner.batches) if "y0" in batch)
    assert position <= 2 and runner.batches[position] == ["y0"], runner.batches[:4]
    assert len(runner.batches) >= 1 + 40 // 4 + 1
