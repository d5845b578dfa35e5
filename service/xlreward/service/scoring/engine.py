"""The scoring engine: summed response log-probs under a policy and a reference model, batched.

Per forward batch, each model runs its backbone once to final hidden states (B, T, H); only the hidden
states that predict scored tokens are kept (N, H), and the LM head plus a float32 log-softmax run over them
``chunk_size`` rows at a time. A [B, T, vocab] logits tensor is never built.

Batches are right-padded and run WITHOUT an attention mask: attention is causal, so a real token at position
t only attends to positions <= t, which are all real, and the padded positions (after every real token of
their row) are never read. Without a mask, SDPA runs its causal kernel, which skips the blocks above the
diagonal, instead of a masked kernel that computes them all; and no (B, 1, T, T) mask is built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from xlreward.service.protocol import RewardItem, RewardResult
from xlreward.service.scoring.batching import DEFAULT_MAX_PADDING, default_max_batch_tokens, plan_batches
from xlreward.service.scoring.errors import ModelPairError, UnsupportedModelError
from xlreward.service.scoring.logprobs import (
    LogitsFn,
    chunked_token_logps,
    default_chunk_size,
    implicit_reward,
    segment_sum,
    selective_log_softmax,
    softcapped,
)
from xlreward.service.scoring.packed_attention import check_packing
from xlreward.service.scoring.templating import (
    ItemTokenizer,
    TemplateOptions,
    TokenizedItem,
    end_of_turn_ids,
)

Progress = Callable[[int], None]


@dataclass(frozen=True)
class EngineConfig:
    """``chunk_size``: LM-head rows per float32 log-softmax block (memory ~ chunk_size x vocab x 4 bytes);
    None: sized from the vocabulary so that a block stays under 256 MB (``default_chunk_size``).
    ``max_batch_tokens``: padded tokens (rows x longest row) per forward batch; None: the device's default
    (``batching.default_max_batch_tokens``: 4096 on CPU, 16384 on GPU).
    ``max_padding``: a batch closes before padding passes this fraction of its padded tokens (1.0: off).
    ``padding_mask``: pass the attention mask of the right padding anyway. Causal attention never needs it
    (see the module docstring); it is there for an architecture whose attention is not strictly causal.
    ``packed``: run items and prompt groups in packed rows with no padding (``packing``), up to
    ``max_batch_tokens`` real positions a row; the engine checks at start-up that the models pack exactly.
    The engine's ``config`` has ``chunk_size`` and ``max_batch_tokens`` resolved."""

    beta: float = 0.1
    chunk_size: int | None = None
    max_batch_tokens: int | None = None
    max_padding: float = DEFAULT_MAX_PADDING
    padding_mask: bool = False
    packed: bool = False

    def __post_init__(self) -> None:
        if (self.chunk_size is not None and self.chunk_size < 1) or (
            self.max_batch_tokens is not None and self.max_batch_tokens < 1
        ):
            raise ValueError("chunk_size and max_batch_tokens must be at least 1")
        if not 0.0 <= self.max_padding <= 1.0:
            raise ValueError(f"max_padding is a fraction between 0 and 1, got {self.max_padding}")


@dataclass(frozen=True)
class ItemScore:
    """Summed log-probs of one item's scored tokens under both models, and the implicit reward."""

    policy_logp: float
    reference_logp: float
    num_response_tokens: int
    beta: float
    truncated: bool = False

    @property
    def reward(self) -> float:
        return implicit_reward(self.policy_logp, self.reference_logp, self.beta)

    def _mean(self, total: float) -> float:
        return total / self.num_response_tokens if self.num_response_tokens else 0.0

    def to_result(self, item_id: str | int | None = None) -> RewardResult:
        policy_mean = self._mean(self.policy_logp)
        reference_mean = self._mean(self.reference_logp)
        return RewardResult(
            id=item_id,
            reward=self.reward,
            policy_logp=self.policy_logp,
            reference_logp=self.reference_logp,
            num_response_tokens=self.num_response_tokens,
            reward_mean=self.beta * (policy_mean - reference_mean),
            policy_logp_mean=policy_mean,
            reference_logp_mean=reference_mean,
            truncated=self.truncated,
        )


@dataclass
class _Batch:
    """A right-padded forward batch and, flat over its scored tokens, where each one is read."""

    input_ids: torch.Tensor  # (B, T), T: the longest row's positions that predict a scored token
    attention_mask: torch.Tensor | None  # (B, T), only with ``EngineConfig.padding_mask``
    rows: torch.Tensor  # (N,) batch row of each scored token
    positions: torch.Tensor  # (N,) position whose logits predict it (token index - 1)
    targets: torch.Tensor  # (N,) the scored token ids
    num_items: int


def fed_length(item: TokenizedItem) -> int:
    """Positions of ``item`` the backbone must run: up to the last one that predicts a scored token
    (token j is read at position j - 1), so the last scored token and any template text after it are never
    fed. At least one position, so an item with nothing to score still has a row."""
    return max(item.score_end - 1, 1)


def context_length(model: Any) -> int:
    """The longest sequence the model takes (its position-embedding table)."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise UnsupportedModelError(f"{type(model).__name__}: the config names no context length")


def model_logits_fn(model: Any) -> LogitsFn:
    """The model's LM head as a function of final hidden states, with Gemma-style soft-capping if set."""
    head = model.get_output_embeddings()
    if head is None:
        raise UnsupportedModelError(f"{type(model).__name__} has no LM head: load it as a causal LM")
    cap = getattr(model.config, "final_logit_softcapping", None)
    return softcapped(head, cap)


def check_same_vocabulary(policy: Any, reference: Any) -> None:
    sizes = [m.get_output_embeddings().weight.shape[0] for m in (policy, reference)]
    if sizes[0] != sizes[1]:
        raise ModelPairError(
            f"the policy's LM head has {sizes[0]} rows but the reference's has {sizes[1]}: "
            "the two models do not share a vocabulary"
        )


def model_backbone(model: Any) -> Any:
    """The decoder stack that produces final (normed) hidden states, without the LM head."""
    backbone = model.get_decoder() if hasattr(model, "get_decoder") else None
    return backbone if backbone is not None and backbone is not model else model.base_model


@dataclass(frozen=True)
class ScoredModel:
    """One side of the pair as the engine runs it: the decoder stack, the LM head and the context both run
    under. A full model runs as it is; in LoRA mode the reference is the policy's own modules with the
    adapter switched off (``adapter_off``), so one base model in memory serves both sides."""

    backbone: Any
    head: LogitsFn
    context: Callable[[], AbstractContextManager[Any]] = field(default=nullcontext)

    @classmethod
    def of(cls, model: Any) -> ScoredModel:
        return cls(model_backbone(model), model_logits_fn(model))

    @classmethod
    def adapter_off(cls, model: Any) -> ScoredModel:
        """The base model under a PEFT ``model``: the same modules, run inside ``disable_adapter()``."""
        return cls(model_backbone(model), model_logits_fn(model), model.disable_adapter)


def is_adapter_model(model: Any) -> bool:
    """A PEFT model (base + adapter) that can switch its adapter off."""
    return callable(getattr(model, "disable_adapter", None)) and hasattr(model, "peft_config")


class ScoringEngine:
    """Scores (prompt, response) items under a policy and a reference model that share a tokenizer.

    Load the pair with ``xlreward.service.scoring.loading.load_engine``, which also checks that the two
    tokenizers are the same; tests and the trainer build it directly from models in memory.

    LoRA mode: ``reference=None`` with a PEFT ``policy`` (base + adapter) scores the reference as the same
    model with its adapter switched off: one base model in memory instead of two. ``self.reference`` is
    then the policy object itself; ``self.sides`` says how each side runs.
    """

    def __init__(
        self,
        policy: Any,
        reference: Any | None,
        tokenizer: Any,
        *,
        template: TemplateOptions | None = None,
        config: EngineConfig | None = None,
    ) -> None:
        if reference is None and not is_adapter_model(policy):
            raise ModelPairError(
                "no reference model was given and the policy has no adapter to switch off: LoRA mode needs "
                "a PEFT model (base + adapter) as the policy"
            )
        self.lora_mode = reference is None
        self.policy = policy.eval()
        self.reference = policy if reference is None else reference.eval()
        self.tokenizer = tokenizer
        self.template = template or TemplateOptions()
        self.device = next(policy.parameters()).device
        check_same_vocabulary(self.policy, self.reference)
        head = policy.get_output_embeddings().weight
        self.dtype: torch.dtype = head.dtype
        config = config or EngineConfig()
        self.chunk_size: int = config.chunk_size or default_chunk_size(head.shape[0], head.dtype)
        self.max_batch_tokens: int = config.max_batch_tokens or default_max_batch_tokens(self.device.type)
        self.config = replace(config, chunk_size=self.chunk_size, max_batch_tokens=self.max_batch_tokens)
        self.max_length = min(context_length(self.policy), context_length(self.reference))
        generation_eos = getattr(getattr(policy, "generation_config", None), "eos_token_id", None)
        self.item_tokenizer = ItemTokenizer(
            tokenizer,
            self.template,
            max_length=self.max_length,
            stop_ids=end_of_turn_ids(tokenizer, generation_eos),
        )
        reference_side = ScoredModel.adapter_off(policy) if reference is None else ScoredModel.of(reference)
        self.sides: tuple[ScoredModel, ScoredModel] = (ScoredModel.of(policy), reference_side)
        varlen = []  # per side: packed rows run flash varlen attention (GPU, half precision)
        for model, side in zip((self.policy, self.reference), self.sides, strict=True):
            self._check_head_reproduces_logits(model, side)  # in LoRA mode: the policy, adapter off
            if self.config.packed:
                with side.context():
                    varlen.append(check_packing(side.backbone, head.shape[0], self.device))
        self.packed_varlen: tuple[bool, ...] = tuple(varlen) or (False, False)

    def describe(self) -> str:
        """How this engine scores, in one line: the server's start-up log, ``/admin/models`` and the score
        CLI all say it in these words, e.g. "cuda, bfloat16, packed rows (flash varlen attention), LoRA
        mode (reference = adapter off)"."""
        dtype = str(self.dtype).removeprefix("torch.")
        if self.config.packed:
            kernels = [
                "flash varlen attention" if varlen else "per-sequence attention"
                for varlen in self.packed_varlen
            ]
            policy, reference = kernels
            # One side may have fallen back to the loop at start-up (check_packing).
            attention = (
                policy if policy == reference else f"{policy} for the policy, {reference} for the reference"
            )
            rows = f"packed rows ({attention})"
        else:
            rows = "padded rows"
        parts = [self.device.type, dtype, rows]
        if self.lora_mode:
            parts.append("LoRA mode (reference = adapter off)")
        return ", ".join(parts)

    def tokenize(self, item: RewardItem, *, truncate: bool = False) -> TokenizedItem:
        """Token ids and scored span of one item; raises ``ItemError`` saying what to fix."""
        return self.item_tokenizer(item.prompt, item.response, truncate=truncate)

    def score(self, items: Sequence[RewardItem], progress: Progress | None = None) -> list[RewardResult]:
        """Scores items, results in input order (ids carried over)."""
        tokenized = [self.tokenize(item) for item in items]
        scores = self.score_tokenized(tokenized, progress=progress)
        return [score.to_result(item.id) for item, score in zip(items, scores, strict=True)]

    def score_tokenized(
        self, items: Sequence[TokenizedItem], progress: Progress | None = None
    ) -> list[ItemScore]:
        """Scores tokenized items in length-grouped batches (packed rows with ``packed``); results in
        input order."""
        if self.config.packed:
            from xlreward.service.scoring.packing import score_packed  # it builds on this module

            return [group[0] for group in score_packed(self, [[item] for item in items], progress)]
        results: list[ItemScore | None] = [None] * len(items)
        lengths = [fed_length(item) for item in items]
        for indices in plan_batches(lengths, self.max_batch_tokens, self.config.max_padding):
            batch_items = [items[i] for i in indices]
            for index, score in zip(indices, self._score_batch(batch_items), strict=True):
                results[index] = score
            if progress is not None:
                progress(len(indices))
        return [score for score in results if score is not None]

    @torch.inference_mode()
    def _score_batch(self, items: Sequence[TokenizedItem]) -> list[ItemScore]:
        batch = self._collate(items)
        segments = batch.rows  # one row per item, so a token's row is its item
        # Sum in float64: a float32 running sum over thousands of tokens drifts by ~1e-3.
        sums = [
            segment_sum(self._token_logps(side, batch).double(), segments, batch.num_items).tolist()
            for side in self.sides
        ]
        return [
            ItemScore(policy, reference, item.num_scored, self.config.beta, item.truncated)
            for policy, reference, item in zip(*sums, items, strict=True)
        ]

    def _collate(self, items: Sequence[TokenizedItem]) -> _Batch:
        lengths = [fed_length(item) for item in items]
        width = max(lengths)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(items), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(items), width), dtype=torch.long)
        rows: list[int] = []
        positions: list[int] = []
        targets: list[int] = []
        for row, (item, length) in enumerate(zip(items, lengths, strict=True)):
            input_ids[row, :length] = torch.tensor(item.input_ids[:length], dtype=torch.long)
            attention_mask[row, :length] = 1
            rows.extend([row] * item.num_scored)
            positions.extend(range(item.score_start - 1, item.score_end - 1))
            targets.extend(item.input_ids[item.score_start : item.score_end])
        return _Batch(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device) if self.config.padding_mask else None,
            rows=torch.tensor(rows, dtype=torch.long, device=self.device),
            positions=torch.tensor(positions, dtype=torch.long, device=self.device),
            targets=torch.tensor(targets, dtype=torch.long, device=self.device),
            num_items=len(items),
        )

    def _token_logps(self, side: ScoredModel, batch: _Batch) -> torch.Tensor:
        """(N,) float32 log-probs of the batch's scored tokens under one side of the pair."""
        with side.context():
            out = side.backbone(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False
            )
            hidden = out.last_hidden_state  # (B, T, H)
            picked = hidden[batch.rows, batch.positions]  # (N, H)
            return chunked_token_logps(picked, batch.targets, side.head, self.chunk_size)

    @torch.inference_mode()
    def _check_head_reproduces_logits(self, model: Any, side: ScoredModel) -> None:
        """Refuse architectures whose forward changes logits after the LM head in a way we do not apply
        (a logit scale, say): compare our path with the model's own logits on a short sequence."""
        length = min(16, self.max_length)
        vocab = model.get_output_embeddings().weight.shape[0]
        ids = (torch.arange(length, device=self.device) * 7919 % vocab).unsqueeze(0)  # (1, L)
        with side.context():
            full = selective_log_softmax(model(input_ids=ids, use_cache=False).logits[0, :-1], ids[0, 1:])
            hidden = side.backbone(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]
            ours = chunked_token_logps(hidden, ids[0, 1:], side.head, self.chunk_size)
        tolerance = 1e-3 if hidden.dtype == torch.float32 else 0.1
        gap = (full - ours).abs().max().item()
        if gap > tolerance:
            raise UnsupportedModelError(
                f"{type(model).__name__}: log-probs from the final hidden states and LM head differ from the "
                f"model's own logits by {gap:.3g}; this architecture post-processes its logits in a way the "
                "scoring engine does not reproduce"
            )
