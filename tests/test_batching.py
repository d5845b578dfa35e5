"""Known-number tests of the batch planner: the token budget, the padding limit, a shared prefix."""

from __future__ import annotations

import pytest

from xlreward.service.scoring.batching import (
    CPU_MAX_BATCH_TOKENS,
    GPU_MAX_BATCH_TOKENS,
    default_max_batch_tokens,
    plan_batches,
)


def padding(lengths: list[int], batch: list[int]) -> int:
    return len(batch) * max(lengths[i] for i in batch) - sum(lengths[i] for i in batch)


def test_padding_limit_closes_batches_the_budget_would_fill() -> None:
    lengths = [100, 95, 50, 48, 10]
    # The budget alone puts 100 and 95 with 50 (3 x 100 = 300 <= 1000, 105 padded positions of 300).
    assert plan_batches(lengths, max_batch_tokens=1000, max_padding=1.0) == [[0, 1, 2, 3, 4]]
    # At 10%: [100, 95] pads 5 of 200; adding 50 would pad 105 of 300. [50, 48] pads 2 of 100.
    assert plan_batches(lengths, max_batch_tokens=1000, max_padding=0.1) == [[0, 1], [2, 3], [4]]
    assert plan_batches(lengths, max_batch_tokens=1000) == [[0, 1], [2, 3], [4]]  # 10% is the default


def test_padding_limit_is_inclusive() -> None:
    # [10, 9]: 1 padded position of 20 = 5%; [10, 9, 8]: 3 of 30 = 10%, allowed at exactly 10%.
    assert plan_batches([10, 9, 8], max_batch_tokens=100, max_padding=0.1) == [[0, 1, 2]]
    assert plan_batches([10, 9, 8], max_batch_tokens=100, max_padding=0.09) == [[0, 1], [2]]
    assert plan_batches([10, 9, 8], max_batch_tokens=100, max_padding=0.0) == [[0], [1], [2]]
    assert plan_batches([7, 7, 7], max_batch_tokens=100, max_padding=0.0) == [[0, 1, 2]]  # no padding


def test_every_batch_keeps_both_limits() -> None:
    lengths = [5, 50, 7, 49, 3, 20, 21, 8, 48, 19, 6, 50]
    batches = plan_batches(lengths, max_batch_tokens=120, max_padding=0.1)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 120
        assert padding(lengths, batch) <= 0.1 * len(batch) * max(lengths[i] for i in batch)
    # [50, 50] + 49 would pass the budget (150); [21, 20, 19] + 8 would pad 16 of 84; [8, 7] + 6: 3 of 24.
    assert batches == [[1, 11], [3, 8], [6, 5, 9], [7, 2], [10, 0], [4]]


def test_shared_prefix_counts_towards_the_budget_but_not_the_padding() -> None:
    suffixes = [100, 95, 50, 48, 10]
    # Rows hold 450 cached prompt positions: two rows of 450 + 100 pass a budget of 1000.
    assert plan_batches(suffixes, max_batch_tokens=1000, shared_prefix=450) == [[0], [1], [2, 3], [4]]
    # Budget alone: 3 rows of 450 + 100 fit 2000, a fourth does not.
    plan = plan_batches(suffixes, max_batch_tokens=2000, max_padding=1.0, shared_prefix=450)
    assert plan == [[0, 1, 2], [3, 4]]
    # Padding is of the suffixes run: [100, 95, 50] pads 105 of 300, though only 105 of 1650 with the prompt.
    assert plan_batches(suffixes, max_batch_tokens=2000, shared_prefix=450) == [[0, 1], [2, 3], [4]]
    assert plan_batches([550, 545, 500, 498, 460], max_batch_tokens=4000) == [[0, 1, 2, 3, 4]]


def test_an_item_over_the_budget_gets_a_batch_of_its_own() -> None:
    assert plan_batches([100], max_batch_tokens=10) == [[0]]
    assert plan_batches([100, 100], max_batch_tokens=150) == [[0], [1]]
    assert plan_batches([], max_batch_tokens=10) == []


@pytest.mark.parametrize(("budget", "padding"), [(0, 0.1), (10, -0.1), (10, 1.5)])
def test_bad_limits_are_refused(budget: int, padding: float) -> None:
    with pytest.raises(ValueError):
        plan_batches([1], max_batch_tokens=budget, max_padding=padding)


def test_default_budget_depends_on_the_device() -> None:
    assert default_max_batch_tokens("cpu") == CPU_MAX_BATCH_TOKENS == 4096
    assert default_max_batch_tokens("cuda") == GPU_MAX_BATCH_TOKENS == 16384
