"""A reward function for TRL's GRPOTrainer that scores through a running xlreward server (torch-free).

    from trl import GRPOConfig, GRPOTrainer
    from xlreward.client.trl_reward import ServedReward

    reward = ServedReward("http://reward:8000", model="rm-en", reward_prompt_column="english_prompt")
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward], train_dataset=dataset, args=GRPOConfig(...))

TRL calls it with the batch's ``prompts`` and ``completions`` (plain strings, or chat messages for a
conversational dataset) and every other dataset column as a keyword list. Each completion is scored against
its prompt, or, with ``reward_prompt_column``, against that column's value: the English instruction behind
a target-language prompt, as cross-lingual rewarding scores. Either kind of served model works (a
classifier RM or an implicit DPO pair). Batching to the server's request limit and retries (429, 503,
dropped connections) are the client's (``RewardClient``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xlreward.client._sync import RewardClient

Messages = list[dict[str, Any]]


class ServedReward:
    """``reward_funcs`` entry for TRL: one float per completion, in order."""

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        reward_prompt_column: str | None = None,
        api_key: str | None = None,
        truncate: bool = True,
        client: RewardClient | None = None,
    ) -> None:
        self.client = client or RewardClient(base_url, api_key=api_key)
        self.model = model
        self.reward_prompt_column = reward_prompt_column
        self.truncate = truncate  # a completion too long for the reward model is cut, not refused
        self.__name__ = f"xlreward-{model or 'default'}"  # TRL logs each reward function under its name

    def __call__(
        self, prompts: Sequence[str | Messages], completions: Sequence[str | Messages], **columns: Any
    ) -> list[float]:
        scored_against = prompts
        if self.reward_prompt_column is not None:
            if self.reward_prompt_column not in columns:
                raise KeyError(
                    f"reward_prompt_column {self.reward_prompt_column!r} is not a column of the dataset; "
                    f"the columns are: {', '.join(sorted(k for k in columns if k != 'completion_ids'))}"
                )
            scored_against = columns[self.reward_prompt_column]
        items = [
            {"prompt": prompt, "response": completion_text(completion)}
            for prompt, completion in zip(scored_against, completions, strict=True)
        ]
        results = self.client.reward(items, truncate=self.truncate, model=self.model)
        return [result.reward for result in results]


def completion_text(completion: str | Messages) -> str:
    """A completion's text: the string, or the content of a conversational completion's turns."""
    if isinstance(completion, str):
        return completion
    return "".join(str(turn.get("content") or "") for turn in completion)
