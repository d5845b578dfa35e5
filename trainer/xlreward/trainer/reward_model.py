"""Bradley-Terry training of a classifier reward model on preference pairs (``xlreward train-rm``; METHOD.md
section 2, "Reuse Your Rewards": the RM starts from the SFT model with a scalar head), on TRL's RewardTrainer.

Programmatic API::

    from xlreward.trainer.reward_model import RewardTrainOptions, train_reward_model

    result = train_reward_model(RewardTrainOptions(pairs=[Path("pairs/en.jsonl")], model="/models/sft",
                                                   out=Path("runs/rm")))
    result.model_dir  # runs/rm/model: `kind = "classifier"` in `xlreward serve --models`
    result.held_out_accuracy  # share of held-out pairs with reward(chosen) > reward(rejected), as served

What happens, in order (``xlreward train``'s steps, shared with it where they are the same):

1. ``--model`` (a folder or a hub id at ``--revision``) is resolved to a folder once (the CLI does it before
   importing torch). The tokenizer must have a chat template; every pair is read and validated
   (``data.py``: pairs.jsonl in either format, ``file:line`` problems, over-long pairs refused, not
   truncated).
2. ``--eval-fraction`` of the pairs is held out, drawn by ``--seed`` (at least one pair when there are two or
   more; none at 0), so a re-run holds out the same pairs.
3. The SFT checkpoint is loaded as a sequence classifier with a NEW one-logit head (``num_labels=1``, seeded),
   in float32. TRL renders each pair as the conversation [user prompt, assistant response] with the chat
   template (exactly ``ItemTokenizer``'s rendering when serving) and trains -log sigmoid(r_chosen -
   r_rejected), the reward being the head at the last token that is not the pad token (transformers'
   pooling, which ``ClassifierRewardModel`` reproduces). TRL gives the tokenizer a pad token (its eos when it
   has none) and writes its id into the model config: the served model pools at the same token.
   Full fine-tuning, or ``--lora`` (PEFT ``SEQ_CLS``: adapters on every linear projection, the head trained
   in full) merged into OUT/model.
4. A re-run resumes from the newest checkpoint in OUT/checkpoints, like ``xlreward train``.
5. OUT/model is written (LoRA merged; the tokenizer beside it), then loaded back with
   ``xlreward.service.scoring.loading.load_classifier`` (what ``serve`` runs, in its default dtype) to score
   the held-out pairs: ``final_metrics.json`` reports that accuracy, next to TRL's own evaluation of the
   same pairs (``trainer_eval``, the training-side rendering; they agree when the two paths agree).
"""

from __future__ import annotations

import gc
import os
import random
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from xlreward.service.model_source import ModelSource
from xlreward.trainer.config import lora_config, resolve_device, reward_config, use_bf16
from xlreward.trainer.data import DataSummary, Row, load_pairs, to_dataset
from xlreward.trainer.export import save_final_model, weights_are_sharded
from xlreward.trainer.models import (
    checkpoint_dtype,
    load_chat_tokenizer,
    load_options,
    load_reward_model,
    resolve_reward_model,
)
from xlreward.trainer.options import RewardTrainOptions, TrainSetupError
from xlreward.trainer.outputs import MetricsFile, OutputPaths, last_checkpoint, versions, write_json
from xlreward.trainer.train import is_main_process, start_outputs

__all__ = [
    "RewardTrainOptions",
    "RewardTrainResult",
    "held_out_scores",
    "split_held_out",
    "train_reward_model",
]

LOSS = "bradley_terry: -log sigmoid(r_chosen - r_rejected), r = one-logit head at the last non-pad token"


@dataclass
class RewardTrainResult:
    out: Path
    model_dir: Path
    global_step: int
    resumed_from: Path | None
    data: DataSummary
    train_pairs: int
    held_out_pairs: int
    held_out_accuracy: float | None  # None without held-out pairs
    metrics: dict[str, Any] = field(default_factory=dict)  # what final_metrics.json holds


def split_held_out(rows: list[Row], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """(train, held out): ``round(len * fraction)`` pairs drawn by ``seed``, at least one when there are two
    or more and ``fraction > 0``, never all of them; both keep the files' order."""
    count = 0 if fraction == 0 or len(rows) < 2 else min(len(rows) - 1, max(1, round(len(rows) * fraction)))
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def held_out_scores(model_dir: Path, rows: list[Row], *, device: str, options: Any = None) -> dict[str, Any]:
    """The held-out pairs scored by the SERVED path: ``load_classifier`` on ``model_dir`` (``serve``'s default
    dtype on ``device``). ``accuracy``: share with reward(chosen) > reward(rejected)."""
    from xlreward.service.protocol import RewardItem
    from xlreward.service.scoring.loading import load_classifier

    model = load_classifier(model_dir, device=device, options=options)
    chosen, rejected = (
        model.score(
            [RewardItem(prompt=row["prompt"][0]["content"], response=row[side][0]["content"]) for row in rows]
        )
        for side in ("chosen", "rejected")
    )
    margins = [c.reward - r.reward for c, r in zip(chosen, rejected, strict=True)]
    return {
        "pairs": len(rows),
        "accuracy": sum(margin > 0 for margin in margins) / len(rows),
        "mean_margin": sum(margins) / len(rows),
        "scored_by": model.describe(),
    }


def build_reward_trainer(
    options: RewardTrainOptions,
    rows: list[Row],
    held_out: list[Row],
    tokenizer: Any,
    *,
    device: str,
    callbacks: list[Any] | None = None,
) -> Any:
    """TRL's RewardTrainer for ``options`` (``model`` naming a folder) on the validated conversational
    ``rows``; ``held_out`` is its evaluation set."""
    from trl.trainer.reward_trainer import RewardTrainer

    return RewardTrainer(
        model=load_reward_model(options),
        args=reward_config(options, device=device, output_dir=OutputPaths(options.out).checkpoints),
        train_dataset=to_dataset(rows),
        eval_dataset=to_dataset(held_out) if held_out else None,
        processing_class=tokenizer,
        peft_config=lora_config(options) if options.lora else None,
        callbacks=callbacks,
    )


def _config_record(
    named: RewardTrainOptions,
    options: RewardTrainOptions,
    model: ModelSource,
    device: str,
    resume: Path | None,
) -> dict[str, Any]:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return {
        "command": sys.argv,
        "options": named.to_json(),
        "resolved": {
            "model": model.describe(),
            "learning_rate": options.resolved_learning_rate,
            "device": device,
            "bf16": use_bf16(device),
            "world_size": world_size,
            "effective_batch_size": options.batch_size * options.grad_accum * world_size,
            "loss": LOSS,
            "resumed_from": str(resume) if resume else None,
        },
        "versions": versions(),
    }


def _announce(message: str) -> None:
    if is_main_process():
        print(f"xlreward train-rm: {message}", file=sys.stderr, flush=True)


def _fit(
    options: RewardTrainOptions, rows: list[Row], held_out: list[Row], tokenizer: Any, device: str
) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """Trains (resuming from OUT/checkpoints), evaluates with TRL and writes OUT/model; returns (the
    trainer's output, its evaluation, the last logged metrics). The trainer is dropped on return."""
    paths = OutputPaths(options.out)
    resume = last_checkpoint(paths.checkpoints)
    metrics_file = MetricsFile(paths.metrics)
    trainer = build_reward_trainer(
        options, rows, held_out, tokenizer, device=device, callbacks=[metrics_file]
    )
    if options.lora and weights_are_sharded(trainer):
        raise TrainSetupError("--lora under FSDP / DeepSpeed ZeRO-3 cannot merge the adapter: train with DDP")
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    evaluation = trainer.evaluate() if held_out else {}
    save_final_model(trainer, tokenizer, paths, checkpoint_dtype(options.model))
    return output, evaluation, metrics_file.last


def _release_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


def train_reward_model(options: RewardTrainOptions, model: ModelSource | None = None) -> RewardTrainResult:
    """Validates and splits the pairs, trains (resuming when OUT/checkpoints has a checkpoint), writes OUT and
    scores the held-out pairs with the saved model as served.

    ``model``: ``resolve_reward_model(options)`` when the caller has resolved it already (the CLI, before
    importing torch); resolved here otherwise."""
    model = model or resolve_reward_model(options)
    named, options = options, replace(options, model=str(model.folder), revision=None)
    paths, device = OutputPaths(options.out), resolve_device(options.device)
    tokenizer = load_chat_tokenizer(options.model, load_options(options), "--model")
    data = load_pairs(
        options.pairs, tokenizer, max_length=options.max_length, skip_invalid=options.skip_invalid
    )
    rows, held_out = split_held_out(data.rows, options.eval_fraction, options.seed)
    counts = {"train_pairs": len(rows), "held_out_pairs": len(held_out)}
    skipped = sum(data.summary.skipped.values())
    _announce(f"{len(rows)} pairs to train on, {len(held_out)} held out, {skipped} skipped")
    resume = last_checkpoint(paths.checkpoints)
    config = _config_record(named, options, model, device, resume)
    start_outputs(paths, config, {**data.summary.to_json(), **counts}, resume)
    if resume is not None:
        _announce(f"resuming from {resume}")
    output, evaluation, last_logged = _fit(options, rows, held_out, tokenizer, device)
    _release_memory(device)
    final: dict[str, Any] = {
        "global_step": output.global_step,
        **output.metrics,
        "last_logged": last_logged,
        "resumed_from": str(resume) if resume else None,
        **counts,
        "held_out_accuracy": None,
        "trainer_eval": evaluation,
    }
    if is_main_process():
        if held_out:
            scores = held_out_scores(paths.model, held_out, device=device, options=load_options(options))
            final.update(held_out_accuracy=scores["accuracy"], held_out=scores)
        write_json(paths.final_metrics, final)
    _announce(f"model saved to {paths.model} after {output.global_step} steps")
    return RewardTrainResult(
        out=options.out,
        model_dir=paths.model,
        global_step=output.global_step,
        resumed_from=resume,
        data=data.summary,
        metrics=final,
        held_out_accuracy=final["held_out_accuracy"],
        **counts,
    )
