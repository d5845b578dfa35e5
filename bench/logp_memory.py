"""The log-prob stage alone: peak extra memory of turning N final hidden states into N token log-probs
through a V-row LM head, the baseline's way (full [N, V] logits, float32 log-softmax over all of it, then
gather) against chunks of ``chunk_size`` rows: ``logsumexp-<C>`` (the engine before issue 6: torch's
logsumexp, which allocates an (x - max) temporary beside each chunk), ``inplace-<C>`` (the engine's
``chunked_token_logps`` now, logsumexp in place) and ``inplace-auto`` (the same with the engine's default
chunk size for the vocabulary, ``default_chunk_size``).

Each variant runs in a fresh worker process; the hidden states, the LM head and the targets are allocated
before the measured section, so what is measured is only what the log-prob computation adds.
"""

from __future__ import annotations

import time
from typing import Any

import harness


def chunk_rows(variant: str, tokens: int, vocab: int, dtype_bytes: int) -> int:
    """Rows of logits the variant holds at once."""
    from xlreward.service.scoring.logprobs import default_chunk_size

    if variant == "full":
        return tokens
    size = variant.split("-")[1]
    if size == "auto":
        import torch

        return min(tokens, default_chunk_size(vocab, torch.float32 if dtype_bytes == 4 else torch.bfloat16))
    return min(tokens, int(size))


def expected_extra_mb(variant: str, tokens: int, vocab: int, dtype_bytes: int) -> float:
    """What the variant should add, by arithmetic: the baseline holds the logits, their float32 upcast
    (when the model is not float32) and the float32 log-softmax at once; a chunked step holds one chunk's
    logits, its float32 upcast and (``logsumexp-``) logsumexp's (x - max) temporary."""
    upcast = 0 if dtype_bytes == 4 else 4
    temporary = 0 if variant.startswith("inplace-") else 4
    rows = chunk_rows(variant, tokens, vocab, dtype_bytes)
    return rows * vocab * (dtype_bytes + upcast + temporary) / 2**20


def run_logp_memory(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker: measure one variant (``full``, ``logsumexp-<rows>``, ``inplace-<rows>``, ``inplace-auto``)."""
    import torch

    harness.set_threads(spec.get("threads"))
    device, dtype = spec["device"], getattr(torch, spec["dtype"])
    tokens, hidden_size, vocab = spec["tokens"], spec["hidden_size"], spec["vocab"]
    torch.manual_seed(spec["seed"])
    with torch.device(device):
        head = torch.nn.Linear(hidden_size, vocab, bias=False, dtype=dtype)
        torch.nn.init.normal_(head.weight, std=0.5 / hidden_size**0.5)
        hidden = torch.randn(tokens, hidden_size, dtype=dtype)
        targets = torch.randint(vocab, (tokens,))
    variant = spec["variant"]
    with torch.inference_mode():
        _logps(variant, hidden[:8], targets[:8], head)  # first-call setup outside the measurement
        probe = harness.PeakMemory(device)
        probe.start()
        started = time.perf_counter()
        logps = _logps(variant, hidden, targets, head)
        harness.synchronize(device)
        seconds = time.perf_counter() - started
        memory = probe.stop()
    return {
        **memory,
        "memory_method": probe.method,
        "seconds": seconds,
        "logp_sum": float(logps.double().sum()),
        "logp_head": [float(v) for v in logps[:4].tolist()],
    }


def _logps(variant: str, hidden: Any, targets: Any, head: Any) -> Any:
    import torch

    from xlreward.service.scoring.logprobs import chunked_token_logps

    if variant == "full":
        logits = head(hidden)  # (N, V)
        full = torch.log_softmax(logits.float(), dim=-1)  # (N, V) float32
        return full.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    dtype_bytes = hidden.element_size()
    rows = chunk_rows(variant, hidden.shape[0], head.weight.shape[0], dtype_bytes)
    if variant.startswith("logsumexp-"):
        return logsumexp_chunked_logps(hidden, targets, head, rows)
    return chunked_token_logps(hidden, targets, head, rows)


def logsumexp_chunked_logps(hidden: Any, targets: Any, head: Any, chunk_size: int) -> Any:
    """The engine's log-prob stage before issue 6: per chunk, ``selective_log_softmax`` (gather, minus
    torch.logsumexp, whose (x - max) temporary is as large as the chunk's logits)."""
    import torch

    from xlreward.service.scoring.logprobs import selective_log_softmax

    out = torch.empty(targets.shape[0], dtype=torch.float32, device=hidden.device)
    for start in range(0, targets.shape[0], chunk_size):
        stop = start + chunk_size
        out[start:stop] = selective_log_softmax(head(hidden[start:stop]), targets[start:stop])
    return out
