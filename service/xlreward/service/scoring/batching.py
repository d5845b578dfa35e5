"""Grouping items into forward batches under a padded-token budget. Pure and torch-free."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# Padding a batch may hold, as a fraction of its padded tokens. Sorting by length alone is not enough: a
# budget-filled batch of sorted lengths can still run from 1100 tokens down to 500, so a third of what the
# backbone computes is padding. Closing batches at 10% padding costs a few more (smaller) batches.
DEFAULT_MAX_PADDING = 0.1

# Padded tokens per forward batch when the caller sets none. On CPU, activations of much bigger batches
# fall out of the caches and the memory-bound element-wise ops (norms, RoPE, SiLU) slow down per token;
# on a GPU, bigger batches keep the device busy.
CPU_MAX_BATCH_TOKENS = 4096
GPU_MAX_BATCH_TOKENS = 16384


# Positions one forward call runs on CPU when the caller sets no cap; a wider batch runs in chunks of
# columns on its KV cache, and the server runs waiting small requests between chunks
# (``yield_points``), so a long batch holds the models for one short chunk at a time. The price is each
# call's fixed cost: on bench/'s 58M-parameter model 256-position forwards scored at 0.89-0.96x the
# speed of whole 4096-token batches (512: 1.08-1.10x, the activations staying in the CPU's caches), but
# a small tenant's p99 under a flood exceeded twice its p99 alone in 4 of 9 runs at 512 and in none of 8
# at 256 (bench/README.md). On a GPU a forward of a whole batch is short and the device needs the width:
# no cap.
CPU_MAX_FORWARD_TOKENS = 256


def default_max_batch_tokens(device_type: str) -> int:
    """The padded-token budget for a device type (``"cpu"``, ``"cuda"``...) when none is configured."""
    return CPU_MAX_BATCH_TOKENS if device_type == "cpu" else GPU_MAX_BATCH_TOKENS


def default_max_forward_tokens(device_type: str) -> int | None:
    """The cap on positions per forward call for a device type when none is configured (None: no cap)."""
    return CPU_MAX_FORWARD_TOKENS if device_type == "cpu" else None


def plan_batches(
    lengths: Sequence[int],
    max_batch_tokens: int,
    max_padding: float = DEFAULT_MAX_PADDING,
    shared_prefix: int = 0,
) -> list[list[int]]:
    """Indices of items grouped into batches whose padded size (rows x longest row) fits the budget and
    whose padding stays within ``max_padding`` of the padded size.

    ``shared_prefix``: positions every row also holds without running them (a prompt's KV cache, reused):
    they count towards the budget, rows x (shared_prefix + longest row), but not towards padding.

    Items are taken longest first, so each batch holds items of similar length. A batch closes before the
    next item would take it past the budget, or would make padding more than ``max_padding`` of its padded
    tokens (1.0 turns the padding limit off). An item longer than the budget on its own still gets a batch
    of one: the budget bounds batching, it never refuses an item.

    >>> plan_batches([3, 9, 4, 8], max_batch_tokens=16, max_padding=1.0)  # the budget alone
    [[1], [3, 2], [0]]
    >>> plan_batches([100, 95, 50, 48, 10], max_batch_tokens=1000)
    [[0, 1], [2, 3], [4]]
    >>> plan_batches([100, 95, 50, 48, 10], max_batch_tokens=1000, shared_prefix=450)
    [[0], [1], [2, 3], [4]]
    """
    if max_batch_tokens < 1:
        raise ValueError(f"max_batch_tokens must be at least 1, got {max_batch_tokens}")
    if not 0.0 <= max_padding <= 1.0:
        raise ValueError(f"max_padding is a fraction of a batch's padded tokens, got {max_padding}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0  # unpadded tokens in ``current``
    for index in order:
        if current:
            rows, longest = len(current) + 1, lengths[current[0]]
            padded = rows * longest
            padding = padded - (real + lengths[index])
            if rows * (shared_prefix + longest) > max_batch_tokens or padding > max_padding * padded:
                batches.append(current)
                current, real = [], 0
        current.append(index)
        real += lengths[index]
    if current:
        batches.append(current)
    return batches


@dataclass(frozen=True)
class PackedPart:
    """Members of one group that a packed row holds, with the group's shared prompt (if it has one) once
    before them."""

    group: int
    members: tuple[int, ...]


def plan_packed_rows(
    groups: Sequence[tuple[int, Sequence[int]]], max_row_tokens: int
) -> list[list[PackedPart]]:
    """Which members of which groups each packed row holds, at most ``max_row_tokens`` positions a row.

    ``groups``: per group, (prompt positions shared by its members, 0 for none; each member's own
    positions). A packed row has no padding, so rows are filled in input order: a member goes into the
    current row if its positions fit, plus the group's prompt when the row does not hold it yet; otherwise
    the row closes. A group cut across rows has its prompt in each of them (the prompt runs once per row
    instead of once, a small cost against leaving a row part-empty). A prompt and one member that do not fit
    in an empty row still get a row of their own: the budget bounds packing, it never refuses an item.

    >>> [[(p.group, p.members) for p in row] for row in plan_packed_rows([(0, [5]), (0, [4]), (0, [9])], 10)]
    [[(0, (0,)), (1, (0,))], [(2, (0,))]]
    >>> plan_packed_rows([(4, [3, 3, 3])], max_row_tokens=10)  # the prompt again in the second row
    [[PackedPart(group=0, members=(0, 1))], [PackedPart(group=0, members=(2,))]]
    """
    if max_row_tokens < 1:
        raise ValueError(f"max_row_tokens must be at least 1, got {max_row_tokens}")
    rows: list[list[PackedPart]] = []
    row: list[PackedPart] = []
    used = 0
    for group, (prompt, lengths) in enumerate(groups):
        members: list[int] = []
        for member, length in enumerate(lengths):
            need = length if members else prompt + length
            if used + need > max_row_tokens and (row or members):
                if members:
                    row.append(PackedPart(group, tuple(members)))
                rows.append(row)
                row, members, used, need = [], [], 0, prompt + length
            members.append(member)
            used += need
        if members:
            row.append(PackedPart(group, tuple(members)))
    if row:
        rows.append(row)
    return rows
