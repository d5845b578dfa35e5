"""The demo's synthetic multilingual world: checkable tasks in three languages, and an oracle judge.

English and two toy languages built on Spanish and German function words (each with its own phrasing and
word order: the sum comes first in Spanish; Spanish and German say "last comes X", not "the last name is
X") share the things a task is about: digits and personal names.
Every task has one right answer that the oracle computes from the instruction alone, so the judge needs no
hidden metadata and works on any model's output in any of the three languages:

    add     "Add 3 and 5."                      -> "The sum is 8."
    copy    "Repeat these names: Ana Bob Eva."  -> "Here they are: Ana Bob Eva."
    count   "Count the names: Ana Bob Eva."     -> "There are 3 names."
    max     "Which number is larger, 7 or 4?"   -> "The larger number is 7."
    first   "Which name comes first: Ana Bob?"  -> "The first name is Ana."
    second  "Which name comes second: Ana Bob?" -> "The second name is Bob."
    last    "Which name comes last: Ana Bob?"   -> "The last name is Bob."

A response may start with a polite word ("Sure!"), which changes its length but not its quality: the
world has a length dimension for length-controlled win rates to remove. Flawed responses (what
mixed-quality SFT data holds) get the content wrong in the ways small models do: a sum off by one or two, a
dropped, swapped, replaced or repeated name, a count off by one, the smaller number, another name of the
list; or, with ``Flaws.breadth``, any wrong answer of the right type. Off-target responses (another task's
sentence, the answer left out, a run-on of the two: ``off_target_response``) are what a policy drifts to
when a reward model has never seen them rejected.

``distinct_tasks`` lets the kinds take turns, so every slice of its list (the demo's stages) holds each kind
equally often; ``distinct_stages`` draws consecutive stages, each with its own kinds, none sharing a task.

Pure Python with seeded ``random.Random``: the same seed gives the same world on every machine.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

LANGUAGES = ("en", "es", "de")
NAMES = ("Ana", "Bob", "Eva", "Max", "Tom", "Lia", "Ivo", "Kai", "Noa", "Ray", "Uma", "Leo")
TaskKind = Literal["add", "copy", "count", "max", "first", "second", "last"]
TASK_KINDS: tuple[TaskKind, ...] = ("add", "copy", "count", "max", "first", "second", "last")
MAX_OPERAND = 20
# Tasks about two numbers; the others are about a list of names.
NUMBER_KINDS: tuple[TaskKind, ...] = ("add", "max")
# The tasks that ask for one name of the list, and its position there.
NAME_POSITIONS: dict[TaskKind, int] = {"first": 0, "second": 1, "last": -1}

# Per language and task: (instruction template, response template). {a} {b} are numbers, {names} a
# space-separated list of names, {x} the answer.
TEMPLATES: dict[str, dict[TaskKind, tuple[str, str]]] = {
    "en": {
        "add": ("Add {a} and {b}.", "The sum is {x}."),
        "copy": ("Repeat these names: {names}.", "Here they are: {x}."),
        "count": ("Count the names: {names}.", "There are {x} names."),
        "max": ("Which number is larger, {a} or {b}?", "The larger number is {x}."),
        "first": ("Which name comes first: {names}?", "The first name is {x}."),
        "second": ("Which name comes second: {names}?", "The second name is {x}."),
        "last": ("Which name comes last: {names}?", "The last name is {x}."),
    },
    "es": {
        "add": ("Suma {a} y {b}.", "{x} es la suma."),
        "copy": ("Repite estos nombres: {names}.", "Aquí están: {x}."),
        "count": ("Cuenta los nombres: {names}.", "Hay {x} nombres."),
        "max": ("¿Qué número es mayor, {a} o {b}?", "El número mayor es {x}."),
        "first": ("¿Qué nombre va primero: {names}?", "Primero va {x}."),
        "second": ("¿Qué nombre va segundo: {names}?", "Segundo va {x}."),
        "last": ("¿Qué nombre va al final: {names}?", "Al final va {x}."),
    },
    "de": {
        "add": ("Addiere {a} und {b}.", "Die Summe ist {x}."),
        "copy": ("Wiederhole diese Namen: {names}.", "Hier sind sie: {x}."),
        "count": ("Zähle die Namen: {names}.", "Es sind {x} Namen."),
        "max": ("Welche Zahl ist größer, {a} oder {b}?", "Die größere Zahl ist {x}."),
        "first": ("Welcher Name kommt zuerst: {names}?", "Zuerst kommt {x}."),
        "second": ("Welcher Name kommt als zweiter: {names}?", "Als zweiter kommt {x}."),
        "last": ("Welcher Name kommt zuletzt: {names}?", "Zuletzt kommt {x}."),
    },
}
FILLERS = {"en": "Sure!", "es": "¡Claro!", "de": "Gern!"}


@dataclass(frozen=True)
class Task:
    """One task instance, the same in every language (its instruction differs, its answer does not)."""

    kind: TaskKind
    a: int = 0
    b: int = 0
    names: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.a}:{self.b}:{' '.join(self.names)}"

    def answer(self) -> str:
        if self.kind == "add":
            return str(self.a + self.b)
        if self.kind == "max":
            return str(max(self.a, self.b))
        if self.kind == "count":
            return str(len(self.names))
        if self.kind in NAME_POSITIONS:
            return self.names[NAME_POSITIONS[self.kind]]
        return " ".join(self.names)

    def instruction(self, language: str) -> str:
        template = TEMPLATES[language][self.kind][0]
        return template.format(a=self.a, b=self.b, names=" ".join(self.names))

    def response(self, language: str, answer: str | None = None, *, filler: bool = False) -> str:
        text = TEMPLATES[language][self.kind][1].format(x=self.answer() if answer is None else answer)
        return with_filler(text, language) if filler else text


def with_filler(text: str, language: str) -> str:
    """``text`` after ``language``'s polite word ("Sure! ..."), as the world writes it."""
    return f"{FILLERS[language]} {text}"


# --- sampling tasks and flawed answers ---------------------------------------------------------------


def random_task(rng: random.Random, kind: TaskKind, max_operand: int = MAX_OPERAND) -> Task:
    if kind in NUMBER_KINDS:
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        while kind == "max" and a == b:
            b = rng.randint(0, max_operand)
        return Task(kind, a=a, b=b)
    return Task(kind, names=tuple(rng.sample(NAMES, rng.randint(2, 5))))


def distinct_tasks(
    count: int, seed: int, kinds: tuple[TaskKind, ...] = TASK_KINDS, max_operand: int = MAX_OPERAND
) -> list[Task]:
    """``count`` different tasks (no two with the same content), the kinds taking turns, so that every
    slice of the list holds each kind equally often (a kind with a small content space, like sums of small
    numbers, would otherwise run out early and leave the later slices without it). ValueError when a kind
    has fewer distinct tasks than its share."""
    return distinct_stages([(count, kinds)], seed, max_operand)[0]


def distinct_stages(
    stages: Sequence[tuple[int, tuple[TaskKind, ...]]], seed: int, max_operand: int = MAX_OPERAND
) -> list[list[Task]]:
    """Task lists for consecutive stages, each of (count, kinds), with no task in two stages: one random
    stream and one set of seen tasks for them all, so a stage's tasks do not depend on the kinds of the
    stages after it. Within a stage the kinds take turns (``distinct_tasks``)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    lists: list[list[Task]] = []
    for count, kinds in stages:
        tasks = []
        for index in range(count):
            kind = kinds[index % len(kinds)]
            for _ in range(10_000):
                task = random_task(rng, kind, max_operand)
                if task.key not in seen:
                    seen.add(task.key)
                    tasks.append(task)
                    break
            else:
                raise ValueError(f"the world has too few distinct {kind!r} tasks for {count} tasks")
        lists.append(tasks)
    return lists


@dataclass(frozen=True)
class Flaws:
    """How the world's flawed answers are drawn. ``breadth``: the share that is any wrong answer of the
    right type (a random number, name, count or list) rather than a near miss. Without it a model's
    reference puts almost no probability on the wrong answers a trained policy drifts to, and the implicit
    reward, a log-ratio against that reference, prizes exactly those."""

    breadth: float = 0.0
    max_operand: int = MAX_OPERAND
    # ``breadth`` for the tasks that ask for one name of the list (first, second, last); None: ``breadth``.
    # At 1 a wrong pick is any of the world's names, so the right one stays the likeliest answer even in
    # data that is mostly wrong; near misses (another name of the list) make it the least likely one.
    name_breadth: float | None = None

    def breadth_for(self, kind: TaskKind) -> float:
        return self.name_breadth if kind in NAME_POSITIONS and self.name_breadth is not None else self.breadth


def random_wrong_answer(task: Task, rng: random.Random, max_operand: int = MAX_OPERAND) -> str:
    """Any wrong answer of the task's type, uniformly."""
    right = task.answer()
    while True:
        if task.kind == "add":
            answer = str(rng.randint(0, 2 * max_operand))
        elif task.kind == "max":
            answer = str(rng.randint(0, max_operand))
        elif task.kind == "count":
            answer = str(rng.randint(1, 6))
        elif task.kind in NAME_POSITIONS:
            answer = rng.choice(NAMES)
        else:
            answer = " ".join(rng.choice(NAMES) for _ in task.names)
        if answer != right:
            return answer


def flawed_answer(task: Task, rng: random.Random, flaws: Flaws = Flaws()) -> str:
    """A wrong answer of the kind a small model gives: a near miss, or (``flaws.breadth``) any."""
    breadth = flaws.breadth_for(task.kind)
    if breadth and rng.random() < breadth:
        return random_wrong_answer(task, rng, flaws.max_operand)
    if task.kind == "add":
        right = task.a + task.b
        return str(max(0, right + rng.choice((-2, -1, 1, 2))) if right > 1 else right + rng.randint(1, 2))
    if task.kind == "max":
        return str(min(task.a, task.b))
    if task.kind == "count":
        return str(len(task.names) + (1 if len(task.names) == 2 else rng.choice((-1, 1))))
    if task.kind in NAME_POSITIONS:  # another name of the list
        position = NAME_POSITIONS[task.kind] % len(task.names)
        return rng.choice([name for i, name in enumerate(task.names) if i != position])
    return " ".join(flawed_names(list(task.names), rng))


# Kinds whose tasks are about the same content, so one task's sentence can stand in another's place.
SAME_CONTENT_KINDS: tuple[tuple[TaskKind, ...], ...] = (
    NUMBER_KINDS,
    ("copy", "count", "first", "second", "last"),
)


def off_target_response(task: Task, language: str, rng: random.Random) -> str:
    """A response that does not answer ``task`` in the world's phrasing, of the kinds a policy drifts to when
    a reward lets it: the right response to another task about the same content (the whole list for a
    question about one of its names), the task's own sentence with the answer left out, or the start of
    that sentence run into another task's response. The oracle scores it 0 (a run-on that a list's judge
    would give partial credit is drawn again)."""
    instruction = task.instruction(language)
    while True:
        response = _off_target_draw(task, language, rng)
        if judge(instruction, response, language) == 0.0:
            return response


def _off_target_draw(task: Task, language: str, rng: random.Random) -> str:
    others = next(kinds for kinds in SAME_CONTENT_KINDS if task.kind in kinds)
    other = Task(rng.choice([kind for kind in others if kind != task.kind]), task.a, task.b, task.names)
    template = TEMPLATES[language][task.kind][1]
    opening = template.split("{x}")[0].rstrip()
    shape = rng.choice(("other task", "unanswered", "run-on"))
    if shape == "unanswered":
        return " ".join(template.format(x="").split()).replace(" .", ".")
    if shape == "run-on" and opening:
        return opening + rng.choice(("", " ")) + other.response(language)
    return other.response(language)


def flawed_names(names: list[str], rng: random.Random) -> list[str]:
    flaw = rng.choice(("drop", "swap", "replace", "repeat"))
    if flaw == "drop":
        del names[rng.randrange(len(names))]
    elif flaw == "swap":
        i = rng.randrange(len(names) - 1)
        names[i], names[i + 1] = names[i + 1], names[i]
    elif flaw == "replace":
        names[rng.randrange(len(names))] = rng.choice([n for n in NAMES if n not in names])
    else:  # a name said twice, in another name's place
        i = rng.randrange(len(names))
        names[i] = rng.choice(names[:i] + names[i + 1 :])
    return names


# --- the oracle judge --------------------------------------------------------------------------------


def _pattern(template: str, slots: dict[str, str]) -> re.Pattern[str]:
    escaped = re.escape(template)
    for slot, group in slots.items():
        escaped = escaped.replace(re.escape("{" + slot + "}"), group, 1)
    return re.compile(escaped)


_NUMBER = r"(\d{1,3})"
_NAMES = r"([A-Z][a-z]+(?: [A-Z][a-z]+)*)"
_INSTRUCTION_PATTERNS = [
    (language, kind, _pattern(instruction, {"a": _NUMBER, "b": _NUMBER, "names": _NAMES}))
    for language, tasks in TEMPLATES.items()
    for kind, (instruction, _) in tasks.items()
]
_ANSWER_SLOTS = {
    "add": r"(\d{1,3})",
    "max": r"(\d{1,3})",
    "count": r"(\d{1,3})",
    "copy": r"([A-Za-z ]*)",
    **dict.fromkeys(NAME_POSITIONS, r"([A-Z][a-z]+)"),
}
_RESPONSE_PATTERNS = {
    (language, kind): _pattern(response, {"x": _ANSWER_SLOTS[kind]})
    for language, tasks in TEMPLATES.items()
    for kind, (_, response) in tasks.items()
}


def parse_instruction(instruction: str) -> tuple[str, Task] | None:
    """(language, task) of an instruction of this world (the English one after a language directive
    too), or None if it is not one."""
    for language, kind, pattern in _INSTRUCTION_PATTERNS:
        match = pattern.search(instruction.strip())
        if match and match.end() == len(instruction.strip()):
            if kind in NUMBER_KINDS:
                return language, Task(kind, a=int(match.group(1)), b=int(match.group(2)))
            return language, Task(kind, names=tuple(match.group(1).split()))
    return None


def judge(instruction: str, response: str, language: str) -> float:
    """The oracle's quality score in [0, 1] of ``response`` to ``instruction``, which must be written in
    ``language``: 1 for the right answer in the right language's phrasing (with or without the polite
    word before it), partial credit for a list of names with some in the right places, 0 otherwise (wrong
    answer, wrong language, anything the world's phrasing does not produce)."""
    parsed = parse_instruction(instruction)
    if parsed is None:
        raise ValueError(f"not an instruction of the demo world: {instruction!r}")
    _, task = parsed
    text = response.strip()
    filler = FILLERS[language] + " "
    if text.startswith(filler):
        text = text[len(filler) :]
    match = _RESPONSE_PATTERNS[(language, task.kind)].fullmatch(text)
    if match is None:
        return 0.0
    given = match.group(1)
    if task.kind != "copy":
        return 1.0 if given == task.answer() else 0.0
    return names_overlap(task.names, tuple(given.split()))


def names_overlap(expected: tuple[str, ...], given: tuple[str, ...]) -> float:
    """Names in their right places, over the longer list's length: 1 only for the exact list."""
    right = sum(1 for e, g in zip(expected, given, strict=False) if e == g)
    return right / max(len(expected), len(given))


# --- what the models learn from ----------------------------------------------------------------------


@dataclass(frozen=True)
class Example:
    language: str
    instruction: str
    response: str
    quality: float


def sft_response(
    task: Task,
    language: str,
    rng: random.Random,
    *,
    correct_rate: float,
    filler_rate: float,
    flaws: Flaws = Flaws(),
) -> str:
    """One mixed-quality SFT response: right with ``correct_rate``, the polite word with ``filler_rate``."""
    answer = None if rng.random() < correct_rate else flawed_answer(task, rng, flaws)
    return task.response(language, answer, filler=rng.random() < filler_rate)


def examples(
    tasks: list[Task],
    seed: int,
    *,
    correct_rates: Mapping[str, float],
    filler_rate: float,
    flaws: Callable[[str], Flaws] = lambda language: Flaws(),
) -> Iterator[Example]:
    """One response per task per language of ``correct_rates``, right with that language's probability,
    wrong as ``flaws(language)`` draws it."""
    rng = random.Random(seed)
    for task in tasks:
        for language, correct_rate in correct_rates.items():
            response = sft_response(
                task, language, rng, correct_rate=correct_rate, filler_rate=filler_rate, flaws=flaws(language)
            )
            instruction = task.instruction(language)
            yield Example(language, instruction, response, judge(instruction, response, language))


def parallel_documents(
    tasks: list[Task], seed: int, correct_rate: float = 1.0, flaws: Flaws = Flaws()
) -> Iterator[str]:
    """Pretraining text: each task answered in every language, in one document, in a shuffled language
    order, so that the languages are seen side by side; an answer is right with ``correct_rate`` (web text
    is not always right either), and then right in every language of the document."""
    rng = random.Random(seed)
    for task in tasks:
        order = list(LANGUAGES)
        rng.shuffle(order)
        answer = None if rng.random() < correct_rate else flawed_answer(task, rng, flaws)
        yield "\n".join(f"{task.instruction(lang)} {task.response(lang, answer)}" for lang in order)


Judge = Callable[[str, str, str], float]
