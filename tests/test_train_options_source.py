"""Every training option has one source: ``TrainOptions`` (trainer/xlreward/trainer/options.py). The flags of
``xlreward train`` and the ``[train]`` section of ``xlreward iterate``'s TOML are generated from it; these
tests fail when either drifts from it. No model is loaded or trained.

What broke before: ``[train]`` restated the options with its own defaults, so a LoRA iteration
(``lora = true``, no ``lr``) trained at the full fine-tuning lr 1e-7 where ``xlreward train --lora`` uses
1e-5, and an iteration's ``max_length`` defaulted to 2048 where ``xlreward train``'s is 4096.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, fields, replace
from pathlib import Path

import pytest
from pydantic import ValidationError

from xlreward.cli import iterate as iterate_command
from xlreward.cli import train as train_command
from xlreward.cli.main import CommandError
from xlreward.trainer.loop import IterateConfig, TrainSection, train_options
from xlreward.trainer.options import FULL_FINETUNE_LR, LORA_LR, TrainOptions, flag, option_types

REQUIRED = ("pairs", "policy", "reference", "out")
SET_BY_THE_LOOP = {*REQUIRED, "device"}
# The flags users' scripts already pass: generating them must not rename one.
FLAGS = {
    "--pairs", "--policy", "--reference", "--out", "--beta", "--nll-weight", "--lr", "--epochs",
    "--max-steps", "--batch-size", "--grad-accum", "--max-length", "--lora", "--lora-r", "--lora-alpha",
    "--seed", "--skip-invalid", "--device", "--warmup-ratio", "--logging-steps", "--save-steps",
    "--save-total-limit", "--gradient-checkpointing", "--revision", "--trust-remote-code",
    "--attn-implementation",
}  # fmt: skip
ITERATE = """
out = "loop"
sft = "sft"
policy = "pi0"
instructions = ["instructions.jsonl"]
languages = ["es"]

[train]
"""


def train_parser() -> argparse.ArgumentParser:
    """The parser of ``xlreward train`` as ``register`` builds it."""
    commands = argparse.ArgumentParser(prog="xlreward").add_subparsers()
    train_command.register(commands)
    return commands.choices["train"]


def train_args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    """``xlreward train`` with the pairs, policy and output an iteration in ``tmp_path / "loop"`` uses."""
    policy, pairs = tmp_path / "pi0", tmp_path / "loop" / "iter-1" / "annotate" / "pairs.jsonl"
    policy.mkdir(exist_ok=True)
    pairs.parent.mkdir(parents=True, exist_ok=True)
    pairs.touch()
    out = tmp_path / "loop" / "iter-1" / "train"
    argv = ["--pairs", str(pairs), "--policy", str(policy), "--reference", str(policy), "--out", str(out)]
    return train_parser().parse_args([*argv, *extra])


def load_iterate(tmp_path: Path, train_section: str) -> IterateConfig:
    path = tmp_path / "loop.toml"
    path.write_text(ITERATE + train_section + "\n", encoding="utf-8")
    return IterateConfig.load(path)


def test_every_option_is_a_train_flag_with_the_same_default(tmp_path: Path) -> None:
    parser = train_parser()
    flags = {option: action for action in parser._actions for option in action.option_strings}
    assert {flag(option.name) for option in fields(TrainOptions)} == FLAGS == set(flags) - {"-h", "--help"}
    args = train_args(tmp_path)
    for option in fields(TrainOptions):
        action = flags[flag(option.name)]
        assert action.dest == option.name
        assert action.required == (option.name in REQUIRED)
        if option.default is not MISSING:
            assert getattr(args, option.name) == option.default, option.name
    assert parser.get_default("lr") is None  # 1e-7 or 1e-5: resolved per run, like the loop's


def test_help_shows_the_defaults() -> None:
    text = " ".join(train_parser().format_help().split())
    assert "learning rate (default 1e-7 full fine-tuning, 1e-5 with --lora)" in text
    assert (FULL_FINETUNE_LR, LORA_LR) == (1e-7, 1e-5)
    for shown in ("DPO beta (default 0.1)", "refused (default 4096)", "checkpoints kept (default 2)"):
        assert shown in text


def test_every_train_key_is_an_option_with_the_same_default() -> None:
    options, types = {option.name: option for option in fields(TrainOptions)}, option_types()
    assert set(TrainSection.model_fields) == set(options) - SET_BY_THE_LOOP
    for name, key in TrainSection.model_fields.items():
        assert key.default == options[name].default, name
        assert key.annotation == types[name], name


@pytest.mark.parametrize(
    ("train_section", "flags"),
    [
        ("", []),
        ("lora = true", ["--lora"]),
        ("lora = true\nlr = 3e-4\nmax_length = 256", ["--lora", "--lr", "3e-4", "--max-length", "256"]),
    ],
    ids=["defaults", "lora", "explicit"],
)
def test_an_iteration_trains_as_xlreward_train_does(
    tmp_path: Path, train_section: str, flags: list[str]
) -> None:
    """Regression: ``lora = true`` without ``lr`` trained at 1e-7 (the loop's own default), not 1e-5."""
    cli = train_command.options_from_args(train_args(tmp_path, *flags))
    config = load_iterate(tmp_path, train_section)
    loop = train_options(config, config.iteration_dir(0) / "train", config.policy)
    # The one option the loop sets differently unless [train] says: it skips (and counts) the pairs of its
    # own annotation that its trainer cannot take, rather than stop on them.
    assert loop.skip_invalid and not cli.skip_invalid
    assert loop == replace(cli, skip_invalid=True)
    assert loop.resolved_learning_rate == cli.resolved_learning_rate


def test_train_skip_invalid_false_stops_the_loop_on_bad_pairs(tmp_path: Path) -> None:
    train_args(tmp_path)  # the folders and the pairs file the options point at
    config = load_iterate(tmp_path, "skip_invalid = false")
    assert not train_options(config, config.iteration_dir(0) / "train", config.policy).skip_invalid


def test_a_lora_iteration_resolves_to_the_lora_learning_rate(tmp_path: Path) -> None:
    train_args(tmp_path)  # the pairs and policy folder the loop's options check
    lora = load_iterate(tmp_path, "lora = true")
    full = load_iterate(tmp_path, "")
    out = lora.iteration_dir(0) / "train"
    assert lora.train.lr is None and lora.train.max_length == 4096
    assert train_options(lora, out, lora.policy).resolved_learning_rate == LORA_LR
    assert train_options(full, out, full.policy).resolved_learning_rate == FULL_FINETUNE_LR


def test_unknown_train_keys_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"train\.learning_rate\n  Extra inputs are not permitted"):
        load_iterate(tmp_path, "learning_rate = 1e-5")
    with pytest.raises(ValidationError, match=r"train\.device\n  Extra inputs"):  # the loop's own key
        load_iterate(tmp_path, 'device = "cpu"')
    (tmp_path / "loop.toml").write_text(ITERATE + "learning_rate = 1e-5\n")
    with pytest.raises(CommandError, match=r"train\.learning_rate"):
        iterate_command.run(argparse.Namespace(config=str(tmp_path / "loop.toml")))


def test_train_values_are_checked_when_the_config_is_loaded(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"\[train\] beta 0\.0: must be above 0"):
        load_iterate(tmp_path, "beta = 0")
    with pytest.raises(ValidationError, match=r"\[train\] epochs 0\.0: must be above 0 \(or give"):
        load_iterate(tmp_path, "epochs = 0")
    assert load_iterate(tmp_path, "epochs = 0\nmax_steps = 5").train.max_steps == 5


def test_the_demo_config_trains_as_before(tmp_path: Path) -> None:
    """The demo's ``[train]`` sets every key it relied on; the options it trains with are unchanged."""
    from xlreward.demo.models import DemoModels
    from xlreward.demo.run import DemoRun, IterationSettings, iterate_config

    sft, pi0 = tmp_path / "sft", tmp_path / "pi0"
    sft.mkdir()
    pi0.mkdir()
    run = DemoRun(out=tmp_path / "demo", cache=tmp_path / "cache")
    config = IterateConfig.load(
        iterate_config(
            run, DemoModels(sft=sft, pi0=pi0), tmp_path / "i.jsonl", mode="cross-lingual", iterations=2
        )
    )
    out = config.iteration_dir(0) / "train"
    (out.parent / "annotate").mkdir(parents=True)
    (out.parent / "annotate" / "pairs.jsonl").touch()
    s = IterationSettings()
    before = TrainOptions(  # what the loop built from the demo's TOML before the options had one source
        pairs=[out.parent / "annotate" / "pairs.jsonl"],
        policy=pi0.resolve(),
        reference=pi0.resolve(),
        out=out,
        device="cpu",
        beta=s.beta,
        nll_weight=s.nll_weight,
        lr=s.lr,
        epochs=s.epochs,
        max_steps=None,
        batch_size=s.batch_size,
        grad_accum=1,
        max_length=256,
        lora=False,
        seed=42,
        skip_invalid=True,  # the loop's own default since 2026-12-04 (see train_options)
    )
    assert train_options(config, out, config.policy) == before
