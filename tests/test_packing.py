"""Packed rows (``EngineConfig.packed``) score exactly what padded batches score, with no padding fed.

``score_tokenized`` with padded batches (itself checked against a plain full-softmax oracle in
``test_engine_exact.py``) is the oracle. The counting tests watch each backbone call: one row of batch 1
per packed row, holding each group's prompt once and every response's own positions, nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from itertools import pairwise
from typing import Any

import pytest
import torch
from torch.nn.attention.bias import causal_lower_right

from strategy_scores import packed_scores, prefix_scores
from test_prefix_sharing import (
    LONG_RESPONSE,
    MESSAGES,
    PROMPT,
    RESPONSES,
    assert_same_scores,
    suffix_lengths,
    tokenize,
    with_config,
)
from xlreward.service.scoring import packed_attention as packed_attention_module
from xlreward.service.scoring.batching import PackedPart, plan_packed_rows
from xlreward.service.scoring.core import model_backbone
from xlreward.service.scoring.engine import EngineConfig, ScoringEngine
from xlreward.service.scoring.errors import UnsupportedModelError
from xlreward.service.scoring.packed_attention import (
    PACKED_ATTENTION,
    Segment,
    VarlenIndex,
    check_packing,
    packed_attention,
    packed_forward,
    varlen_layout,
)
from xlreward.service.scoring.templating import TemplateOptions


def packed(engine: ScoringEngine, **kwargs: Any) -> ScoringEngine:
    return with_config(engine, packed=True, **kwargs)


def mixed_groups(engine: ScoringEngine) -> list[list[Any]]:
    """Two prompt groups, lone items with other prompts between and after them."""
    return [
        tokenize(engine, PROMPT, RESPONSES),
        tokenize(engine, "Something else entirely.", ["Yes."]),
        tokenize(engine, MESSAGES, RESPONSES[:6]),
        tokenize(engine, "Count to three.", ["one two three"]),
    ]


@contextmanager
def rows_fed(model: Any) -> Iterator[list[tuple[int, int]]]:
    """(rows, positions) of each backbone call of ``model``."""
    calls: list[tuple[int, int]] = []

    def on_backbone(_module: Any, _args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append(tuple(kwargs["input_ids"].shape))

    handle = model_backbone(model).register_forward_pre_hook(on_backbone, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


# --- the planner (pure) ----------------------------------------------------------------------------------


def test_plan_fills_rows_in_order_and_repeats_a_cut_groups_prompt() -> None:
    groups = [(10, [30, 40, 20]), (0, [25]), (5, [50, 50])]
    rows = plan_packed_rows(groups, max_row_tokens=100)
    assert rows == [
        [PackedPart(0, (0, 1, 2))],  # 10 + 30 + 40 + 20 = 100: full
        [PackedPart(1, (0,)), PackedPart(2, (0,))],  # 25 + 5 + 50 = 80; the next 50 does not fit
        [PackedPart(2, (1,))],  # the prompt (5) again with the group's second member
    ]


def test_plan_places_every_member_once_within_the_budget() -> None:
    groups = [(p, [(p * 7 + m * 13) % 61 for m in range(10)]) for p in (0, 3, 17, 40, 0, 9)]
    for budget in (1, 60, 64, 200, 10_000):
        rows = plan_packed_rows(groups, budget)
        placed = sorted((part.group, m) for row in rows for part in row for m in part.members)
        assert placed == [(g, m) for g, (_, lengths) in enumerate(groups) for m in range(len(lengths))]
        for row in rows:
            fed = [
                groups[part.group][0] + sum(groups[part.group][1][m] for m in part.members) for part in row
            ]
            single = len(row) == 1 and len(row[0].members) == 1
            assert sum(fed) <= budget or single  # only a lone oversized member goes past the budget


def test_plan_refuses_an_empty_budget() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        plan_packed_rows([(0, [3])], 0)


# --- scores equal the padded engine's ----------------------------------------------------------------------


def test_groups_and_lone_items_equal_score_tokenized(engine) -> None:
    groups = mixed_groups(engine)
    ours = packed_scores(engine, groups)
    assert [len(scores) for scores in ours] == [len(group) for group in groups]
    flat = [item for group in groups for item in group]
    assert_same_scores([s for scores in ours for s in scores], engine.score_tokenized(flat))


@pytest.mark.parametrize(("max_batch_tokens", "chunk_size"), [(1, 1), (150, 7), (600, 1024)])
def test_rows_cut_anywhere_do_not_change_scores(engine, max_batch_tokens: int, chunk_size: int) -> None:
    small = packed(engine, max_batch_tokens=max_batch_tokens, chunk_size=chunk_size)
    groups = mixed_groups(small)
    with rows_fed(small.policy) as calls:
        ours = packed_scores(small, groups)
    assert len(calls) >= 3
    assert all(rows == 1 for rows, _ in calls)
    flat = [item for group in groups for item in group]
    assert_same_scores([s for scores in ours for s in scores], engine.score_tokenized(flat))


def test_icr_compat_items_and_identical_responses(engine) -> None:
    icr = with_config(engine, template=TemplateOptions(icr_compat=True))
    responses = [*RESPONSES, "Hello! Nice to meet you.", "Hello! Nice to meet you.", "Hello!"]
    items = tokenize(icr, PROMPT, responses)
    assert 0 in [item.num_scored for item in items]  # the empty response: nothing left to score
    assert_same_scores(packed_scores(icr, [items])[0], icr.score_tokenized(items))


def test_the_packed_engine_scores_as_the_padded_one(engine) -> None:
    """``packed=True`` routes score_tokenized and score_shared_prefix through packed rows."""
    on = packed(engine)
    items = tokenize(on, PROMPT, RESPONSES)
    told: list[int] = []
    expected = engine.score_tokenized(items)
    with rows_fed(on.reference) as calls:
        assert_same_scores(on.score_tokenized(items, progress=told.append), expected)
    assert calls and all(rows == 1 for rows, _ in calls) and sum(told) == len(items)
    assert_same_scores(prefix_scores(on, items), engine.score_tokenized(items))
    assert on.score_tokenized([]) == []


def test_the_attention_switch_is_undone(engine) -> None:
    backbone = model_backbone(engine.policy)
    before = backbone.config._attn_implementation
    assert before != PACKED_ATTENTION
    packed_scores(engine, [tokenize(engine, PROMPT, RESPONSES[:3])])
    assert backbone.config._attn_implementation == before
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(UnsupportedModelError, match="one row"):  # a failed forward restores it too
        packed_forward(backbone, ids.expand(2, -1), torch.arange(3).expand(2, -1), [Segment(0, 3)])
    assert backbone.config._attn_implementation == before


def test_items_without_a_shared_prompt_are_refused(engine) -> None:
    items = [*tokenize(engine, PROMPT, RESPONSES[:3]), *tokenize(engine, "Something else.", ["Yes."])]
    with pytest.raises(ValueError, match="not a prompt"):
        packed_scores(engine, [items])


# --- what is fed: no padding, each prompt once per row ---


def test_a_row_feeds_each_prompt_once_and_no_padding(engine) -> None:
    on = packed(engine, max_batch_tokens=16384)  # everything fits one row
    groups = mixed_groups(on)
    expected = 0
    for group in groups:
        prompt = min(item.score_start for item in group) if len(group) > 1 else 0
        expected += prompt + sum(max(n, 0) for n in suffix_lengths(group, prompt))
    for model in (on.policy, on.reference):
        with rows_fed(model) as calls:
            packed_scores(on, groups)
        assert calls == [(1, expected)]
    padded = sum(len(item) for group in groups for item in group)
    assert expected < padded  # less than every item in full


def test_a_long_prompt_is_fed_once_per_row(engine) -> None:
    prompt = " ".join(["Please read this long instruction carefully."] * 20)
    items = tokenize(engine, prompt, [LONG_RESPONSE, *RESPONSES[:8]])
    prompt_length = min(item.score_start for item in items)
    small = packed(engine, max_batch_tokens=prompt_length + 400)
    with rows_fed(small.policy) as calls:
        scores = packed_scores(small, [items])[0]
    assert len(calls) >= 2
    fed = sum(width for _, width in calls)
    assert fed == len(calls) * prompt_length + sum(suffix_lengths(items, prompt_length))
    assert_same_scores(scores, engine.score_tokenized(items))


# --- the attention function and the start-up check ---


def test_packed_attention_equals_separate_causal_attention() -> None:
    """Known shapes: two sequences, the second on a prompt, against SDPA on each sequence alone (GQA)."""
    torch.manual_seed(0)
    heads, kv_heads, dim, prompt, response, other = 4, 2, 8, 3, 4, 5
    total = prompt + response + other
    query = torch.randn(1, heads, total, dim)
    key, value = torch.randn(1, kv_heads, total, dim), torch.randn(1, kv_heads, total, dim)
    segments = [Segment(0, prompt), Segment(prompt, prompt + response, (0, prompt)), Segment(7, total)]
    out, weights = packed_attention(object(), query, key, value, None, packed_segments=segments)
    assert out.shape == (1, total, heads, dim) and weights is None

    def alone(span: slice) -> torch.Tensor:
        q, k, v = query[:, :, span], key[:, :, span], value[:, :, span]
        plain = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return plain.transpose(1, 2)

    torch.testing.assert_close(out[:, : prompt + response], alone(slice(0, prompt + response)))
    torch.testing.assert_close(out[:, prompt + response :], alone(slice(prompt + response, total)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "no packed_segments"),
        ({"packed_segments": [Segment(0, 4)], "softcap": 50.0}, "soft-capping"),
        ({"packed_segments": [Segment(0, 4)], "sliding_window": 4}, "sliding window"),
    ],
)
def test_packed_attention_refuses_what_it_does_not_compute(kwargs: dict[str, Any], message: str) -> None:
    tensor = torch.zeros(1, 2, 4, 8)
    with pytest.raises(UnsupportedModelError, match=message):
        packed_attention(object(), tensor, tensor, tensor, None, **kwargs)
    with pytest.raises(UnsupportedModelError, match="without a mask"):
        packed_attention(object(), tensor, tensor, tensor, torch.ones(1, 1, 4, 4), packed_segments=[])


def test_the_start_up_check_refuses_a_model_that_does_not_pack(engine, monkeypatch) -> None:
    """A sliding window shorter than the probe's sequences: packing would not be exact, so the engine
    refuses packed=True at start-up (and builds fine without it)."""
    backbone = model_backbone(engine.policy)
    check_packing(backbone, engine.policy.config.vocab_size, engine.device)  # the tiny models pack
    for layer in backbone.layers:
        monkeypatch.setattr(layer.self_attn, "sliding_window", 3, raising=False)
    with pytest.raises(UnsupportedModelError, match="sliding"):
        packed(engine)
    with_config(engine)  # packing off: no check


def test_the_start_up_check_compares_with_the_plain_forward(engine, monkeypatch) -> None:
    """An attention under the packed name that ignores the segments (full causal attention over the whole
    row) runs without error; only the comparison with the plain forward catches it."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def whole_row(module: Any, query: Any, key: Any, value: Any, mask: Any, **kwargs: Any) -> Any:
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, is_causal=True, enable_gqa=True
        )
        return out.transpose(1, 2).contiguous(), None

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, PACKED_ATTENTION, whole_row)
    with pytest.raises(UnsupportedModelError, match="differ from the plain forward"):
        check_packing(model_backbone(engine.policy), engine.policy.config.vocab_size, engine.device)


# --- the flash varlen path (GPU, half precision), its layout checked on the CPU with a stand-in kernel ---


class StandInVarlen:
    """Flash varlen attention's documented semantics in plain SDPA, for the CPU: sequence i is queries
    cu_seq_q[i]:cu_seq_q[i+1] over keys cu_seq_k[i]:cu_seq_k[i+1], causal (``window_size=(-1, 0)``) with
    the diagonal aligned to the last key. ``aligned_to_first_key`` gets that alignment wrong instead."""

    def __init__(self, *, aligned_to_first_key: bool = False) -> None:
        self.aligned_to_first_key = aligned_to_first_key
        self.calls = 0

    def __call__(  # type: ignore[no-untyped-def]
        self,
        query,
        key,
        value,
        cu_seq_q,
        cu_seq_k,
        max_q,
        max_k,
        *,
        scale=None,
        window_size,
        enable_gqa=False,
    ):
        assert query.dim() == key.dim() == value.dim() == 3  # (tokens, heads, head_dim)
        assert cu_seq_q.dtype == cu_seq_k.dtype == torch.int32
        assert window_size == (-1, 0)
        assert enable_gqa or query.shape[1] == key.shape[1]
        self.calls += 1
        q_bounds, k_bounds = cu_seq_q.tolist(), cu_seq_k.tolist()
        assert q_bounds[-1] == query.shape[0] and k_bounds[-1] == key.shape[0]
        assert max_q == max(b - a for a, b in pairwise(q_bounds))
        assert max_k == max(b - a for a, b in pairwise(k_bounds))
        out = torch.empty_like(query)
        for (q0, q1), (k0, k1) in zip(pairwise(q_bounds), pairwise(k_bounds), strict=True):
            q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (query[q0:q1], key[k0:k1], value[k0:k1]))
            mask = None if self.aligned_to_first_key else causal_lower_right(q1 - q0, k1 - k0)
            attended = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, scale=scale, enable_gqa=enable_gqa
            )
            out[q0:q1] = attended[0].transpose(0, 1)
        return out


class StandInVarlenBefore211(StandInVarlen):
    """torch 2.10's signature: ``is_causal`` instead of ``window_size``, and no grouped-query attention."""

    def __call__(  # type: ignore[no-untyped-def,override]
        self, query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, is_causal=False, scale=None
    ):
        assert is_causal
        window_size = (-1, 0)
        return super().__call__(
            query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale=scale, window_size=window_size
        )


def test_varlen_layout_gathers_each_segments_context_then_its_own_keys() -> None:
    segments = [Segment(0, 3), Segment(3, 5, context=(0, 3)), Segment(5, 6), Segment(6, 8, context=(5, 6))]
    keys, cu_q, cu_k = varlen_layout(segments)
    assert keys == [0, 1, 2, 0, 1, 2, 3, 4, 5, 5, 6, 7]
    assert cu_q == [0, 3, 5, 6, 8] and cu_k == [0, 3, 8, 9, 12]
    index = VarlenIndex.build(segments, torch.device("cpu"))
    assert (index.max_q, index.max_k) == (3, 5)
    with pytest.raises(ValueError, match="cover the row in order"):
        varlen_layout([Segment(0, 3), Segment(4, 5)])


@pytest.mark.parametrize(
    "kernel", [StandInVarlen(), StandInVarlenBefore211()], ids=["torch-2.11+", "torch-2.10"]
)
def test_varlen_attention_equals_the_per_segment_loop(monkeypatch, kernel: StandInVarlen) -> None:
    torch.manual_seed(1)
    heads, kv_heads, dim, total = 4, 2, 8, 17
    query = torch.randn(total, heads, dim).transpose(0, 1).unsqueeze(0)  # (1, heads, T, D) as projected
    key, value = torch.randn(1, kv_heads, total, dim), torch.randn(1, kv_heads, total, dim)
    segments = [Segment(0, 4), Segment(4, 9, (0, 4)), Segment(9, 11, (0, 4)), Segment(11, 17)]
    loop, _ = packed_attention(object(), query, key, value, None, packed_segments=segments, scaling=0.3)
    kernel.calls = 0
    monkeypatch.setattr(packed_attention_module, "_varlen_kernel", kernel)
    index = VarlenIndex.build(segments, query.device)
    fast, _ = packed_attention(
        object(), query, key, value, None, packed_segments=segments, packed_varlen=index, scaling=0.3
    )
    assert kernel.calls == 1
    torch.testing.assert_close(fast, loop)


def test_an_engine_with_varlen_runs_one_kernel_call_per_layer_and_scores_the_same(
    engine, monkeypatch
) -> None:
    kernel = StandInVarlen()
    monkeypatch.setattr(packed_attention_module, "varlen_usable", lambda backbone: True)
    monkeypatch.setattr(packed_attention_module, "_varlen_kernel", kernel)
    fast = packed(engine, max_batch_tokens=150)
    assert fast.packed_varlen == (True, True)
    assert fast.describe() == "cpu, float32, packed rows (flash varlen attention)"
    groups = mixed_groups(fast)
    kernel.calls = 0
    with rows_fed(fast.policy) as rows:
        ours = packed_scores(fast, groups)
    layers = engine.policy.config.num_hidden_layers
    assert kernel.calls == 2 * layers * len(rows)  # both sides, every layer, every row: one call each
    flat = [item for group in groups for item in group]
    assert_same_scores([s for scores in ours for s in scores], engine.score_tokenized(flat))


def test_a_side_that_falls_back_is_named_in_the_description(engine, monkeypatch) -> None:
    monkeypatch.setattr(
        packed_attention_module, "varlen_usable", lambda backbone: backbone is model_backbone(engine.policy)
    )
    monkeypatch.setattr(packed_attention_module, "_varlen_kernel", StandInVarlen())
    mixed = packed(engine)
    assert mixed.packed_varlen == (True, False)
    assert mixed.describe() == (
        "cpu, float32, packed rows (flash varlen attention for the policy, per-sequence attention for the "
        "reference)"
    )


def test_a_varlen_kernel_that_differs_falls_back_to_the_loop(engine, monkeypatch, caplog) -> None:
    kernel = StandInVarlen(aligned_to_first_key=True)  # the probe's response would not see its own keys
    monkeypatch.setattr(packed_attention_module, "varlen_usable", lambda backbone: True)
    monkeypatch.setattr(packed_attention_module, "_varlen_kernel", kernel)
    with caplog.at_level("WARNING"):
        fallen_back = packed(engine)
    assert fallen_back.packed_varlen == (False, False)
    assert fallen_back.describe() == "cpu, float32, packed rows (per-sequence attention)"
    assert "flash varlen packing is off" in caplog.text
    groups = mixed_groups(fallen_back)
    calls = kernel.calls
    flat = [item for group in groups for item in group]
    ours = packed_scores(fallen_back, groups)
    assert kernel.calls == calls
    assert_same_scores([s for scores in ours for s in scores], engine.score_tokenized(flat))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bfloat16_packed_uses_flash_varlen_and_matches_padded(tiny_pair) -> None:
    from xlreward.service.scoring.loading import load_engine

    gpu = load_engine(
        tiny_pair.policy,
        tiny_pair.reference,
        device="cuda",
        dtype="bfloat16",
        config=EngineConfig(packed=True),
    )
    assert gpu.packed_varlen == (True, True)
    assert gpu.describe() == "cuda, bfloat16, packed rows (flash varlen attention)"
    padded = with_config(gpu)
    groups = mixed_groups(gpu)
    flat = [item for group in groups for item in group]
    ours = [s for scores in packed_scores(gpu, groups) for s in scores]
    for a, b in zip(ours, padded.score_tokenized(flat), strict=True):
        assert a.num_response_tokens == b.num_response_tokens
        assert a.policy_logp == pytest.approx(b.policy_logp, rel=0.02, abs=0.2)
        assert a.reference_logp == pytest.approx(b.reference_logp, rel=0.02, abs=0.2)
