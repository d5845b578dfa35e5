"""Packed, padding-free attention: several sequences in one row, each attending only to its own tokens.

A packed forward runs one row (batch 1) that concatenates sequences with no padding between them. Every
position-wise part of the model (embeddings, projections, MLP, norms, LM head) is the same whatever row a
token sits in; only attention and positions must keep the sequences apart. Positions come from
``position_ids`` (each sequence counts from its own start). Attention comes from this module: the row is
cut into ``Segment``s, and each segment runs causal SDPA over its own keys only, so no (T, T) block-diagonal
mask is built and every segment takes SDPA's causal kernel.

A segment may also see a ``context``: another span of the same row that it attends to in full, before its
own tokens. That is a shared prompt: the prompt runs once as its own segment, and each response to it is a
segment whose context is the prompt, at positions continuing after the prompt's. The keys are the prompt's
and the response's own, in order, with the causal diagonal aligned to the last key (``causal_lower_right``),
exactly what the response sees in the full sequence prompt + response.

transformers looks attention up by name (``config._attn_implementation``) in ``AttentionInterface``; this
module registers ``packed_attention`` under ``PACKED_ATTENTION`` and ``packed_attention_on`` switches a
model to it for one forward. No mask function is registered under that name, so transformers builds no
mask at all for a packed forward. The segments travel as the ``packed_segments`` keyword of the forward,
which transformers passes down to the attention function; an architecture that drops it fails loudly here
(``check_packing`` tries it when an engine is built with packing on).

On a GPU in bfloat16 or float16 the per-segment loop would launch a few kernels per segment per layer;
there the whole row runs as one flash-attention call instead (``torch.nn.attention.varlen.varlen_attn``):
one sequence per segment, its keys gathered once per row into a ``VarlenIndex`` (context, then its own
positions), causal with the diagonal aligned to the last key as flash attention aligns it. The start-up
check compares that path with the plain forward too, and falls back to the loop if they differ.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from transformers import AttentionInterface

from xlreward.service.scoring.errors import UnsupportedModelError
from xlreward.service.scoring.signatures import keywords_of

try:  # flash varlen attention: CUDA only, in torch builds that have it
    from torch.nn.attention.varlen import varlen_attn as _varlen_kernel
except ImportError:  # pragma: no cover - older torch
    _varlen_kernel = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

PACKED_ATTENTION = "xlreward_packed"
FLASH_DTYPES = (torch.bfloat16, torch.float16)

# Attention keywords that change the maths in a way per-segment SDPA does not reproduce.
_UNSUPPORTED = {
    "softcap": "attention-logit soft-capping",
    "s_aux": "attention sinks",
}


@dataclass(frozen=True)
class Segment:
    """Row positions [start, stop) that attend causally to themselves and, if ``context`` is set, in full to
    the row positions [context[0], context[1]) first (a shared prompt)."""

    start: int
    stop: int
    context: tuple[int, int] | None = None

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def span(self) -> int:
        """Keys a query of this segment may see: its context and its own positions."""
        context = self.context[1] - self.context[0] if self.context else 0
        return context + len(self)


@dataclass(frozen=True)
class VarlenIndex:
    """A packed row in flash varlen layout, built once per row and used by every layer: one sequence per
    segment, queries the segment's own positions (the row itself, in order), keys its context's positions
    and then its own, gathered from the row by ``keys``."""

    keys: torch.Tensor  # (Tk,) row positions, long
    cu_seq_q: torch.Tensor  # (N + 1,) int32, cumulative query lengths
    cu_seq_k: torch.Tensor  # (N + 1,) int32, cumulative key lengths
    max_q: int
    max_k: int

    @classmethod
    def build(cls, segments: Sequence[Segment], device: torch.device) -> VarlenIndex:
        keys, cu_q, cu_k = varlen_layout(segments)

        def tensor(values: list[int], dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        return cls(
            keys=tensor(keys, torch.long),
            cu_seq_q=tensor(cu_q, torch.int32),
            cu_seq_k=tensor(cu_k, torch.int32),
            max_q=max(len(segment) for segment in segments),
            max_k=max(segment.span for segment in segments),
        )


def varlen_layout(segments: Sequence[Segment]) -> tuple[list[int], list[int], list[int]]:
    """Key positions and cumulative query and key lengths of segments that cover a row in order.

    >>> varlen_layout([Segment(0, 3), Segment(3, 5, context=(0, 3)), Segment(5, 6)])
    ([0, 1, 2, 0, 1, 2, 3, 4, 5], [0, 3, 5, 6], [0, 3, 8, 9])
    """
    keys: list[int] = []
    cu_q, cu_k = [0], [0]
    for segment in segments:
        if segment.start != cu_q[-1] or len(segment) < 1:
            raise ValueError(f"segments must cover the row in order with no gaps, got {list(segments)}")
        if segment.context is not None:
            keys.extend(range(*segment.context))
        keys.extend(range(segment.start, segment.stop))
        cu_q.append(segment.stop)
        cu_k.append(len(keys))
    return keys, cu_q, cu_k


def varlen_usable(backbone: Any) -> bool:
    """Whether this torch and ``backbone``'s device and dtype have flash varlen attention."""
    weight = next(backbone.parameters())
    return _varlen_kernel is not None and weight.device.type == "cuda" and weight.dtype in FLASH_DTYPES


def _varlen_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    index: VarlenIndex,
    scaling: float | None,
) -> torch.Tensor:
    """One flash varlen call for the whole row -> (1, T, heads, D)."""
    assert _varlen_kernel is not None  # varlen_usable said so
    q = query[0].transpose(0, 1).contiguous()  # (T, heads, D); RoPE leaves it head-major
    k = key[0].transpose(0, 1).index_select(0, index.keys)  # (Tk, kv_heads, D)
    v = value[0].transpose(0, 1).index_select(0, index.keys)
    parameters = keywords_of(_varlen_kernel)
    options: dict[str, Any] = {}
    if scaling is not None:
        if "scale" not in parameters:
            raise UnsupportedModelError("this torch's varlen_attn takes no attention scale")
        options["scale"] = scaling
    # Causal with the diagonal aligned to the last key: window (-1, 0) since torch 2.11, is_causal before.
    options.update({"window_size": (-1, 0)} if "window_size" in parameters else {"is_causal": True})
    if query.shape[1] != key.shape[1]:  # grouped-query attention
        if "enable_gqa" in parameters:
            options["enable_gqa"] = True
        else:
            groups = query.shape[1] // key.shape[1]
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    out = _varlen_kernel(q, k, v, index.cu_seq_q, index.cu_seq_k, index.max_q, index.max_k, **options)
    assert isinstance(out, torch.Tensor)
    return out.unsqueeze(0)


def packed_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature. query: (1, heads, T, D); key, value: (1, kv_heads, T, D)
    -> ((1, T, heads, D), None). ``kwargs["packed_segments"]`` must cover the row."""
    segments: Sequence[Segment] | None = kwargs.get("packed_segments")
    _check_call(module, query, attention_mask, segments, kwargs)
    assert segments is not None  # _check_call refuses None
    varlen: VarlenIndex | None = kwargs.get("packed_varlen")
    if varlen is not None:
        return _varlen_attention(query, key, value, varlen, scaling), None
    gqa = query.shape[1] != key.shape[1]
    out = torch.empty_like(query)  # (1, heads, T, D)
    for segment in segments:
        q = query[:, :, segment.start : segment.stop]
        k = key[:, :, segment.start : segment.stop]
        v = value[:, :, segment.start : segment.stop]
        if segment.context is None:
            mask: Any = None
        else:
            first, last = segment.context
            k = torch.cat([key[:, :, first:last], k], dim=2)
            v = torch.cat([value[:, :, first:last], v], dim=2)
            mask = causal_lower_right(len(segment), segment.span)
        out[:, :, segment.start : segment.stop] = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=mask is None, scale=scaling, enable_gqa=gqa
        )
    return out.transpose(1, 2).contiguous(), None


def _check_call(
    module: Any,
    query: torch.Tensor,
    attention_mask: torch.Tensor | None,
    segments: Sequence[Segment] | None,
    kwargs: dict[str, Any],
) -> None:
    name = type(module).__name__
    if segments is None:
        raise UnsupportedModelError(
            f"{name}: packed attention got no packed_segments: this architecture does not pass the forward's "
            "keywords down to its attention; score it with packing off"
        )
    if attention_mask is not None or query.shape[0] != 1:
        raise UnsupportedModelError(f"{name}: a packed forward is one row without a mask")
    for keyword, what in _UNSUPPORTED.items():
        if kwargs.get(keyword) is not None:
            raise UnsupportedModelError(f"{name} uses {what}, which packed attention does not apply")
    window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
    longest = max((segment.span for segment in segments), default=0) if window else 0
    if window and longest >= window:
        # Under the window, sliding attention is full causal attention; past it, it is not.
        raise UnsupportedModelError(
            f"{name}: a packed sequence spans {longest} positions, past the model's {window}-token sliding "
            "window, which packed attention does not apply: score it with packing off"
        )


AttentionInterface.register(PACKED_ATTENTION, packed_attention)


@contextmanager
def packed_attention_on(backbone: Any) -> Iterator[None]:
    """Runs ``backbone``'s attention through ``packed_attention`` inside the block. The switch is the model
    config's, so a model shared between threads must not run anything else meanwhile (the service runs
    scoring and generation under one model lock)."""
    config = backbone.config
    previous = config._attn_implementation
    config._attn_implementation = PACKED_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = previous


def packed_forward(
    backbone: Any,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    segments: Sequence[Segment],
    *,
    varlen: VarlenIndex | None = None,
) -> torch.Tensor:
    """(1, T, H) final hidden states of a packed row: input_ids and position_ids (1, T). ``varlen``: the
    row's ``VarlenIndex``, for one flash varlen call per layer (``varlen_usable`` must hold) instead of the
    per-segment loop."""
    with packed_attention_on(backbone):
        out = backbone(
            input_ids=input_ids,
            position_ids=position_ids,
            use_cache=False,
            packed_segments=tuple(segments),
            packed_varlen=varlen,
        )
    hidden: torch.Tensor = out.last_hidden_state
    return hidden


@torch.inference_mode()
def check_packing(backbone: Any, vocab_size: int, device: torch.device) -> bool:
    """Refuse a model whose packed forward differs from its plain one: a shared prompt with a response on
    it, and a separate sequence after them, packed in one row, against each sequence run on its own.

    Returns whether packed forwards of this model run flash varlen attention: where it is usable and
    passes the same comparison; if it does not, the per-segment loop (checked next) is used instead."""
    if varlen_usable(backbone):
        try:
            _compare_packed(backbone, vocab_size, device, varlen=True)
            return True
        except UnsupportedModelError as error:
            log.warning("flash varlen packing is off for this model, the per-segment loop is used: %s", error)
    _compare_packed(backbone, vocab_size, device, varlen=False)
    return False


def _compare_packed(backbone: Any, vocab_size: int, device: torch.device, *, varlen: bool) -> None:
    prompt, response, other = 5, 4, 6
    ids = (torch.arange(prompt + response + other, device=device) * 7919 % vocab_size).unsqueeze(0)
    positions = torch.tensor(
        [[*range(prompt + response), *range(other)]], dtype=torch.long, device=device
    )  # (1, T)
    segments = [
        Segment(0, prompt),
        Segment(prompt, prompt + response, context=(0, prompt)),
        Segment(prompt + response, prompt + response + other),
    ]
    try:
        index = VarlenIndex.build(segments, device) if varlen else None
        packed = packed_forward(backbone, ids, positions, segments, varlen=index)[0]
    except UnsupportedModelError:
        raise
    except Exception as error:  # any failure inside the model's forward means: not packable
        raise UnsupportedModelError(
            f"{type(backbone).__name__}: a packed forward failed ({error}); score it with packing off"
        ) from error
    together = backbone(input_ids=ids[:, : prompt + response], use_cache=False).last_hidden_state[0]
    alone = backbone(input_ids=ids[:, prompt + response :], use_cache=False).last_hidden_state[0]
    plain = torch.cat([together, alone])
    scale = plain.abs().max().clamp_min(1.0)
    tolerance = 1e-4 if plain.dtype == torch.float32 else 3e-2
    gap = ((packed - plain).abs().max() / scale).item()
    if gap > tolerance:
        raise UnsupportedModelError(
            f"{type(backbone).__name__}: packed hidden states differ from the plain forward's by {gap:.3g} "
            "(relative): its attention is not the per-sequence causal attention packing assumes; score it "
            "with packing off"
        )
