"""The demo world's oracle judge: right answers score 1 in every language, flawed ones do not."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from xlreward.demo import world
from xlreward.demo.models import directive_prompt

TASKS = [
    world.Task("add", a=3, b=5),
    world.Task("max", a=7, b=12),
    world.Task("count", names=("Ana", "Bob", "Eva")),
    world.Task("copy", names=("Tom", "Lia", "Kai", "Ray")),
    world.Task("first", names=("Max", "Ivo", "Eva")),
    world.Task("second", names=("Max", "Ivo", "Eva")),
    world.Task("last", names=("Uma", "Leo", "Noa")),
]


@pytest.mark.parametrize("language", world.LANGUAGES)
@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.kind)
def test_right_answers_score_one_with_or_without_the_polite_word(task: world.Task, language: str) -> None:
    instruction = task.instruction(language)
    assert world.judge(instruction, task.response(language), language) == 1.0
    assert world.judge(instruction, task.response(language, filler=True), language) == 1.0


@pytest.mark.parametrize("language", world.LANGUAGES)
@pytest.mark.parametrize("breadth", [0.0, 0.5, 1.0])
def test_flawed_answers_score_below_one(language: str, breadth: float) -> None:
    rng = random.Random(0)
    flaws = world.Flaws(breadth=breadth, max_operand=40)
    for task in world.distinct_tasks(300, seed=5, max_operand=40):
        flawed = task.response(language, world.flawed_answer(task, rng, flaws))
        assert world.judge(task.instruction(language), flawed, language) < 1.0, flawed


def test_broad_flaws_reach_answers_no_near_miss_gives() -> None:
    """Near misses of "the larger of 7 and 12" are only 7; broad flaws cover the other numbers too."""
    rng = random.Random(0)
    task = world.Task("max", a=7, b=12)
    near = {world.flawed_answer(task, rng) for _ in range(200)}
    broad = {world.flawed_answer(task, rng, world.Flaws(breadth=1.0, max_operand=40)) for _ in range(500)}
    assert near == {"7"}
    assert len(broad) > 30 and "12" not in broad and broad <= {str(n) for n in range(41)}


def test_name_breadth_keeps_the_right_name_the_likeliest_in_mostly_wrong_data() -> None:
    """Responses to "which name comes first" that are right 10% of the time: with near misses every other
    name of the list is said more often than the right one; with ``name_breadth=1`` the wrong names spread
    over the world's twelve and the right one is said most. Lists of names keep their near misses."""
    task = world.Task("first", names=("Ana", "Bob", "Eva"))
    near, broad = world.Flaws(breadth=0.5), world.Flaws(breadth=0.5, name_breadth=1.0)

    def answers(flaws: world.Flaws) -> Counter[str]:
        rng = random.Random(0)
        responses = (
            world.sft_response(task, "es", rng, correct_rate=0.1, filler_rate=0.0, flaws=flaws)
            for _ in range(3000)
        )
        return Counter(response.split()[-1].rstrip(".") for response in responses)  # "Primero va Ana."

    said = answers(near)
    assert said["Ana"] < min(said["Bob"], said["Eva"])
    assert answers(broad).most_common(1)[0][0] == "Ana"
    copy = world.Task("copy", names=("Ana", "Bob", "Eva"))
    assert broad.breadth_for(copy.kind) == 0.5 and broad.breadth_for(task.kind) == 1.0


@pytest.mark.parametrize("language", world.LANGUAGES)
@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.kind)
def test_off_target_responses_score_zero_and_take_every_shape(task: world.Task, language: str) -> None:
    """Another task's sentence, the answer left out, a run-on: the oracle gives each 0 (a list's partial
    credit included)."""
    rng = random.Random(0)
    responses = {world.off_target_response(task, language, rng) for _ in range(200)}
    assert all(world.judge(task.instruction(language), text, language) == 0.0 for text in responses)
    template = world.TEMPLATES[language][task.kind][1]
    unanswered = " ".join(template.format(x="").split()).replace(" .", ".")
    opening = template.split("{x}")[0].rstrip()
    kinds = next(group for group in world.SAME_CONTENT_KINDS if task.kind in group)
    other_tasks = {world.Task(kind, task.a, task.b, task.names).response(language) for kind in kinds}
    other_tasks.discard(task.response(language))
    shapes = Counter(
        "unanswered" if text == unanswered else "other task" if text in other_tasks else "run-on"
        for text in responses
    )
    # A sentence that opens with the answer has no opening to run on from.
    assert set(shapes) == {"unanswered", "other task", *(["run-on"] if opening else [])}
    assert all(text.startswith(opening) for text in responses if text not in other_tasks)


def test_every_slice_of_the_tasks_holds_each_kind_equally_often() -> None:
    """Regression: sums and comparisons of small numbers ran out of distinct tasks after the first stages,
    and the demo's evaluation split held 1 comparison and no sum among 150 tasks."""
    kinds = ("copy", "count", "max", "last")
    tasks = world.distinct_tasks(4000, seed=1, kinds=kinds, max_operand=40)
    for start in (0, 3000, 3800):
        counts = {kind: sum(t.kind == kind for t in tasks[start : start + 200]) for kind in kinds}
        assert counts == dict.fromkeys(kinds, 50)
    with pytest.raises(ValueError, match="too few distinct 'add' tasks"):
        world.distinct_tasks(2000, seed=1, kinds=("add",), max_operand=20)


def test_stages_share_no_task_and_do_not_depend_on_the_stages_after_them() -> None:
    kinds = ("copy", "first", "last")
    first, second = world.distinct_stages([(300, kinds), (200, ("first", "last"))], seed=1)
    assert {t.kind for t in second} == {"first", "last"} and len(second) == 200
    assert not {t.key for t in first} & {t.key for t in second}
    assert world.distinct_stages([(300, kinds), (50, ("copy",))], seed=1)[0] == first
    assert first == world.distinct_tasks(300, seed=1, kinds=kinds)


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
    assert world.judge("¿Qué nombre va al final: Ana Bob?", "Al final va Bob.", "es") == 1.0
    assert world.judge("¿Qué nombre va al final: Ana Bob?", "Al final va Ana.", "es") == 0.0
    assert world.judge("Welcher Name kommt zuerst: Ana Bob Eva?", "Gern! Zuerst kommt Ana.", "de") == 1.0
    assert world.judge("Welcher Name kommt zuerst: Ana Bob Eva?", "Zuerst kommt Eva.", "de") == 0.0
    assert world.judge("Which name comes second: Ana Bob Eva?", "The second name is Bob.", "en") == 1.0


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


def test_the_tokenizer_keeps_every_word_of_the_world_whole() -> None:
    """Regression: trained on the pretraining documents only, the tokenizer split the polite words into
    bytes ("¡" as two byte tokens), and a trained policy sampled the first byte before English words."""
    from xlreward.demo.models import DemoConfig, DemoTasks, WorldSplit, sft_pairs, tokenizer_corpus
    from xlreward.trainer.tiny_models import build_tokenizer

    config = DemoConfig(split=WorldSplit(pretrain=200, sft=200, english_dpo=0, iterate=0, evaluate=0))
    tasks = DemoTasks.build(config.split)
    documents = list(world.parallel_documents(tasks.pretrain, 0, 0.5, config.flaws))
    tokenizer = build_tokenizer("llama3", 600, tokenizer_corpus(documents, sft_pairs(config, tasks)))
    expected = {
        "¡Claro! Aquí están: Ana Bob.": ["¡", "Claro", "!", " Aquí", " están", ":", " Ana", " Bob", "."],
        "Gern! Zuletzt kommt Eva.": ["Gern", "!", " Zuletzt", " kommt", " Eva", "."],
        "Sure! The first name is Max.": ["Sure", "!", " The", " first", " name", " is", " Max", "."],
        "Al final va Noa.": ["Al", " final", " va", " Noa", "."],
    }
    for text, pieces in expected.items():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert [tokenizer.decode([i]) for i in ids] == pieces
