"""Judges for ``xlreward eval``: each gives every (instruction, output) of one language a score, and the
higher score of model vs baseline wins.

- ``oracle``: the demo world's checker (``xlreward.demo.world.judge``), exact, for the demo's instructions.
- ``classifier``: a sequence-classification reward model (a scalar head; "Reuse Your Rewards"), applied to
  the chat-templated conversation: logit 0 is the score.
- ``implicit``: an implicit reward pair, beta * (log pi(y|x) - log pi_ref(y|x)) from the scoring engine,
  with the cross-lingual reward prompt (the English instruction after the language directive; METHOD.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

JudgeKind = Literal["oracle", "classifier", "implicit"]


@dataclass(frozen=True)
class Judged:
    """What a judge sees of one output: the instruction it answers (target language), the same
    instruction in English, the language code and name, and the output."""

    instruction: str
    english_instruction: str
    language: str
    language_name: str
    output: str


class Judge(Protocol):
    name: str

    def score(self, items: Sequence[Judged]) -> list[float]: ...


class OracleJudge:
    name = "oracle"

    def score(self, items: Sequence[Judged]) -> list[float]:
        from xlreward.demo.world import judge

        return [judge(item.instruction, item.output, item.language) for item in items]


class ClassifierJudge:
    """A reward model with a one-logit classification head, on the target-language conversation."""

    def __init__(self, path: Path, device: str = "cpu", batch_size: int = 16) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = f"classifier:{path}"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.device = device
        self.batch_size = batch_size

    def score(self, items: Sequence[Judged]) -> list[float]:
        import torch

        texts = [
            self.tokenizer.apply_chat_template(
                [{"role": "user", "content": i.instruction}, {"role": "assistant", "content": i.output}],
                tokenize=False,
            )
            for i in items
        ]
        scores: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(self.device)
            with torch.inference_mode():
                logits = self.model(**batch).logits  # (B, num_labels)
            scores.extend(float(x) for x in logits[:, 0].float())
        return scores


class ImplicitJudge:
    """The method's implicit reward as a judge, scored with the English instruction."""

    def __init__(
        self, policy: Path, reference: Path, *, device: str = "auto", directive: str | None = None
    ) -> None:
        from xlreward.service.scoring.loading import load_engine
        from xlreward.worker.settings import DEFAULT_DIRECTIVE

        self.name = f"implicit:{policy}|{reference}"
        self.engine = load_engine(policy, reference, device=device)  # type: ignore[arg-type]
        self.directive = directive or DEFAULT_DIRECTIVE

    def score(self, items: Sequence[Judged]) -> list[float]:
        from xlreward.service.protocol import RewardItem
        from xlreward.worker.jobs import cross_lingual_prompt

        requests = [
            RewardItem(
                prompt=cross_lingual_prompt(
                    i.english_instruction, i.language, {i.language: i.language_name}, self.directive
                ),
                response=i.output,
            )
            for i in items
        ]
        return [result.reward for result in self.engine.score(requests)]


def build_judge(
    kind: JudgeKind,
    *,
    model: Path | None = None,
    policy: Path | None = None,
    reference: Path | None = None,
    device: str = "cpu",
) -> Any:
    """The judge asked for; raises ValueError naming the missing flag."""
    if kind == "oracle":
        return OracleJudge()
    if kind == "classifier":
        if model is None:
            raise ValueError("--judge classifier needs --judge-model: a sequence-classification reward model")
        return ClassifierJudge(model, device=device)
    if policy is None or reference is None:
        raise ValueError(
            "--judge implicit needs --judge-policy and --judge-reference (the DPO model and its SFT)"
        )
    return ImplicitJudge(policy, reference, device=device)
