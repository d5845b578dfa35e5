"""``xlreward train``: DPO + NLL training of a policy on preference pairs (METHOD.md steps 7-8).

The command wraps ``xlreward.trainer.train.train``; see ``trainer/README.md``. Several GPUs: the same command
under ``accelerate launch -m xlreward.cli.main train ...`` or ``torchrun --nproc-per-node N -m
xlreward.cli.main train ...``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import MISSING, fields
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "train",
        help="train a policy with DPO + NLL on preference pairs (TRL)",
        description=(
            "Trains --policy on the pairs of --pairs (the JSONL written by `xlreward annotate`) with DPO "
            "(sigmoid loss, --beta) plus --nll-weight times the NLL of the chosen response, against "
            "--reference, on TRL's DPOTrainer. Models are folders or Hugging Face hub ids (org/name, at "
            "--revision), read from the hub cache (fetched unless HF_HUB_OFFLINE=1) and loaded from there. "
            "Every pair is validated first; a bad line stops the run with "
            "file:line unless --skip-invalid. Writes OUT/model (LoRA merged; `xlreward serve --policy "
            "OUT/model` loads it), train_config.json, data_summary.json, metrics.jsonl, final_metrics.json "
            "and OUT/checkpoints; re-running the same command resumes from the last checkpoint."
        ),
    )
    add_option_flags(parser)
    parser.set_defaults(run=run)


def add_option_flags(parser: argparse.ArgumentParser, kind: type[Any] | None = None) -> None:
    """One flag per field of ``TrainOptions`` (or of ``kind``, an options dataclass declared the same way:
    ``RewardTrainOptions``), from its one declaration (type, default, help), named after it."""
    from xlreward.trainer.options import TrainOptions, flag, option_help, option_types

    kind = kind or TrainOptions
    types = option_types(kind)
    for option in fields(kind):
        argument = _argument_kind(types[option.name], option.default)
        if option.metadata["metavar"]:
            argument["metavar"] = option.metadata["metavar"]
        parser.add_argument(flag(option.name), help=option_help(option), **argument)


def _argument_kind(annotation: Any, default: Any) -> dict[str, Any]:
    """argparse's keywords for an option of this type: a switch, a choice, one or more values, or a value."""
    if annotation is bool:
        if default is not False:
            raise TypeError(f"a switch (store_true) must default to False, not {default!r}")
        return {"action": "store_true"}
    kind: dict[str, Any] = {"required": True} if default is MISSING else {"default": default}
    inner = [arg for arg in get_args(annotation) if arg is not type(None)]
    if get_origin(annotation) is Literal:
        return {**kind, "choices": list(get_args(annotation))}
    if get_origin(annotation) is Sequence:
        return {**kind, "nargs": "+", "type": inner[0]}
    if get_origin(annotation) in (Union, UnionType):  # X | None (unset by default), or str | Path: a str
        return {**kind, "type": inner[0]}
    return {**kind, "type": annotation}


def options_from_args(args: argparse.Namespace, kind: type[Any] | None = None) -> Any:
    """The ``TrainOptions`` (or ``kind``) the flags of ``add_option_flags`` give."""
    from xlreward.trainer.options import TrainOptions

    kind = kind or TrainOptions
    return kind(**{option.name: getattr(args, option.name) for option in fields(kind)})


def run(args: argparse.Namespace) -> int:
    from xlreward.cli.main import CommandError
    from xlreward.trainer.data import PairProblems
    from xlreward.trainer.models import resolve_models
    from xlreward.trainer.options import TrainSetupError

    try:
        options = options_from_args(args)  # a name that is neither a folder nor a hub id fails here
        models = resolve_models(options)  # hub ids -> their cached snapshots; still before torch is imported
        from xlreward.trainer.train import train

        result = train(options, models)
    except (TrainSetupError, PairProblems) as error:
        raise CommandError(str(error)) from error
    margins = result.metrics.get("last_logged", {}).get("rewards/margins")
    summary = f", last rewards/margins {margins:.4f}" if isinstance(margins, float) else ""
    print(
        f"trained {result.global_step} steps on {result.data.pairs} pairs "
        f"({sum(result.data.skipped.values())} skipped){summary}; model: {result.model_dir}",
        file=sys.stderr,
    )
    return 0
