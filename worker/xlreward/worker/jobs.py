"""A run's specification and its units of work, as JSON-serialisable models (Celery sends JSON only)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict

from xlreward.worker.settings import DEFAULT_DIRECTIVE, RewardMode, WorkerSettings


def cross_lingual_prompt(
    english_instruction: str,
    language: str,
    language_names: Mapping[str, str],
    directive: str = DEFAULT_DIRECTIVE,
) -> str:
    """The method's cross-lingual reward prompt for a response in ``language``: the ENGLISH instruction
    after the language directive (METHOD.md step 3); for English, the plain instruction."""
    if language == "en":
        return english_instruction
    return directive.format(language=language_names[language]) + english_instruction


class RunSpec(BaseModel):
    """Everything that decides a run's results. Its digest is the run id: re-running the same spec in the
    same output folder resumes; a different spec there is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instructions_digest: str
    languages: list[str]
    samples: int
    temperature: float
    top_p: float
    top_k: int | None
    max_tokens: int
    seed: int
    reward_mode: RewardMode
    directive: str
    language_names: dict[str, str]

    @classmethod
    def build(cls, settings: WorkerSettings, *, languages: list[str], instructions_digest: str) -> RunSpec:
        return cls(
            instructions_digest=instructions_digest,
            languages=languages,
            samples=settings.samples,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            max_tokens=settings.max_tokens,
            seed=settings.seed,
            reward_mode=settings.reward_mode,
            directive=settings.directive,
            language_names={code: settings.language_names[code] for code in languages},
        )

    @property
    def run_id(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    def reward_prompt(self, language: str, instruction: str, english_instruction: str) -> str:
        """Cross-lingual (the default): the ENGLISH instruction after the language directive (plain for
        English). Monolingual: the target-language instruction itself."""
        if self.reward_mode == "monolingual":
            return instruction
        return cross_lingual_prompt(english_instruction, language, self.language_names, self.directive)

    def unit_seed(self, unit_id: str, language: str) -> int:
        """A unit's sampling seed: fixed by the run seed and the unit, so a redelivered task regenerates
        exactly the same samples."""
        digest = hashlib.sha256(json.dumps([self.seed, unit_id, language]).encode()).digest()
        return int.from_bytes(digest[:7], "big")


class UnitJob(BaseModel):
    """One (id, language) unit: the task payload."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    store_id: str  # where the results live (RedisStore): one per output folder
    id: str
    language: str
    instruction: str  # target language: the generation prompt and the pair's prompt
    reward_prompt: str
    seed: int
    samples: int
    temperature: float
    top_p: float
    top_k: int | None
    max_tokens: int
    service_url: str
    store_url: str | None  # Redis URL; None for embedded runs
    # False: a generation task stores the samples and stops (the loop scores them later with another
    # model pair: ``xlreward iterate``'s reward_policy = "initial").
    score_after_generation: bool = True

    @property
    def key(self) -> str:
        from xlreward.worker.store import unit_key

        return unit_key(self.id, self.language)
