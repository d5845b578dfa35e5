"""What every scoring strategy needs, and nothing else: the models' sides, the device, the pad id and the
batch budget. The strategies (``padded``, ``prefix``, ``packing``) depend on this module only; the reward
models (``engine`` for an implicit pair, ``classifier`` for a sequence-classification RM) build a
``ScoringCore`` and choose a strategy once (``strategies``).

A side is one model as a strategy runs it: a decoder stack that turns token ids into final hidden states
(B, T, H), and a reader that turns the hidden states at the positions an item is read from into one value
per position. An implicit pair has two sides (policy and reference) whose reader is the LM head's log-prob
of the next token; a classifier RM has one side whose reader is its scalar head. A strategy returns, per
item, the float64 sum of its read values under each side.

Which positions an item is read from: its ``TokenizedItem`` span [score_start, score_end) is read at
positions score_start - 1 .. score_end - 2, and positions up to score_end - 2 are fed (``fed_length``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from xlreward.service.scoring.batching import DEFAULT_MAX_PADDING
from xlreward.service.scoring.errors import UnsupportedModelError
from xlreward.service.scoring.templating import TokenizedItem

# Per side, the values at read positions: (hidden (N, H), target ids (N,)) -> (N,) float32.
Reader = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Side:
    """One model as the strategies run it: its decoder stack, its reader, and the context both run under
    (in LoRA mode the reference is the policy's own modules inside ``disable_adapter()``). ``device``: where
    its input ids go (its embedding's device; None: the core's), so a pair may sit on two GPUs, and a model
    under a device map spans several (its hidden states come out on the last layer's; the reader moves what
    it needs to its head). ``varlen``: packed rows may run flash varlen attention on this side (set by the
    packing check at start-up)."""

    backbone: Any
    read: Reader
    context: Callable[[], AbstractContextManager[Any]] = field(default=nullcontext)
    varlen: bool = False
    device: torch.device | None = None


@dataclass(frozen=True)
class ScoringCore:
    """The sides and the settings every strategy shares. ``max_batch_tokens``: positions a forward plan
    may run (padded rows x width, or a packed row's real positions); ``max_padding``: the share of a padded
    batch that may be padding; ``padding_mask``: pass the right padding's attention mask (causal attention
    never needs it); ``max_forward_tokens``: positions one forward call may run (None: no cap), a wider
    padded batch runs in chunks of columns on the KV cache with yield points between them, so a long batch
    holds the models for one chunk at a time. An LM side's chunk size lives in its reader
    (``engine.LogProbReader``)."""

    sides: tuple[Side, ...]
    device: torch.device
    pad_id: int
    max_batch_tokens: int
    max_padding: float = DEFAULT_MAX_PADDING
    padding_mask: bool = False
    max_forward_tokens: int | None = None

    def tensor(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.long, device=self.device)

    def input_device(self, side: Side) -> torch.device:
        return side.device or self.device


def fed_length(item: TokenizedItem) -> int:
    """Positions of ``item`` the backbone must run: up to the last one that is read (token j is read at
    position j - 1), so the last scored token and any template text after it are never fed. At least one
    position, so an item with nothing to score still has a row."""
    return max(item.score_end - 1, 1)


def read_span(item: TokenizedItem) -> range:
    """Positions ``item`` is read from."""
    return range(item.score_start - 1, item.score_end - 1)


def context_length(model: Any) -> int:
    """The longest sequence the model takes (its position-embedding table)."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise UnsupportedModelError(f"{type(model).__name__}: the config names no context length")


def model_backbone(model: Any) -> Any:
    """The decoder stack that produces final (normed) hidden states, without the model's head."""
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else None
    return backbone if backbone is not None and backbone is not model else model.base_model


def input_device(model: Any) -> torch.device:
    """Where a model's input ids go: its token embedding's device (under a device map, the first GPU's)."""
    return torch.device(model.get_input_embeddings().weight.device)


def is_adapter_model(model: Any) -> bool:
    """A PEFT model (base + adapter) that can switch its adapter off."""
    return callable(getattr(model, "disable_adapter", None)) and hasattr(model, "peft_config")


def pad_id_of(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def weight_storages(modules: Iterable[Any]) -> dict[tuple[str, int], int]:
    """The distinct storages the modules' parameters and buffers live in, by (device, address), with their
    sizes in bytes: the weights they hold, a tensor that two models share counted once."""
    storages: dict[tuple[str, int], int] = {}
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            storage = tensor.untyped_storage()
            storages[(str(tensor.device), storage.data_ptr())] = storage.nbytes()
    return storages
