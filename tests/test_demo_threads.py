"""The demo's model build runs on the faster of one thread and two, measured as it trains, and the choice
never changes the numbers."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from xlreward.demo.kernels import PORTABLE_KERNELS, SINGLE_THREAD, model_build_threads
from xlreward.demo.thread_choice import ThreadChooser


class StepClock:
    """A clock whose steps take what ``cost[threads]`` says for the thread count set last, plus ``wake``
    for the first step after a change (a thread pool waking up)."""

    def __init__(self, cost: dict[int, float], wake: float = 0.0) -> None:
        self.cost, self.wake, self.now, self.threads, self.calls = cost, wake, 0.0, 0, []
        self.woken = True

    def set_threads(self, count: int) -> None:
        self.threads, self.woken = count, False
        self.calls.append(count)

    def __call__(self) -> float:
        return self.now

    def step(self, chooser: ThreadChooser, index: int) -> None:
        chooser.before_step(index)
        self.now += self.cost[self.threads] + (0.0 if self.woken else self.wake)
        self.woken = True
        chooser.after_step()


def test_it_runs_on_the_faster_count_and_measures_again_when_the_load_changes() -> None:
    clock = StepClock({1: 1.0, 2: 0.6})
    chooser = ThreadChooser([1, 2], clock.set_threads, clock, trial_steps=3, recheck_steps=20)
    for index in range(20):
        clock.step(chooser, index)
    assert chooser.chosen == 2 and clock.calls == [1, 2]  # steps 0-2 on one thread, 3-5 on two, then two
    clock.cost = {1: 1.0, 2: 4.0}  # at step 20 another job takes a core: two threads stall
    for index in range(20, 32):
        clock.step(chooser, index)
    # The trial at step 20 (the recheck) finds it out at once.
    assert chooser.chosen == 1 and clock.calls == [1, 2, 1, 2, 1] and chooser.measured == {1: 1.0, 2: 4.0}
    clock.cost = {1: 1.0, 2: 0.6}  # quiet again: one thread runs on until the next recheck, at step 40
    for index in range(32, 50):
        clock.step(chooser, index)
    assert chooser.chosen == 2 and chooser.summary() == "threads 2, 1, 2"


def test_a_count_that_slows_down_is_measured_again_before_the_recheck() -> None:
    clock = StepClock({1: 1.0, 2: 0.6})
    chooser = ThreadChooser([1, 2], clock.set_threads, clock, trial_steps=3, recheck_steps=1000)
    for index in range(10):
        clock.step(chooser, index)
    clock.cost = {1: 1.0, 2: 4.0}
    for index in range(10, 30):  # 5 slow steps on two threads, then a trial, then one thread
        clock.step(chooser, index)
    assert chooser.history == [2, 1] and clock.calls == [1, 2, 1, 2, 1]


def test_the_first_step_after_a_switch_is_not_timed() -> None:
    """Waking a thread pool makes one slow step, which says nothing about the count just set."""
    clock = StepClock({1: 1.0, 2: 0.6}, wake=50.0)
    chooser = ThreadChooser([1, 2], clock.set_threads, clock, trial_steps=3, recheck_steps=20)
    for index in range(7):
        clock.step(chooser, index)
    assert chooser.measured == {1: 1.0, 2: pytest.approx(0.6)}


def test_the_build_chooses_between_one_and_two_unless_the_user_set_a_count() -> None:
    assert model_build_threads({}) == ((1, 2) if (os.cpu_count() or 1) >= 2 else ())
    assert model_build_threads({"OMP_NUM_THREADS": "4"}) == ()


TRAIN = textwrap.dedent(
    """
    import hashlib, sys, torch
    from xlreward.demo.lm import LMTraining, text_sequences, train_lm
    from xlreward.demo.thread_choice import ThreadChooser
    from xlreward.trainer.tiny_models import TinySpec, build_model, build_tokenizer

    texts = [f"Add {a} and {b}. The sum is {a + b}." for a in range(12) for b in range(12)]
    tokenizer = build_tokenizer("llama3", 300, texts)
    model = build_model(TinySpec(vocab_size=300, hidden_size=48, num_layers=2), tokenizer, 0)
    seen = set()
    def set_threads(count):
        torch.set_num_threads(count)
        seen.add(torch.get_num_threads())
    chooser = None
    if sys.argv[1] == "switching":  # a new count every other step: the most switching a chooser does
        chooser = ThreadChooser([1, 2], set_threads, trial_steps=2, recheck_steps=4)
    train_lm(model, text_sequences(tokenizer, texts), LMTraining(steps=16), tokenizer.pad_token_id, chooser)
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for _, v in sorted(model.state_dict().items())))
    print(digest.hexdigest(), sorted(seen), torch.get_num_threads())
    """
)


def test_switching_threads_while_training_gives_the_same_weights_to_the_bit() -> None:
    """In the demo's setting (pinned kernels, one thread per process), a build that switches between one
    thread and two trains the same weights as one on a single thread, and torch really ran on two."""
    env = {**os.environ, **PORTABLE_KERNELS, **SINGLE_THREAD}
    runs = {
        mode: subprocess.run(
            [sys.executable, "-c", TRAIN, mode], capture_output=True, text=True, env=env, check=True
        )
        .stdout.strip()
        .split(maxsplit=1)
        for mode in ("one", "switching")
    }
    assert runs["switching"][0] == runs["one"][0]
    assert runs["switching"][1] == "[1, 2] 1"  # both counts were in force; the count is restored after
