"""The policy, the reference and the tokenizer for training: named as folders or Hugging Face hub ids,
resolved to folders once per run, then loaded from those folders only.

- ``resolve_models`` decides, once and before torch is imported, which folder each name loads from
  (``model_source.resolve_model``: a folder is itself; a hub id is its snapshot in the Hugging Face cache at
  ``--revision``, fetched first unless ``HF_HUB_OFFLINE`` is set, and a message naming the id and how to
  fetch it when it cannot be had). Everything after that loads from the folders (``local_files_only``),
  with remote code only under ``--trust-remote-code`` and ``--attn-implementation`` passed on.
- The policy is trained in float32 (master weights; bf16 only as autocast on GPU): an update of lr ~1e-7
  vanishes when added to bfloat16 weights. The final model is saved back in the policy checkpoint's own
  dtype (``checkpoint_dtype``, read from the resolved folder's config.json).
- The reference is frozen: bfloat16 when training runs in bf16, float32 otherwise.
- With ``--lora`` and ``--reference`` equal to ``--policy`` (the same folder, or the same hub id) no
  reference model is loaded: TRL computes the reference log-probs with the adapter disabled, which is exactly
  the starting policy (LoRA's B matrices start at zero). Any other reference is loaded as its own model.
- Policy and reference must share the tokenizer (as for scoring), and it must have a chat template: the
  pairs are rendered as chat turns.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xlreward.service.model_source import ModelSource, resolve_model
from xlreward.trainer.options import RewardTrainOptions, TrainOptions, TrainSetupError

if TYPE_CHECKING:
    from xlreward.service.scoring.loading import LoadOptions


class ModelSetupError(TrainSetupError):
    """Checkpoints that cannot be trained as asked; the message says how to fix it."""


@dataclass(frozen=True)
class TrainModels:
    """Where a run's policy and reference load from: each as named and the folder it resolved to."""

    policy: ModelSource
    reference: ModelSource

    def on_folders(self, options: TrainOptions) -> TrainOptions:
        """``options`` naming the resolved folders; without the revision, which applied to the names."""
        return replace(
            options, policy=str(self.policy.folder), reference=str(self.reference.folder), revision=None
        )


def resolve_models(options: TrainOptions) -> TrainModels:
    """The folders of ``--policy`` and ``--reference`` (fetched into the hub cache unless offline).

    Torch-free: the CLI runs it before importing torch. Raises ``ModelSetupError`` naming the flag."""
    try:
        policy = _resolve(options.policy, "--policy", options)
        reference = (
            policy if options.reference_is_policy else _resolve(options.reference, "--reference", options)
        )
    except (FileNotFoundError, ValueError) as error:  # model_source.ModelNotFound is a FileNotFoundError
        raise ModelSetupError(str(error)) from error
    return TrainModels(policy=policy, reference=reference)


def resolve_reward_model(options: RewardTrainOptions) -> ModelSource:
    """The folder of ``xlreward train-rm --model``, as ``resolve_models`` resolves ``--policy``."""
    try:
        return _resolve(options.model, "--model", options)
    except (FileNotFoundError, ValueError) as error:
        raise ModelSetupError(str(error)) from error


def _resolve(name: str | Path, flag: str, options: TrainOptions | RewardTrainOptions) -> ModelSource:
    return resolve_model(
        str(name), revision=options.revision, what=flag, trust_remote_code=options.trust_remote_code
    )


def load_options(options: TrainOptions | RewardTrainOptions) -> LoadOptions:
    """How the run's checkpoints load (remote code, attention); the names are folders by now."""
    from xlreward.service.scoring.loading import LoadOptions

    return LoadOptions(
        trust_remote_code=options.trust_remote_code, attn_implementation=options.attn_implementation
    )


def load_checked_tokenizer(options: TrainOptions) -> Any:
    """The policy's tokenizer, checked; ``options`` name folders (``TrainModels.on_folders``)."""
    from xlreward.service.scoring.errors import ModelPairError
    from xlreward.service.scoring.loading import check_same_tokenizer, load_tokenizer

    tokenizer = load_chat_tokenizer(options.policy, load_options(options), "--policy")
    if not options.reference_is_policy:
        try:
            check_same_tokenizer(tokenizer, load_tokenizer(options.reference, load_options(options)))
        except ModelPairError as error:
            raise ModelSetupError(str(error)) from error
    return tokenizer


def load_chat_tokenizer(path: str | Path, options: LoadOptions, flag: str) -> Any:
    """The tokenizer of the checkpoint folder ``path`` (named by ``flag``); refused without a chat
    template."""
    from xlreward.service.scoring.loading import load_tokenizer

    tokenizer = load_tokenizer(path, options)
    if not tokenizer.chat_template:
        raise ModelSetupError(
            f"{flag} {path}: the tokenizer has no chat template; pairs are trained as chat "
            "turns, so start from a chat (SFT) model whose tokenizer_config.json has a chat_template"
        )
    return tokenizer


def checkpoint_dtype(path: str | Path) -> Any:
    """The dtype a checkpoint folder's config.json declares (float32 when it declares none)."""
    import torch

    config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    dtype = getattr(torch, str(name), None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def load_causal_lm(path: str | Path, dtype: Any, options: LoadOptions | None = None) -> Any:
    """A causal LM from a folder, on the CPU in ``dtype`` and in train mode (the Trainer places it)."""
    from transformers import AutoModelForCausalLM

    from xlreward.service.scoring.loading import LoadOptions

    extra = (options or LoadOptions()).from_pretrained_kwargs()  # local_files_only, remote code, attention
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **extra)


def load_models(options: TrainOptions, *, bf16: bool) -> tuple[Any, Any | None]:
    """(policy, reference) from the folders ``options`` name; the reference is None when TRL should use the
    adapter-disabled policy."""
    import torch

    policy = load_causal_lm(options.policy, torch.float32, load_options(options))
    if options.lora and options.reference_is_policy:
        return policy, None
    reference = load_causal_lm(
        options.reference, torch.bfloat16 if bf16 else torch.float32, load_options(options)
    )
    return policy, reference.eval()


def load_reward_model(options: RewardTrainOptions) -> Any:
    """The SFT checkpoint ``options.model`` (a folder by now) as a sequence classifier with a new one-logit
    head (seeded by ``options.seed``), float32 on the CPU in train mode, its input embeddings frozen with
    ``freeze_embeddings`` (the Trainer's optimizer takes only what requires grad); the Trainer places it."""
    import torch
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(options.seed)  # the head is new: its initialisation is part of the run
    extra = load_options(options).from_pretrained_kwargs()
    model = AutoModelForSequenceClassification.from_pretrained(
        options.model, num_labels=1, dtype=torch.float32, **extra
    )
    if options.freeze_embeddings:
        model.get_input_embeddings().requires_grad_(False)
    return model
