"""The demo world's oracle judge: right answers score 1 in every language, flawed ones do not."""

from __future__ import annotations

import random

import pytest

from xlreward.demo import world
from xlreward.demo.models import directive_prompt

TASKS = [
    world.Task("add", a=3, b=5),
    world.Task("max", a=7, b=12),
    world.Task("count", names=("Ana", "Bob", "Eva")),
    world.Task("copy", names=("Tom", "Lia", "Kai", "Ray")),
]


@pytest.mark.parametrize("language", world.LANGUAGES)
@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.kind)
def test_right_answers_score_one_with_or_without_the_polite_word(task: world.Task, language: str) -> None:
    instruction = task.instruction(language)
    assert world.judge(instruction, task.response(language), language) == 1.0
    assert world.judge(instruction, task.response(language, filler=True), language) == 1.0


@pytest.mark.parametrize("language", world.LANGUAGES)
def test_flawed_answers_score_below_one(language: str) -> None:
    rng = random.Random(0)
    for task in world.distinct_tasks(300, seed=5):
        flawed = task.response(language, world.flawed_answer(task, rng))
        assert world.judge(task.instruction(language), flawed, language) < 1.0, flawed


def test_known_scores() -> None:
    assert world.judge("Add 3 and 5.", "The sum is 8.", "en") == 1.0
    assert world.judge("Suma 3 y 5.", "8 es la suma.", "es") == 1.0
    assert world.judge("Suma 3 y 5.", "La suma es 8.", "es") == 0.0  # not the Spanish phrasing
    assert world.judge("Suma 3 y 5.", "The sum is 8.", "es") == 0.0  # wrong language
    assert world.judge("Addiere 3 und 5.", "Die Summe ist 9.", "de") == 0.0
    # names in the right places over the longer list: 2 of 4, then 3 of 3 with one missing
    assert world.judge("Repeat these names: Tom Lia Kai Ray.", "Here they are: Tom Lia Ray Kai.", "en") == 0.5
    assert world.judge("Repeat these names: Tom Lia Kai Ray.", "Here they are: Tom Lia Kai.", "en") == 0.75
    assert world.judge("Count the names: Ana Bob.", "Sure! There are 2 names.", "en") == 1.0
    assert world.judge("Count the names: Ana Bob.", "There are 2 names. Sure!", "en") == 0.0


def test_instructions_parse_back_to_their_task_even_under_the_language_directive() -> None:
    for task in TASKS:
        for language in world.LANGUAGES:
            assert world.parse_instruction(task.instruction(language)) == (language, task)
        assert world.parse_instruction(directive_prompt("de", task.instruction("en"))) == ("en", task)
    assert world.parse_instruction("Write a poem.") is None
    with pytest.raises(ValueError, match="not an instruction of the demo world"):
        world.judge("Write a poem.", "No.", "en")


def test_the_world_is_the_same_for_the_same_seed() -> None:
    assert world.distinct_tasks(50, seed=3) == world.distinct_tasks(50, seed=3)
    assert world.distinct_tasks(50, seed=3) != world.distinct_tasks(50, seed=4)
    assert len({task.key for task in world.distinct_tasks(500, seed=3)}) == 500
