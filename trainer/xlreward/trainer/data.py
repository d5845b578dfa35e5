"""Reading and validating preference-pair files before any training starts.

Input: JSONL lines as the annotation workers write them (``OUT/pairs.jsonl``), in either of TRL's preference
formats (``xlreward.worker.pair_format``): conversational, annotation's default::

    {"id": "17", "language": "es", "prompt": [{"role": "user", "content": "<target-language instruction>"}],
     "chosen": [{"role": "assistant", "content": "..."}], "rejected": [{"role": "assistant", ...}],
     "chosen_reward": 0.8, "rejected_reward": -0.3, "alpha": 0.002, ...}

or standard (``xlreward annotate --format standard``), the same with ``prompt``, ``chosen`` and ``rejected``
as plain strings. Those three are required, each a string or one message of its role, all three in the same
format; ``language`` is only used for the summary (``"unknown"`` when absent); every other field is kept
out of training. Blank lines are skipped; lines of both formats may be mixed.

Every problem in every file is found first, each as ``path:line: what is wrong; how to fix it``:
invalid JSON, not an object, a missing or malformed field (neither a string nor one message of its role),
fields in different formats, an empty prompt/chosen/rejected, chosen equal to
rejected (after stripping whitespace: the chat template trims it), a prompt whose chat-templated form (one
user turn with the generation prompt) already fills ``max_length`` tokens, and a pair whose prompt + chosen or
prompt + rejected (the whole templated conversation, exactly what TRL tokenizes) is longer than
``max_length``.

Over-long pairs are REPORTED, not truncated. TRL would cut them at ``max_length`` (``keep_start``), which
removes the end of the response and its end-of-turn token: the DPO term would then compare two partial
responses that are not the ones the pair was ranked by, and the NLL term would teach the chosen response
without its ending. Raise ``--max-length`` or drop such pairs with ``--skip-invalid``.

Without ``skip_invalid`` any problem raises :class:`PairProblems` listing them all. With it, bad lines are
skipped and counted by reason in the :class:`DataSummary`.

The dataset handed to TRL is conversational whatever the file's format, so TRL renders it with the policy's
chat template::

    {"prompt": [{"role": "user", "content": prompt}],
     "chosen": [{"role": "assistant", "content": chosen}],
     "rejected": [{"role": "assistant", "content": rejected}]}
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlreward.worker.pair_format import TEXT_FIELDS, PairRecordError, PairTexts, conversation, read_texts

MAX_SHOWN_PROBLEMS = 50
UNKNOWN_LANGUAGE = "unknown"

Row = dict[str, list[dict[str, str]]]


class PairProblems(ValueError):
    """Everything wrong with the pair files, found before training. ``problems`` holds one
    ``"path:line: what is wrong"`` string per problem, in file and line order."""

    def __init__(
        self, problems: Sequence[str], *, header: str | None = None, footer: str | None = None
    ) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        plural = "" if count == 1 else "s"
        lines = [header or f"{count} problem{plural} in the pair files (nothing was trained):"]
        lines += self.problems[:MAX_SHOWN_PROBLEMS]
        if count > MAX_SHOWN_PROBLEMS:
            lines.append(f"... and {count - MAX_SHOWN_PROBLEMS} more")
        lines.append(footer or "fix them, or pass --skip-invalid to train on the valid pairs only")
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[type[PairProblems], tuple[list[str]]]:
        return type(self), (self.problems,)


@dataclass(frozen=True)
class Problem:
    path: Path
    line: int
    reason: str  # a key of DataSummary.skipped
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class DataSummary:
    """What was read: pairs kept per language, lines skipped per reason (with each problem)."""

    files: list[str]
    max_length: int
    pairs: int = 0
    pairs_per_language: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    skipped_problems: list[str] = field(default_factory=list)
    longest_sequence_tokens: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "pairs": self.pairs,
            "pairs_per_language": dict(sorted(self.pairs_per_language.items())),
            "skipped_total": sum(self.skipped.values()),
            "skipped": dict(sorted(self.skipped.items())),
            "skipped_problems": self.skipped_problems,
            "max_length": self.max_length,
            "longest_sequence_tokens": self.longest_sequence_tokens,
        }


@dataclass
class PairData:
    rows: list[Row]
    summary: DataSummary


def _chat_ids(tokenizer: Any, messages: list[dict[str, str]], *, generation_prompt: bool) -> list[int]:
    """Token ids of ``messages`` rendered with the chat template, as TRL's ``_prepare_dataset`` makes them."""
    encoded = tokenizer.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=generation_prompt, return_dict=True
    )
    return list(encoded["input_ids"])


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open(encoding="utf-8-sig") as lines:
        for number, text in enumerate(lines, start=1):
            if text.strip():
                yield number, text


def _parse(text: str) -> dict[str, Any] | tuple[str, str]:
    """The record, or (reason, message) saying what is wrong with the line."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        return "invalid_json", f"not valid JSON ({error.msg} at column {error.colno})"
    if not isinstance(record, dict):
        kind = type(record).__name__
        return "not_an_object", f'expected a JSON object with "prompt", "chosen", "rejected"; got {kind}'
    return record


def _texts(record: dict[str, Any]) -> PairTexts | tuple[str, str]:
    """The pair's texts, or (reason, message) for the first problem with them."""
    try:
        texts = read_texts(record)
    except PairRecordError as error:
        return error.reason, str(error)
    for name in TEXT_FIELDS:
        if not getattr(texts, name).strip():
            return f"empty_{name}", f'field "{name}" is empty: there is nothing to learn from this pair'
    if texts.chosen.strip() == texts.rejected.strip():
        return "same_text", '"chosen" equals "rejected": the pair teaches nothing; drop it'
    language = record.get("language", UNKNOWN_LANGUAGE)
    if not isinstance(language, str) or not language:
        return "wrong_type", 'field "language" must be a non-empty string (a language code such as "es")'
    return texts


def _length_problem(row: Row, tokenizer: Any, max_length: int) -> tuple[tuple[str, str] | None, int]:
    """(reason, message) when the pair does not fit ``max_length`` tokens, and its longest sequence."""
    prompt_tokens = len(_chat_ids(tokenizer, row["prompt"], generation_prompt=True))
    if prompt_tokens >= max_length:
        message = (
            f"the prompt is {prompt_tokens} tokens with the chat template, --max-length is {max_length}: "
            "no room is left for the response; raise --max-length or drop the pair"
        )
        return ("prompt_too_long", message), prompt_tokens
    lengths = {
        side: len(_chat_ids(tokenizer, row["prompt"] + row[side], generation_prompt=False))
        for side in ("chosen", "rejected")
    }
    longest = max(lengths.values())
    over = [f"prompt + {side} is {n} tokens" for side, n in lengths.items() if n > max_length]
    if over:
        message = (
            f"{' and '.join(over)}, over --max-length {max_length}; responses are not truncated (a cut "
            "response is not the one the pair was ranked by): raise --max-length or drop the pair"
        )
        return ("pair_too_long", message), longest
    return None, longest


@dataclass(frozen=True)
class _Pair:
    row: Row
    language: str
    tokens: int  # its longest templated sequence


def _check_line(text: str, tokenizer: Any, max_length: int) -> _Pair | tuple[str, str]:
    """The line's pair, or (reason, message) for its first problem."""
    record = _parse(text)
    if isinstance(record, tuple):
        return record
    texts = _texts(record)
    if isinstance(texts, tuple):
        return texts
    row = conversation(texts.prompt, texts.chosen, texts.rejected)
    problem, tokens = _length_problem(row, tokenizer, max_length)
    if problem is not None:
        return problem
    return _Pair(row=row, language=record.get("language", UNKNOWN_LANGUAGE), tokens=tokens)


def _read_file(path: Path, tokenizer: Any, max_length: int, data: PairData, problems: list[Problem]) -> None:
    summary = data.summary
    for number, text in _lines(path):
        checked = _check_line(text, tokenizer, max_length)
        if isinstance(checked, tuple):
            problems.append(Problem(path, number, *checked))
            continue
        data.rows.append(checked.row)
        summary.pairs += 1
        summary.pairs_per_language[checked.language] += 1
        summary.longest_sequence_tokens = max(summary.longest_sequence_tokens, checked.tokens)


def load_pairs(
    paths: Sequence[Path], tokenizer: Any, *, max_length: int, skip_invalid: bool = False
) -> PairData:
    """Reads and checks every line of every file; raises :class:`PairProblems` unless ``skip_invalid``."""
    data = PairData(rows=[], summary=DataSummary(files=[str(p) for p in paths], max_length=max_length))
    problems: list[Problem] = []
    for path in paths:
        _read_file(Path(path), tokenizer, max_length, data, problems)
    if problems and not skip_invalid:
        raise PairProblems([str(problem) for problem in problems])
    for problem in problems:
        data.summary.skipped[problem.reason] += 1
        data.summary.skipped_problems.append(str(problem))
    if not data.rows:
        raise PairProblems(
            data.summary.skipped_problems,
            header=f"no valid pairs to train on ({len(data.summary.skipped_problems)} lines skipped):",
            footer="fix the pair files (see above)",
        )
    return data


def to_dataset(rows: list[Row]) -> Any:
    """The rows as a ``datasets.Dataset`` for TRL's DPOTrainer."""
    import datasets

    return datasets.Dataset.from_list(rows)
