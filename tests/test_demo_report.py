"""The demo's transfer targets and comparisons, computed from known win rates (pure: no models)."""

from __future__ import annotations

from typing import Any

from xlreward.demo.report import transfer_table, transfer_targets


def cell(win_rate: float) -> dict[str, float]:
    return {"win_rate": win_rate, "mean_score": win_rate / 100}


def transfer(rates: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {
        "baseline": "pi_ref",
        "n": 16,
        "rows": {row: {lang: cell(rate) for lang, rate in per.items()} for row, per in rates.items()},
        "rm_held_out_accuracy": {"en": 90.0, "es": 80.0, "de": 85.0},
        "grpo_reward": {"first": -1.0, "last": 1.25},
    }


RATES = {
    "best-of-16: English RM": {"es": 64.0, "de": 59.5},
    "best-of-16: same-language RM": {"es": 61.0, "de": 62.0},
    "best-of-16: implicit reward": {"es": 70.0, "de": 58.0},
    "pi_ref sample (best-of-1)": {"es": 50.0, "de": 50.0},
    "GRPO: English RM": {"en": 40.0, "es": 55.0, "de": 56.0},
}


def test_targets_hold_only_in_every_non_english_language() -> None:
    targets = transfer_targets(transfer(RATES), ["en", "es", "de"])
    best = targets["best_of_16_english_rm_beats_pi_ref"]
    assert best == {"win_rates": {"es": 64.0, "de": 59.5}, "threshold": 60.0, "met": False}  # de: 59.5
    grpo = targets["grpo_english_rm_beats_pi_ref"]
    assert grpo["win_rates"] == {"es": 55.0, "de": 56.0} and grpo["met"]  # English is not a target language


def test_comparisons_are_reported_whichever_way_they_fall() -> None:
    compared = transfer_targets(transfer(RATES), ["en", "es", "de"])["comparisons"]
    assert compared["es"]["english_rm_beats_same_language_rm"] is True
    assert compared["es"]["best_reward"] == "implicit_reward"
    assert compared["de"]["english_rm_beats_same_language_rm"] is False
    assert compared["de"]["best_reward"] == "same_language_rm"


def test_the_table_shows_every_row_and_the_rm_accuracy() -> None:
    printed = transfer_table(transfer(RATES), ["en", "es", "de"])
    for row in RATES:
        assert row in printed
    assert "en 90.0%, es 80.0%, de 85.0%" in printed and "-1.00 at the first step, 1.25" in printed
