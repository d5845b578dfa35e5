"""The demo's targets, comparisons and seed sweep, computed from known win rates (no models)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from xlreward.demo.report import sweep_targets, transfer_table, transfer_targets, write_sweep
from xlreward.demo.run import DemoRun


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


# --- the seed sweep ------------------------------------------------------------------------------------


def seed_summary(second: dict[str, float], first: dict[str, float], best_of_n_met: bool) -> dict[str, Any]:
    """A seed's summary as ``write_report`` writes it, reduced to what the sweep reads."""

    def row(rates: dict[str, float]) -> dict[str, dict[str, float]]:
        return {lang: cell(rate) | {"length_controlled_win_rate": rate} for lang, rate in rates.items()}

    rows = {"pi^0": row({"en": 50.0, "es": 50.0, "de": 50.0}), "iteration 1": row(first)}
    rows["iteration 2"] = row(second)
    return {
        "baseline": "pi^0",
        "rows": rows,
        "transfer": transfer(RATES),
        "targets": {
            "iteration_2_beats_pi0": {"met": min(second["es"], second["de"]) >= 60.0},
            "best_of_16_english_rm_beats_pi_ref": {"met": best_of_n_met},
            "comparisons": {},
        },
        "timings_s": {"total_s": 600.0},
    }


def test_the_sweep_reports_mean_and_spread_and_every_seeds_targets(tmp_path: Path) -> None:
    summaries = {
        0: seed_summary({"en": 45.0, "es": 64.0, "de": 61.0}, {"en": 46.0, "es": 60.0, "de": 62.0}, True),
        1: seed_summary({"en": 47.0, "es": 59.0, "de": 66.0}, {"en": 48.0, "es": 61.0, "de": 63.0}, True),
        2: seed_summary({"en": 49.0, "es": 66.0, "de": 65.0}, {"en": 50.0, "es": 65.0, "de": 64.0}, False),
    }
    sweep = write_sweep(tmp_path, summaries, languages=["en", "es", "de"])
    es = sweep["rows"]["iteration 2"]["es"]["win_rate"]
    assert es == {"mean": 63.0, "min": 59.0, "max": 66.0, "per_seed": [64.0, 59.0, 66.0]}
    targets = sweep["targets"]
    assert targets["iteration_2_beats_pi0_every_seed"] == {
        "met_at_seeds": [0, 2],
        "met": False,
    }  # seed 1: es 59
    assert targets["best_of_16_english_rm_beats_pi_ref_every_seed"] == {"met_at_seeds": [0, 1], "met": False}
    assert targets["iteration_2_beats_pi0_on_the_mean"]["win_rates"] == {"es": 63.0, "de": 64.0}
    assert targets["iteration_2_beats_pi0_on_the_mean"]["met"]
    # es: 63.0 on the mean against iteration 1's 62.0; de: 64.0 against 63.0
    assert targets["iteration_2_not_below_iteration_1_on_the_mean"]["met"]
    assert json.loads((tmp_path / "sweep.json").read_text())["seeds"] == [0, 1, 2]


def test_iteration_2_below_iteration_1_on_the_mean_is_reported() -> None:
    summaries = {
        0: seed_summary({"en": 45.0, "es": 64.0, "de": 61.0}, {"en": 46.0, "es": 66.0, "de": 60.0}, True),
        1: seed_summary({"en": 47.0, "es": 62.0, "de": 66.0}, {"en": 48.0, "es": 61.0, "de": 63.0}, True),
    }
    rows = {"iteration 1": {}, "iteration 2": {}}
    for name in rows:
        for lang in ("es", "de"):
            rates = [summary["rows"][name][lang]["win_rate"] for summary in summaries.values()]
            rows[name][lang] = {"win_rate": {"mean": sum(rates) / len(rates)}}
    target = sweep_targets(summaries, rows, ["en", "es", "de"])[
        "iteration_2_not_below_iteration_1_on_the_mean"
    ]
    assert target == {
        "iteration_1": {"es": 63.5, "de": 61.5},
        "iteration_2": {"es": 63.0, "de": 63.5},
        "met": False,
    }


def test_a_seed_moves_every_random_choice_but_the_worlds() -> None:
    run = DemoRun(out=Path("runs/demo"), cache=Path("cache"))
    assert run.seeded(0, run.out) == run  # `make demo` is seed 0 of a sweep
    second = run.seeded(2, Path("runs/demo/seed-2"))
    assert second.out == Path("runs/demo/seed-2")
    assert (second.config.seed, second.config.pretrain.seed, second.config.sft.seed) == (2, 2, 3)
    assert (second.iteration.seed, second.transfer.seed) == (44, 2)
    assert second.config.split == run.config.split  # the same tasks in every stage
    assert second.config.key() != run.config.key()  # models cached apart


def test_bad_seeds_are_refused_before_anything_runs() -> None:
    for seeds, message in (("0,x", "whole numbers"), ("1,1", "distinct"), ("-1", "distinct seeds of 0")):
        done = subprocess.run(
            [sys.executable, "-m", "xlreward.cli", "demo", "--seeds", seeds],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 2 and message in done.stderr, done.stderr
