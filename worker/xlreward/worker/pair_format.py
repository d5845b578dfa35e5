"""The two ways a pairs file can hold a pair's texts: written by annotation, read by everything that trains.

TRL's preference datasets come in two formats, and TRL tokenizes them differently:

* ``"conversational"`` (our default)::

      {"prompt": [{"role": "user", "content": "Name three colours."}],
       "chosen": [{"role": "assistant", "content": "Red, green, blue."}],
       "rejected": [{"role": "assistant", "content": "Colours."}], ...}

  TRL renders it with the tokenizer's chat template: the same rendering xlreward generated the samples
  under and scored them under, so a user's own ``DPOTrainer`` trains on the sequences that were ranked.
* ``"standard"``: the three fields as plain strings. TRL tokenizes them as raw text with NO chat template
  (``<|begin_of_text|>Name three colours.`` for a Llama-3 model), so a chat model is trained on a format
  it never sees. Kept for scripts that apply a template themselves (``--format standard``).

Either way the other fields of a record (``id``, ``language``, rewards, lengths...) are the same. Torch- and
numpy-free: the CLI reads ``PAIR_FORMATS`` to build its ``--format`` flag.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

PairFormat = Literal["conversational", "standard"]
PAIR_FORMATS: tuple[PairFormat, ...] = get_args(PairFormat)
DEFAULT_PAIR_FORMAT: PairFormat = "conversational"

TEXT_FIELDS = ("prompt", "chosen", "rejected")
# The one message each field holds in the conversational format: the instruction, then a response.
ROLES = {"prompt": "user", "chosen": "assistant", "rejected": "assistant"}

Message = dict[str, str]


def conversation(prompt: str, chosen: str, rejected: str) -> dict[str, list[Message]]:
    """The three texts as TRL conversational fields: one user turn, and one assistant turn per response."""
    texts = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    return {name: [{"role": ROLES[name], "content": text}] for name, text in texts.items()}


def pair_fields(prompt: str, chosen: str, rejected: str, pair_format: PairFormat) -> dict[str, Any]:
    """``prompt``, ``chosen`` and ``rejected`` of a record in ``pair_format``."""
    if pair_format == "standard":
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    return dict(conversation(prompt, chosen, rejected))


@dataclass(frozen=True)
class PairTexts:
    """A pair's texts, whichever format its record was in."""

    prompt: str
    chosen: str
    rejected: str


class PairRecordError(ValueError):
    """A record whose texts cannot be read; ``reason`` is a short key to count problems by."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_texts(record: Mapping[str, Any]) -> PairTexts:
    """The texts of a record in either format (each field checked; all three must be in the same format).

    >>> read_texts({"prompt": "Hi", "chosen": "Hello.", "rejected": "Go."})
    PairTexts(prompt='Hi', chosen='Hello.', rejected='Go.')
    >>> read_texts(conversation("Hi", "Hello.", "Go.")) == read_texts({"prompt": "Hi", "chosen": "Hello.",
    ...                                                                 "rejected": "Go."})
    True
    >>> try:
    ...     read_texts({"prompt": "Hi", "chosen": [{"role": "user", "content": "Hello."}], "rejected": "Go."})
    ... except PairRecordError as error:
    ...     print(error.reason, "-", str(error).split(", got ")[1])
    wrong_type - a "user" message
    """
    for name in TEXT_FIELDS:
        if name not in record:
            raise PairRecordError("missing_field", f'missing field "{name}": add it (a string, or messages)')
    texts = {name: _field_text(name, record[name]) for name in TEXT_FIELDS}
    strings = [name for name in TEXT_FIELDS if isinstance(record[name], str)]
    if 0 < len(strings) < len(TEXT_FIELDS):
        raise PairRecordError(
            "mixed_formats",
            f"{_listed(strings)} {'is a string' if len(strings) == 1 else 'are strings'} but the other "
            "fields are messages: write all three as strings (standard format) or all three as messages "
            "(conversational format)",
        )
    return PairTexts(**texts)


def _field_text(name: str, value: Any) -> str:
    """The text of one field: the string itself, or the content of its one message with the right role."""
    if isinstance(value, str):
        return value
    role = ROLES[name]
    problem = _message_problem(value, role)
    if problem is not None:
        raise PairRecordError(
            "wrong_type",
            f'field "{name}" must be a string (standard format) or [{{"role": "{role}", "content": "..."}}] '
            f"(conversational format), got {problem}",
        )
    content: str = value[0]["content"]
    return content


def _message_problem(value: Any, role: str) -> str | None:
    """What keeps ``value`` from being one message of ``role`` (None when it is one)."""
    if not isinstance(value, list):
        return type(value).__name__
    if len(value) != 1:
        return f"{len(value)} messages (exactly one is read: multi-turn prompts are not supported)"
    message = value[0]
    if not isinstance(message, dict) or not {"role", "content"} <= set(message):
        return 'a list whose item is not a {"role": ..., "content": ...} object'
    if message["role"] != role:
        return f'a "{message["role"]}" message'
    if not isinstance(message["content"], str):
        return f"a message whose content is {type(message['content']).__name__}, not a string"
    return None


def _listed(names: list[str]) -> str:
    return " and ".join(f'"{name}"' for name in names)
