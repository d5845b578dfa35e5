"""Win rate and length-controlled win rate (xlreward.evaluation.winrate), with known numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from alpaca_eval_data import INSTRUCTIONS, difficulties, use_local_difficulties
from xlreward.evaluation.lc_variants import (
    AlpacaEvalUnavailable,
    alpaca_eval_instruction_count,
    check_instruction_counts,
)
from xlreward.evaluation.run import length_controlled
from xlreward.evaluation.winrate import RIDGE, _sigmoid, fit_length_model, outcomes, win_rate


def test_outcomes_count_ties_half() -> None:
    assert outcomes([1.0, 0.0, 0.5, 0.3], [0.0, 1.0, 0.5, 0.3 + 1e-12]).tolist() == [1.0, 0.0, 0.5, 0.5]


def test_outcomes_refuse_mismatched_or_empty_inputs() -> None:
    with pytest.raises(ValueError, match="one model score and one baseline score"):
        outcomes([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least one"):
        outcomes([], [])


def test_equal_lengths_make_lc_the_win_rate() -> None:
    """No length difference anywhere: the length term is 0 and LC = sigmoid(logit(WR)) = WR."""
    rate = win_rate([1, 1, 1, 0, 0.5], [0, 0, 0, 1, 0.5], [10] * 5, [10] * 5)
    assert rate.win_rate == pytest.approx(70.0)
    assert rate.length_controlled == pytest.approx(70.0, abs=0.05)  # the ridge's pull is tiny
    assert (rate.wins, rate.ties, rate.losses) == (3, 1, 1)


def test_a_win_rate_explained_by_length_alone_is_mostly_removed() -> None:
    """The model wins exactly when it is longer (8 of 10 times): WR 80, but length explains every outcome,
    so most of the advantage goes to the length term (only the ridge penalty keeps LC off 50)."""
    rate = win_rate([1] * 8 + [0] * 2, [0] * 8 + [1] * 2, [110] * 8 + [90] * 2, [100] * 10)
    assert rate.win_rate == pytest.approx(80.0)
    assert 50 < rate.length_controlled < 70
    assert rate.length_coefficient > 3


def test_fit_satisfies_the_penalised_score_equations() -> None:
    """At the optimum the gradient of the penalised log-likelihood is zero: sum(y - p) = RIDGE * theta and
    sum(f * (y - p)) = RIDGE * phi, with f = tanh(delta / sd), sd with n - 1 (pandas' std: alpaca_eval's)."""
    rng = np.random.default_rng(0)
    delta = rng.normal(0, 50, size=200)
    result = (rng.random(200) < 1 / (1 + np.exp(-(0.4 + 1.5 * np.tanh(delta / delta.std()))))).astype(float)
    result[:20] = 0.5
    theta, phi = fit_length_model(result, delta)
    feature = np.tanh(delta / delta.std(ddof=1))
    p = 1 / (1 + np.exp(-(theta + phi * feature)))
    assert np.sum(result - p) == pytest.approx(RIDGE * theta, abs=1e-8)
    assert np.sum(feature * (result - p)) == pytest.approx(RIDGE * phi, abs=1e-8)
    assert 0.1 < theta < 0.8 and 0.8 < phi < 2.5  # near the generating (0.4, 1.5)


def test_one_sided_results_stay_finite() -> None:
    rate = win_rate([1.0] * 6, [0.0] * 6, [5, 6, 7, 8, 9, 10], [7] * 6)
    assert rate.win_rate == 100.0
    assert 95 < rate.length_controlled <= 100


# --- against alpaca_eval's own GLM (alpaca_eval 0.6.6, the dev extra) ------------------------------------
# (its pkg_resources import and the scikit-learn arguments it passes warn; a user cannot act on either)
pytestmark = [
    pytest.mark.filterwarnings("ignore::FutureWarning:sklearn"),
    pytest.mark.filterwarnings("ignore:pkg_resources is deprecated:UserWarning"),
    pytest.mark.filterwarnings("ignore:Inconsistent values. penalty=l1:UserWarning"),
]


def synthetic_annotations(seed: int, n: int = INSTRUCTIONS) -> tuple[np.ndarray, list[str], list[str]]:
    """(outcomes, model outputs, baseline outputs) of ``n`` instructions: outcomes drawn from a GLM with a
    length effect and the synthetic difficulties, 5% ties."""
    rng = np.random.default_rng(seed)
    model_lengths, baseline_lengths = rng.integers(50, 800, n), rng.integers(50, 800, n)
    logit = 0.3 + 1.2 * np.tanh((model_lengths - baseline_lengths) / 300) - 0.5 * difficulties()[:n]
    result = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    result[rng.random(n) < 0.05] = 0.5
    return result, ["m" * int(k) for k in model_lengths], ["b" * int(k) for k in baseline_lengths]


def judge_scores(result: np.ndarray) -> tuple[list[float], list[float]]:
    """(model, baseline) judge scores giving these outcomes: 1 vs 0 a win, 0 vs 1 a loss, 1/2 vs 1/2 a tie."""
    won, tied = result == 1, result == 0.5
    return (won + 0.5 * tied).tolist(), ((result == 0) + 0.5 * tied).tolist()


def alpaca_eval_frame(result: np.ndarray, model: list[str], baseline: list[str]) -> pd.DataFrame:
    """The annotations as alpaca_eval writes them, built here rather than by lc_variants: the baseline is
    output_1, preference 2 when the model wins, 1 when it loses, 0 for a draw (its other draw code)."""
    return pd.DataFrame(
        {
            "output_1": baseline,
            "output_2": model,
            "generator_1": "gpt4_1106_preview",
            "generator_2": "my_model",
            "preference": np.select([result == 1, result == 0], [2.0, 1.0], 0.0),
        }
    )


@pytest.fixture
def glm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """alpaca_eval's glm_winrate module, reading the synthetic df_gamed.csv instead of downloading it."""
    from alpaca_eval.metrics import glm_winrate

    use_local_difficulties(monkeypatch, tmp_path)
    return glm_winrate


@pytest.mark.parametrize("seed", [0, 1])
def test_minimal_is_alpaca_evals_length_controlled_minimal(glm: Any, seed: int) -> None:
    """Same GLM, same features (tanh of the length difference over its n - 1 sd), same soft ties: with the
    penalty made negligible (C = 1e10, no cross-validation) alpaca_eval's own fit gives our unpenalised LC to
    1e-6 points, and our ridge moves it by under 1e-3. alpaca_eval's default also picks an L1 penalty by
    5-fold cross-validation: on 805 instructions that shrinks LC by under 0.1 points."""
    result, model, baseline = synthetic_annotations(seed)
    frame = alpaca_eval_frame(result, model, baseline)
    info = dict(glm.GLM_INFO["length_controlled_minimal"])
    info["kwargs"] = {"n_splits": 0, "C": 1e10, "tol": 1e-14, "max_iter": 100_000}
    unpenalised = glm.get_length_controlled_winrate(frame, glm_info=info, save_weights_dir=None)
    default = glm.get_length_controlled_winrate(
        frame, glm_name="length_controlled_minimal", save_weights_dir=None
    )
    delta = np.array([len(m) - len(b) for m, b in zip(model, baseline, strict=True)], dtype=float)
    theta, _ = fit_length_model(result, delta, ridge=0.0)
    scores, base = judge_scores(result)
    ours = win_rate(scores, base, [len(m) for m in model], [len(b) for b in baseline])
    assert ours.win_rate == pytest.approx(unpenalised["win_rate"], abs=1e-9)
    assert 100 * _sigmoid(theta) == pytest.approx(unpenalised["length_controlled_winrate"], abs=1e-6)
    assert ours.length_controlled == pytest.approx(unpenalised["length_controlled_winrate"], abs=1e-3)
    assert ours.length_controlled == pytest.approx(default["length_controlled_winrate"], abs=0.1)


def test_v1_is_alpaca_evals_default_on_the_same_annotations(glm: Any) -> None:
    """The alpaca_eval_v1 path (our outcomes and outputs, adapted by lc_variants) gives what alpaca_eval's
    default call gives on the annotations written its own way; WR is the same in both."""
    result, model, baseline = synthetic_annotations(2)
    scores, base = judge_scores(result)
    assert outcomes(scores, base).tolist() == result.tolist()
    expected = glm.get_length_controlled_winrate(
        alpaca_eval_frame(result, model, baseline), save_weights_dir=None
    )
    rate = length_controlled("alpaca_eval_v1", scores, base, model, baseline)
    assert rate.length_controlled == pytest.approx(expected["length_controlled_winrate"], abs=1e-9)
    assert rate.win_rate == pytest.approx(expected["win_rate"], abs=1e-9)
    assert rate.length_coefficient is None and "length_coefficient" not in rate.to_json()
    minimal = length_controlled("minimal", scores, base, model, baseline)
    assert abs(minimal.length_controlled - rate.length_controlled) > 0.05  # the difficulty term is live


def test_alpaca_eval_counts_its_instructions_and_refuses_other_counts(glm: Any) -> None:
    known = alpaca_eval_instruction_count()
    assert known == INSTRUCTIONS
    check_instruction_counts({"en": 5, "de": INSTRUCTIONS}, known)
    for count in (4, INSTRUCTIONS + 1):
        with pytest.raises(AlpacaEvalUnavailable, match=f"es has {count} instructions.*needs 5 to 805"):
            check_instruction_counts({"en": 10, "es": count}, known)
