"""Scoring items in right-padded batches of similar length.

Per forward batch, each side runs its backbone once to final hidden states (B, T, H); only the hidden
states at read positions are kept (N, H) and handed to the side's reader (for an LM, the head and a float32
log-softmax ``chunk_size`` rows at a time). A [B, T, vocab] logits tensor is never built.

Batches are right-padded and run WITHOUT an attention mask: attention is causal, so a real token at
position t only attends to positions <= t, which are all real, and the padded positions (after every real
token of their row) are never read. Without a mask, SDPA runs its causal kernel, which skips the blocks
above the diagonal, instead of a masked kernel that computes them all; and no (B, 1, T, T) mask is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from xlreward.service.scoring.batching import plan_batches
from xlreward.service.scoring.core import ScoringCore, Side, fed_length, read_span
from xlreward.service.scoring.logprobs import segment_sum
from xlreward.service.scoring.prefix import cache_keyword, returned_cache
from xlreward.service.scoring.reward_model import Sums
from xlreward.service.scoring.templating import TokenizedItem
from xlreward.service.scoring.yield_points import yield_point


@dataclass
class PaddedBatch:
    """A right-padded forward batch and, flat over its read positions, where each one is read."""

    input_ids: torch.Tensor  # (B, T), T: the longest row's fed positions
    attention_mask: torch.Tensor | None  # (B, T), only with ``ScoringCore.padding_mask``
    rows: torch.Tensor  # (N,) batch row of each read position
    positions: torch.Tensor  # (N,) the position read
    targets: torch.Tensor  # (N,) the token each read position predicts
    num_items: int


def plan_padded(core: ScoringCore, items: Sequence[TokenizedItem]) -> list[list[int]]:
    """Indices of ``items`` per forward batch, under the core's budget and padding limit."""
    return plan_batches([fed_length(item) for item in items], core.max_batch_tokens, core.max_padding)


def padded_positions(items: Sequence[TokenizedItem], batches: Sequence[Sequence[int]]) -> int:
    """Positions the batches run per side, padding included (rows x longest row, summed)."""
    return sum(len(batch) * max(fed_length(items[i]) for i in batch) for batch in batches)


def score_padded(
    core: ScoringCore,
    items: Sequence[TokenizedItem],
    batches: Sequence[Sequence[int]] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Sums]:
    """Per item (in input order), the sum of its read values under each side. ``batches``: a plan from
    ``plan_padded`` (made here when not given)."""
    results: list[Sums] = [()] * len(items)
    for indices in plan_padded(core, items) if batches is None else batches:
        batch = collate(core, [items[i] for i in indices])
        per_side = []
        for side in core.sides:
            per_side.append(side_sums(core, side, batch))
            yield_point()
        for position, index in enumerate(indices):
            results[index] = tuple(sums[position] for sums in per_side)
        if progress is not None:
            progress(len(indices))
    return results


@torch.inference_mode()
def side_sums(core: ScoringCore, side: Side, batch: PaddedBatch) -> list[float]:
    """Per batch row, the float64 sum of its read values under one side. Summed in float64: a float32
    running sum over thousands of tokens drifts by ~1e-3. A batch wider than the core's forward cap runs
    in chunks of columns (``forward_width``), each on the KV cache of the ones before it, with a yield point
    between chunks."""
    device = core.input_device(side)
    mask = batch.attention_mask
    rows_in, width = batch.input_ids.shape
    chunk = forward_width(core, rows_in)
    if mask is not None or chunk >= width:
        with side.context():
            out = side.backbone(
                input_ids=batch.input_ids.to(device),
                attention_mask=mask.to(device) if mask is not None else None,
                use_cache=False,
            )
            values, rows = _read(side, out.last_hidden_state, batch, 0, width)
        sums: list[float] = segment_sum(values.double(), rows, batch.num_items).tolist()
        return sums
    totals = torch.zeros(batch.num_items, dtype=torch.float64, device=core.device)
    cache: Any = None
    for start in range(0, width, chunk):
        stop = min(start + chunk, width)
        positions = torch.arange(start, stop, device=device).expand(rows_in, -1)  # (B, C)
        with side.context():
            out = side.backbone(
                input_ids=batch.input_ids[:, start:stop].to(device),
                position_ids=positions,
                use_cache=True,
                **({cache_keyword(side.backbone): cache} if cache is not None else {}),
            )
            cache = returned_cache(out)
            values, rows = _read(side, out.last_hidden_state, batch, start, stop)
        totals.index_add_(0, rows.to(core.device), values.double().to(core.device))
        if stop < width:
            yield_point()  # the side's last chunk yields in ``score_padded``
    return [float(total) for total in totals.tolist()]


def forward_width(core: ScoringCore, rows: int) -> int:
    """Columns one forward of a ``rows``-row batch may run under the core's cap on positions per forward
    (at least one; unlimited without a cap)."""
    if core.max_forward_tokens is None:
        return 1 << 62
    return max(1, core.max_forward_tokens // max(rows, 1))


def _read(
    side: Side, hidden: torch.Tensor, batch: PaddedBatch, start: int, stop: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The side's values at the batch's read positions in columns [start, stop) of ``hidden`` (B, stop -
    start, H), and the batch row of each: ((N,), (N,)), on the reader's device."""
    device = hidden.device
    rows, positions, targets = (t.to(device) for t in (batch.rows, batch.positions, batch.targets))
    inside = (positions >= start) & (positions < stop)
    rows, positions, targets = rows[inside], positions[inside] - start, targets[inside]
    values = side.read(hidden[rows, positions], targets)  # (N,)
    return values, rows.to(values.device)


def collate(core: ScoringCore, items: Sequence[TokenizedItem]) -> PaddedBatch:
    lengths = [fed_length(item) for item in items]
    input_ids = torch.full((len(items), max(lengths)), core.pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    rows: list[int] = []
    positions: list[int] = []
    targets: list[int] = []
    for row, (item, length) in enumerate(zip(items, lengths, strict=True)):
        input_ids[row, :length] = torch.tensor(item.input_ids[:length], dtype=torch.long)
        attention_mask[row, :length] = 1
        rows.extend([row] * item.num_scored)
        positions.extend(read_span(item))
        targets.extend(item.input_ids[item.score_start : item.score_end])
    return PaddedBatch(
        input_ids=input_ids.to(core.device),
        attention_mask=attention_mask.to(core.device) if core.padding_mask else None,
        rows=core.tensor(rows),
        positions=core.tensor(positions),
        targets=core.tensor(targets),
        num_items=len(items),
    )
