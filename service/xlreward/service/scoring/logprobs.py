"""Pure log-probability math. No models, no tokenizers: tensors in, tensors out.

Conventions (the field's, as in TRL): a sequence ``input_ids`` of length T is teacher-forced; the logits at
position t predict token t + 1, so scoring token j reads the logits at position j - 1. Log-softmax always
runs in float32, whatever the model's dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
Number = TypeVar("Number", float, torch.Tensor)


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[..., index] in float32, without keeping the normalised tensor.

    logits: (..., V) any float dtype; index: (...) int64 -> (...) float32.
    """
    logits = logits.float()
    picked = torch.gather(logits, dim=-1, index=index.unsqueeze(-1)).squeeze(-1)  # (...)
    return picked - torch.logsumexp(logits, dim=-1)


def sequence_logps(
    logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor
) -> torch.Tensor:
    """Summed log-probs of the completion tokens of each sequence, from full logits.

    logits: (B, T, V); input_ids: (B, T); completion_mask: (B, T), 1 where a token is scored -> (B,).
    Shift -> selective log-softmax -> mask -> sum. The mask at position 0 is ignored: no logits predict it.
    This materialises (B, T - 1) float32 values per vocabulary row it reads, so it is the plain reference
    path (tests, the baseline benchmark); the engine uses ``chunked_token_logps`` instead.
    """
    shift_logits = logits[:, :-1, :]  # (B, T-1, V): predicts tokens 1..T-1
    shift_targets = input_ids[:, 1:]  # (B, T-1)
    shift_mask = completion_mask[:, 1:].to(torch.float32)  # (B, T-1)
    token_logps = selective_log_softmax(shift_logits, shift_targets)  # (B, T-1)
    return (token_logps * shift_mask).sum(dim=-1)


# Scratch memory the log-prob stage may use for one chunk of logits (see ``default_chunk_size``).
LOGITS_SCRATCH_BYTES = 256 << 20


def default_chunk_size(vocab_size: int, logits_dtype: torch.dtype = torch.float32) -> int:
    """LM-head rows per chunk so that one chunk's logits stay within ``LOGITS_SCRATCH_BYTES``: the
    float32 logits, plus the model-dtype logits they are upcast from when the head is not float32.

    >>> default_chunk_size(128256), default_chunk_size(32000), default_chunk_size(128256, torch.bfloat16)
    (523, 2097, 348)
    """
    upcast = 0 if logits_dtype == torch.float32 else torch.finfo(logits_dtype).bits // 8
    return max(1, LOGITS_SCRATCH_BYTES // (vocab_size * (4 + upcast)))


def logsumexp_(logits: torch.Tensor) -> torch.Tensor:
    """logsumexp over the last dimension, computed IN PLACE: ``logits`` is overwritten (with
    exp(logits - max)). torch.logsumexp allocates an (x - max) temporary as large as its input; for a
    chunk of vocabulary-wide float32 logits that doubles the log-prob stage's memory.

    logits: (..., V) float -> (...). Rows whose maximum is infinite are handled as torch.logsumexp does.
    """
    top = logits.amax(dim=-1, keepdim=True)  # (..., 1)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # -inf rows stay -inf, not nan
    return logits.sub_(top).exp_().sum(dim=-1).log_().add_(top.squeeze(-1))


def chunked_token_logps(
    hidden: torch.Tensor, targets: torch.Tensor, logits_fn: LogitsFn, chunk_size: int
) -> torch.Tensor:
    """Log-probs of ``targets`` from the hidden states that predict them, ``chunk_size`` rows at a time.

    hidden: (N, H) the final hidden states at the positions that predict each target; targets: (N,).
    logits_fn maps (C, H) -> (C, V) (the LM head, plus any soft-capping) and returns a new tensor. Peak
    extra memory is one (chunk_size, V) float32 block (plus its model-dtype original when the head is not
    float32), independent of N. Returns (N,) float32.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
    # In place only where no autograd graph needs the logits (scoring runs under inference_mode).
    in_place = not torch.is_grad_enabled()
    out = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, targets.shape[0], chunk_size):
        stop = start + chunk_size
        logits = logits_fn(hidden[start:stop]).float()  # (C, V) float32
        if in_place and not _shares_memory(logits, hidden):
            picked = logits.gather(-1, targets[start:stop].unsqueeze(-1)).squeeze(-1)  # (C,), read first
            out[start:stop] = picked - logsumexp_(logits)
        else:
            out[start:stop] = selective_log_softmax(logits, targets[start:stop])
        del logits  # else the next chunk's logits are allocated while this chunk's are still held
    return out


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether writing into ``a`` would change ``b`` (a head that returns its input, in tests)."""
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def segment_sum(values: torch.Tensor, segment_ids: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Sum of ``values`` per segment. values: (N,) float; segment_ids: (N,) int64 in [0, S) -> (S,)."""
    out = torch.zeros(num_segments, dtype=values.dtype, device=values.device)
    return out.index_add_(0, segment_ids, values)


def implicit_reward(policy_logps: Number, reference_logps: Number, beta: float) -> Number:
    """DPO's implicit reward r = beta * (log pi(y|x) - log pi_ref(y|x)) (Rafailov et al. 2023, eq. 5).

    Works on floats and on tensors of any shape alike."""
    return beta * (policy_logps - reference_logps)


def softcapped(logits_fn: LogitsFn, cap: float | None) -> LogitsFn:
    """Wrap an LM head with final-logit soft-capping (Gemma 2 style: cap * tanh(logits / cap))."""
    if not cap:
        return logits_fn

    def capped(hidden: torch.Tensor) -> torch.Tensor:
        logits = logits_fn(hidden).float()
        return torch.tanh(logits / cap) * cap

    return capped
