"""Win rate and length-controlled win rate (xlreward.evaluation.winrate), with known numbers."""

from __future__ import annotations

import numpy as np
import pytest

from xlreward.evaluation.winrate import RIDGE, fit_length_model, outcomes, win_rate


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
    sum(f * (y - p)) = RIDGE * phi, with f = tanh(delta / sd)."""
    rng = np.random.default_rng(0)
    delta = rng.normal(0, 50, size=200)
    result = (rng.random(200) < 1 / (1 + np.exp(-(0.4 + 1.5 * np.tanh(delta / delta.std()))))).astype(float)
    result[:20] = 0.5
    theta, phi = fit_length_model(result, delta)
    feature = np.tanh(delta / delta.std())
    p = 1 / (1 + np.exp(-(theta + phi * feature)))
    assert np.sum(result - p) == pytest.approx(RIDGE * theta, abs=1e-8)
    assert np.sum(feature * (result - p)) == pytest.approx(RIDGE * phi, abs=1e-8)
    assert 0.1 < theta < 0.8 and 0.8 < phi < 2.5  # near the generating (0.4, 1.5)


def test_one_sided_results_stay_finite() -> None:
    rate = win_rate([1.0] * 6, [0.0] * 6, [5, 6, 7, 8, 9, 10], [7] * 6)
    assert rate.win_rate == 100.0
    assert 95 < rate.length_controlled <= 100
