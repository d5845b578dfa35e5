"""Win rate and length-controlled win rate of a model against a baseline (AlpacaEval 2 style).

Each instruction gives one comparison: the judge's score of the model's output against the baseline's,
1 for a win, 0 for a loss, 1/2 for a tie. The win rate (WR) is their mean, in percent.

The length-controlled win rate (LC) answers "what would the win rate be if both outputs had the same
length": a logistic regression of the outcome on the length difference,

    P(model wins | i) = sigmoid(theta + phi * tanh((len_model_i - len_baseline_i) / sd)),

with sd the standard deviation of the length differences (n - 1 in the denominator, as pandas computes it),
is fitted by maximum likelihood (ties are soft labels of 1/2) and LC = 100 * sigmoid(theta), the
prediction at zero length difference. This is alpaca_eval's ``length_controlled_minimal`` GLM (Dubois et
al., 2024, eq. 2 without the instruction-difficulty term), the ``minimal`` variant of ``lc_variants``: with
a vanishing penalty alpaca_eval's own fit of it gives the same LC to 1e-6 points (tests/test_winrate.py).
alpaca_eval itself adds an L1 penalty chosen by 5-fold cross-validation, which moves LC by under 0.1
points on 805 instructions and by up to a few points on 40.

alpaca_eval's default GLM, ``length_controlled_v1``, also has an instruction-difficulty term. That needs
no other models' results at evaluation time: the difficulties were estimated once from the leaderboard's
models and alpaca_eval ships them, one per AlpacaEval instruction, so they describe AlpacaEval's 805
instructions only. ``lc_variants`` runs that GLM through alpaca_eval itself when asked for.

A small ridge penalty keeps the fit finite when one side wins every comparison (then WR is 0 or 100 and
LC follows it); otherwise it moves LC by about 5e-5 points on 805 instructions.

Written with numpy (a two-parameter Newton fit) rather than scikit-learn: sklearn's LogisticRegression has
no soft labels, and the fit is small enough to test against known numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RIDGE = 1e-3
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class WinRate:
    win_rate: float  # percent
    length_controlled: float  # percent
    wins: int
    ties: int
    losses: int
    # phi: how much the outcome follows the length difference; None when LC came from another variant's GLM
    length_coefficient: float | None

    @property
    def count(self) -> int:
        return self.wins + self.ties + self.losses

    def to_json(self) -> dict[str, float | int]:
        fields: dict[str, float | int] = {
            "win_rate": round(self.win_rate, 2),
            "length_controlled_win_rate": round(self.length_controlled, 2),
            "wins": self.wins,
            "ties": self.ties,
            "losses": self.losses,
        }
        if self.length_coefficient is not None:
            fields["length_coefficient"] = round(self.length_coefficient, 4)
        return fields


def outcomes(model_scores: Sequence[float], baseline_scores: Sequence[float]) -> np.ndarray:
    """1 where the model's score is higher, 0 where lower, 0.5 for a tie (equal within 1e-9)."""
    model, baseline = np.asarray(model_scores, dtype=float), np.asarray(baseline_scores, dtype=float)
    if model.shape != baseline.shape or model.ndim != 1 or model.size == 0:
        raise ValueError("give one model score and one baseline score per instruction (at least one)")
    diff = model - baseline
    return np.where(np.abs(diff) <= TIE_TOLERANCE, 0.5, (diff > 0).astype(float))


def win_rate(
    model_scores: Sequence[float],
    baseline_scores: Sequence[float],
    model_lengths: Sequence[int],
    baseline_lengths: Sequence[int],
) -> WinRate:
    result = outcomes(model_scores, baseline_scores)
    delta = np.asarray(model_lengths, dtype=float) - np.asarray(baseline_lengths, dtype=float)
    if delta.shape != result.shape:
        raise ValueError("give one model length and one baseline length per instruction")
    theta, phi = fit_length_model(result, delta)
    return WinRate(
        win_rate=100 * float(result.mean()),
        length_controlled=100 * _sigmoid(theta),
        wins=int((result == 1).sum()),
        ties=int((result == 0.5).sum()),
        losses=int((result == 0).sum()),
        length_coefficient=phi,
    )


def fit_length_model(
    result: np.ndarray, length_delta: np.ndarray, steps: int = 50, ridge: float = RIDGE
) -> tuple[float, float]:
    """(theta, phi) maximising the soft-label log-likelihood minus ridge * |(theta, phi)|^2 / 2."""
    feature = length_feature(length_delta)
    design = np.stack([np.ones_like(feature), feature], axis=1)  # (N, 2)
    weights = np.zeros(2)
    for _ in range(steps):  # Newton's method: the objective is strictly concave, so this converges
        p = 1 / (1 + np.exp(-(design @ weights)))
        gradient = design.T @ (result - p) - ridge * weights
        hessian = (design * (p * (1 - p))[:, None]).T @ design + ridge * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        weights += step
        if np.abs(step).max() < 1e-10:
            break
    return float(weights[0]), float(weights[1])


def length_feature(length_delta: np.ndarray) -> np.ndarray:
    """tanh(delta / sd), sd with n - 1 in the denominator as alpaca_eval's pandas .std(); all zeros when the
    differences do not vary (or there is one), so the fit is then the plain win rate."""
    sd = float(length_delta.std(ddof=1)) if length_delta.size > 1 else 0.0
    return np.tanh(length_delta / sd) if sd > 0 else np.zeros_like(length_delta)


def _sigmoid(x: float) -> float:
    return float(1 / (1 + np.exp(-x)))
