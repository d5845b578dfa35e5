"""The TRL reward function, driven by TRL itself: one GRPO step of a tiny policy whose rewards come from a
classifier RM on a running xlreward server, scored against the English instruction of each prompt."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import torch

from serving import running_models_server
from xlreward.client.trl_reward import ServedReward, completion_text


@pytest.fixture(scope="module")
def server(llama_pair, model_cache, tmp_path_factory):  # type: ignore[no-untyped-def]
    from xlreward.trainer.tiny_models import TinySpec, build_tiny_classifier

    classifier = build_tiny_classifier(model_cache, TinySpec(arch="llama", template="llama3"))
    folder = tmp_path_factory.mktemp("trl-reward")
    (folder / "models.toml").write_text(
        f'[[models]]\nname = "icr"\npolicy = "{llama_pair.policy}"\nreference = "{llama_pair.reference}"\n\n'
        f'[[models]]\nname = "rm"\nkind = "classifier"\npath = "{classifier}"\n'
    )
    with running_models_server(folder / "models.toml", folder, batch_wait_ms=20) as url:
        yield url


class Recording(ServedReward):
    """The reward function as shipped, keeping what TRL passed and what it returned."""

    calls: list[tuple[list[Any], list[Any], dict[str, Any], list[float]]]

    def __call__(self, prompts, completions, **columns):  # type: ignore[no-untyped-def]
        rewards = super().__call__(prompts, completions, **columns)
        self.calls = [*getattr(self, "calls", []), (list(prompts), list(completions), columns, rewards)]
        return rewards


def test_grpo_rewards_a_step_through_the_server(server, llama_pair, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from xlreward.service.scoring.loading import load_causal_lm, load_tokenizer

    rows = [
        {"prompt": [{"role": "user", "content": text}], "english": english}
        for text, english in [
            ("Nenne drei Farben.", "Name three colours."),
            ("Di hola.", "Say hello."),
            ("Compte jusqu'à trois.", "Count to three."),
            ("Nomina un animale.", "Name an animal."),
        ]
    ]
    reward = Recording(server, model="rm", reward_prompt_column="english")
    trainer = GRPOTrainer(
        model=load_causal_lm(llama_pair.policy, torch.device("cpu"), torch.float32),
        processing_class=load_tokenizer(llama_pair.policy),
        reward_funcs=[reward],
        train_dataset=Dataset.from_list(rows),
        args=GRPOConfig(
            output_dir=str(tmp_path / "grpo"),
            max_steps=1,
            per_device_train_batch_size=4,
            num_generations=2,
            max_completion_length=6,
            learning_rate=1e-5,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            seed=0,
        ),
    )
    trainer.train()
    assert reward.calls, "TRL never called the reward function"
    prompts, completions, columns, rewards = reward.calls[0]
    english = {row["prompt"][0]["content"]: row["english"] for row in rows}
    assert columns["english"] == [english[prompt[0]["content"]] for prompt in prompts]
    items = [
        {"prompt": against, "response": completion_text(completion)}
        for against, completion in zip(columns["english"], completions, strict=True)
    ]
    direct = httpx.post(f"{server}/reward", json={"model": "rm", "items": items}, timeout=60).json()
    assert rewards == pytest.approx([r["reward"] for r in direct["results"]], abs=1e-5)
    logged = [entry for entry in trainer.state.log_history if "rewards/xlreward-rm/mean" in entry]
    assert logged and logged[0]["rewards/xlreward-rm/mean"] == pytest.approx(
        sum(rewards) / len(rewards), abs=1e-4
    )


def test_a_missing_reward_prompt_column_names_the_columns() -> None:
    reward = ServedReward("http://127.0.0.1:9", reward_prompt_column="english")
    with pytest.raises(KeyError, match="the columns are: task"):
        reward(["Hi"], ["Hello"], task=["greet"], completion_ids=[[1]])
