"""Log-probabilities of generated tokens, for the ``logprobs`` options of the OpenAI-compatible routes.

They are computed after sampling, by one teacher-forced forward over prompt + completion, instead of
inside the decode loop: the loop stays as it is (and free to change), the cost is one forward per distinct
completion, and nothing vocabulary-wide is kept per decoding step. The values are those of the model's raw
distribution (temperature 1, no top-k/top-p), as vLLM returns by default, not of the distribution
actually sampled from; the forward may differ from the decode loop's cached one by float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from xlreward.service.protocol import TokenLogprob, TopLogprob
from xlreward.service.scoring.logprobs import default_chunk_size

# JSON has no -inf: a token the model rules out completely gets this instead (vLLM's floor too).
LOGPROB_FLOOR = -9999.0


def token_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, top: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Log-probs of ``targets`` and the ``top`` most likely tokens, from the logits that predict them.

    logits: (C, V) any float dtype; targets: (C,) int64 -> chosen (C,), top values (C, top) in descending
    order, top ids (C, top). Log-softmax runs in float32, ``default_chunk_size`` rows at a time, so the
    float32 copy never exceeds the scoring engine's scratch budget.
    """
    chosen = torch.empty(targets.shape[0], dtype=torch.float32, device=logits.device)  # (C,)
    values = torch.empty(targets.shape[0], top, dtype=torch.float32, device=logits.device)  # (C, top)
    ids = torch.empty(targets.shape[0], top, dtype=torch.long, device=logits.device)  # (C, top)
    step = default_chunk_size(logits.shape[-1], logits.dtype)
    for start in range(0, targets.shape[0], step):
        stop = start + step
        logps = torch.log_softmax(logits[start:stop].float(), dim=-1)  # (c, V)
        chosen[start:stop] = logps.gather(-1, targets[start:stop, None]).squeeze(-1)
        values[start:stop], ids[start:stop] = logps.topk(top, dim=-1)  # sorted, most likely first
    return chosen.clamp(min=LOGPROB_FLOOR), values.clamp(min=LOGPROB_FLOOR), ids


def completion_logprobs(
    model: Any, prompt_ids: list[int], completion_ids: list[int], top: int, decode: Callable[[int], str]
) -> list[TokenLogprob]:
    """Each completion token's log-prob under ``model`` given the prompt and the tokens before it, with the
    ``top`` most likely tokens at its position. Call under the model's lock and in inference mode.

    ``decode`` turns one token id into its text (special tokens written out).
    """
    if not completion_ids:
        return []
    device = model.get_input_embeddings().weight.device
    sequence = torch.tensor([prompt_ids + completion_ids], dtype=torch.long, device=device)  # (1, T)
    count = len(completion_ids)
    # Only the positions that predict completion tokens need logits: the last count + 1 positions, of which
    # the very last predicts the token after the completion.
    output = model(input_ids=sequence, attention_mask=torch.ones_like(sequence), logits_to_keep=count + 1)
    logits = output.logits[0, :-1]  # (C, V): position p predicts completion token p
    targets = torch.tensor(completion_ids, dtype=torch.long, device=device)  # (C,)
    chosen, values, ids = token_logprobs(logits, targets, top)
    texts: dict[int, str] = {}

    def entry(token_id: int, logprob: float) -> TopLogprob:
        text = texts.setdefault(token_id, decode(token_id))
        return TopLogprob(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))

    result = []
    for token_id, logprob, top_values, top_ids in zip(
        completion_ids, chosen.tolist(), values.tolist(), ids.tolist(), strict=True
    ):
        alternatives = [entry(i, v) for i, v in zip(top_ids, top_values, strict=True)]
        token = entry(token_id, logprob)
        result.append(TokenLogprob(**token.model_dump(), top_logprobs=alternatives))
    return result
