"""The cross-lingual reward prompt (METHOD.md step 3), built in one place for annotation and evaluation."""

from __future__ import annotations

from xlreward.worker.jobs import RunSpec, cross_lingual_prompt
from xlreward.worker.settings import WorkerSettings

NAMES = {"en": "English", "es": "Spanish"}


def test_directive_then_english_instruction_and_plain_english() -> None:
    assert cross_lingual_prompt("Add 3 and 5.", "es", NAMES) == (
        "Please answer the following instruction using only Spanish, unless explicitly instructed to "
        "respond in a different language.\n\nAdd 3 and 5."
    )
    assert cross_lingual_prompt("Add 3 and 5.", "en", NAMES) == "Add 3 and 5."
    assert cross_lingual_prompt("Add 3 and 5.", "es", NAMES, "In {language}: ") == "In Spanish: Add 3 and 5."


def test_run_spec_uses_it_and_monolingual_keeps_the_target_instruction() -> None:
    def spec(mode: str) -> RunSpec:
        settings = WorkerSettings(reward_mode=mode)  # type: ignore[arg-type]
        return RunSpec.build(settings, languages=["en", "es"], instructions_digest="x")

    cross = spec("cross_lingual").reward_prompt("es", "Suma 3 y 5.", "Add 3 and 5.")
    assert cross == cross_lingual_prompt("Add 3 and 5.", "es", NAMES)
    assert spec("monolingual").reward_prompt("es", "Suma 3 y 5.", "Add 3 and 5.") == "Suma 3 y 5."
    assert spec("cross_lingual").reward_prompt("en", "Add 3 and 5.", "Add 3 and 5.") == "Add 3 and 5."
