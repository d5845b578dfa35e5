"""Running one scoring strategy directly on an engine's core, its sums read back as ``ItemScore``s (the
strategy tests compare them with ``engine.score_tokenized``)."""

from __future__ import annotations

from collections.abc import Sequence

from xlreward.service.scoring.engine import ItemScore, ScoringEngine
from xlreward.service.scoring.packing import score_packed
from xlreward.service.scoring.prefix import score_shared_prefix
from xlreward.service.scoring.templating import TokenizedItem


def prefix_scores(engine: ScoringEngine, items: Sequence[TokenizedItem]) -> list[ItemScore]:
    """``score_shared_prefix`` on the engine's models, whatever its own strategy."""
    return engine.item_scores(score_shared_prefix(engine.core, items), items)


def packed_scores(engine: ScoringEngine, groups: Sequence[Sequence[TokenizedItem]]) -> list[list[ItemScore]]:
    """``score_packed`` on the engine's models, whatever its own strategy."""
    sums = score_packed(engine.core, groups)
    return [engine.item_scores(group_sums, group) for group_sums, group in zip(sums, groups, strict=True)]
