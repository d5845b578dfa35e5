"""The models file: what it accepts, and bad files refused naming the file and the fix (nothing loads)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xlreward.service.models_config import ModelsFileError, load_models_file, single_pair


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text)
    return path


def test_entries_keep_their_order_and_relative_folders_resolve_from_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "rm").mkdir()
    specs = load_models_file(
        write(
            tmp_path,
            '[[models]]\nname = "icr"\npolicy = "org/dpo"\nreference = "org/sft"\n'
            'revision = "v1"\nbeta = 0.5\n'
            '[[models]]\nname = "rm"\nkind = "classifier"\npath = "rm"\n',
        )
    )
    assert [(s.name, s.kind) for s in specs] == [("icr", "implicit"), ("rm", "classifier")]
    assert specs[0].sources == {"policy": "org/dpo", "reference": "org/sft"}  # hub ids stay as given
    assert specs[0].revision == "v1" and specs[0].beta == 0.5
    assert specs[1].path == str(tmp_path / "rm")
    assert single_pair("a", "b").name == "default"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[models]]\nname = "a"\npath = "x"\n', "an implicit model names 'policy' and 'reference'"),
        ('[[models]]\nname = "a"\nkind = "classifier"\npolicy = "x"\n', "a classifier names 'path'"),
        (
            '[[models]]\nname = "a"\npolicy = "x"\nreference = "y"\n' * 2,
            "model names must be unique; repeated: a",
        ),
        ('[[models]]\nname = "a"\npolicy = "x"\nreference = "y"\nbatch = 3\n', "models.0.batch"),
        ("models = []\n", "at least 1"),
        ("[[models]\n", "not valid TOML"),
    ],
)
def test_bad_files_name_the_file_and_the_problem(tmp_path, text: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = write(tmp_path, text)
    with pytest.raises(ModelsFileError, match=r"--models .*models\.toml") as caught:
        load_models_file(path)
    assert message in str(caught.value)


def test_a_missing_file_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelsFileError, match="no such file"):
        load_models_file(tmp_path / "nope.toml")
