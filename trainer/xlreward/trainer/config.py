"""TrainOptions -> TRL's DPOConfig and PEFT's LoraConfig: the one place where the method's loss and the
run's precision, batching, logging and checkpointing are set.

- Loss: ``loss_type=["sigmoid", "sft"]``, ``loss_weights=[1.0, nll_weight]``, ``beta`` (see ``loss.py``
  for the equations; ``nll_weight=0`` drops the "sft" term: plain DPO).
- Precision: float32 on CPU (TRL's DPOConfig defaults to bf16=True, which is switched off here); bf16 mixed
  precision on a GPU that supports it, float32 otherwise. Never fp16.
- Activation (gradient) checkpointing is off unless asked for (TRL defaults it on; transformers 5 calls it
  ``activation_checkpointing``, ``gradient_checkpointing`` being a deprecated alias).
- ``report_to="none"``: metrics go to OUT/metrics.jsonl and the terminal, not to a tracking service.
- Sequences are never truncated in practice: ``max_length`` is also TRL's limit, and pairs over it are
  refused (or skipped) before training (``data.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xlreward.trainer.options import DeviceChoice, RewardTrainOptions, TrainOptions, TrainSetupError


def resolve_device(choice: DeviceChoice) -> str:
    """``"cpu"`` or ``"cuda"``; refuses ``cuda`` without a visible GPU."""
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise TrainSetupError("--device cuda was asked for but torch sees no CUDA device: use --device cpu")
    return choice


def use_bf16(device: str) -> bool:
    import torch

    return device == "cuda" and torch.cuda.is_bf16_supported()


def loss_terms(nll_weight: float) -> tuple[list[str], list[float]]:
    """TRL loss types and weights for DPO (sigmoid) + nll_weight * NLL on the chosen response."""
    if nll_weight == 0:
        return ["sigmoid"], [1.0]
    return ["sigmoid", "sft"], [1.0, nll_weight]


def dpo_config(options: TrainOptions, *, device: str, output_dir: Path) -> Any:
    from trl.trainer.dpo_config import DPOConfig

    loss_type, loss_weights = loss_terms(options.nll_weight)
    return DPOConfig(
        beta=options.beta,
        loss_type=loss_type,
        loss_weights=loss_weights,
        truncation_mode="keep_start",
        precompute_ref_log_probs=False,
        **_run_arguments(options, device=device, output_dir=output_dir),
    )


def reward_config(options: RewardTrainOptions, *, device: str, output_dir: Path) -> Any:
    """TRL's RewardConfig: the Bradley-Terry loss -log sigmoid(r_chosen - r_rejected), no reward centring;
    held-out pairs are evaluated once, after training, in batches of ``batch_size``."""
    from trl.trainer.reward_config import RewardConfig

    return RewardConfig(
        per_device_eval_batch_size=options.batch_size,
        eval_strategy="no",
        center_rewards_coefficient=None,
        **_run_arguments(options, device=device, output_dir=output_dir),
    )


def _run_arguments(
    options: TrainOptions | RewardTrainOptions, *, device: str, output_dir: Path
) -> dict[str, Any]:
    """The TrainingArguments both trainers take the same way: steps, batching, precision, logging, saving."""
    return {
        "output_dir": str(output_dir),
        "learning_rate": options.resolved_learning_rate,
        "num_train_epochs": options.epochs,
        "max_steps": options.max_steps if options.max_steps is not None else -1,
        "per_device_train_batch_size": options.batch_size,
        "gradient_accumulation_steps": options.grad_accum,
        "warmup_steps": options.warmup_ratio,  # a float below 1 is a fraction of the training steps
        "max_length": options.max_length,
        "activation_checkpointing": options.gradient_checkpointing,
        "use_cpu": device == "cpu",
        "bf16": use_bf16(device),
        "fp16": False,
        "report_to": "none",
        "logging_steps": options.logging_steps,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": options.save_steps,
        "save_total_limit": options.save_total_limit,
        "seed": options.seed,
        "data_seed": options.seed,
        "dataloader_num_workers": 0,
    }


def lora_config(options: TrainOptions | RewardTrainOptions) -> Any:
    """LoRA on every linear projection of the transformer blocks (not the LM head, which TRL refuses). For a
    reward model (``SEQ_CLS``) PEFT also trains the new one-logit head in full (``modules_to_save``)."""
    from peft import LoraConfig

    return LoraConfig(
        r=options.lora_r,
        lora_alpha=options.lora_alpha,
        lora_dropout=0.0,  # TRL disables dropout in the trained model anyway
        target_modules="all-linear",
        task_type="SEQ_CLS" if isinstance(options, RewardTrainOptions) else "CAUSAL_LM",
    )
