"""The faster of a few thread counts for a long loop of small steps, measured while the loop runs.

The demo builds its models alone, before anything runs beside it: on a quiet 2-core machine two threads
make pretraining and SFT much faster than one. But a machine is often shared, and a two-thread process
stalls whenever another process takes one of its cores (torch's OpenMP threads wait for each other; see
``kernels.SINGLE_THREAD``), which made pretraining several times slower beside ``make test``. No fixed count
is right for both, so the loop tries each count for a few steps, runs on the faster, and tries again now
and then, since the load may change.

The choice changes the speed, not the numbers: the demo's kernels (``kernels.PORTABLE_KERNELS``) give the
same weights to the bit with one thread and with two (checked by ``tests/test_demo_threads.py``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

TRIAL_STEPS = 6  # steps timed per count; the first one after a switch is left out (the pool wakes up)
RECHECK_STEPS = 200  # steps between trials: a trial of two counts costs a few slow steps


@dataclass
class ThreadChooser:
    """Call ``before_step(step)`` and ``after_step()`` around each step. ``set_threads`` and ``clock`` are
    torch's and the monotonic clock outside tests."""

    candidates: Sequence[int]
    set_threads: Callable[[int], None]
    clock: Callable[[], float] = time.perf_counter
    trial_steps: int = TRIAL_STEPS
    recheck_steps: int = RECHECK_STEPS
    chosen: int | None = None
    timings: dict[int, list[float]] = field(default_factory=dict)
    history: list[int] = field(default_factory=list)  # the count chosen at each trial, in order
    _current: int | None = None
    _started: float = 0.0
    _timed: bool = False

    def _count_at(self, step: int) -> int | None:
        """The count a trial runs ``step`` with, or None outside a trial."""
        position = step % self.recheck_steps
        index = position // self.trial_steps
        return self.candidates[index] if index < len(self.candidates) else None

    def before_step(self, step: int) -> None:
        if step % self.recheck_steps == 0:  # a new trial: what was measured before is stale
            self.timings, self.chosen = {}, None
        trial = self._count_at(step)
        if trial is None and self.chosen is None:
            self._choose()
        count = trial if trial is not None else self.chosen
        assert count is not None
        self._timed = trial is not None and step % self.trial_steps != 0
        if count != self._current:
            self.set_threads(count)
            self._current = count
        self._started = self.clock()

    def after_step(self) -> None:
        if self._timed and self._current is not None:
            self.timings.setdefault(self._current, []).append(self.clock() - self._started)

    def summary(self) -> str:
        """The count chosen at each trial, in order, e.g. "threads 2, 2, 1, 2"."""
        return "threads " + ", ".join(str(count) for count in self.history)

    def _choose(self) -> None:
        measured = {count: statistics.median(times) for count, times in self.timings.items() if times}
        self.chosen = min(measured, key=lambda count: measured[count]) if measured else self.candidates[0]
        self.history.append(self.chosen)


def torch_thread_chooser(candidates: Sequence[int]) -> ThreadChooser | None:
    """A chooser over ``candidates`` that sets torch's intra-op threads, or None when there is one."""
    if len(set(candidates)) < 2:
        return None
    import torch

    return ThreadChooser(candidates=sorted(set(candidates)), set_threads=torch.set_num_threads)
