"""The engine's scores equal a plain per-item full-softmax computation, for every configuration.

The oracle here shares nothing with the engine but the checkpoint: it renders with the tokenizer's chat
template directly, runs the model's own forward to full [1, T, vocab] logits, and sums log_softmax at the
response tokens.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from oracle import plain_logp
from xlreward.service.protocol import ChatMessage, RewardItem
from xlreward.service.scoring.batching import default_max_batch_tokens, default_max_forward_tokens
from xlreward.service.scoring.engine import EngineConfig, ScoringEngine
from xlreward.service.scoring.errors import ModelPairError, UnsupportedModelError
from xlreward.service.scoring.loading import check_same_tokenizer, load_causal_lm, load_tokenizer
from xlreward.service.scoring.logprobs import default_chunk_size
from xlreward.service.scoring.padded import padded_positions, plan_padded
from xlreward.trainer.tiny_models import TinySpec, build_tiny_pair

LONG_RESPONSE = " ".join(f"step {i}: add {i} and {i + 1}." for i in range(25))  # several hundred tokens
ITEMS = [
    RewardItem(id="en", prompt="What is 2+2?", response="2+2 is 4."),
    RewardItem(id="one-token", prompt="Answer with one digit: 2+2?", response="4"),
    RewardItem(id="empty", prompt="Say nothing.", response=""),
    RewardItem(
        id="latin", prompt="Describe the street.", response="Die Straße ist größer als gedacht, señor."
    ),
    RewardItem(id="cyrillic", prompt="Greet me.", response="Привет, мир! Как дела?"),
    RewardItem(
        id="cjk", prompt="Greet me in Chinese and Japanese.", response="你好，世界！こんにちは、世界。"
    ),
    RewardItem(id="arabic", prompt="Greet me.", response="مرحبا بالعالم"),
    RewardItem(id="thai", prompt="Greet me.", response="สวัสดีชาวโลก"),
    RewardItem(id="emoji", prompt="React.", response="🎉 👍🏽 🇪🇸 😀"),
    RewardItem(
        id="messages",
        prompt=[ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")],
        response="Hello!",
    ),
    RewardItem(id="long", prompt="Explain, step by step.", response=LONG_RESPONSE),
]
END_OF_TURN = {"llama3": "<|eot_id|>", "chatml": "<|im_end|>"}


@pytest.fixture(scope="module")
def plain_models(tiny_pair):
    cpu = torch.device("cpu")
    return (
        load_causal_lm(tiny_pair.policy, cpu, torch.float32),
        load_causal_lm(tiny_pair.reference, cpu, torch.float32),
        load_tokenizer(tiny_pair.policy),
    )


def test_scores_equal_plain_full_softmax(engine, plain_models) -> None:
    policy, reference, tokenizer = plain_models
    results = engine.score(ITEMS)
    assert [r.id for r in results] == [item.id for item in ITEMS]
    assert max(r.num_response_tokens for r in results) > 200  # the long response is long
    for item, result in zip(ITEMS, results, strict=True):
        policy_logp, count = plain_logp(policy, tokenizer, item)
        reference_logp, _ = plain_logp(reference, tokenizer, item)
        assert result.num_response_tokens == count, item.id
        assert result.policy_logp == pytest.approx(policy_logp, abs=1e-4), item.id
        assert result.reference_logp == pytest.approx(reference_logp, abs=1e-4), item.id
        assert result.reward == pytest.approx(0.1 * (policy_logp - reference_logp), abs=2e-5), item.id
        assert result.policy_logp_mean == pytest.approx(policy_logp / count, abs=1e-5), item.id
        assert result.reward_mean == pytest.approx(0.1 * (policy_logp - reference_logp) / count, abs=1e-5)


def test_batched_equals_unbatched(engine) -> None:
    batched = engine.score(ITEMS)  # the default budget puts the short items in one padded batch
    alone = [engine.score([item])[0] for item in ITEMS]
    for together, single in zip(batched, alone, strict=True):
        assert together.policy_logp == pytest.approx(single.policy_logp, abs=1e-4)
        assert together.reference_logp == pytest.approx(single.reference_logp, abs=1e-4)


@pytest.mark.parametrize("padding_mask", [False, True])
def test_heavily_padded_batches_equal_unbatched_with_or_without_the_mask(engine, padding_mask: bool) -> None:
    """Right padding needs no attention mask under causal attention: with the padding limit off, every
    item shares one batch padded to the longest (hundreds of tokens), and scores still equal each item
    scored alone."""
    padded = ScoringEngine(
        engine.policy,
        engine.reference,
        engine.tokenizer,
        config=EngineConfig(max_batch_tokens=1_000_000, max_padding=1.0, padding_mask=padding_mask),
    )
    together = padded.score(ITEMS)
    for item, ours in zip(ITEMS, together, strict=True):
        alone = engine.score([item])[0]
        assert ours.policy_logp == pytest.approx(alone.policy_logp, abs=1e-4), item.id
        assert ours.reference_logp == pytest.approx(alone.reference_logp, abs=1e-4), item.id


def test_unset_settings_resolve_from_the_device_and_the_vocabulary(engine) -> None:
    vocab = engine.policy.get_output_embeddings().weight.shape[0]
    assert engine.chunk_size == engine.config.chunk_size == default_chunk_size(vocab)
    assert engine.max_batch_tokens == engine.config.max_batch_tokens == default_max_batch_tokens("cpu")
    assert (
        engine.config.max_forward_tokens
        == engine.core.max_forward_tokens
        == default_max_forward_tokens("cpu")
    )
    explicit = ScoringEngine(
        engine.policy,
        engine.reference,
        engine.tokenizer,
        config=EngineConfig(chunk_size=7, max_batch_tokens=99),
    )
    assert (explicit.chunk_size, explicit.max_batch_tokens) == (7, 99)
    with pytest.raises(ValueError, match="max_padding"):
        EngineConfig(max_padding=2.0)


@pytest.mark.parametrize(
    ("chunk_size", "max_batch_tokens", "max_forward_tokens"),
    [(1, 64, None), (7, 512, 16), (4096, 1_000_000, 1 << 40)],
)
def test_chunk_size_batch_budget_and_forward_cap_do_not_change_scores(
    engine, chunk_size: int, max_batch_tokens: int, max_forward_tokens: int | None
) -> None:
    """The engine's defaults run a batch wider than 256 positions in chunks of columns on the KV cache;
    16-position chunks and no cap at all give the same scores."""
    longer = RewardItem(id="longer", prompt="Explain twice.", response=f"{LONG_RESPONSE} {LONG_RESPONSE}")
    items = [*ITEMS, longer]
    tokenized = [engine.tokenize(item) for item in items]
    widest = max(padded_positions(tokenized, [batch]) for batch in plan_padded(engine.core, tokenized))
    assert widest > engine.config.max_forward_tokens  # so the defaults do chunk a batch
    other = ScoringEngine(
        engine.policy,
        engine.reference,
        engine.tokenizer,
        config=EngineConfig(
            chunk_size=chunk_size, max_batch_tokens=max_batch_tokens, max_forward_tokens=max_forward_tokens
        ),
    )
    for ours, theirs in zip(engine.score(items), other.score(items), strict=True):
        assert theirs.policy_logp == pytest.approx(ours.policy_logp, abs=1e-4)
        assert theirs.reference_logp == pytest.approx(ours.reference_logp, abs=1e-4)


def test_lm_head_runs_only_on_scored_positions_in_chunks(engine) -> None:
    """No [batch, T, vocab] logits: the head sees scored positions only, at most chunk_size at a time."""
    chunk = 16
    rows_seen: list[int] = []
    probe = ScoringEngine(
        engine.policy, engine.reference, engine.tokenizer, config=EngineConfig(chunk_size=chunk)
    )
    probe.core = replace(
        probe.core,
        sides=tuple(
            replace(
                side,
                read=replace(
                    side.read, head=lambda h, head=side.read.head: (rows_seen.append(h.shape[0]), head(h))[1]
                ),
            )
            for side in probe.sides
        ),
    )
    results = probe.score(ITEMS)
    assert max(rows_seen) <= chunk
    assert sum(rows_seen) == 2 * sum(r.num_response_tokens for r in results)  # both models, nothing more


def test_beta_scales_reward_only(engine) -> None:
    scaled = ScoringEngine(
        engine.policy, engine.reference, engine.tokenizer, config=EngineConfig(beta=2.0)
    ).score(ITEMS[:3])
    for base, other in zip(engine.score(ITEMS[:3]), scaled, strict=True):
        assert other.policy_logp == base.policy_logp
        assert other.reward == pytest.approx(20 * base.reward, rel=1e-6)


def test_different_tokenizers_are_refused(model_cache) -> None:
    llama = build_tiny_pair(model_cache, TinySpec(arch="llama", template="llama3"))
    qwen = build_tiny_pair(model_cache, TinySpec(arch="qwen2", template="chatml"))
    with pytest.raises(ModelPairError, match=r"tokenizers differ in: .*chat template"):
        check_same_tokenizer(load_tokenizer(llama.policy), load_tokenizer(qwen.policy))
    check_same_tokenizer(load_tokenizer(llama.policy), load_tokenizer(llama.reference))  # same: accepted


def test_different_vocabularies_are_refused(model_cache) -> None:
    small = build_tiny_pair(model_cache, TinySpec(vocab_size=400))
    normal = build_tiny_pair(model_cache, TinySpec())
    cpu = torch.device("cpu")
    with pytest.raises(ModelPairError, match="do not share a vocabulary"):
        ScoringEngine(
            load_causal_lm(normal.policy, cpu, torch.float32),
            load_causal_lm(small.reference, cpu, torch.float32),
            load_tokenizer(normal.policy),
        )


def test_logit_post_processing_it_cannot_reproduce_is_refused(llama_pair) -> None:
    """A config asking for soft-capping that the model's forward does not apply: our head path would
    differ from the model's own logits, and the engine must say so rather than score differently."""
    cpu = torch.device("cpu")
    policy = load_causal_lm(llama_pair.policy, cpu, torch.float32)
    policy.config.final_logit_softcapping = 0.5
    reference = load_causal_lm(llama_pair.reference, cpu, torch.float32)
    with pytest.raises(UnsupportedModelError, match="differ from the model's own logits"):
        ScoringEngine(policy, reference, load_tokenizer(llama_pair.policy))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bfloat16_matches_cpu_float32(tiny_pair, engine) -> None:
    from xlreward.service.scoring.loading import load_engine

    gpu = load_engine(tiny_pair.policy, tiny_pair.reference, device="cuda", dtype="bfloat16")
    for ours, theirs in zip(engine.score(ITEMS), gpu.score(ITEMS), strict=True):
        assert theirs.num_response_tokens == ours.num_response_tokens
        assert theirs.policy_logp == pytest.approx(ours.policy_logp, rel=0.05, abs=0.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_chunked_forwards_match_whole_ones(tiny_pair, engine) -> None:
    """GPUs run uncapped by default; a cap set by hand chunks on CUDA exactly as on CPU (float32)."""
    from xlreward.service.scoring.loading import load_engine

    whole = load_engine(tiny_pair.policy, tiny_pair.reference, device="cuda", dtype="float32")
    assert whole.config.max_forward_tokens is None
    chunked = ScoringEngine(
        whole.policy, whole.reference, whole.tokenizer, config=EngineConfig(max_forward_tokens=16)
    )
    for ours, theirs in zip(whole.score(ITEMS), chunked.score(ITEMS), strict=True):
        assert theirs.policy_logp == pytest.approx(ours.policy_logp, abs=1e-3)
        assert theirs.reference_logp == pytest.approx(ours.reference_logp, abs=1e-3)
