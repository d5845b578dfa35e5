"""The interface every served reward model implements, torch-free so that the route, the scheduler and
the runtime can use it with real types without importing torch.

A reward model tokenizes (prompt, response) pairs into ``TokenizedItem``s, plans batches of work units for
the scheduler (``new_plan``: a ``ForwardPlan`` the scheduler fills until a unit does not fit), runs a plan,
scores items offline, and describes how it runs in one line. Two kinds implement it:
``engine.ScoringEngine`` (an implicit pair: a DPO policy and its reference, full or LoRA mode) and
``classifier.ClassifierRewardModel`` (a sequence-classification model with a one-logit head).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from xlreward.service.protocol import ChatMessage, RewardItem, RewardResult
from xlreward.service.scoring.templating import TokenizedItem

ModelKind = Literal["implicit", "classifier"]
Progress = Callable[[int], None]
Sums = tuple[float, ...]  # per item, one float64 sum per side of the model


@dataclass(frozen=True)
class WorkUnit:
    """What the scheduler batches: one item, or a group of responses to one prompt."""

    items: tuple[TokenizedItem, ...]
    is_group: bool = False


class ForwardPlan(Protocol):
    """One scheduler batch's forward plan: the units it holds and the positions it runs."""

    units: list[WorkUnit]

    @property
    def padded_tokens(self) -> int:
        """Positions each side runs through its backbone, padding included."""
        ...

    def add(self, unit: WorkUnit) -> bool:
        """Takes ``unit`` if the plan still fits the budget with it (the first unit always fits)."""
        ...

    def run(self) -> list[list[Sums]]:
        """Per unit, per item, the sum of its read values under each side."""
        ...


class ItemReward(Protocol):
    """One scored item: its reward, how many response tokens it scored, and its wire form."""

    @property
    def reward(self) -> float: ...

    @property
    def num_response_tokens(self) -> int: ...

    def to_result(self, item_id: str | int | None = None) -> RewardResult: ...


class RewardModel(Protocol):
    kind: ModelKind
    max_length: int

    @property
    def beta(self) -> float | None:
        """The reward scale of an implicit model (a request may override it); None for a classifier."""
        ...

    def tokenize_pair(
        self,
        prompt: str | Sequence[ChatMessage],
        response: str,
        *,
        truncate: bool = False,
        rendered: bool = False,
    ) -> TokenizedItem:
        """Token ids and the read span of one pair; raises ``ItemError`` saying what to fix. ``rendered``:
        the prompt is text already in the model's chat format (special tokens written out, as OpenRLHF
        sends it), and the response follows it verbatim."""
        ...

    def new_plan(self) -> ForwardPlan: ...

    def run(self, plan: ForwardPlan) -> list[list[ItemReward]]:
        """Runs a plan; per unit, its items' scores in order."""
        ...

    def score(self, items: Sequence[RewardItem], progress: Progress | None = None) -> list[RewardResult]:
        """Scores items offline (no scheduler), results in input order."""
        ...

    def describe(self) -> str:
        """How the model scores, in one line (device, dtype, rows, mode)."""
        ...

    def modules(self) -> tuple[Any, ...]:
        """The torch modules the model runs (two sides may share one), for what it holds in memory."""
        ...
