"""DPO + NLL training of a policy on preference pairs (METHOD.md steps 7-8), on TRL's DPOTrainer.

Programmatic API::

    from xlreward.trainer.train import TrainOptions, train

    result = train(TrainOptions(pairs=[Path("runs/iter1/pairs.jsonl")], policy="org/llama3-sft-dpo",
                                reference="/models/sft", out=Path("runs/iter1/train")))
    result.model_dir  # -> runs/iter1/train/model, loadable by `xlreward serve --policy`

What happens, in order:

1. ``--policy`` and ``--reference`` (folders or Hugging Face hub ids at ``--revision``) are resolved to
   folders once (``models.resolve_models``; the CLI does it before importing torch), and everything after
   loads from those folders. The tokenizer is loaded and checked (chat template; the same as the
   reference's), and every pair is read and validated (``data.py``) before any model is loaded: a bad file
   fails in seconds, with ``file:line``.
2. If OUT/checkpoints holds a checkpoint, the run RESUMES from the newest one (model, optimizer, scheduler,
   RNG and data position), so re-running the same command after a crash continues where it stopped. Steps
   logged after that checkpoint are dropped from metrics.jsonl and logged again.
3. TRL's DPOTrainer trains with loss = DPO(sigmoid) + nll_weight * NLL(chosen) (``config.py``, ``loss.py``),
   full fine-tuning or LoRA (``--lora``; with ``--reference`` equal to ``--policy`` the reference is the
   policy with the adapter disabled).
4. OUT/model is written (LoRA merged), with the JSON summaries (``outputs.py``).

Several GPUs: the same command under a distributed launcher, one process per GPU (DDP; the effective batch is
batch_size x grad_accum x processes)::

    accelerate launch --num_processes 8 -m xlreward.cli.main train --pairs ... --out ...
    torchrun --nproc-per-node 8 -m xlreward.cli.main train --pairs ... --out ...

Every process validates the data (deterministically, the same way); only the main one writes OUT's files.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xlreward.trainer.config import dpo_config, lora_config, resolve_device, use_bf16
from xlreward.trainer.data import DataSummary, Row, load_pairs, to_dataset
from xlreward.trainer.export import save_final_model, weights_are_sharded
from xlreward.trainer.models import (
    TrainModels,
    checkpoint_dtype,
    load_checked_tokenizer,
    load_models,
    resolve_models,
)
from xlreward.trainer.options import TrainOptions, TrainSetupError
from xlreward.trainer.outputs import (
    MetricsFile,
    OutputPaths,
    checkpoint_step,
    last_checkpoint,
    trim_metrics,
    versions,
    write_json,
)

__all__ = ["TrainOptions", "TrainResult", "build_trainer", "train"]


@dataclass
class TrainResult:
    out: Path
    model_dir: Path
    global_step: int
    resumed_from: Path | None
    data: DataSummary
    metrics: dict[str, Any] = field(default_factory=dict)  # what final_metrics.json holds


def is_main_process() -> bool:
    """Rank 0 under torchrun / accelerate launch (both set RANK), or a single process."""
    return os.environ.get("RANK", "0") == "0"


def build_trainer(
    options: TrainOptions, rows: list[Row], tokenizer: Any, *, device: str, callbacks: list[Any] | None = None
) -> Any:
    """TRL's DPOTrainer for ``options`` (naming folders: ``TrainModels.on_folders``) on the validated
    conversational ``rows``."""
    from trl.trainer.dpo_trainer import DPOTrainer

    args = dpo_config(options, device=device, output_dir=OutputPaths(options.out).checkpoints)
    policy, reference = load_models(options, bf16=args.bf16)
    return DPOTrainer(
        model=policy,
        ref_model=reference,
        args=args,
        train_dataset=to_dataset(rows),
        processing_class=tokenizer,
        peft_config=lora_config(options) if options.lora else None,
        callbacks=callbacks,
    )


def _config_record(
    named: TrainOptions, options: TrainOptions, models: TrainModels, device: str, resumed_from: Path | None
) -> dict[str, Any]:
    """What was asked (``named``: the options as given) and what it came to (``options`` on the resolved
    folders; lr, device, ...)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    return {
        "command": sys.argv,
        "options": named.to_json(),
        "resolved": {
            "policy": models.policy.describe(),
            "learning_rate": options.resolved_learning_rate,
            "device": device,
            "bf16": use_bf16(device),
            "world_size": world_size,
            "effective_batch_size": options.batch_size * options.grad_accum * world_size,
            "loss": f"dpo_sigmoid + {options.nll_weight} * nll_chosen (beta {options.beta})",
            "reference": (
                "the policy with its LoRA adapter disabled"
                if options.lora and options.reference_is_policy
                else models.reference.describe()
            ),
            "resumed_from": str(resumed_from) if resumed_from else None,
        },
        "versions": versions(),
    }


def start_outputs(
    paths: OutputPaths, config: dict[str, Any], data_summary: dict[str, Any], resume: Path | None
) -> None:
    """Writes train_config.json and data_summary.json, and readies metrics.jsonl: emptied for a fresh run,
    cut after the resumed checkpoint's step otherwise (the main process only)."""
    if not is_main_process():
        return
    write_json(paths.train_config, config)
    write_json(paths.data_summary, data_summary)
    if resume is None:
        paths.metrics.unlink(missing_ok=True)
    else:
        trim_metrics(paths.metrics, checkpoint_step(resume))


def _announce(message: str) -> None:
    if is_main_process():
        print(f"xlreward train: {message}", file=sys.stderr, flush=True)


def train(options: TrainOptions, models: TrainModels | None = None) -> TrainResult:
    """Validates the pairs, trains (resuming when OUT/checkpoints has a checkpoint) and writes OUT.

    ``models``: ``resolve_models(options)`` when the caller has resolved the names already (the CLI, before
    importing torch); resolved here otherwise."""
    models = models or resolve_models(options)
    named, options = options, models.on_folders(options)  # from here on, every model loads from a folder
    paths = OutputPaths(options.out)
    device = resolve_device(options.device)
    tokenizer = load_checked_tokenizer(options)
    data = load_pairs(
        options.pairs, tokenizer, max_length=options.max_length, skip_invalid=options.skip_invalid
    )
    skipped = sum(data.summary.skipped.values())
    _announce(f"{data.summary.pairs} pairs from {len(options.pairs)} file(s), {skipped} skipped")
    resume = last_checkpoint(paths.checkpoints)
    start_outputs(
        paths, _config_record(named, options, models, device, resume), data.summary.to_json(), resume
    )
    if resume is not None:
        _announce(f"resuming from {resume}")
    metrics_file = MetricsFile(paths.metrics)
    trainer = build_trainer(options, data.rows, tokenizer, device=device, callbacks=[metrics_file])
    if options.lora and weights_are_sharded(trainer):
        raise TrainSetupError("--lora under FSDP / DeepSpeed ZeRO-3 cannot merge the adapter: train with DDP")
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    save_final_model(trainer, tokenizer, paths, checkpoint_dtype(options.policy))
    final = {
        "global_step": output.global_step,
        **output.metrics,
        "last_logged": metrics_file.last,
        "resumed_from": str(resume) if resume else None,
    }
    if trainer.is_world_process_zero():
        write_json(paths.final_metrics, final)
    _announce(f"model saved to {paths.model} after {output.global_step} steps")
    return TrainResult(
        out=options.out,
        model_dir=paths.model,
        global_step=output.global_step,
        resumed_from=resume,
        data=data.summary,
        metrics=final,
    )
