"""How a reward model runs its work, chosen once when the model is built (``strategy_for``):

- ``SplitStrategy`` (the default): single items in right-padded batches (``padded``), and each group of
  responses to one prompt with the prompt run once (``prefix``);
- ``PackedStrategy`` (``packed``): items and groups together in packed rows without padding (``packing``).

Both plan a batch the same way for the server's scheduler: ``new_plan(core)`` starts an empty
``ForwardPlan``, the scheduler offers it units one at a time (``add``) until one does not fit the core's
``max_batch_tokens``, and the plan then runs exactly what it planned. ``padded_tokens`` is what it runs:
positions per side through the backbone, padding included; the batch metrics report it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from xlreward.service.scoring.core import ScoringCore
from xlreward.service.scoring.packing import PackedPlan, plan_packed, score_packed
from xlreward.service.scoring.padded import padded_positions, plan_padded, score_padded
from xlreward.service.scoring.prefix import PrefixPlan, plan_shared_prefix, score_shared_prefix
from xlreward.service.scoring.reward_model import ForwardPlan, Progress, Sums, WorkUnit
from xlreward.service.scoring.templating import TokenizedItem


class Strategy(Protocol):
    rows: str  # how ``describe`` names it: "padded rows", "packed rows"

    def new_plan(self, core: ScoringCore) -> ForwardPlan: ...

    def score_items(
        self, core: ScoringCore, items: Sequence[TokenizedItem], progress: Progress | None = None
    ) -> list[Sums]: ...

    def score_groups(
        self, core: ScoringCore, groups: Sequence[Sequence[TokenizedItem]], progress: Progress | None = None
    ) -> list[list[Sums]]: ...


class SplitPlan:
    """Single items in padded batches, each group on its own shared prefix."""

    def __init__(self, core: ScoringCore) -> None:
        self.core = core
        self.units: list[WorkUnit] = []
        self._singles: list[TokenizedItem] = []
        self._batches: list[list[int]] = []
        self._single_positions = 0
        self._groups: list[PrefixPlan] = []
        self._group_positions = 0

    @property
    def padded_tokens(self) -> int:
        return self._single_positions + self._group_positions

    def add(self, unit: WorkUnit) -> bool:
        if unit.is_group:
            group = plan_shared_prefix(self.core, unit.items)
            if self.units and self.padded_tokens + group.positions > self.core.max_batch_tokens:
                return False
            self._groups.append(group)
            self._group_positions += group.positions
        else:
            singles = [*self._singles, *unit.items]
            batches = plan_padded(self.core, singles)
            positions = padded_positions(singles, batches)
            if self.units and self._group_positions + positions > self.core.max_batch_tokens:
                return False
            self._singles, self._batches, self._single_positions = singles, batches, positions
        self.units.append(unit)
        return True

    def run(self) -> list[list[Sums]]:
        singles = iter(score_padded(self.core, self._singles, self._batches) if self._singles else [])
        groups = iter(self._groups)
        results: list[list[Sums]] = []
        for unit in self.units:
            if unit.is_group:
                results.append(score_shared_prefix(self.core, unit.items, next(groups)))
            else:
                results.append([next(singles) for _ in unit.items])
        return results


class SplitStrategy:
    rows = "padded rows"

    def new_plan(self, core: ScoringCore) -> ForwardPlan:
        return SplitPlan(core)

    def score_items(
        self, core: ScoringCore, items: Sequence[TokenizedItem], progress: Progress | None = None
    ) -> list[Sums]:
        return score_padded(core, items, progress=progress)

    def score_groups(
        self, core: ScoringCore, groups: Sequence[Sequence[TokenizedItem]], progress: Progress | None = None
    ) -> list[list[Sums]]:
        results = []
        for group in groups:
            results.append(score_shared_prefix(core, group))
            if progress is not None:
                progress(len(group))
        return results


class PackedRowPlan:
    """Units in packed rows: a batch is one row (a unit bigger than a row still gets its rows)."""

    def __init__(self, core: ScoringCore) -> None:
        self.core = core
        self.units: list[WorkUnit] = []
        self._plan: PackedPlan | None = None

    @property
    def padded_tokens(self) -> int:
        return self._plan.fed if self._plan is not None else 0

    def add(self, unit: WorkUnit) -> bool:
        plan = plan_packed([u.items for u in [*self.units, unit]], self.core.max_batch_tokens)
        if self.units and len(plan.rows) > 1:
            return False
        self.units.append(unit)
        self._plan = plan
        return True

    def run(self) -> list[list[Sums]]:
        if not self.units:
            return []
        return score_packed(self.core, [unit.items for unit in self.units], self._plan)


class PackedStrategy:
    rows = "packed rows"

    def new_plan(self, core: ScoringCore) -> ForwardPlan:
        return PackedRowPlan(core)

    def score_items(
        self, core: ScoringCore, items: Sequence[TokenizedItem], progress: Progress | None = None
    ) -> list[Sums]:
        return [group[0] for group in score_packed(core, [[item] for item in items], progress=progress)]

    def score_groups(
        self, core: ScoringCore, groups: Sequence[Sequence[TokenizedItem]], progress: Progress | None = None
    ) -> list[list[Sums]]:
        return score_packed(core, groups, progress=progress)


def strategy_for(packed: bool) -> Strategy:
    """The one place that decides how a model runs its work."""
    return PackedStrategy() if packed else SplitStrategy()
