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
from typing import Generic, Protocol, TypeVar

from xlreward.service.protocol import ChatMessage, RewardItem, RewardResult
from xlreward.service.scoring.core import ScoringCore, Side, fed_length
from xlreward.service.scoring.packing import PackedPlan, plan_packed, score_packed
from xlreward.service.scoring.padded import padded_positions, plan_padded, score_padded
from xlreward.service.scoring.prefix import PrefixPlan, plan_shared_prefix, score_shared_prefix
from xlreward.service.scoring.reward_model import ForwardPlan, ItemReward, Progress, Sums, WorkUnit
from xlreward.service.scoring.templating import TokenizedItem

Score = TypeVar("Score", bound=ItemReward)


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
            # Real positions bound padded ones from below: a unit that cannot fit is refused unplanned.
            real = sum(fed_length(item) for item in [*self._singles, *unit.items])
            if self.units and self._group_positions + real > self.core.max_batch_tokens:
                return False
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


class StrategyModel(Generic[Score]):
    """What every reward model over a ``ScoringCore`` does the same way: plan and run batches, score
    items and groups offline. A model sets ``core`` and ``strategy`` and says how it tokenizes a pair and
    how a strategy's per-item sums become its scores."""

    core: ScoringCore
    strategy: Strategy

    def tokenize_pair(
        self,
        prompt: str | Sequence[ChatMessage],
        response: str,
        *,
        truncate: bool = False,
        rendered: bool = False,
    ) -> TokenizedItem:
        raise NotImplementedError

    def item_scores(self, sums: Sequence[Sums], items: Sequence[TokenizedItem]) -> list[Score]:
        """A strategy's per-item sums as this model's scores."""
        raise NotImplementedError

    @property
    def sides(self) -> tuple[Side, ...]:
        return self.core.sides

    def tokenize(self, item: RewardItem, *, truncate: bool = False) -> TokenizedItem:
        """Token ids and read span of one item; raises ``ItemError`` saying what to fix."""
        return self.tokenize_pair(item.prompt, item.response, truncate=truncate)

    def new_plan(self) -> ForwardPlan:
        return self.strategy.new_plan(self.core)

    def run(self, plan: ForwardPlan) -> list[list[ItemReward]]:
        return [
            list(self.item_scores(unit_sums, unit.items))
            for unit_sums, unit in zip(plan.run(), plan.units, strict=True)
        ]

    def score(self, items: Sequence[RewardItem], progress: Progress | None = None) -> list[RewardResult]:
        """Scores items, results in input order (ids carried over)."""
        tokenized = [self.tokenize(item) for item in items]
        scores = self.score_tokenized(tokenized, progress=progress)
        return [score.to_result(item.id) for item, score in zip(items, scores, strict=True)]

    def score_tokenized(
        self, items: Sequence[TokenizedItem], progress: Progress | None = None
    ) -> list[Score]:
        """Scores tokenized items with the model's strategy; results in input order."""
        return self.item_scores(self.strategy.score_items(self.core, items, progress), items)

    def score_groups(
        self, groups: Sequence[Sequence[TokenizedItem]], progress: Progress | None = None
    ) -> list[list[Score]]:
        """Scores groups of responses to one prompt each (the prompt run once); per group, in order."""
        sums = self.strategy.score_groups(self.core, groups, progress)
        return [self.item_scores(group_sums, group) for group_sums, group in zip(sums, groups, strict=True)]
