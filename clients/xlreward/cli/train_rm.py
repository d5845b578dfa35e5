"""``xlreward train-rm``: a Bradley-Terry reward model (classifier, one-logit head) trained on preference
pairs from an SFT checkpoint (METHOD.md section 2, "Reuse Your Rewards").

The command wraps ``xlreward.trainer.reward_model.train_reward_model``; see ``trainer/README.md``. Its flags
are generated from ``RewardTrainOptions`` the way ``xlreward train``'s are from ``TrainOptions``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from xlreward.cli.train import add_option_flags, options_from_args


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "train-rm",
        help="train a classifier reward model (Bradley-Terry) on preference pairs (TRL)",
        description=(
            "Trains a reward model on the pairs of --pairs (the JSONL `xlreward annotate` writes): --model, "
            "an SFT (causal LM) checkpoint, gets a one-logit head and learns reward(chosen) > "
            "reward(rejected) (Bradley-Terry loss, TRL's RewardTrainer) on prompt + response rendered with "
            "its chat template, as `xlreward serve` scores them. Full fine-tuning or --lora (merged). "
            "Every pair is validated first (file:line; --skip-invalid skips); --eval-fraction of them is "
            "held out, and the saved model's accuracy on them is measured through the serving code. Writes "
            'OUT/model (`kind = "classifier"` in `xlreward serve --models`), train_config.json, '
            "data_summary.json, metrics.jsonl, final_metrics.json and OUT/checkpoints; re-running the same "
            "command resumes from the last checkpoint."
        ),
    )
    add_option_flags(parser, _options_kind())
    parser.set_defaults(run=run)


def _options_kind() -> type[Any]:
    from xlreward.trainer.options import RewardTrainOptions

    return RewardTrainOptions


def run(args: argparse.Namespace) -> int:
    from xlreward.cli.main import CommandError
    from xlreward.trainer.data import PairProblems
    from xlreward.trainer.models import resolve_reward_model
    from xlreward.trainer.options import TrainSetupError

    try:
        options = options_from_args(args, _options_kind())  # neither a folder nor a hub id: fails here
        model = resolve_reward_model(options)  # a hub id -> its cached snapshot; still before torch
        from xlreward.trainer.reward_model import train_reward_model

        result = train_reward_model(options, model)
    except (TrainSetupError, PairProblems) as error:
        raise CommandError(str(error)) from error
    accuracy = result.held_out_accuracy
    shown = f"held-out accuracy {accuracy:.3f}" if accuracy is not None else "no held-out pairs"
    print(
        f"trained {result.global_step} steps on {result.train_pairs} pairs, {shown} on "
        f"{result.held_out_pairs}; model: {result.model_dir}",
        file=sys.stderr,
    )
    return 0
