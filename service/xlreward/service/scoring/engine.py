"""The implicit reward model: summed response log-probs under a policy and a reference model that share a
tokenizer, and r = beta * (policy_logp - reference_logp).

The pair is two sides of a ``core.ScoringCore`` whose reader is the LM head's float32 log-prob of the next
token (``chunked_token_logps``: the head and log-softmax run only on the hidden states that predict scored
tokens, ``chunk_size`` rows at a time, so a [B, T, vocab] logits tensor is never built). How the work runs
(padded batches with shared prompts, or packed rows) is the strategy chosen once at construction
(``strategies.strategy_for``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch

from xlreward.service.protocol import ChatMessage, RewardResult
from xlreward.service.scoring.batching import (
    DEFAULT_MAX_PADDING,
    default_max_batch_tokens,
    default_max_forward_tokens,
)
from xlreward.service.scoring.core import (
    ScoringCore,
    Side,
    context_length,
    input_device,
    is_adapter_model,
    model_backbone,
    pad_id_of,
)
from xlreward.service.scoring.errors import ModelPairError, UnsupportedModelError
from xlreward.service.scoring.logprobs import (
    LogitsFn,
    chunked_token_logps,
    default_chunk_size,
    implicit_reward,
    selective_log_softmax,
    softcapped,
)
from xlreward.service.scoring.packed_attention import check_packing
from xlreward.service.scoring.reward_model import ModelKind, Sums
from xlreward.service.scoring.strategies import StrategyModel, strategy_for
from xlreward.service.scoring.templating import (
    ItemTokenizer,
    TemplateOptions,
    TokenizedItem,
    end_of_turn_ids,
)


@dataclass(frozen=True)
class EngineConfig:
    """``chunk_size``: LM-head rows per float32 log-softmax block (memory ~ chunk_size x vocab x 4 bytes);
    None: sized from the vocabulary so that a block stays under 256 MB (``default_chunk_size``).
    ``max_batch_tokens``: padded tokens (rows x longest row) per forward batch; None: the device's default
    (``batching.default_max_batch_tokens``: 4096 on CPU, 16384 on GPU).
    ``max_forward_tokens``: positions one forward call runs; a wider padded batch runs in chunks of columns
    on its KV cache (same scores), so the server can run a waiting small request between chunks. None: the
    device's default (``batching.default_max_forward_tokens``: 256 on CPU, no cap on GPU).
    ``max_padding``: a batch closes before padding passes this fraction of its padded tokens (1.0: off).
    ``padding_mask``: pass the attention mask of the right padding anyway. Causal attention never needs it
    (see the module docstring); it is there for an architecture whose attention is not strictly causal.
    ``packed``: run items and prompt groups in packed rows with no padding (``packing``), up to
    ``max_batch_tokens`` real positions a row; the engine checks at start-up that the models pack exactly.
    The engine's ``config`` has ``chunk_size``, ``max_batch_tokens`` and ``max_forward_tokens`` resolved."""

    beta: float = 0.1
    chunk_size: int | None = None
    max_batch_tokens: int | None = None
    max_forward_tokens: int | None = None
    max_padding: float = DEFAULT_MAX_PADDING
    padding_mask: bool = False
    packed: bool = False

    def __post_init__(self) -> None:
        sizes = (self.chunk_size, self.max_batch_tokens, self.max_forward_tokens)
        if any(size is not None and size < 1 for size in sizes):
            raise ValueError("chunk_size, max_batch_tokens and max_forward_tokens must be at least 1")
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


@dataclass(frozen=True)
class LogProbReader:
    """An LM side's reader: the float32 log-prob of each target token from the hidden state before it,
    the head and log-softmax run ``chunk_size`` rows at a time."""

    head: LogitsFn
    chunk_size: int
    device: torch.device | None = None  # the head's; under a device map the hidden states may be elsewhere

    def __call__(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.device is not None:
            hidden, targets = hidden.to(self.device), targets.to(self.device)
        return chunked_token_logps(hidden, targets, self.head, self.chunk_size)  # (N,)


def lm_side(
    model: Any, chunk_size: int, context: Callable[[], AbstractContextManager[Any]] = nullcontext
) -> Side:
    """A causal LM as a side: its decoder stack, read by the log-prob of each target token."""
    head_device = model.get_output_embeddings().weight.device
    reader = LogProbReader(model_logits_fn(model), chunk_size, head_device)
    return Side(model_backbone(model), reader, context, device=input_device(model))


class ScoringEngine(StrategyModel[ItemScore]):
    """The implicit reward model (``reward_model.RewardModel``): scores (prompt, response) items under a
    policy and a reference model that share a tokenizer.

    Load the pair with ``xlreward.service.scoring.loading.load_engine``, which also checks that the two
    tokenizers are the same; tests and the trainer build it directly from models in memory.

    LoRA mode: ``reference=None`` with a PEFT ``policy`` (base + adapter) scores the reference as the same
    model with its adapter switched off: one base model in memory instead of two. ``self.reference`` is
    then the policy object itself. ``policy_context``: what the policy side (and generation from it) runs
    in; a PEFT model holding several adapters makes this engine's one active (``shared_base``).
    """

    kind: ModelKind = "implicit"

    def __init__(
        self,
        policy: Any,
        reference: Any | None,
        tokenizer: Any,
        *,
        template: TemplateOptions | None = None,
        config: EngineConfig | None = None,
        policy_context: Callable[[], AbstractContextManager[Any]] = nullcontext,
    ) -> None:
        if reference is None and not is_adapter_model(policy):
            raise ModelPairError(
                "no reference model was given and the policy has no adapter to switch off: LoRA mode needs "
                "a PEFT model (base + adapter) as the policy"
            )
        self.lora_mode = reference is None
        self.policy = policy.eval()
        self.reference = policy if reference is None else reference.eval()
        self.policy_context = policy_context
        self.tokenizer = tokenizer
        self.template = template or TemplateOptions()
        self.device = input_device(policy)
        check_same_vocabulary(self.policy, self.reference)
        head = policy.get_output_embeddings().weight
        self.dtype: torch.dtype = head.dtype
        config = config or EngineConfig()
        self.chunk_size: int = config.chunk_size or default_chunk_size(head.shape[0], head.dtype)
        self.max_batch_tokens: int = config.max_batch_tokens or default_max_batch_tokens(self.device.type)
        self.config = replace(
            config,
            chunk_size=self.chunk_size,
            max_batch_tokens=self.max_batch_tokens,
            max_forward_tokens=config.max_forward_tokens or default_max_forward_tokens(self.device.type),
        )
        self.max_length = min(context_length(self.policy), context_length(self.reference))
        generation_eos = getattr(getattr(policy, "generation_config", None), "eos_token_id", None)
        self.item_tokenizer = ItemTokenizer(
            tokenizer,
            self.template,
            max_length=self.max_length,
            stop_ids=end_of_turn_ids(tokenizer, generation_eos),
        )
        reference_context = policy.disable_adapter if reference is None else nullcontext
        sides: tuple[Side, ...] = (
            lm_side(policy, self.chunk_size, policy_context),
            lm_side(self.reference, self.chunk_size, reference_context),
        )
        for model, side in zip((self.policy, self.reference), sides, strict=True):
            self._check_head_reproduces_logits(model, side)  # in LoRA mode: the policy, adapter off
        self.strategy = strategy_for(self.config.packed)
        if self.config.packed:  # per side: packed rows run flash varlen attention (GPU, half precision)
            sides = tuple(packing_checked(side, head.shape[0]) for side in sides)
        self.core = ScoringCore(
            sides=sides,
            device=self.device,
            pad_id=pad_id_of(tokenizer),
            max_batch_tokens=self.max_batch_tokens,
            max_padding=self.config.max_padding,
            padding_mask=self.config.padding_mask,
            max_forward_tokens=self.config.max_forward_tokens,
        )

    @property
    def beta(self) -> float | None:
        return self.config.beta

    @property
    def packed_varlen(self) -> tuple[bool, ...]:
        return tuple(side.varlen for side in self.sides)

    def describe(self) -> str:
        """How this engine scores, in one line: the server's start-up log, ``/admin/models`` and the score
        CLI all say it in these words, e.g. "cuda, bfloat16, packed rows (flash varlen attention), LoRA
        mode (reference = adapter off)"."""
        parts = [self.device.type, str(self.dtype).removeprefix("torch."), rows_description(self)]
        if self.lora_mode:
            parts.append("LoRA mode (reference = adapter off)")
        return ", ".join(parts)

    def modules(self) -> tuple[Any, ...]:
        return (self.policy,) if self.lora_mode else (self.policy, self.reference)

    def language_model(self, role: str) -> tuple[Any, Callable[[], AbstractContextManager[Any]]]:
        """The causal LM to sample from as ``role`` ("policy" or "reference"), and the context it runs in
        (in LoRA mode the reference is the policy's modules with the adapter off)."""
        if role == "reference":
            return self.reference, self.policy.disable_adapter if self.lora_mode else nullcontext
        return self.policy, self.policy_context

    def tokenize_pair(
        self,
        prompt: str | Sequence[ChatMessage],
        response: str,
        *,
        truncate: bool = False,
        rendered: bool = False,
    ) -> TokenizedItem:
        return self.item_tokenizer(prompt, response, truncate=truncate, rendered=rendered)

    def item_scores(self, sums: Sequence[Sums], items: Sequence[TokenizedItem]) -> list[ItemScore]:
        """A strategy's per-item (policy, reference) sums as scores."""
        return [
            ItemScore(policy, reference, item.num_scored, self.config.beta, item.truncated)
            for (policy, reference), item in zip(sums, items, strict=True)
        ]

    @torch.inference_mode()
    def _check_head_reproduces_logits(self, model: Any, side: Side) -> None:
        """Refuse architectures whose forward changes logits after the LM head in a way we do not apply
        (a logit scale, say): compare our path with the model's own logits on a short sequence."""
        length = min(16, self.max_length)
        vocab = model.get_output_embeddings().weight.shape[0]
        ids = (torch.arange(length, device=side.device) * 7919 % vocab).unsqueeze(0)  # (1, L)
        with side.context():
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
            full = selective_log_softmax(logits, ids[0, 1:].to(logits.device))
            hidden = side.backbone(input_ids=ids, use_cache=False).last_hidden_state[0, :-1]
            ours = side.read(hidden, ids[0, 1:]).to(full.device)
        tolerance = 1e-3 if hidden.dtype == torch.float32 else 0.1
        gap = (full - ours).abs().max().item()
        if gap > tolerance:
            raise UnsupportedModelError(
                f"{type(model).__name__}: log-probs from the final hidden states and LM head differ from the "
                f"model's own logits by {gap:.3g}; this architecture post-processes its logits in a way the "
                "scoring engine does not reproduce"
            )


def packing_checked(side: Side, vocab_size: int) -> Side:
    """The side after the start-up packing check (``check_packing``): whether its packed rows run flash
    varlen attention; raises for a model that does not pack exactly."""
    assert side.device is not None  # the sides the models build name their input device
    with side.context():
        return replace(side, varlen=check_packing(side.backbone, vocab_size, side.device))


def rows_description(model: Any) -> str:
    """'padded rows', or 'packed rows (...)' naming each side's attention path (one side may have fallen
    back to the per-segment loop at start-up)."""
    if model.strategy.rows != "packed rows":
        return str(model.strategy.rows)
    kernels = ["flash varlen attention" if side.varlen else "per-sequence attention" for side in model.sides]
    if len(set(kernels)) == 1:
        return f"packed rows ({kernels[0]})"
    return f"packed rows ({kernels[0]} for the policy, {kernels[1]} for the reference)"
