"""``xlreward train-rm`` end to end on the tiny Llama: Bradley-Terry training learns a known preference rule
(held-out accuracy, measured through the serving code, is high and agrees with TRL's own evaluation), LoRA
runs export a merged one-logit classifier, a wrong --model fails before torch is imported, and a re-run
resumes from the last checkpoint instead of starting again."""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any

import pytest

from xlreward.cli import train_rm as train_rm_command
from xlreward.cli.main import main
from xlreward.service.protocol import RewardItem
from xlreward.service.scoring.loading import load_classifier
from xlreward.trainer.options import RewardTrainOptions, flag
from xlreward.trainer.reward_model import split_held_out, train_reward_model

pytestmark = [
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:`gradient_checkpointing` is deprecated:FutureWarning"),
]

Pair = tuple[str, str, str]  # (prompt, chosen, rejected)

# The rule (as in test_trainer_train.py): the chosen answer repeats the asked digit four times ("7 7 7 7");
# the rejected one is an unrelated sentence. Digits against letters: a tiny model learns it in a few steps.
WRONG = [
    "The quick brown fox jumps over the lazy dog.",
    "I do not know, sorry.",
    "Bitte nur auf Deutsch.",
    "Où est la bibliothèque ?",
    "Hello world, today is nice.",
    "no",
]
PHRASINGS = ["Say the digit {d} four times.", "Repeat {d} four times, please.", "Write {d} four times."]


def rule_pairs(seed: int = 0) -> list[Pair]:
    rng = random.Random(seed)
    return [(p.format(d=d), " ".join([str(d)] * 4), rng.choice(WRONG)) for d in range(10) for p in PHRASINGS]


PAIRS = rule_pairs()  # 30 pairs; --eval-fraction 0.2 holds out 6


def write_pairs(path: Path, pairs: list[Pair]) -> Path:
    lines = [
        json.dumps({"id": str(i), "language": "en", "prompt": p, "chosen": c, "rejected": r})
        for i, (p, c, r) in enumerate(pairs)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def argv(pairs: Path, model: Path | str, out: Path, *extra: str) -> list[str]:
    return ["train-rm", "--pairs", str(pairs), "--model", str(model), "--out", str(out), *extra]


FAST = ["--device", "cpu", "--batch-size", "4", "--grad-accum", "1", "--max-length", "256"]


def served_accuracy(model_dir: Path, held_out: list[Any]) -> float:
    """The share of pairs whose chosen response the served classifier scores above the rejected one."""
    model = load_classifier(model_dir, device="cpu", dtype="float32")
    wins = 0
    for row in held_out:
        prompt = row["prompt"][0]["content"]
        chosen, rejected = model.score(
            [RewardItem(prompt=prompt, response=row[side][0]["content"]) for side in ("chosen", "rejected")]
        )
        wins += chosen.reward > rejected.reward
    return wins / len(held_out)


def assert_one_logit_classifier(model_dir: Path) -> None:
    """A sequence classifier with one label and the pad token id its pooling needs, saved with the tokenizer
    (and its chat template)."""
    config = json.loads((model_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and len(config["id2label"]) == 1
    tokenizer = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert config["pad_token_id"] is not None and tokenizer["pad_token"] is not None
    assert (model_dir / "chat_template.jinja").is_file()


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", PAIRS)


@pytest.fixture(scope="module")
def cli_run(llama_pair: Any, pairs_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rm") / "out"
    extra = [*FAST, "--lr", "1e-3", "--max-steps", "24", "--eval-fraction", "0.2", "--logging-steps", "6"]
    assert main(argv(pairs_file, llama_pair.policy, out, *extra)) == 0
    return out


def test_every_option_is_a_flag_with_the_same_default() -> None:
    """``xlreward train-rm``'s flags are generated from RewardTrainOptions, as train's from TrainOptions."""
    commands = argparse.ArgumentParser(prog="xlreward").add_subparsers()
    train_rm_command.register(commands)
    command = commands.choices["train-rm"]
    actions = {option: action for action in command._actions for option in action.option_strings}
    assert {flag(option.name) for option in fields(RewardTrainOptions)} == set(actions) - {"-h", "--help"}
    for option in fields(RewardTrainOptions):
        action = actions[flag(option.name)]
        assert action.required == (option.name in ("pairs", "model", "out")), option.name
        if option.default is not MISSING:
            assert action.default == option.default, option.name


def test_split_is_deterministic_and_holds_out_at_least_one() -> None:
    rows: list[Any] = list(range(10))
    train, held = split_held_out(rows, 0.1, seed=3)
    assert len(held) == 1 and sorted(train + held) == rows
    assert split_held_out(rows, 0.1, seed=3) == (train, held)
    assert len(split_held_out(rows[:2], 0.01, seed=0)[1]) == 1  # at least one of two
    assert split_held_out(rows[:1], 0.5, seed=0) == ([0], [])  # never all
    assert split_held_out(rows, 0.0, seed=0) == (rows, [])


def test_cli_run_learns_the_rule_and_the_served_model_agrees(
    llama_pair: Any, pairs_file: Path, cli_run: Path
) -> None:
    """24 steps of 4 pairs at lr 1e-3: the classifier prefers the rule's answers on held-out pairs. The
    accuracy in final_metrics.json is what load_classifier (the served path) gives on OUT/model, and TRL's
    own evaluation of the same pairs (its rendering and pooling) gives the same number."""
    final = json.loads((cli_run / "final_metrics.json").read_text())
    assert final["global_step"] == 24 and final["train_pairs"] == 24 and final["held_out_pairs"] == 6
    options = RewardTrainOptions(pairs=[pairs_file], model=llama_pair.policy, out=cli_run, eval_fraction=0.2)
    rows = [json.loads(line) for line in pairs_file.read_text().splitlines()]
    conversations = [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in rows
    ]
    _, held_out = split_held_out(conversations, options.eval_fraction, options.seed)
    recomputed = served_accuracy(cli_run / "model", held_out)
    print(f"held-out accuracy {recomputed}, TRL eval {final['trainer_eval']}")
    assert final["held_out_accuracy"] == recomputed >= 5 / 6
    assert final["trainer_eval"]["eval_accuracy"] == pytest.approx(recomputed)
    assert_one_logit_classifier(cli_run / "model")
    lines = [json.loads(line) for line in (cli_run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 6, 12, 18, 24]
    summary = json.loads((cli_run / "data_summary.json").read_text())
    assert summary["pairs"] == 30 and summary["train_pairs"] == 24 and summary["held_out_pairs"] == 6
    resolved = json.loads((cli_run / "train_config.json").read_text())["resolved"]
    assert resolved["learning_rate"] == 1e-3 and resolved["loss"].startswith("bradley_terry")


def test_lora_run_writes_a_merged_classifier(llama_pair: Any, pairs_file: Path, tmp_path: Path) -> None:
    options = RewardTrainOptions(
        pairs=[pairs_file],
        model=llama_pair.policy,
        out=tmp_path / "out",
        lora=True,
        max_steps=2,
        batch_size=4,
        grad_accum=1,
        max_length=256,
        device="cpu",
    )
    result = train_reward_model(options)
    files = {p.name for p in result.model_dir.iterdir()}
    assert "model.safetensors" in files and "adapter_config.json" not in files
    assert (result.out / "adapter" / "adapter_config.json").is_file()
    assert_one_logit_classifier(result.model_dir)
    assert result.held_out_pairs == 3 and result.held_out_accuracy is not None
    assert load_classifier(result.model_dir, device="cpu", dtype="float32").kind == "classifier"


def test_freeze_embeddings_keeps_the_input_embeddings_and_trains_the_rest(
    llama_pair: Any, pairs_file: Path, tmp_path: Path
) -> None:
    """--freeze-embeddings: the saved classifier's token embeddings are the SFT model's to the bit, while the
    layers above them and the new head did train."""
    from safetensors.torch import load_file

    out = tmp_path / "out"
    assert main(argv(pairs_file, llama_pair.policy, out, *FAST, "--lr", "1e-3", "--max-steps", "3",
                     "--freeze-embeddings")) == 0  # fmt: skip
    before = load_file(Path(llama_pair.policy) / "model.safetensors")
    after = load_file(out / "model" / "model.safetensors")
    embeddings = "model.embed_tokens.weight"
    assert after[embeddings].equal(before[embeddings])
    layer = "model.layers.0.self_attn.q_proj.weight"
    assert not after[layer].equal(before[layer])
    config = json.loads((out / "train_config.json").read_text())
    assert config["options"]["freeze_embeddings"] is True


def test_rerun_resumes_from_the_last_checkpoint(llama_pair: Any, pairs_file: Path, tmp_path: Path) -> None:
    """A run of 2 steps, re-run asking for 3: it continues at step 3 from checkpoint-2 (the trainer state
    carries the first run's losses), and metrics.jsonl holds each step once."""
    first = RewardTrainOptions(
        pairs=[pairs_file],
        model=llama_pair.policy,
        out=tmp_path / "out",
        max_steps=2,
        batch_size=2,
        grad_accum=1,
        max_length=256,
        device="cpu",
        logging_steps=1,
        save_steps=1,
        eval_fraction=0.0,
    )
    assert train_reward_model(first).global_step == 2
    checkpoint_2 = first.out / "checkpoints" / "checkpoint-2"
    first_losses = _log_steps(checkpoint_2)
    result = train_reward_model(replace(first, max_steps=3))
    assert result.resumed_from == checkpoint_2 and result.global_step == 3
    assert _log_steps(first.out / "checkpoints" / "checkpoint-3")[:2] == first_losses
    steps = [json.loads(line)["step"] for line in (first.out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert json.loads((first.out / "final_metrics.json").read_text())["resumed_from"] == str(checkpoint_2)


def _log_steps(checkpoint: Path) -> list[tuple[int, float]]:
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return [(entry["step"], entry["loss"]) for entry in state["log_history"] if "loss" in entry]


PROBE = """
import sys
from xlreward.cli import train_rm as train_rm_command
from xlreward.cli.main import main
status = main({argv!r})
print(status, "torch" in sys.modules)
"""


def test_a_wrong_model_path_fails_before_torch_is_imported(pairs_file: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "model"
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv(pairs_file, missing, tmp_path / "out"))],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert done.stdout.split() == ["2", "False"], done.stderr
    assert f"--model {missing}" in done.stderr and "xlreward train-rm: error:" in done.stderr
    assert not (tmp_path / "out").exists()
