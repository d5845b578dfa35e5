"""Scoring a group of responses to one prompt with the prompt computed once.

Annotation scores about ten sampled responses per prompt, and the rendered prompt is often most of each
sequence. ``padded.score_padded`` runs every item in full, so the prompt goes through each side once per
response. Here each side runs the shared prefix once (batch 1, ``use_cache=True``), and then runs
only the suffixes as a right-padded batch on top of a copy of that KV cache, expanded to the batch. The
sums equal ``score_padded``'s to float rounding: the same causal attention over the same keys, the same
positions, the same reader and float64 sums.

Which positions are needed: scoring token j reads the hidden state at position j - 1. With the prefix
``input_ids[:P]`` and ``P <= score_start`` for every item, the first scored token of any item is read at
position ``P - 1`` at the earliest, which is the prefix run's last hidden state; every later one is read
from the suffix run. The suffix fed is ``input_ids[P : score_end - 1]``: tokens after the last position
that predicts a scored token (ChatML's trailing newline, the last scored token itself) are never fed. An
item whose only scored token is token P has an empty suffix and is read from the prefix alone.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from xlreward.service.scoring.batching import plan_batches
from xlreward.service.scoring.core import ScoringCore, Side
from xlreward.service.scoring.logprobs import segment_sum
from xlreward.service.scoring.reward_model import Sums
from xlreward.service.scoring.signatures import keywords_of
from xlreward.service.scoring.templating import TokenizedItem
from xlreward.service.scoring.yield_points import yield_point


def shared_prefix_length(items: Sequence[TokenizedItem]) -> int:
    """P: the longest common token prefix of all items, at most any item's ``score_start``.

    Raises ``ValueError`` unless the items share their prompt: the common prefix must reach every item's
    ``prompt_end`` but one token (``icr_compat`` starts scoring one token after the prompt). Different
    prompts still share their chat template's first tokens, so a non-empty common prefix is not enough."""
    first = items[0].input_ids
    common = min(len(item) for item in items)
    for item in items[1:]:
        common = next((i for i in range(common) if item.input_ids[i] != first[i]), common)
    if common < max(max(item.prompt_end for item in items) - 1, 1):
        raise ValueError(
            f"the items share only their first {common} tokens, not a prompt: score_shared_prefix scores "
            "responses to one prompt (group items by prompt, or score them with score_tokenized)"
        )
    return min(common, *(item.score_start for item in items))


def suffix_length(item: TokenizedItem, prefix: int) -> int:
    """Positions ``item`` feeds after a shared prompt of ``prefix`` tokens: up to the last position that
    predicts a scored token (0 when its only scored token is read from the prompt's last position)."""
    return max(item.score_end - 1 - prefix, 0)


@dataclass(frozen=True)
class PrefixPlan:
    """What ``score_shared_prefix`` runs for one group: its shared prefix once, then the suffix batches
    (indices into the group)."""

    prefix: int
    batches: list[list[int]]
    suffixes: list[int]

    @property
    def positions(self) -> int:
        """Positions run per side: the prefix once and the suffix batches, padding included."""
        return self.prefix + sum(len(batch) * max(self.suffixes[i] for i in batch) for batch in self.batches)


def plan_shared_prefix(core: ScoringCore, items: Sequence[TokenizedItem]) -> PrefixPlan:
    """Suffixes are split into sub-batches under the core's ``max_batch_tokens``, counting each row as
    prefix + suffix (its KV cache spans both), so a sub-batch holds as much attention state as a padded
    batch, and under its ``max_padding`` of the suffix positions run."""
    prefix = shared_prefix_length(items)
    suffixes = [suffix_length(item, prefix) for item in items]
    batches = plan_batches(suffixes, core.max_batch_tokens, core.max_padding, shared_prefix=prefix)
    return PrefixPlan(prefix, batches, suffixes)


def score_shared_prefix(
    core: ScoringCore, items: Sequence[TokenizedItem], plan: PrefixPlan | None = None
) -> list[Sums]:
    """Scores responses to one prompt, computing the shared prompt prefix once per side; per item (in
    input order) the sum of its read values under each side, equal to ``padded.score_padded``'s."""
    if not items:
        return []
    plan = plan or plan_shared_prefix(core, items)
    per_side = []
    for side in core.sides:
        per_side.append(_side_sums(core, side, items, plan))
        yield_point()
    return [tuple(sums[i] for sums in per_side) for i in range(len(items))]


@torch.inference_mode()
def _side_sums(
    core: ScoringCore, side: Side, items: Sequence[TokenizedItem], plan: PrefixPlan
) -> list[float]:
    """Per item, the float64 sum of its read values under one side."""
    prefix = plan.prefix
    device = core.input_device(side)
    prefix_ids = core.tensor(list(items[0].input_ids[:prefix])).unsqueeze(0).to(device)  # (1, P)
    sums = torch.zeros(len(items), dtype=torch.float64, device=core.device)
    with side.context():
        out = side.backbone(input_ids=prefix_ids, use_cache=True)
        last = out.last_hidden_state[:, -1:]  # (1, 1, H): position P - 1
        for indices in plan.batches:
            batch = [items[i] for i in indices]
            hidden = _suffix_hidden(side.backbone, returned_cache(out), last, batch, prefix, core, device)
            rows, offsets, targets = _scored_positions(batch, prefix, hidden.device)
            values = side.read(hidden[rows, offsets], targets)  # (N,)
            item_sums = segment_sum(values.double(), rows.to(values.device), len(batch))
            sums.index_add_(0, core.tensor(indices), item_sums.to(core.device))
    return [float(total) for total in sums.tolist()]


def cache_keyword(backbone: Any) -> str:
    """The forward's KV-cache keyword: transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old
    name goes in 5.40); the project supports transformers 5.0 and later, so both are in use."""
    return "cache" if "cache" in keywords_of(type(backbone).forward) else "past_key_values"


def returned_cache(out: Any) -> Any:
    """A forward output's KV cache, under either name (``cache_keyword``)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _suffix_hidden(
    backbone: Any,
    prefix_cache: Any,
    last: torch.Tensor,
    batch: Sequence[TokenizedItem],
    prefix: int,
    core: ScoringCore,
    device: torch.device,
) -> torch.Tensor:
    """(B, 1 + S, H): the hidden states at positions P - 1 .. P - 1 + S of each row, S the longest suffix.

    The suffixes run right-padded on a copy of the prefix cache: the forward appends to the cache's layers,
    so the caller's cache must stay as the prefix run left it for the next sub-batch. No attention mask
    unless the core asks for one: causal attention keeps every real position from seeing the padding
    after it (see ``padded``'s docstring)."""
    lengths = [suffix_length(item, prefix) for item in batch]
    width = max(lengths)
    head = last.expand(len(batch), -1, -1)  # (B, 1, H)
    if width == 0:
        return head
    input_ids = torch.full((len(batch), width), core.pad_id, dtype=torch.long)  # (B, S)
    attention_mask = torch.zeros((len(batch), prefix + width), dtype=torch.long)  # (B, P + S)
    attention_mask[:, :prefix] = 1
    for row, (item, length) in enumerate(zip(batch, lengths, strict=True)):
        input_ids[row, :length] = torch.tensor(item.input_ids[prefix : prefix + length], dtype=torch.long)
        attention_mask[row, prefix : prefix + length] = 1
    position_ids = (prefix + torch.arange(width)).expand(len(batch), -1)  # (B, S)
    cache = copy.deepcopy(prefix_cache)
    cache.batch_repeat_interleave(len(batch))
    out = backbone(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device) if core.padding_mask else None,
        position_ids=position_ids.to(device),
        use_cache=True,
        **{cache_keyword(backbone): cache},
    )
    return torch.cat([head, out.last_hidden_state], dim=1)


def _scored_positions(
    batch: Sequence[TokenizedItem], prefix: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat over the batch's scored tokens: row (N,), offset into ``_suffix_hidden``'s (B, 1 + S) grid of
    the position that predicts it (token j - P), and the token id (N,)."""
    rows: list[int] = []
    offsets: list[int] = []
    targets: list[int] = []
    for row, item in enumerate(batch):
        rows.extend([row] * item.num_scored)
        offsets.extend(range(item.score_start - prefix, item.score_end - prefix))
        targets.extend(item.input_ids[item.score_start : item.score_end])
    as_tensor = [torch.tensor(values, dtype=torch.long, device=device) for values in (rows, offsets, targets)]
    return as_tensor[0], as_tensor[1], as_tensor[2]
