"""Win rate and length-controlled win rate of a model against a baseline (AlpacaEval 2 style).

Each instruction gives one comparison: the judge's score of the model's output against the baseline's,
1 for a win, 0 for a loss, 1/2 for a tie. The win rate (WR) is their mean, in percent.

The length-controlled win rate (LC) answers "what would the win rate be if both outputs had the same
length": a logistic regression of the outcome on the length difference,

    P(model wins | i) = sigmoid(theta + phi * tanh((len_model_i - len_baseline_i) / sd)),

with sd the standard deviation of the length differences, is fitted by maximum likelihood (ties are soft
labels of 1/2) and LC = 100 * sigmoid(theta), the prediction at zero length difference. This is the
length term of AlpacaEval 2's GLM (Dubois et al., 2024, eq. 2); its instruction-difficulty term needs many
models' results on the same instructions and is left out, so with one model and one baseline LC is the
win rate with the length effect removed. A small ridge penalty keeps the fit finite when one side wins
every comparison (then WR is 0 or 100 and LC follows it).

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
    length_coefficient: float  # phi: how much the outcome follows the length difference

    @property
    def count(self) -> int:
        return self.wins + self.ties + self.losses

    def to_json(self) -> dict[str, float | int]:
        return {
            "win_rate": round(self.win_rate, 2),
            "length_controlled_win_rate": round(self.length_controlled, 2),
            "wins": self.wins,
            "ties": self.ties,
            "losses": self.losses,
            "length_coefficient": round(self.length_coefficient, 4),
        }


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


def fit_length_model(result: np.ndarray, length_delta: np.ndarray, steps: int = 50) -> tuple[float, float]:
    """(theta, phi) maximising the soft-label log-likelihood minus RIDGE * |(theta, phi)|^2 / 2."""
    sd = float(length_delta.std())
    feature = np.tanh(length_delta / sd) if sd > 0 else np.zeros_like(length_delta)
    design = np.stack([np.ones_like(feature), feature], axis=1)  # (N, 2)
    weights = np.zeros(2)
    for _ in range(steps):  # Newton's method: the objective is strictly concave, so this converges
        p = 1 / (1 + np.exp(-(design @ weights)))
        gradient = design.T @ (result - p) - RIDGE * weights
        hessian = (design * (p * (1 - p))[:, None]).T @ design + RIDGE * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        weights += step
        if np.abs(step).max() < 1e-10:
            break
    return float(weights[0]), float(weights[1])


def _sigmoid(x: float) -> float:
    return float(1 / (1 + np.exp(-x)))
