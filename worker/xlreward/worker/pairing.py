"""Pair selection with length control (METHOD.md, steps 5 and 6): the pure, torch-free pairing step.

Input: for one language, the scored samples of each instruction (a ``ScoredUnit``). Output: one
(chosen, rejected) pair per instruction, as TRL preference records (``pair_format``: conversational by
default, or standard), plus what was dropped and why.

The method, per language:

* every sample gets the length-controlled score ``s_i = r_i - alpha * len(y_i)``, where ``r_i`` is its
  implicit reward and ``len(y_i)`` its length in characters (``len()`` of the Python ``str``; not bytes,
  not tokens);
* ``chosen = argmax s`` and ``rejected = argmin s``; a tie in ``s`` goes to the LOWEST sample index, for
  the argmax and for the argmin alike (numpy's first-occurrence rule);
* ``alpha`` is one value for the whole language, taken from the grid ``k * step`` for
  ``k = 0, 1, ..., ceil(stop / step) - 1`` (by default 0.000, 0.001, ..., 0.999; ``stop`` is excluded):
  the one whose pairs have the mean signed length difference ``len(chosen) - len(rejected)`` closest to 0
  (smallest absolute value); ties go to the SMALLEST alpha.

Empty samples first: a sample whose text is empty or only whitespace (a policy that ends its turn at once)
is no answer, so it never becomes ``chosen`` or ``rejected``; it is left out before anything else and
counted (``empty_samples``). A unit left with fewer than 2 samples by that is dropped as
``empty_responses``.

Which units take part in the alpha search: every unit with at least 2 samples, including units whose pair
is later dropped as ``same_text`` or ``same_reward``. Whether a unit's pair is degenerate depends on
alpha itself (which samples end up at the argmax and the argmin), so alpha has to be chosen before the
pairs are known; leaving out the units that drop at some alpha would make the objective circular. A
degenerate ``same_text`` pair adds 0 to the length difference anyway. Units with fewer than 2 samples
have no pair at any alpha and take no part.

Drops, counted by reason (checked in this order): ``too_few_samples`` (fewer than 2 samples),
``empty_responses`` (fewer than 2 once empty samples are left out), ``same_text`` (chosen and rejected
are the same sample, which happens when every ``s`` ties, or two samples whose texts are equal but for
leading and trailing whitespace),
``same_reward`` (exactly equal rewards; such a pair teaches nothing). There is no margin threshold (the
paper has none).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from xlreward.worker.pair_format import DEFAULT_PAIR_FORMAT, PairFormat, pair_fields

DROP_REASONS = ("too_few_samples", "empty_responses", "same_text", "same_reward")
DEFAULT_STEP = 0.001
DEFAULT_STOP = 1.0

# Elements of the [alphas, units, samples] score block evaluated at once: bounds memory (16 MiB of float64
# per temporary) and keeps the block cache-friendly (larger blocks measured slower, not faster).
_BLOCK_ELEMENTS = 1 << 21


@dataclass(frozen=True)
class ScoredSample:
    """One sampled response and its implicit reward ``beta * (log pi_dpo - log pi_ref)``."""

    text: str
    reward: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.reward):
            raise ValueError(f"reward must be a finite number, got {self.reward!r}")


@dataclass(frozen=True)
class ScoredUnit:
    """All scored samples of one instruction in one language.

    ``prompt`` is the target-language instruction, untemplated (what the DPO record's ``prompt`` holds);
    ``samples`` are in generation order, and sample indices refer to that order.
    """

    id: str
    language: str
    prompt: str
    samples: tuple[ScoredSample, ...]

    def __post_init__(self) -> None:
        # Accept any sequence but store a tuple, so the unit stays hashable and immutable.
        object.__setattr__(self, "samples", tuple(self.samples))


@dataclass(frozen=True)
class PreferencePair:
    """The pair kept for one (instruction, language); lengths are in characters."""

    id: str
    language: str
    prompt: str
    chosen: str
    rejected: str
    chosen_reward: float
    rejected_reward: float
    alpha: float
    chosen_length: int
    rejected_length: int
    num_samples: int

    def to_record(self, pair_format: PairFormat = DEFAULT_PAIR_FORMAT) -> dict[str, Any]:
        """One line of a TRL preference dataset, with the pair's provenance alongside: ``prompt``,
        ``chosen`` and ``rejected`` as chat messages (conversational, the default) or as plain strings
        (standard); see ``pair_format``."""
        return {
            "id": self.id,
            "language": self.language,
            **pair_fields(self.prompt, self.chosen, self.rejected, pair_format),
            "chosen_reward": self.chosen_reward,
            "rejected_reward": self.rejected_reward,
            "alpha": self.alpha,
            "chosen_length": self.chosen_length,
            "rejected_length": self.rejected_length,
            "num_samples": self.num_samples,
        }


@dataclass(frozen=True)
class RewardStats:
    """Summary of a set of rewards; ``std`` is the population standard deviation (ddof=0)."""

    mean: float
    std: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> RewardStats | None:
        """The statistics of ``values``, or None when there are none."""
        if not values:
            return None
        array = np.asarray(values, dtype=np.float64)
        return cls(
            mean=float(array.mean()), std=float(array.std()), min=float(array.min()), max=float(array.max())
        )

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std, "min": self.min, "max": self.max}


@dataclass
class LanguagePairs:
    """The pairing result of one language.

    ``drops`` maps every reason in ``DROP_REASONS`` to its count (zeros included), so
    ``len(pairs) + sum(drops.values())`` is the number of input units; ``empty_samples`` counts the samples
    left out as empty. The statistics cover the KEPT pairs
    (computed from ``pairs``) and are None when no pair was kept: ``mean_length_difference`` is the mean of
    ``chosen_length - rejected_length``, ``mean_margin`` the mean of ``chosen_reward - rejected_reward``.
    """

    language: str
    alpha: float
    pairs: list[PreferencePair]
    drops: dict[str, int]
    empty_samples: int = 0

    @property
    def mean_length_difference(self) -> float | None:
        if not self.pairs:
            return None
        return float(np.mean([p.chosen_length - p.rejected_length for p in self.pairs]))

    @property
    def chosen_reward(self) -> RewardStats | None:
        return RewardStats.of([p.chosen_reward for p in self.pairs])

    @property
    def rejected_reward(self) -> RewardStats | None:
        return RewardStats.of([p.rejected_reward for p in self.pairs])

    @property
    def mean_margin(self) -> float | None:
        if not self.pairs:
            return None
        return float(np.mean([p.chosen_reward - p.rejected_reward for p in self.pairs]))

    @property
    def num_units(self) -> int:
        return len(self.pairs) + sum(self.drops.values())

    def summary(self) -> dict[str, Any]:
        """JSON-able summary of this language (no pair texts)."""
        return {
            "units": self.num_units,
            "pairs": len(self.pairs),
            "drops": dict(self.drops),
            "empty_samples": self.empty_samples,
            "alpha": self.alpha,
            "mean_length_difference": self.mean_length_difference,
            "chosen_reward": None if self.chosen_reward is None else self.chosen_reward.to_dict(),
            "rejected_reward": None if self.rejected_reward is None else self.rejected_reward.to_dict(),
            "mean_margin": self.mean_margin,
        }


def alpha_grid(step: float = DEFAULT_STEP, stop: float = DEFAULT_STOP) -> npt.NDArray[np.float64]:
    """The alpha grid ``k * step`` for ``k = 0 .. ceil(stop / step) - 1`` (0 included, ``stop`` excluded).

    ``stop / step`` is rounded to 9 decimals before the ceiling so that float noise (``1.0 / 0.001``)
    does not add or remove a grid point.
    """
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"step must be a positive finite number, got {step!r}")
    if not (math.isfinite(stop) and stop > 0):
        raise ValueError(f"stop must be a positive finite number, got {stop!r}")
    count = math.ceil(round(stop / step, 9))
    return np.arange(count, dtype=np.float64) * step


def _padded(
    units: Sequence[ScoredUnit],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Rewards [U, S], character lengths [U, S] and a validity mask [U, S], padded to the widest unit."""
    width = max(len(unit.samples) for unit in units)
    rewards = np.zeros((len(units), width), dtype=np.float64)
    lengths = np.zeros((len(units), width), dtype=np.int64)
    mask = np.zeros((len(units), width), dtype=np.bool_)
    for row, unit in enumerate(units):
        count = len(unit.samples)
        rewards[row, :count] = [sample.reward for sample in unit.samples]
        lengths[row, :count] = [len(sample.text) for sample in unit.samples]
        mask[row, :count] = True
    return rewards, lengths, mask


def search_alpha(
    units: Sequence[ScoredUnit], *, step: float = DEFAULT_STEP, stop: float = DEFAULT_STOP
) -> float:
    """The length-control alpha of one language (see the module docstring for the rule).

    Units with fewer than 2 samples are ignored; when none has 2 or more, every alpha ties (no pairs)
    and the smallest, 0.0, is returned. The scores ``r - alpha * len`` are computed exactly as
    ``select_pair`` computes them (float64, same operations), so the pairs behind the search are the pairs
    ``select_pair`` returns. Vectorised over [alphas, units, samples] in blocks; padding is masked out
    (it can never be an argmax or an argmin).
    """
    alphas = alpha_grid(step, stop)
    usable = [unit for unit in units if len(unit.samples) >= 2]
    if not usable:
        return float(alphas[0])
    rewards, lengths, mask = _padded(usable)
    float_lengths = lengths.astype(np.float64)
    padded = not bool(mask.all())
    rows = np.arange(len(usable))[None, :]
    block = max(1, _BLOCK_ELEMENTS // rewards.size)
    # Every alpha scores the same units, so comparing |sum of differences| is comparing |mean|, exactly:
    # the differences are integers, so the objective carries no rounding at all.
    objective = np.empty(len(alphas), dtype=np.int64)
    for start in range(0, len(alphas), block):
        chunk = alphas[start : start + block]
        scores = rewards[None, :, :] - chunk[:, None, None] * float_lengths[None, :, :]  # [a, U, S]
        if padded:
            chosen = np.where(mask, scores, -np.inf).argmax(axis=-1)  # [a, U]
            rejected = np.where(mask, scores, np.inf).argmin(axis=-1)
        else:
            chosen, rejected = scores.argmax(axis=-1), scores.argmin(axis=-1)
        difference = lengths[rows, chosen] - lengths[rows, rejected]
        objective[start : start + len(chunk)] = np.abs(difference.sum(axis=1))
    return float(alphas[int(np.argmin(objective))])  # argmin takes the first, i.e. smallest, alpha


def select_pair(unit: ScoredUnit, alpha: float) -> tuple[int, int]:
    """``(chosen index, rejected index)``: the argmax and argmin of ``reward - alpha * len(text)``.

    Ties go to the lowest sample index for both, so when every score ties both indices are 0 (the same
    sample). Raises ValueError for a unit with fewer than 2 samples.
    """
    if len(unit.samples) < 2:
        raise ValueError(f"unit {unit.id!r} has {len(unit.samples)} sample(s); a pair needs at least 2")
    rewards = np.array([sample.reward for sample in unit.samples], dtype=np.float64)
    lengths = np.array([len(sample.text) for sample in unit.samples], dtype=np.float64)
    scores = rewards - alpha * lengths
    return int(np.argmax(scores)), int(np.argmin(scores))


def _drop_reason(chosen: ScoredSample, rejected: ScoredSample) -> str | None:
    if chosen.text.strip() == rejected.text.strip():  # as the trainer compares them
        return "same_text"
    if chosen.reward == rejected.reward:
        return "same_reward"
    return None


def _check_units(units: Sequence[ScoredUnit]) -> str:
    """The one language of ``units``; ValueError for no units, mixed languages or repeated ids."""
    if not units:
        raise ValueError("no units to pair")
    languages = sorted({unit.language for unit in units})
    if len(languages) > 1:
        raise ValueError(f"units of one language expected, got {languages}")
    seen: set[str] = set()
    for unit in units:
        if unit.id in seen:
            raise ValueError(f"unit id {unit.id!r} appears twice in language {languages[0]!r}")
        seen.add(unit.id)
    return languages[0]


def pair_language(
    units: Sequence[ScoredUnit], *, step: float = DEFAULT_STEP, stop: float = DEFAULT_STOP
) -> LanguagePairs:
    """Search alpha for the language, then keep one pair per unit or count why it was dropped.

    All units must share one language and have distinct ids (ValueError otherwise, or when there are no
    units). ``pairs`` are sorted by id.
    """
    language = _check_units(units)
    answered = [without_empty_samples(unit) for unit in units]
    alpha = search_alpha(answered, step=step, stop=stop)
    drops = dict.fromkeys(DROP_REASONS, 0)
    pairs: list[PreferencePair] = []
    for original, unit in sorted(zip(units, answered, strict=True), key=lambda both: both[0].id):
        if len(original.samples) < 2:
            drops["too_few_samples"] += 1
            continue
        if len(unit.samples) < 2:
            drops["empty_responses"] += 1
            continue
        chosen_index, rejected_index = select_pair(unit, alpha)
        chosen, rejected = unit.samples[chosen_index], unit.samples[rejected_index]
        reason = _drop_reason(chosen, rejected)
        if reason is not None:
            drops[reason] += 1
            continue
        pairs.append(
            PreferencePair(
                id=unit.id,
                language=language,
                prompt=unit.prompt,
                chosen=chosen.text,
                rejected=rejected.text,
                chosen_reward=chosen.reward,
                rejected_reward=rejected.reward,
                alpha=alpha,
                chosen_length=len(chosen.text),
                rejected_length=len(rejected.text),
                num_samples=len(unit.samples),
            )
        )
    empty = sum(
        len(original.samples) - len(unit.samples) for original, unit in zip(units, answered, strict=True)
    )
    return LanguagePairs(language=language, alpha=alpha, pairs=pairs, drops=drops, empty_samples=empty)


def without_empty_samples(unit: ScoredUnit) -> ScoredUnit:
    """``unit`` without its samples whose text is empty or whitespace (the unit itself when it has none)."""
    kept = tuple(sample for sample in unit.samples if sample.text.strip())
    if len(kept) == len(unit.samples):
        return unit
    return ScoredUnit(id=unit.id, language=unit.language, prompt=unit.prompt, samples=kept)


def summarise(results: Sequence[LanguagePairs]) -> dict[str, Any]:
    """JSON-able summary: ``{"languages": {language: LanguagePairs.summary()}, "totals": {"units",
    "pairs", "drops": {reason: count}}}``; ValueError when a language appears twice."""
    languages: dict[str, dict[str, Any]] = {}
    drops = dict.fromkeys(DROP_REASONS, 0)
    empty_samples = 0
    for result in results:
        if result.language in languages:
            raise ValueError(f"language {result.language!r} appears twice")
        languages[result.language] = result.summary()
        for reason, count in result.drops.items():
            drops[reason] = drops.get(reason, 0) + count
        empty_samples += result.empty_samples
    return {
        "languages": languages,
        "totals": {
            "units": sum(result.num_units for result in results),
            "pairs": sum(len(result.pairs) for result in results),
            "drops": drops,
            "empty_samples": empty_samples,
        },
    }
