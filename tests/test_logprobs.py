"""Known-number tests of the pure log-prob math: shifting, masking, chunking, sums and the reward."""

from __future__ import annotations

import math

import pytest
import torch

from xlreward.service.scoring.batching import plan_batches
from xlreward.service.scoring.logprobs import (
    LOGITS_SCRATCH_BYTES,
    chunked_token_logps,
    default_chunk_size,
    implicit_reward,
    logsumexp_,
    segment_sum,
    selective_log_softmax,
    sequence_logps,
    softcapped,
)


def test_selective_log_softmax_known_numbers() -> None:
    # log_softmax([0, ln 2, ln 5]) = [ln 1/8, ln 2/8, ln 5/8]
    logits = torch.tensor([[0.0, math.log(2), math.log(5)]])
    picked = selective_log_softmax(logits, torch.tensor([2]))
    assert picked.dtype == torch.float32
    assert picked.item() == pytest.approx(math.log(5 / 8), abs=1e-6)


def test_selective_log_softmax_upcasts_half_precision_logits() -> None:
    logits = torch.tensor([[10.0, 0.0, -10.0]], dtype=torch.bfloat16)
    picked = selective_log_softmax(logits, torch.tensor([0]))
    assert picked.dtype == torch.float32
    expected = 10.0 - math.log(math.exp(10) + 1 + math.exp(-10))
    assert picked.item() == pytest.approx(expected, abs=1e-5)


def test_sequence_logps_shifts_and_masks() -> None:
    """Logits at position t score token t + 1; the mask picks which tokens count."""
    # Vocabulary of 2. Position t's logits put probability p_t on token 1.
    p = [0.9, 0.25, 0.6]  # positions 0, 1, 2 (position 3's logits predict nothing)
    logits = torch.tensor([[[0.0, math.log(q / (1 - q))] for q in [*p, 0.5]]])  # (1, 4, 2)
    input_ids = torch.tensor([[0, 1, 0, 1]])  # tokens 1..3 are predicted by positions 0..2
    completion_mask = torch.tensor([[0, 0, 1, 1]])  # score tokens 2 and 3
    # token 2 (= 0) from position 1: 1 - 0.25; token 3 (= 1) from position 2: 0.6
    expected = math.log(0.75) + math.log(0.6)
    assert sequence_logps(logits, input_ids, completion_mask).item() == pytest.approx(expected, abs=1e-6)


def test_sequence_logps_ignores_padding_rows() -> None:
    logits = torch.zeros(2, 3, 4)  # uniform over 4 tokens: every token costs ln 4
    input_ids = torch.tensor([[1, 2, 3], [1, 2, 0]])
    completion_mask = torch.tensor([[0, 1, 1], [0, 1, 0]])  # second row: one real token, then padding
    result = sequence_logps(logits, input_ids, completion_mask)
    assert result.tolist() == pytest.approx([-2 * math.log(4), -math.log(4)], abs=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 64])
def test_chunking_does_not_change_token_logps(chunk_size: int) -> None:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 5, generator=generator)
    weight = torch.randn(11, 5, generator=generator)
    targets = torch.randint(0, 11, (7,), generator=generator)

    def head(h: torch.Tensor) -> torch.Tensor:
        return h @ weight.T

    expected = torch.log_softmax(head(hidden), dim=-1).gather(-1, targets[:, None]).squeeze(-1)
    got = chunked_token_logps(hidden, targets, head, chunk_size)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_chunked_head_sees_at_most_chunk_size_rows() -> None:
    seen: list[int] = []

    def head(h: torch.Tensor) -> torch.Tensor:
        seen.append(h.shape[0])
        return torch.zeros(h.shape[0], 3)

    chunked_token_logps(torch.zeros(10, 2), torch.zeros(10, dtype=torch.long), head, chunk_size=4)
    assert seen == [4, 4, 2]


def test_chunk_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_token_logps(torch.zeros(1, 1), torch.zeros(1, dtype=torch.long), lambda h: h, 0)


@pytest.mark.parametrize("scale", [1.0, 30.0, 1000.0])
def test_in_place_logsumexp_equals_torch(scale: float) -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 32000, generator=generator) * scale
    expected = torch.logsumexp(logits, dim=-1)
    got = logsumexp_(logits.clone())
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * max(1.0, scale / 30))


def test_in_place_logsumexp_known_numbers_and_overwrites_its_input() -> None:
    logits = torch.tensor([[0.0, math.log(2), math.log(5)], [-math.inf, 0.0, -math.inf]])
    lse = logsumexp_(logits)
    assert lse.tolist() == pytest.approx([math.log(8), 0.0], abs=1e-6)
    assert logits[0].tolist() == pytest.approx([1 / 5, 2 / 5, 1.0], abs=1e-6)  # exp(x - max): consumed
    assert logsumexp_(torch.full((1, 3), -math.inf)).item() == -math.inf  # as torch.logsumexp, not nan


def test_chunked_token_logps_leaves_hidden_states_alone_with_an_identity_head() -> None:
    hidden = torch.tensor([[0.0, math.log(3)]])
    before = hidden.clone()
    got = chunked_token_logps(hidden, torch.tensor([1]), lambda h: h, chunk_size=4)
    assert got.item() == pytest.approx(math.log(3 / 4), abs=1e-6)
    torch.testing.assert_close(hidden, before, rtol=0, atol=0)


def test_chunked_token_logps_keeps_the_graph_when_gradients_are_on() -> None:
    weight = torch.randn(11, 5, requires_grad=True)
    logps = chunked_token_logps(torch.randn(4, 5), torch.tensor([0, 3, 7, 10]), lambda h: h @ weight.T, 3)
    logps.sum().backward()  # an in-place logsumexp would break autograd here
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_default_chunk_size_keeps_one_chunk_of_logits_under_the_scratch_budget() -> None:
    assert default_chunk_size(128256) == 523  # Llama-3: 523 x 128256 x 4 bytes = 256 MB
    assert default_chunk_size(32000) == 2097
    assert default_chunk_size(128256, torch.bfloat16) == 348  # bf16 logits + their float32 upcast
    assert default_chunk_size(10**10) == 1  # never zero
    for vocab, dtype, size in [
        (128256, torch.float32, 4),
        (151936, torch.bfloat16, 6),
        (50, torch.float32, 4),
    ]:
        assert default_chunk_size(vocab, dtype) * vocab * size <= LOGITS_SCRATCH_BYTES


def test_segment_sum_and_implicit_reward() -> None:
    values = torch.tensor([-1.0, -2.0, -0.5, -4.0])
    sums = segment_sum(values, torch.tensor([0, 0, 2, 2]), num_segments=3)
    assert sums.tolist() == [-3.0, 0.0, -4.5]
    assert implicit_reward(torch.tensor([-3.0]), torch.tensor([-5.0]), beta=0.1).item() == pytest.approx(0.2)
    assert implicit_reward(-10.0, -4.0, beta=0.5) == pytest.approx(-3.0)


def test_softcapping_matches_gemma_formula() -> None:
    capped = softcapped(lambda h: h, cap=30.0)
    x = torch.tensor([[0.0, 30.0, -300.0]])
    torch.testing.assert_close(capped(x), 30.0 * torch.tanh(x / 30.0))
    plain = softcapped(lambda h: h * 2, cap=None)
    assert plain(torch.tensor([1.0])).item() == 2.0


def test_plan_batches_respects_budget_and_covers_every_item() -> None:
    lengths = [5, 50, 7, 49, 3, 20, 21, 8]
    batches = plan_batches(lengths, max_batch_tokens=60)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) * max(lengths[i] for i in batch) <= 60
    assert plan_batches([100], max_batch_tokens=10) == [[0]]  # too long alone: its own batch, not refused
    with pytest.raises(ValueError):
        plan_batches([1], max_batch_tokens=0)
