"""Pair files are validated before training: every problem with file:line, or skipped and counted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from xlreward.trainer.data import PairProblems, conversation, load_pairs
from xlreward.trainer.options import TrainOptions, TrainOptionsError
from xlreward.trainer.train import train

MAX_LENGTH = 64


def _line(**fields: Any) -> str:
    record = {"id": "1", "language": "es", "prompt": "Hola", "chosen": "Sí.", "rejected": "No."}
    record.update(fields)
    return json.dumps({k: v for k, v in record.items() if v is not None}, ensure_ascii=False)


@pytest.fixture(scope="module")
def tokenizer(llama_pair: Any) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(llama_pair.policy), local_files_only=True)


@pytest.fixture
def bad_files(tmp_path: Path) -> tuple[Path, Path]:
    first = tmp_path / "a.jsonl"
    first.write_text(
        "\n".join(
            [
                _line(),  # 1 ok
                '{"prompt": "Hola", "chosen": ',  # 2 invalid JSON
                _line(chosen=None),  # 3 missing field
                _line(rejected="   "),  # 4 empty rejected
                "",  # 5 blank: skipped silently
                _line(chosen="Igual", rejected=" Igual "),  # 6 chosen equals rejected
                _line(language="ru", prompt="Привет"),  # 7 ok
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    second = tmp_path / "b.jsonl"
    second.write_text(
        "\n".join(
            [
                _line(prompt="word " * 80),  # 1 prompt alone over MAX_LENGTH
                _line(chosen="long " * 80),  # 2 prompt + chosen over MAX_LENGTH
                "[1, 2]",  # 3 not an object
                _line(chosen=["a list"]),  # 4 wrong type
                _line(language="de"),  # 5 ok
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    return first, second


def test_every_problem_is_reported_with_file_and_line(tokenizer: Any, bad_files: tuple[Path, Path]) -> None:
    first, second = bad_files
    with pytest.raises(PairProblems) as caught:
        load_pairs([first, second], tokenizer, max_length=MAX_LENGTH)
    problems = caught.value.problems
    assert [p.split(": ", 1)[0] for p in problems] == [
        f"{first}:2",
        f"{first}:3",
        f"{first}:4",
        f"{first}:6",
        f"{second}:1",
        f"{second}:2",
        f"{second}:3",
        f"{second}:4",
    ]
    assert "not valid JSON" in problems[0]
    assert 'missing field "chosen"' in problems[1]
    assert '"rejected" is empty' in problems[2]
    assert '"chosen" equals "rejected"' in problems[3]
    assert "the prompt is" in problems[4] and f"--max-length is {MAX_LENGTH}" in problems[4]
    assert "prompt + chosen is" in problems[5] and "not truncated" in problems[5]
    assert "expected a JSON object" in problems[6]
    assert 'field "chosen" must be a string' in problems[7]
    message = str(caught.value)
    assert message.startswith("8 problems in the pair files") and "--skip-invalid" in message


def test_skip_invalid_counts_by_reason(tokenizer: Any, bad_files: tuple[Path, Path]) -> None:
    data = load_pairs(list(bad_files), tokenizer, max_length=MAX_LENGTH, skip_invalid=True)
    assert data.rows == [
        conversation("Hola", "Sí.", "No."),
        conversation("Привет", "Sí.", "No."),
        conversation("Hola", "Sí.", "No."),
    ]
    summary = data.summary.to_json()
    assert summary["pairs"] == 3
    assert summary["pairs_per_language"] == {"de": 1, "es": 1, "ru": 1}
    assert summary["skipped"] == {
        "empty_rejected": 1,
        "invalid_json": 1,
        "missing_field": 1,
        "not_an_object": 1,
        "pair_too_long": 1,
        "prompt_too_long": 1,
        "same_text": 1,
        "wrong_type": 1,
    }
    assert summary["skipped_total"] == 8
    assert summary["skipped_problems"][0].startswith(f"{bad_files[0]}:2: not valid JSON")
    assert 0 < summary["longest_sequence_tokens"] <= MAX_LENGTH


def test_length_check_counts_what_trl_tokenizes(tokenizer: Any, tmp_path: Path) -> None:
    """The limit applies to the whole templated conversation (prompt, response, end-of-turn): a pair that
    fits exactly passes and one token less of room is refused."""
    path = tmp_path / "p.jsonl"
    path.write_text(_line(chosen="Sí, claro.", rejected="No.") + "\n", encoding="utf-8")
    full = conversation("Hola", "Sí, claro.", "No.")
    length = len(tokenizer.apply_chat_template(full["prompt"] + full["chosen"], tokenize=True)["input_ids"])
    assert load_pairs([path], tokenizer, max_length=length).summary.longest_sequence_tokens == length
    with pytest.raises(PairProblems, match=f"prompt \\+ chosen is {length} tokens"):
        load_pairs([path], tokenizer, max_length=length - 1)


def test_nothing_valid_is_an_error_even_when_skipping(tokenizer: Any, tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("not json\n", encoding="utf-8")
    with pytest.raises(PairProblems, match="no valid pairs to train on"):
        load_pairs([path], tokenizer, max_length=MAX_LENGTH, skip_invalid=True)


def test_train_stops_before_loading_models(
    llama_pair: Any, bad_files: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    options = TrainOptions(
        pairs=bad_files,
        policy=llama_pair.policy,
        reference=llama_pair.reference,
        out=out,
        max_length=MAX_LENGTH,
    )
    with pytest.raises(PairProblems, match="8 problems"):
        train(options)
    assert not out.exists()


def test_options_are_checked_with_their_flags(llama_pair: Any, tmp_path: Path) -> None:
    with pytest.raises(TrainOptionsError) as caught:
        TrainOptions(
            pairs=(tmp_path / "missing.jsonl",),
            policy=llama_pair.policy,
            reference=tmp_path / "nowhere",
            out=tmp_path / "out",
            beta=0,
            batch_size=0,
        )
    message = str(caught.value)
    for expected in ("--beta 0", "--batch-size 0", "missing.jsonl: no such file", "--reference"):
        assert expected in message


def test_both_pair_formats_read_to_the_same_rows(tokenizer: Any, tmp_path: Path) -> None:
    """pairs.jsonl as annotation writes it (conversational, the default) and as ``--format standard``
    writes it train on the same rows; lines of both formats may share a file."""
    conversational = tmp_path / "conversational.jsonl"
    conversational.write_text(
        _line(**conversation("Hola", "Sí.", "No.")) + "\n" + _line() + "\n", encoding="utf-8"
    )
    data = load_pairs([conversational], tokenizer, max_length=MAX_LENGTH)
    assert data.rows == [conversation("Hola", "Sí.", "No.")] * 2
    assert data.summary.pairs_per_language == {"es": 2}


def test_malformed_messages_are_reported_with_file_and_line(tokenizer: Any, tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    good = conversation("Hola", "Sí.", "No.")
    path.write_text(
        "\n".join(
            [
                _line(**good),  # 1 ok
                _line(**{**good, "chosen": [{"role": "user", "content": "Sí."}]}),  # 2 wrong role
                _line(**{**good, "prompt": good["prompt"] * 2}),  # 3 two messages
                _line(**{**good, "rejected": "No."}),  # 4 one field a string, the others messages
                _line(**{**good, "chosen": [{"role": "assistant", "content": " "}]}),  # 5 empty content
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    with pytest.raises(PairProblems) as caught:
        load_pairs([path], tokenizer, max_length=MAX_LENGTH)
    problems = caught.value.problems
    assert [p.split(": ", 1)[0] for p in problems] == [f"{path}:{n}" for n in (2, 3, 4, 5)]
    assert 'field "chosen" must be a string (standard format) or [{"role": "assistant"' in problems[0]
    assert 'got a "user" message' in problems[0]
    assert 'field "prompt"' in problems[1] and "got 2 messages" in problems[1]
    assert '"rejected" is a string but the other fields are messages' in problems[2]
    assert '"chosen" is empty' in problems[3]
    skipped = load_pairs([path], tokenizer, max_length=MAX_LENGTH, skip_invalid=True).summary.skipped
    assert skipped == {"wrong_type": 2, "mixed_formats": 1, "empty_chosen": 1}
