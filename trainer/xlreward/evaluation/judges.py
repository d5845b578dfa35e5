"""Judges for ``xlreward eval``: each gives every (instruction, output) of one language a score, and the
higher score of model vs baseline wins.

- ``oracle``: the demo world's checker (``xlreward.demo.world.judge``), exact, for the demo's instructions.
- ``classifier``: a sequence-classification reward model (a scalar head; "Reuse Your Rewards"), applied to
  the chat-templated conversation: logit 0 is the score.
- ``implicit``: an implicit reward pair, beta * (log pi(y|x) - log pi_ref(y|x)) from the scoring engine,
  with the cross-lingual reward prompt (the English instruction after the language directive; METHOD.md).

Judge models are folders or Hugging Face hub ids (at ``revision``), resolved to a folder
(``model_source.resolve_model``) and loaded from it only; remote code runs only with ``trust_remote_code``.
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

    def __init__(
        self,
        path: str | Path,
        device: str = "cpu",
        batch_size: int = 16,
        *,
        revision: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        from transformers import AutoModelForSequenceClassification

        from xlreward.service.model_source import resolve_model
        from xlreward.service.scoring.loading import LoadOptions, load_tokenizer

        folder = resolve_model(
            str(path), revision=revision, what="--judge-model", trust_remote_code=trust_remote_code
        ).folder
        load = LoadOptions(trust_remote_code=trust_remote_code)
        self.name = f"classifier:{path}"
        self.tokenizer = load_tokenizer(folder, load)
        model = AutoModelForSequenceClassification.from_pretrained(
            str(folder), **load.from_pretrained_kwargs()
        )
        self.model = model.to(device).eval()
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
        self,
        policy: str | Path,
        reference: str | Path,
        *,
        device: str = "auto",
        directive: str | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        from xlreward.service.scoring.loading import LoadOptions, load_engine
        from xlreward.worker.settings import DEFAULT_DIRECTIVE

        self.name = f"implicit:{policy}|{reference}"
        options = LoadOptions(revision=revision, trust_remote_code=trust_remote_code)
        self.engine = load_engine(policy, reference, device=device, options=options)
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
    model: str | Path | None = None,
    policy: str | Path | None = None,
    reference: str | Path | None = None,
    device: str = "cpu",
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> Any:
    """The judge asked for (``revision``: of its hub ids); raises ValueError naming the missing flag."""
    if kind == "oracle":
        return OracleJudge()
    if kind == "classifier":
        if model is None:
            raise ValueError("--judge classifier needs --judge-model: a sequence-classification reward model")
        return ClassifierJudge(model, device=device, revision=revision, trust_remote_code=trust_remote_code)
    if policy is None or reference is None:
        raise ValueError(
            "--judge implicit needs --judge-policy and --judge-reference (the DPO model and its SFT)"
        )
    return ImplicitJudge(
        policy, reference, device=device, revision=revision, trust_remote_code=trust_remote_code
    )
