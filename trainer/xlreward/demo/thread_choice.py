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
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

TRIAL_STEPS = 4  # steps run per count in a trial; the first one is not timed (the pool wakes up)
RECHECK_STEPS = 200  # steps between trials: a count that lost may have become the faster
SLOWDOWN = 1.5  # a trial starts early when the chosen count's steps take this much longer than another's did
RECENT_STEPS = 5  # steps whose median says how fast the chosen count runs now


@dataclass
class ThreadChooser:
    """Call ``before_step(step)`` and ``after_step()`` around each step. A trial runs ``trial_steps`` steps
    on each count and chooses the one with the fastest median step; the next trial comes after
    ``recheck_steps`` steps, or at once when the chosen count slows down past what another count ran at
    (another job took a core: two threads then stall for many times a step's work). ``set_threads`` and
    ``clock`` are torch's and the monotonic clock outside tests."""

    candidates: Sequence[int]
    set_threads: Callable[[int], None]
    clock: Callable[[], float] = time.perf_counter
    trial_steps: int = TRIAL_STEPS
    recheck_steps: int = RECHECK_STEPS
    chosen: int | None = None  # None during a trial
    measured: dict[int, float] = field(default_factory=dict)  # each count's median step at the last trial
    history: list[int] = field(default_factory=list)  # the count chosen at each trial, in order
    _trial: dict[int, list[float]] = field(default_factory=dict)
    _recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_STEPS))
    _trial_start: int = 0
    _current: int | None = None
    _timed: bool = False
    _started: float = 0.0

    def before_step(self, step: int) -> None:
        if self.chosen is not None and (step - self._trial_start >= self.recheck_steps or self._slowed()):
            self.chosen, self._trial, self._trial_start = None, {}, step
        position = step - self._trial_start
        if self.chosen is None and position >= len(self.candidates) * self.trial_steps:
            self._choose()
        if self.chosen is None:
            count, self._timed = (
                self.candidates[position // self.trial_steps],
                position % self.trial_steps > 0,
            )
        else:
            count, self._timed = self.chosen, True
        if count != self._current:
            self.set_threads(count)
            self._current = count
        self._started = self.clock()

    def after_step(self) -> None:
        if not self._timed or self._current is None:
            return
        elapsed = self.clock() - self._started
        if self.chosen is None:
            self._trial.setdefault(self._current, []).append(elapsed)
        else:
            self._recent.append(elapsed)

    def summary(self) -> str:
        """The count chosen at each trial, in order, e.g. "threads 2, 2, 1, 2"."""
        return "threads " + ", ".join(str(count) for count in self.history)

    def _slowed(self) -> bool:
        others = [seconds for count, seconds in self.measured.items() if count != self.chosen]
        full = len(self._recent) == self._recent.maxlen
        return full and bool(others) and statistics.median(self._recent) > SLOWDOWN * min(others)

    def _choose(self) -> None:
        self.measured = {count: statistics.median(times) for count, times in self._trial.items() if times}
        self.chosen = (
            min(self.measured, key=self.measured.__getitem__) if self.measured else self.candidates[0]
        )
        self.history.append(self.chosen)
        self._recent.clear()


def torch_thread_chooser(candidates: Sequence[int]) -> ThreadChooser | None:
    """A chooser over ``candidates`` that sets torch's intra-op threads, or None when there is one."""
    if len(set(candidates)) < 2:
        return None
    import torch

    return ThreadChooser(candidates=sorted(set(candidates)), set_threads=torch.set_num_threads)
