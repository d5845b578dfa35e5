"""Scoring in packed rows: items and prompt groups concatenated with no padding (``EngineConfig.packed``).

Each row holds whole groups, or parts of them (``batching.plan_packed_rows``): a group of responses to one
prompt is its prompt once, as one segment, then each response's suffix as a segment that sees the prompt
(``packed_attention.Segment.context``); a lone item is one plain causal segment. Each model runs the row
once through ``packed_attention``; each side's reader then runs on the read positions only, and sums are
float64. Sums equal ``padded.score_padded``'s and ``prefix.score_shared_prefix``'s to float rounding: the
same causal attention over the same keys, the same positions, the same reader.

Which positions are fed: as in ``prefix`` and ``core.fed_length``, scoring token j reads position j - 1,
so an item's positions up to ``score_end - 1`` are fed and nothing after; a group's members feed
``input_ids[P : score_end - 1]`` on top of the prompt's ``input_ids[:P]``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from xlreward.service.scoring.batching import PackedPart, plan_packed_rows
from xlreward.service.scoring.core import ScoringCore
from xlreward.service.scoring.packed_attention import Segment, VarlenIndex, packed_forward
from xlreward.service.scoring.prefix import shared_prefix_length, suffix_length
from xlreward.service.scoring.reward_model import Sums
from xlreward.service.scoring.templating import TokenizedItem
from xlreward.service.scoring.yield_points import yield_point


@dataclass
class _RowBuilder:
    """One packed row as lists, before it becomes tensors: token ids, positions, segments, and per scored
    token the row position that predicts it, its id and the (flat) item it belongs to."""

    ids: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    reads: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)

    def append(self, tokens: Sequence[int], first_position: int, context: tuple[int, int] | None) -> int:
        """Adds a segment; returns its start in the row."""
        start = len(self.ids)
        if tokens:
            self.ids.extend(tokens)
            self.positions.extend(range(first_position, first_position + len(tokens)))
            self.segments.append(Segment(start, len(self.ids), context))
        return start

    def read(
        self, item: TokenizedItem, owner: int, prompt_start: int, prompt: int, suffix_start: int
    ) -> None:
        """Where each scored token of ``item`` is read: position j - 1, in the prompt or in the suffix."""
        for position in range(item.score_start - 1, item.score_end - 1):
            row_position = prompt_start + position if position < prompt else suffix_start + position - prompt
            self.reads.append(row_position)
        self.targets.extend(item.input_ids[item.score_start : item.score_end])
        self.owners.extend([owner] * item.num_scored)


@dataclass(frozen=True)
class PackedPlan:
    """Per group its shared prompt's length (0 for a lone item) and each member's suffix length, and the
    rows (``batching.plan_packed_rows``) they go into."""

    prompts: list[int]
    suffixes: list[list[int]]
    rows: list[list[PackedPart]]

    @property
    def fed(self) -> int:
        """Positions the rows feed each model: per row part, its group's prompt once and its members'."""
        return sum(
            self.prompts[part.group] + sum(self.suffixes[part.group][m] for m in part.members)
            for row in self.rows
            for part in row
        )


def plan_packed(groups: Sequence[Sequence[TokenizedItem]], max_row_tokens: int) -> PackedPlan:
    """What ``score_packed`` runs; a group of two or more must share a prompt (``shared_prefix_length``)."""
    prompts = [shared_prefix_length(group) if len(group) > 1 else 0 for group in groups]
    suffixes = [
        [suffix_length(item, prompt) for item in group] for group, prompt in zip(groups, prompts, strict=True)
    ]
    return PackedPlan(
        prompts, suffixes, plan_packed_rows(list(zip(prompts, suffixes, strict=True)), max_row_tokens)
    )


def score_packed(
    core: ScoringCore,
    groups: Sequence[Sequence[TokenizedItem]],
    plan: PackedPlan | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[list[Sums]]:
    """Scores groups of items in packed rows; per group, per item in order, the sum of its read values
    under each side. ``progress`` is told how many items each row finished.

    A group of two or more items must share a prompt (``prefix.shared_prefix_length`` says what it
    refuses); a group of one is an item on its own. Rows hold at most ``core.max_batch_tokens`` positions
    (real ones: a packed row has no padding). ``plan``: from ``plan_packed`` (made here when not given)."""
    plan = plan or plan_packed(groups, core.max_batch_tokens)
    starts = [0]  # flat index of each group's first item
    for group in groups:
        starts.append(starts[-1] + len(group))
    sums = [torch.zeros(starts[-1], dtype=torch.float64, device=core.device) for _ in core.sides]
    for parts in plan.rows:
        row = _build_row(parts, groups, plan, starts)
        _add_row_sums(core, row, sums)
        if progress is not None:
            progress(sum(len(part.members) for part in parts))  # a member is in one row only
    per_side = [values.tolist() for values in sums]
    flat: list[Sums] = [tuple(side[i] for side in per_side) for i in range(starts[-1])]
    return [flat[starts[g] : starts[g + 1]] for g in range(len(groups))]


def _build_row(
    parts: Sequence[PackedPart],
    groups: Sequence[Sequence[TokenizedItem]],
    plan: PackedPlan,
    starts: Sequence[int],
) -> _RowBuilder:
    row = _RowBuilder()
    for part in parts:
        group, prompt = groups[part.group], plan.prompts[part.group]
        prompt_start = row.append(group[0].input_ids[:prompt], 0, None)
        context = (prompt_start, prompt_start + prompt) if prompt else None
        for member in part.members:
            item, length = group[member], plan.suffixes[part.group][member]
            suffix_start = row.append(item.input_ids[prompt : prompt + length], prompt, context)
            row.read(item, starts[part.group] + member, prompt_start, prompt, suffix_start)
    return row


@torch.inference_mode()
def _add_row_sums(core: ScoringCore, row: _RowBuilder, sums: Sequence[torch.Tensor]) -> None:
    """Runs one packed row through each side and adds its read values to ``sums``."""
    if not row.ids:  # only items with nothing to score
        return
    input_ids, positions = (
        core.tensor(row.ids).unsqueeze(0),
        core.tensor(row.positions).unsqueeze(0),
    )  # (1, T)
    reads, targets, owners = core.tensor(row.reads), core.tensor(row.targets), core.tensor(row.owners)  # (N,)
    indices: dict[torch.device, VarlenIndex] = {}  # per input device; built once when both sides share it
    for side, total in zip(core.sides, sums, strict=True):
        device = core.input_device(side)
        index = None  # one side may have fallen back to the per-segment loop at start-up
        if side.varlen:
            if device not in indices:
                indices[device] = VarlenIndex.build(row.segments, device)
            index = indices[device]
        with side.context():
            hidden = packed_forward(
                side.backbone, input_ids.to(device), positions.to(device), row.segments, varlen=index
            )[0]
            values = side.read(hidden[reads.to(hidden.device)], targets.to(hidden.device))  # (N,)
        total.index_add_(0, owners, values.double().to(total.device))
        yield_point()
