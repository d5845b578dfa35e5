"""The demo's synthetic multilingual world: checkable tasks in three languages, and an oracle judge.

English and two toy languages built on Spanish and German function words (each with its own phrasing and,
for the sums in Spanish, its own word order) share the things a task is about: digits and personal names.
Every task has one right answer that the oracle computes from the instruction alone, so the judge needs no
hidden metadata and works on any model's output in any of the three languages:

    add    "Add 3 and 5."                     -> "The sum is 8."
    copy   "Repeat these names: Ana Bob Eva." -> "Here they are: Ana Bob Eva."
    count  "Count the names: Ana Bob Eva."    -> "There are 3 names."
    max    "Which number is larger, 7 or 4?"  -> "The larger number is 7."

A response may start with a polite word ("Sure!"), which changes its length but not its quality: the
world has a length dimension for length-controlled win rates to remove. Flawed responses (what
mixed-quality SFT data holds) get the content wrong in the ways small models do: a sum off by one or two, a
dropped, swapped, replaced or repeated name, a count off by one, the smaller number.

Pure Python with seeded ``random.Random``: the same seed gives the same world on every machine.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

LANGUAGES = ("en", "es", "de")
NAMES = ("Ana", "Bob", "Eva", "Max", "Tom", "Lia", "Ivo", "Kai", "Noa", "Ray", "Uma", "Leo")
TaskKind = Literal["add", "copy", "count", "max"]
TASK_KINDS: tuple[TaskKind, ...] = ("add", "copy", "count", "max")
MAX_OPERAND = 20

# Per language and task: (instruction template, response template). {a} {b} are numbers, {names} a
# space-separated list of names, {x} the answer.
TEMPLATES: dict[str, dict[TaskKind, tuple[str, str]]] = {
    "en": {
        "add": ("Add {a} and {b}.", "The sum is {x}."),
        "copy": ("Repeat these names: {names}.", "Here they are: {x}."),
        "count": ("Count the names: {names}.", "There are {x} names."),
        "max": ("Which number is larger, {a} or {b}?", "The larger number is {x}."),
    },
    "es": {
        "add": ("Suma {a} y {b}.", "{x} es la suma."),
        "copy": ("Repite estos nombres: {names}.", "Aquí están: {x}."),
        "count": ("Cuenta los nombres: {names}.", "Hay {x} nombres."),
        "max": ("¿Qué número es mayor, {a} o {b}?", "El número mayor es {x}."),
    },
    "de": {
        "add": ("Addiere {a} und {b}.", "Die Summe ist {x}."),
        "copy": ("Wiederhole diese Namen: {names}.", "Hier sind sie: {x}."),
        "count": ("Zähle die Namen: {names}.", "Es sind {x} Namen."),
        "max": ("Welche Zahl ist größer, {a} oder {b}?", "Die größere Zahl ist {x}."),
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
        return " ".join(self.names)

    def instruction(self, language: str) -> str:
        template = TEMPLATES[language][self.kind][0]
        return template.format(a=self.a, b=self.b, names=" ".join(self.names))

    def response(self, language: str, answer: str | None = None, *, filler: bool = False) -> str:
        text = TEMPLATES[language][self.kind][1].format(x=self.answer() if answer is None else answer)
        return f"{FILLERS[language]} {text}" if filler else text


# --- sampling tasks and flawed answers ---------------------------------------------------------------


def random_task(rng: random.Random) -> Task:
    kind = rng.choice(TASK_KINDS)
    if kind in ("add", "max"):
        a, b = rng.randint(0, MAX_OPERAND), rng.randint(0, MAX_OPERAND)
        while kind == "max" and a == b:
            b = rng.randint(0, MAX_OPERAND)
        return Task(kind, a=a, b=b)
    return Task(kind, names=tuple(rng.sample(NAMES, rng.randint(2, 5))))


def distinct_tasks(count: int, seed: int) -> list[Task]:
    """``count`` different tasks (no two with the same content), in a seeded order."""
    rng = random.Random(seed)
    tasks: dict[str, Task] = {}
    while len(tasks) < count:
        task = random_task(rng)
        tasks.setdefault(task.key, task)
    return list(tasks.values())


def flawed_answer(task: Task, rng: random.Random) -> str:
    """A wrong answer of the kind a small model gives."""
    if task.kind == "add":
        right = task.a + task.b
        return str(max(0, right + rng.choice((-2, -1, 1, 2))) if right > 1 else right + rng.randint(1, 2))
    if task.kind == "max":
        return str(min(task.a, task.b))
    if task.kind == "count":
        return str(len(task.names) + (1 if len(task.names) == 2 else rng.choice((-1, 1))))
    return " ".join(flawed_names(list(task.names), rng))


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
_ANSWER_SLOTS = {"add": r"(\d{1,3})", "max": r"(\d{1,3})", "count": r"(\d{1,3})", "copy": r"([A-Za-z ]*)"}
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
            if kind in ("copy", "count"):
                return language, Task(kind, names=tuple(match.group(1).split()))
            return language, Task(kind, a=int(match.group(1)), b=int(match.group(2)))
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


def examples(
    tasks: list[Task], seed: int, *, correct_rates: Mapping[str, float], filler_rate: float
) -> Iterator[Example]:
    """One response per task per language of ``correct_rates``, right with that language's probability."""
    rng = random.Random(seed)
    for task in tasks:
        for language, correct_rate in correct_rates.items():
            answer = None if rng.random() < correct_rate else flawed_answer(task, rng)
            response = task.response(language, answer, filler=rng.random() < filler_rate)
            instruction = task.instruction(language)
            yield Example(language, instruction, response, judge(instruction, response, language))


def parallel_documents(tasks: list[Task], seed: int, correct_rate: float = 1.0) -> Iterator[str]:
    """Pretraining text: each task answered in every language, in one document, in a shuffled language
    order, so that the languages are seen side by side; an answer is right with ``correct_rate`` (web text
    is not always right either), and then right in every language of the document."""
    rng = random.Random(seed)
    for task in tasks:
        order = list(LANGUAGES)
        rng.shuffle(order)
        answer = None if rng.random() < correct_rate else flawed_answer(task, rng)
        yield "\n".join(f"{task.instruction(lang)} {task.response(lang, answer)}" for lang in order)


Judge = Callable[[str, str, str], float]
