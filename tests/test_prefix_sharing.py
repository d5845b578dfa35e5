"""Scoring a group of responses with the shared prompt computed once equals scoring each item in full.

``score_tokenized`` (itself checked against a plain full-softmax oracle in ``test_engine_exact.py``) is the
oracle here. The counting tests watch each backbone call: the prompt's positions go through each model
exactly once per group, and everything else fed is a suffix on top of the prompt's cache.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from strategy_scores import prefix_scores
from xlreward.service.protocol import ChatMessage, RewardItem
from xlreward.service.scoring.core import model_backbone
from xlreward.service.scoring.engine import EngineConfig, ItemScore, ScoringEngine
from xlreward.service.scoring.prefix import cache_keyword, returned_cache
from xlreward.service.scoring.templating import TemplateOptions, TokenizedItem

PROMPT = "Greet the reader, then explain how to add two numbers."
MESSAGES = [
    ChatMessage(role="system", content="Answer in the language you are asked to."),
    ChatMessage(role="user", content="Greet the reader."),
]
LONG_RESPONSE = " ".join(f"step {i}: add {i} and {i + 1}." for i in range(25))  # several hundred tokens
RESPONSES = [
    "Hello! To add two numbers, put them together.",
    "4",  # one token
    "",  # empty: only the end-of-turn token is scored
    LONG_RESPONSE,
    "Привет, мир! Сложите два числа.",
    "你好，世界！こんにちは。",
    "مرحبا بالعالم",
    "🎉 👍🏽 🇪🇸 😀",
    "Die Straße ist größer als gedacht, señor.",
    "Hello!",
]
TOLERANCE = 1e-4  # float32 forwards; observed differences are ~1e-5 or less


def tokenize(engine: ScoringEngine, prompt: str | list[ChatMessage], responses: Sequence[str]):
    return [engine.tokenize(RewardItem(prompt=prompt, response=r)) for r in responses]


def assert_same_scores(ours: list[ItemScore], theirs: list[ItemScore]) -> float:
    """Asserts equal scores item by item; returns the largest absolute difference seen."""
    assert len(ours) == len(theirs)
    worst = 0.0
    for index, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        assert a.num_response_tokens == b.num_response_tokens, index
        assert a.truncated == b.truncated and a.beta == b.beta, index
        assert a.policy_logp == pytest.approx(b.policy_logp, abs=TOLERANCE), index
        assert a.reference_logp == pytest.approx(b.reference_logp, abs=TOLERANCE), index
        assert a.reward == pytest.approx(b.reward, abs=TOLERANCE), index
        worst = max(worst, abs(a.policy_logp - b.policy_logp), abs(a.reference_logp - b.reference_logp))
    return worst


def with_config(engine: ScoringEngine, **kwargs: Any) -> ScoringEngine:
    return ScoringEngine(
        engine.policy,
        engine.reference,
        engine.tokenizer,
        template=kwargs.pop("template", None),
        config=EngineConfig(**kwargs),
    )


@dataclass(frozen=True)
class Call:
    """One backbone forward: its input ids' shape, its first position, and the cache it started from."""

    rows: int
    width: int
    first_position: int
    cached: int  # positions already in the cache (0 without one)
    cache_rows: int  # DynamicCache.batch_size says -1 (only linear-attention layers set it): keys' rows


@contextmanager
def recording(model: Any) -> Iterator[tuple[list[Call], list[int]]]:
    """Records each backbone call of ``model`` and, separately, the positions its embedding layer sees."""
    calls: list[Call] = []
    embedded: list[int] = []

    def on_backbone(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs["input_ids"]
        positions = kwargs.get("position_ids")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        cached = cache.get_seq_length() if cache is not None else 0
        first = int(positions.min()) if positions is not None else cached
        calls.append(
            Call(ids.shape[0], ids.shape[1], first, cached, cache.layers[0].keys.shape[0] if cached else 0)
        )

    def on_embedding(_module: Any, args: tuple[Any, ...], _out: Any) -> None:
        embedded.append(args[0].numel())

    handles = [
        model_backbone(model).register_forward_pre_hook(on_backbone, with_kwargs=True),
        model.get_input_embeddings().register_forward_hook(on_embedding),
    ]
    try:
        yield calls, embedded
    finally:
        for handle in handles:
            handle.remove()


def suffix_lengths(items: Sequence[TokenizedItem], prefix: int) -> list[int]:
    """What each item must feed after the prompt: up to the last position that predicts a scored token."""
    return [item.score_end - 1 - prefix for item in items]


def test_group_equals_score_tokenized(engine) -> None:
    items = tokenize(engine, PROMPT, RESPONSES)
    assert max(item.num_scored for item in items) > 200  # the long response is long
    assert min(item.num_scored for item in items) == 1  # the empty response: end-of-turn only
    worst = assert_same_scores(prefix_scores(engine, items), engine.score_tokenized(items))
    print(f"max abs diff: {worst:.3g}")


def test_messages_prompt_with_system_turn(engine) -> None:
    items = tokenize(engine, MESSAGES, RESPONSES)
    assert_same_scores(prefix_scores(engine, items), engine.score_tokenized(items))


def test_input_order_is_kept(engine) -> None:
    items = tokenize(engine, PROMPT, RESPONSES)
    forward = prefix_scores(engine, items)
    backward = prefix_scores(engine, items[::-1])
    assert_same_scores(backward[::-1], forward)


@pytest.mark.parametrize(("max_batch_tokens", "chunk_size"), [(1, 1), (150, 7), (600, 1024)])
def test_sub_batches_do_not_change_scores(engine, max_batch_tokens: int, chunk_size: int) -> None:
    """A small budget splits the group; every sub-batch reuses the one prefix cache, unchanged."""
    small = with_config(engine, max_batch_tokens=max_batch_tokens, chunk_size=chunk_size)
    items = tokenize(small, PROMPT, RESPONSES)
    with recording(small.policy) as (calls, _):
        ours = prefix_scores(small, items)
    assert len(calls) >= 3  # the prefix and at least two sub-batches
    assert_same_scores(ours, engine.score_tokenized(items))


def test_icr_compat_items(engine) -> None:
    icr = with_config(engine, template=TemplateOptions(icr_compat=True))
    items = tokenize(icr, PROMPT, RESPONSES)
    assert 0 in [item.num_scored for item in items]  # the empty response: nothing left to score
    assert_same_scores(prefix_scores(icr, items), icr.score_tokenized(items))


def test_responses_sharing_their_first_tokens(engine) -> None:
    """icr_compat starts scoring one token into the response; when every response shares that token it
    joins the prefix. Identical responses share everything but still each score in full."""
    icr = with_config(engine, template=TemplateOptions(icr_compat=True))
    responses = ["Hello! Nice to meet you.", "Hello! Привет.", "Hello!", "Hello! Nice to meet you."]
    for scorer in (engine, icr):
        items = tokenize(scorer, PROMPT, responses)
        assert_same_scores(prefix_scores(scorer, items), scorer.score_tokenized(items))
    single = tokenize(engine, PROMPT, ["Hello!"])
    assert_same_scores(prefix_scores(engine, single), engine.score_tokenized(single))


def test_prompt_is_computed_once_per_model(engine) -> None:
    one_batch = with_config(engine, max_batch_tokens=16384, max_padding=1.0)  # the group fits one batch
    items = tokenize(one_batch, PROMPT, RESPONSES)
    prompt_length = min(item.score_start for item in items)
    suffixes = suffix_lengths(items, prompt_length)
    for model in (engine.policy, engine.reference):
        with recording(model) as (calls, embedded):
            prefix_scores(one_batch, items)
        prefix_call, suffix_call = calls
        assert prefix_call == Call(1, prompt_length, 0, 0, 0)
        assert suffix_call == Call(len(items), max(suffixes), prompt_length, prompt_length, len(items))
        assert sum(embedded) == prompt_length + len(items) * max(suffixes)


def test_prompt_is_computed_once_with_sub_batches(engine) -> None:
    small = with_config(engine, max_batch_tokens=300)
    items = tokenize(small, PROMPT, RESPONSES)
    prompt_length = min(item.score_start for item in items)
    suffixes = suffix_lengths(items, prompt_length)
    with recording(small.reference) as (calls, embedded):
        prefix_scores(small, items)
    prefix_call, *suffix_calls = calls
    assert prefix_call == Call(1, prompt_length, 0, 0, 0)
    assert len(suffix_calls) >= 2
    for call in suffix_calls:  # each sub-batch starts after the prompt, on a cache of exactly the prompt
        assert (call.first_position, call.cached, call.cache_rows) == (
            prompt_length,
            prompt_length,
            call.rows,
        )
    # each item is one row of one sub-batch, but a sub-batch of empty suffixes needs no forward at all
    assert sum(1 for n in suffixes if n > 0) <= sum(call.rows for call in suffix_calls) <= len(items)
    assert sum(embedded) == prompt_length + sum(call.rows * call.width for call in suffix_calls)
    assert sum(embedded) < sum(len(item) for item in items)  # less than the prompt fed once per item


def test_items_without_a_shared_prompt_are_refused(engine) -> None:
    items = [*tokenize(engine, PROMPT, RESPONSES[:3]), *tokenize(engine, "Something else.", ["Yes."])]
    with pytest.raises(ValueError, match="not a prompt"):
        prefix_scores(engine, items)
    shifted = TokenizedItem(items[0].input_ids[1:], items[0].score_start - 1, items[0].score_end - 1)
    with pytest.raises(ValueError, match="share only their first 0 tokens"):
        prefix_scores(engine, [items[0], shifted])


def test_no_items_no_scores(engine) -> None:
    assert prefix_scores(engine, []) == []


def test_prefix_sharing_is_faster_in_tokens_fed_than_full_scoring(engine) -> None:
    """The point of it: with a long prompt, full scoring feeds the prompt once per response."""
    prompt = " ".join(["Please read this long instruction carefully."] * 20)
    items = tokenize(engine, prompt, RESPONSES[:9])
    with recording(engine.policy) as (_, shared):
        prefix_scores(engine, items)
    with recording(engine.policy) as (_, full):
        engine.score_tokenized(items)
    assert sum(shared) < sum(full)
    assert torch.is_inference_mode_enabled() is False  # nothing leaks out of inference mode


def test_the_cache_keyword_follows_the_installed_transformers(engine) -> None:
    """transformers 5.24 renamed the forward's ``past_key_values`` to ``cache``: the newer name where the
    forward takes it, the older one elsewhere, and the output's cache under either name."""
    backbone = model_backbone(engine.policy)
    assert cache_keyword(backbone) in inspect.signature(backbone.forward).parameters

    class OlderBackbone:
        def forward(self, input_ids: Any, past_key_values: Any, use_cache: bool) -> None:
            pass

    assert cache_keyword(OlderBackbone()) == "past_key_values"
    sentinel = object()
    assert returned_cache(SimpleNamespace(cache=sentinel)) is sentinel
    assert returned_cache(SimpleNamespace(past_key_values=sentinel)) is sentinel
