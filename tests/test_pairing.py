"""Pair selection with length control (METHOD.md step 5): alpha search, argmax/argmin tie rules, drops."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from xlreward.worker.pair_format import TEXT_FIELDS, PairRecordError, PairTexts, conversation, read_texts
from xlreward.worker.pairing import (
    DROP_REASONS,
    LanguagePairs,
    ScoredSample,
    ScoredUnit,
    alpha_grid,
    pair_language,
    search_alpha,
    select_pair,
    summarise,
)

STEP = 0.001


def unit(uid: str, samples: list[tuple[str, float]], language: str = "ru") -> ScoredUnit:
    return ScoredUnit(
        id=uid,
        language=language,
        prompt=f"instruction {uid}",
        samples=tuple(ScoredSample(text, reward) for text, reward in samples),
    )


# --- a plain brute force, written independently of the module -------------------------------------------


def first_argmax(values: list[float]) -> int:
    best = 0
    for index, value in enumerate(values):
        if value > values[best]:
            best = index
    return best


def first_argmin(values: list[float]) -> int:
    best = 0
    for index, value in enumerate(values):
        if value < values[best]:
            best = index
    return best


def brute_force_alpha(units: list[ScoredUnit], step: float = STEP, count: int = 1000) -> tuple[int, float]:
    """(grid index, alpha): python loops over alpha = k * step, every unit with >= 2 samples taking part."""
    usable = [u for u in units if len(u.samples) >= 2]
    best_k, best_value = 0, float("inf")
    for k in range(count):
        alpha = k * step
        differences = []
        for u in usable:
            scores = [s.reward - alpha * len(s.text) for s in u.samples]
            chosen, rejected = first_argmax(scores), first_argmin(scores)
            differences.append(len(u.samples[chosen].text) - len(u.samples[rejected].text))
        mean = sum(differences) / len(differences) if differences else 0.0
        if abs(mean) < best_value:  # strict: ties keep the smaller alpha
            best_k, best_value = k, abs(mean)
    return best_k, best_k * step


def random_units(seed: int, count: int = 50) -> list[ScoredUnit]:
    """Varied sample counts (including a few 0/1-sample units), lengths and rewards; rewards grow with
    length so that alpha = 0 is biased towards long chosen responses; rounded rewards and duplicated
    samples make exact ties in the scores."""
    rng = random.Random(seed)
    slope = rng.uniform(0.005, 0.3)
    units = []
    for i in range(count):
        n = rng.choice([0, 1]) if i % 17 == 0 else rng.randint(2, 10)
        samples: list[tuple[str, float]] = []
        for _ in range(n):
            if samples and rng.random() < 0.15:
                samples.append(samples[rng.randrange(len(samples))])  # an exact duplicate
                continue
            length = rng.randint(1, 400)
            reward = round(slope * length + rng.gauss(0.0, 1.0), 1 if rng.random() < 0.3 else 6)
            samples.append(("é" * length, reward))
        units.append(unit(f"r{i:03d}", samples))
    return units


# --- the hand-made case -----------------------------------------------------------------------------------
#
# Unit A: "привет мир" (10 characters, 19 UTF-8 bytes) with reward 0.3, and "да" (2 characters) with reward 0.
#   s_long - s_short = 0.3 - 10a + 2a = 0.3 - 8a: the long one is chosen while a < 0.0375 (difference +8),
#   the short one from a > 0.0375 on (difference -8). On the 0.001 grid: a = 0.037 gives -0.07 vs -0.074
#   (long chosen), a = 0.038 gives -0.08 vs -0.076 (short chosen).
# Unit B: 5 characters with reward 100 vs 3 characters with reward 0: s difference 100 - 2a > 0 on the whole
#   grid, so the long one is always chosen (difference +2).
# Sum of differences: +10 for a <= 0.037, -6 from a = 0.038 on; |-6| < |10|, so alpha = 0.038 (index 38).
# (Counting bytes instead of characters, A would flip at 0.3 - 15a < 0, i.e. a = 0.021.)
# On a 0.01 grid: a = 0.03 gives 0 vs -0.06 (long), a = 0.04 gives -0.1 vs -0.08 (short): alpha = 0.04.

UNIT_A = unit("a", [("привет мир", 0.3), ("да", 0.0)])
UNIT_B = unit("b", [("12345", 100.0), ("123", 0.0)])


def test_search_alpha_hand_made() -> None:
    alpha = search_alpha([UNIT_A, UNIT_B])
    assert abs(alpha - 0.038) < 1e-12
    assert round(alpha / STEP) == 38
    assert alpha == 38 * STEP
    assert brute_force_alpha([UNIT_A, UNIT_B]) == (38, alpha)
    assert select_pair(UNIT_A, 0.037) == (0, 1)
    assert select_pair(UNIT_A, alpha) == (1, 0)


def test_search_alpha_grid_parameters() -> None:
    alpha = search_alpha([UNIT_A, UNIT_B], step=0.01)
    assert abs(alpha - 0.04) < 1e-12
    assert alpha == 4 * 0.01
    # A grid that stops before the flip keeps alpha = 0 (every point scores |+10|; the smallest wins).
    assert search_alpha([UNIT_A, UNIT_B], stop=0.038) == 0.0


def test_search_alpha_ties_take_the_smallest_alpha() -> None:
    # A alone: +8 below the flip, -8 above it; |8| everywhere, so the smallest alpha.
    assert search_alpha([UNIT_A]) == 0.0
    # No unit with 2 samples: no pairs at any alpha, every alpha ties.
    assert search_alpha([unit("x", [("only", 1.0)]), unit("y", [])]) == 0.0
    assert search_alpha([]) == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_search_alpha_matches_brute_force(seed: int) -> None:
    units = random_units(seed)
    expected_k, expected_alpha = brute_force_alpha(units)
    alpha = search_alpha(units)
    assert abs(alpha - expected_alpha) < 1e-12
    assert round(alpha / STEP) == expected_k
    # The data is length-biased at alpha = 0, so the search has something to do.
    assert expected_k > 0
    # pair_language uses the same alpha and the brute force's argmax/argmin for every pair it keeps.
    result = pair_language(units)
    assert result.alpha == alpha
    by_id = {u.id: u for u in units}
    for pair in result.pairs:
        scores = [s.reward - alpha * len(s.text) for s in by_id[pair.id].samples]
        samples = by_id[pair.id].samples
        assert pair.chosen_reward == samples[first_argmax(scores)].reward
        assert pair.rejected_reward == samples[first_argmin(scores)].reward
        assert pair.chosen_length == len(samples[first_argmax(scores)].text)


def test_alpha_grid() -> None:
    grid = alpha_grid()
    assert len(grid) == 1000
    assert grid[0] == 0.0
    assert abs(grid[-1] - 0.999) < 1e-12
    assert len(alpha_grid(step=0.01)) == 100
    assert len(alpha_grid(step=0.25, stop=1.0)) == 4
    for bad in ({"step": 0.0}, {"step": -0.1}, {"stop": 0.0}, {"step": float("nan")}):
        with pytest.raises(ValueError):
            alpha_grid(**bad)


# --- select_pair -------------------------------------------------------------------------------------------


def test_select_pair_argmax_argmin_and_ties() -> None:
    # Rewards 2, 3, 0, 1 with lengths 2, 4, 2, 4.
    u = unit("t", [("ab", 2.0), ("abcd", 3.0), ("xy", 0.0), ("wxyz", 1.0)])
    assert select_pair(u, 0.0) == (1, 2)
    # alpha = 0.5 (exact in binary): scores 1, 1, -1, -1: both ties go to the lowest index.
    assert select_pair(u, 0.5) == (0, 2)
    # Equal rewards at alpha = 0: the first maximum and the first minimum.
    assert select_pair(unit("e", [("a", 1.0), ("b", 3.0), ("c", 3.0), ("d", -2.0), ("e", -2.0)]), 0.0) == (
        1,
        3,
    )
    # Every score ties: the same sample on both sides.
    assert select_pair(unit("s", [("ab", 1.0), ("cd", 1.0)]), 0.3) == (0, 0)


def test_select_pair_needs_two_samples() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        select_pair(unit("one", [("x", 1.0)]), 0.0)


def test_non_finite_reward_is_refused() -> None:
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite"):
            ScoredSample("x", bad)


# --- drops ----------------------------------------------------------------------------------------------


def test_drops_are_counted_and_take_part_in_the_search() -> None:
    same_text = unit("c", [("тот же", 0.1), ("тот же", 0.3), ("тот же", 0.2)])
    # Equal rewards, lengths 1 and 3: at alpha > 0 "a" is chosen over "bbb" (difference -2), equal rewards;
    # at alpha = 0 both scores tie and the pair is sample 0 with itself (difference 0).
    same_reward = unit("d", [("a", 0.5), ("bbb", 0.5)])
    one_sample = unit("e", [("alone", 1.0)])
    no_sample = unit("f", [])
    units = [no_sample, same_reward, UNIT_B, one_sample, same_text, UNIT_A]
    # Sum of differences: alpha = 0: A +8, B +2, d 0 -> +10; 0 < alpha <= 0.037: +8 +2 -2 -> +8;
    # alpha >= 0.038: -8 +2 -2 -> -8. Best |8|, first at alpha = 0.001. (Leaving d out of the search would
    # give +10, +10, -6 and alpha = 0.038: this pins down that drops take part.)
    result = pair_language(units)
    assert abs(result.alpha - 0.001) < 1e-12
    assert round(result.alpha / STEP) == 1
    assert result.drops == {"too_few_samples": 2, "empty_responses": 0, "same_text": 1, "same_reward": 1}
    assert [p.id for p in result.pairs] == ["a", "b"]
    assert len(result.pairs) + sum(result.drops.values()) == len(units) == result.num_units
    a, b = result.pairs
    assert (a.chosen, a.rejected, a.chosen_length, a.rejected_length) == ("привет мир", "да", 10, 2)
    assert (b.chosen, b.rejected) == ("12345", "123")
    assert result.mean_length_difference == 5.0
    assert result.mean_margin == pytest.approx((0.3 + 100.0) / 2)
    assert result.chosen_reward is not None and result.rejected_reward is not None
    assert result.chosen_reward.mean == pytest.approx(50.15)
    assert result.chosen_reward.std == pytest.approx(49.85)
    assert (result.chosen_reward.min, result.chosen_reward.max) == (0.3, 100.0)
    assert (result.rejected_reward.mean, result.rejected_reward.std) == (0.0, 0.0)


def test_all_dropped_language_has_no_statistics() -> None:
    result = pair_language([unit("x", [("same", 1.0), ("same", 2.0)]), unit("y", [("z", 1.0)])])
    assert result.pairs == []
    assert result.drops == {"too_few_samples": 1, "empty_responses": 0, "same_text": 1, "same_reward": 0}
    assert result.mean_length_difference is None
    assert result.chosen_reward is None and result.rejected_reward is None and result.mean_margin is None
    json.dumps(summarise([result]))


def test_empty_answers_are_never_chosen_or_rejected() -> None:
    """An empty or whitespace-only sample (a policy that ends its turn at once) would win as chosen with the
    highest reward or lose as rejected: it is left out and counted, and a unit left without two answers
    is dropped as empty_responses."""
    mixed = unit("m", [("", 9.0), ("ok", 1.0), ("  \n", -9.0), ("no", 2.0)])  # equal lengths: alpha 0
    hollow = unit("h", [("", 1.0), (" ", 2.0), ("only one", 3.0)])
    result = pair_language([mixed, hollow])
    [pair] = result.pairs
    assert (pair.id, pair.chosen, pair.rejected) == ("m", "no", "ok")
    assert result.drops["empty_responses"] == 1 and result.empty_samples == 4
    assert summarise([result])["totals"]["empty_samples"] == 4


# --- pair_language, records and the summary -------------------------------------------------------------


def test_pair_language_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="one language"):
        pair_language([UNIT_A, unit("z", [("x", 1.0), ("yy", 0.0)], language="de")])
    with pytest.raises(ValueError, match="twice"):
        pair_language([UNIT_A, UNIT_A])
    with pytest.raises(ValueError, match="no units"):
        pair_language([])


def test_records_have_trl_keys_and_are_sorted_by_id() -> None:
    units = random_units(7, count=30)
    result = pair_language(list(reversed(units)))
    ids = [p.id for p in result.pairs]
    assert ids == sorted(ids)
    for pair in result.pairs:
        record = pair.to_record()
        assert list(record)[:8] == [
            "id",
            "language",
            "prompt",
            "chosen",
            "rejected",
            "chosen_reward",
            "rejected_reward",
            "alpha",
        ]
        assert {"chosen_length", "rejected_length", "num_samples"} <= set(record)
        assert record["prompt"] == [{"role": "user", "content": pair.prompt}]  # conversational by default
        assert record["chosen"] == [{"role": "assistant", "content": pair.chosen}]
        assert record["rejected"] == [{"role": "assistant", "content": pair.rejected}]
        assert record["chosen"] != record["rejected"]
        assert record["chosen_reward"] != record["rejected_reward"]
        assert record["language"] == "ru" and record["alpha"] == result.alpha
        json.dumps(record)
        standard = pair.to_record("standard")
        assert list(standard) == list(record)
        assert (standard["prompt"], standard["chosen"], standard["rejected"]) == (
            pair.prompt,
            pair.chosen,
            pair.rejected,
        )
        assert {k: v for k, v in standard.items() if k not in TEXT_FIELDS} == {
            k: v for k, v in record.items() if k not in TEXT_FIELDS
        }
        assert (
            read_texts(standard) == read_texts(record) == PairTexts(pair.prompt, pair.chosen, pair.rejected)
        )


@pytest.mark.parametrize(
    ("fields", "reason", "says"),
    [
        ({"chosen": None}, "missing_field", 'missing field "chosen"'),
        (
            {"prompt": 3},
            "wrong_type",
            'field "prompt" must be a string (standard format) or [{"role": "user"',
        ),
        ({"chosen": ["Sí."]}, "wrong_type", "got a list whose item is not a"),
        ({"chosen": [{"role": "user", "content": "Sí."}]}, "wrong_type", 'got a "user" message'),
        (
            {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hola"}]},
            "wrong_type",
            "got 2 messages (exactly one is read: multi-turn prompts are not supported)",
        ),
        ({"rejected": [{"role": "assistant", "content": None}]}, "wrong_type", "content is NoneType"),
        ({"chosen": "Sí."}, "mixed_formats", '"chosen" is a string but the other fields are messages'),
    ],
)
def test_unreadable_pair_records_say_what_to_fix(fields: dict[str, object], reason: str, says: str) -> None:
    record: dict[str, object] = {"id": "1", **conversation("Hola", "Sí, claro.", "No.")}
    record.update(fields)
    record = {key: value for key, value in record.items() if value is not None}
    with pytest.raises(PairRecordError) as caught:
        read_texts(record)
    assert caught.value.reason == reason
    assert says in str(caught.value)


def test_summary_totals_add_up() -> None:
    ru = pair_language(random_units(3))
    de = pair_language([unit(u.id, [(s.text, s.reward) for s in u.samples], "de") for u in random_units(4)])
    summary = summarise([ru, de])
    assert json.loads(json.dumps(summary)) == summary
    assert set(summary["languages"]) == {"ru", "de"}
    for result in (ru, de):
        entry = summary["languages"][result.language]
        assert entry["pairs"] == len(result.pairs)
        assert entry["alpha"] == result.alpha
        assert set(entry["drops"]) == set(DROP_REASONS)
        assert entry["pairs"] + sum(entry["drops"].values()) == entry["units"] == 50
        assert set(entry["chosen_reward"]) == {"mean", "std", "min", "max"}
        assert entry["mean_length_difference"] == result.mean_length_difference
    totals = summary["totals"]
    assert totals["units"] == 100
    assert totals["pairs"] + sum(totals["drops"].values()) == 100
    assert totals["pairs"] == len(ru.pairs) + len(de.pairs)
    for reason in DROP_REASONS:
        assert totals["drops"][reason] == ru.drops[reason] + de.drops[reason]
    with pytest.raises(ValueError, match="twice"):
        summarise([ru, ru])


def test_full_size_language_completes() -> None:
    """3,000 instructions x 10 samples x 1,000 alphas: runs once (a sanity check, not a timing assert)."""
    rng = random.Random(11)
    units = [
        unit(
            f"p{i:04d}",
            [
                ("w" * (length := rng.randint(20, 2000)), 0.002 * length + rng.gauss(0.0, 1.0))
                for _ in range(10)
            ],
        )
        for i in range(3000)
    ]
    result = pair_language(units)
    assert isinstance(result, LanguagePairs)
    assert result.num_units == 3000
    assert 0.0 <= result.alpha < 1.0


def test_imports_without_torch() -> None:
    probe = "import sys, xlreward.worker.pairing\nprint('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "False"
