"""Scoring a group of responses to one prompt with the prompt computed once.

Annotation scores about ten sampled responses per prompt, and the rendered prompt is often most of each
sequence. ``ScoringEngine.score_tokenized`` runs every item in full, so the prompt goes through both models
once per response. Here each model runs the shared prefix once (batch 1, ``use_cache=True``), and then runs
only the suffixes as a right-padded batch on top of a copy of that KV cache, expanded to the batch. The
scores equal ``score_tokenized``'s to float rounding: the same causal attention over the same keys, the same
positions, the same LM head path (``chunked_token_logps``) and float64 sums.

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
from typing import Any

import torch

from xlreward.service.scoring.batching import plan_batches
from xlreward.service.scoring.engine import ItemScore, ScoredModel, ScoringEngine
from xlreward.service.scoring.logprobs import chunked_token_logps, segment_sum
from xlreward.service.scoring.signatures import keywords_of
from xlreward.service.scoring.templating import TokenizedItem


def shared_prefix_length(items: Sequence[TokenizedItem]) -> int:
    """P: the longest common token prefix of all items, at most any item's ``score_start``.

    Raises ``ValueError`` unless the items share their prompt: the common prefix must reach every item's
    ``score_start`` but one token (``icr_compat`` starts scoring one token after the prompt). Different
    prompts still share their chat template's first tokens, so a non-empty common prefix is not enough."""
    first = items[0].input_ids
    common = min(len(item) for item in items)
    for item in items[1:]:
        common = next((i for i in range(common) if item.input_ids[i] != first[i]), common)
    if common < max(max(item.score_start for item in items) - 1, 1):
        raise ValueError(
            f"the items share only their first {common} tokens, not a prompt: score_shared_prefix scores "
            "responses to one prompt (group items by prompt, or score them with score_tokenized)"
        )
    return min(common, *(item.score_start for item in items))


def suffix_length(item: TokenizedItem, prefix: int) -> int:
    """Positions ``item`` feeds after a shared prompt of ``prefix`` tokens: up to the last position that
    predicts a scored token (0 when its only scored token is read from the prompt's last position)."""
    return max(item.score_end - 1 - prefix, 0)


def score_shared_prefix(engine: ScoringEngine, items: Sequence[TokenizedItem]) -> list[ItemScore]:
    """Scores responses to one prompt, computing the shared prompt prefix once per model; results equal
    ``engine.score_tokenized(items)`` and come in input order.

    Suffixes are split into sub-batches under the engine's ``max_batch_tokens``, counting each row as
    prefix + suffix (its KV cache spans both), so a sub-batch holds as much attention state as one of the
    engine's own batches, and under its ``max_padding`` of the suffix positions run; every sub-batch
    reuses the same prefix cache."""
    if not items:
        return []
    if engine.config.packed:
        from xlreward.service.scoring.packing import score_packed  # it builds on this module

        return score_packed(engine, [items])[0]
    prefix = shared_prefix_length(items)
    suffix_lengths = [suffix_length(item, prefix) for item in items]
    batches = plan_batches(
        suffix_lengths, engine.max_batch_tokens, engine.config.max_padding, shared_prefix=prefix
    )
    sums = [_model_sums(engine, side, items, prefix, batches) for side in engine.sides]
    return [
        ItemScore(policy, reference, item.num_scored, engine.config.beta, item.truncated)
        for policy, reference, item in zip(*sums, items, strict=True)
    ]


@torch.inference_mode()
def _model_sums(
    engine: ScoringEngine,
    side: ScoredModel,
    items: Sequence[TokenizedItem],
    prefix: int,
    batches: list[list[int]],
) -> list[float]:
    """Per item, the float64 sum of its scored tokens' log-probs under one side of the pair."""
    prefix_ids = torch.tensor([items[0].input_ids[:prefix]], dtype=torch.long, device=engine.device)  # (1, P)
    sums = torch.zeros(len(items), dtype=torch.float64, device=engine.device)
    with side.context():
        out = side.backbone(input_ids=prefix_ids, use_cache=True)
        last = out.last_hidden_state[:, -1:]  # (1, 1, H): position P - 1
        for indices in batches:
            batch = [items[i] for i in indices]
            hidden = _suffix_hidden(side.backbone, returned_cache(out), last, batch, prefix, engine)
            rows, offsets, targets = _scored_positions(batch, prefix, engine.device)
            logps = chunked_token_logps(hidden[rows, offsets], targets, side.head, engine.chunk_size)
            index = torch.tensor(indices, dtype=torch.long, device=engine.device)
            sums.index_add_(0, index, segment_sum(logps.double(), rows, len(batch)))
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
    engine: ScoringEngine,
) -> torch.Tensor:
    """(B, 1 + S, H): the hidden states at positions P - 1 .. P - 1 + S of each row, S the longest suffix.

    The suffixes run right-padded on a copy of the prefix cache: the forward appends to the cache's layers,
    so the caller's cache must stay as the prefix run left it for the next sub-batch. No attention mask
    unless the engine asks for one: causal attention keeps every real position from seeing the padding
    after it (see ``engine``'s docstring)."""
    lengths = [suffix_length(item, prefix) for item in batch]
    width = max(lengths)
    head = last.expand(len(batch), -1, -1)  # (B, 1, H)
    if width == 0:
        return head
    pad = engine.tokenizer.pad_token_id if engine.tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (B, S)
    attention_mask = torch.zeros((len(batch), prefix + width), dtype=torch.long)  # (B, P + S)
    attention_mask[:, :prefix] = 1
    for row, (item, length) in enumerate(zip(batch, lengths, strict=True)):
        input_ids[row, :length] = torch.tensor(item.input_ids[prefix : prefix + length], dtype=torch.long)
        attention_mask[row, prefix : prefix + length] = 1
    position_ids = (prefix + torch.arange(width)).expand(len(batch), -1)  # (B, S)
    cache = copy.deepcopy(prefix_cache)
    cache.batch_repeat_interleave(len(batch))
    out = backbone(
        input_ids=input_ids.to(engine.device),
        attention_mask=attention_mask.to(engine.device) if engine.config.padding_mask else None,
        position_ids=position_ids.to(engine.device),
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
