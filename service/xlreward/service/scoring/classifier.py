"""The classifier reward model: a sequence-classification model with a one-logit head (what TRL's
RewardTrainer writes; public RMs such as Skywork-Reward have this shape). The reward of (prompt, response)
is the head's scalar for the pair rendered as one conversation with the model's chat template.

It runs on the same strategies as the implicit pair, as a ``core.ScoringCore`` with one side whose reader
is the scalar head: an item is its conversation read at one position, the one transformers' own
``*ForSequenceClassification`` pools (the last token that is not the pad token). In ``TokenizedItem``
terms the read span is the one position after that token, [r + 1, r + 2): the read happens at position r,
and the id at r + 1 is a placeholder that is never fed (the reader ignores targets). So a group's
responses share their prompt's forward (``prefix``, ``packing``) exactly as the implicit pair's do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from xlreward.service.protocol import ChatMessage, RewardResult
from xlreward.service.scoring.batching import default_max_batch_tokens, default_max_forward_tokens
from xlreward.service.scoring.core import (
    ScoringCore,
    Side,
    context_length,
    input_device,
    model_backbone,
    pad_id_of,
)
from xlreward.service.scoring.engine import EngineConfig, packing_checked, rows_description
from xlreward.service.scoring.errors import UnsupportedModelError
from xlreward.service.scoring.reward_model import ModelKind, Sums
from xlreward.service.scoring.strategies import StrategyModel, strategy_for
from xlreward.service.scoring.templating import ItemTokenizer, TemplateOptions, TokenizedItem


@dataclass(frozen=True)
class ClassifierScore:
    """The head's scalar for one item."""

    value: float
    num_response_tokens: int
    truncated: bool = False

    @property
    def reward(self) -> float:
        return self.value

    def to_result(self, item_id: str | int | None = None) -> RewardResult:
        return RewardResult(
            id=item_id,
            reward=self.value,
            num_response_tokens=self.num_response_tokens,
            truncated=self.truncated,
        )


@dataclass(frozen=True)
class ScalarReader:
    """A classifier side's reader: the one-logit head on each read position's hidden state, float32."""

    head: Any
    device: torch.device | None = None  # the head's; under a device map the hidden states may be elsewhere

    def __call__(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.device is not None:
            hidden = hidden.to(self.device)
        values: torch.Tensor = self.head(hidden).float()[:, 0]  # (N,)
        return values


def scalar_head(model: Any) -> Any:
    """The model's classification head, refused unless it gives one logit."""
    labels = getattr(model.config, "num_labels", None)
    head = next((getattr(model, name) for name in ("score", "classifier") if hasattr(model, name)), None)
    if head is None or labels != 1:
        raise UnsupportedModelError(
            f"{type(model).__name__} with {labels} labels: a classifier reward model is a "
            "sequence-classification model with a one-logit head (num_labels = 1), as TRL's RewardTrainer "
            "writes"
        )
    return head


class ClassifierRewardModel(StrategyModel[ClassifierScore]):
    """A ``reward_model.RewardModel`` over one sequence-classification model and its tokenizer.
    ``config``: as the implicit pair's (``beta`` aside); ``template``: how the conversation is rendered
    (``icr_compat`` does not apply)."""

    kind: ModelKind = "classifier"

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        template: TemplateOptions | None = None,
        config: EngineConfig | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template = replace(template or TemplateOptions(), icr_compat=False)
        self.device = input_device(model)
        head = scalar_head(model)
        self.dtype: torch.dtype = next(head.parameters()).dtype
        config = config or EngineConfig()
        self.max_batch_tokens = config.max_batch_tokens or default_max_batch_tokens(self.device.type)
        self.config = replace(
            config,
            max_batch_tokens=self.max_batch_tokens,
            max_forward_tokens=config.max_forward_tokens or default_max_forward_tokens(self.device.type),
        )
        self.max_length = context_length(model)
        # transformers pools the last token that is not the pad token; so do we.
        self.pooled_pad_id: int | None = getattr(model.config, "pad_token_id", None)
        # No stop ids: the whole rendered conversation is the input, template text after the turn included.
        self.item_tokenizer = ItemTokenizer(
            tokenizer, self.template, max_length=self.max_length, stop_ids=frozenset()
        )
        reader = ScalarReader(head, next(head.parameters()).device)
        side = Side(model_backbone(model), reader, device=self.device)
        self._check_head_reproduces_logits(side)
        self.strategy = strategy_for(self.config.packed)
        if self.config.packed:
            vocab = model.get_input_embeddings().weight.shape[0]
            side = packing_checked(side, vocab)
        self.core = ScoringCore(
            sides=(side,),
            device=self.device,
            pad_id=pad_id_of(tokenizer),
            max_batch_tokens=self.max_batch_tokens,
            max_padding=self.config.max_padding,
            padding_mask=self.config.padding_mask,
            max_forward_tokens=self.config.max_forward_tokens,
        )

    @property
    def beta(self) -> float | None:
        return None  # the head's scalar is the reward: nothing to scale

    def describe(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return ", ".join([self.device.type, dtype, rows_description(self), "classifier (one-logit head)"])

    def modules(self) -> tuple[Any, ...]:
        return (self.model,)

    def pooled_position(self, ids: Sequence[int]) -> int:
        """The position transformers pools: the last token that is not the pad token."""
        if self.pooled_pad_id is None:
            return len(ids) - 1
        return next((i for i in range(len(ids) - 1, -1, -1) if ids[i] != self.pooled_pad_id), len(ids) - 1)

    def tokenize_pair(
        self,
        prompt: str | Sequence[ChatMessage],
        response: str,
        *,
        truncate: bool = False,
        rendered: bool = False,
    ) -> TokenizedItem:
        """The conversation's ids up to the pooled token, read there (see the module docstring)."""
        conversation = self.item_tokenizer(prompt, response, truncate=truncate, rendered=rendered)
        read_at = self.pooled_position(conversation.input_ids)
        placeholder = self.core.pad_id
        return TokenizedItem(
            input_ids=(*conversation.input_ids[: read_at + 1], placeholder),
            score_start=read_at + 1,
            score_end=read_at + 2,
            truncated=conversation.truncated,
            prompt_length=conversation.score_start,
        )

    def item_scores(self, sums: Sequence[Sums], items: Sequence[TokenizedItem]) -> list[ClassifierScore]:
        return [
            ClassifierScore(value, item.score_start - item.prompt_end, item.truncated)
            for (value,), item in zip(sums, items, strict=True)
        ]

    @torch.inference_mode()
    def _check_head_reproduces_logits(self, side: Side) -> None:
        """Refuse a model whose own forward pools or post-processes differently from ours: compare our
        read with the model's logits on a short sequence."""
        length = min(16, self.max_length)
        vocab = self.model.get_input_embeddings().weight.shape[0]
        ids = [(i * 7919 + 1) % vocab for i in range(length)]
        read_at = self.pooled_position(ids)
        tensor = torch.tensor([ids], device=self.device)
        theirs = self.model(input_ids=tensor, use_cache=False).logits[0, 0].float()
        hidden = side.backbone(input_ids=tensor, use_cache=False).last_hidden_state[0, read_at : read_at + 1]
        ours = side.read(hidden, tensor[0, :1])[0].to(theirs.device)
        tolerance = 1e-3 if hidden.dtype == torch.float32 else 0.1
        gap = (theirs - ours).abs().item()
        if gap > tolerance:
            raise UnsupportedModelError(
                f"{type(self.model).__name__}: the head on the final hidden states differs from the model's "
                f"own logits by {gap:.3g}; this architecture pools or post-processes in a way the scoring "
                "engine does not reproduce"
            )
