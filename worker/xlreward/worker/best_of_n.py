"""Batch best-of-n over instruction files: every (id, language) unit samples n candidates once and every
listed reward model scores those same candidates, so the models' choices can be compared sample for sample.

A unit samples through ``POST /best-of-n`` with the first reward model (its scores come back with the
samples), then scores the stored texts with each other model through ``/reward``; the samples and each
model's scores are written once (``ResultStore.put_once``), so a redelivered unit redoes nothing that is
stored and resamples exactly the same texts (its seed is fixed by the run seed and the unit). A model's
reward prompt is the target-language instruction itself ("prompt", as "Reuse Your Rewards" scores with a
classifier RM) or the English instruction behind the language directive ("english", as implicit
cross-lingual rewarding scores); "auto" picks "prompt" for a classifier and "english" for an implicit pair.

Like ``xlreward annotate``: embedded (a few units at a time in this process) or dispatched to Celery
workers, keyed by the run's spec, resumable, and the outputs are rebuilt from the store at the end:

    OUT/<model>/<language>/model_outputs.json   alpaca_eval's format: each unit's best candidate under <model>
    OUT/single/<language>/model_outputs.json    candidate 0 of each unit (the best-of-1 baseline)
    OUT/candidates.jsonl                        per unit: the reward prompts, every candidate and its scores
    OUT/summary.json                            mean best / candidate / candidate-0 scores; agreement
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from xlreward.client import RewardClient
from xlreward.service.protocol import BestOfNRequest
from xlreward.worker.annotate import (
    EMBEDDED_CONCURRENCY,
    Progress,
    Report,
    bind_out_dir,
    embedded_client,
    instructions_digest,
    write_atomically,
)
from xlreward.worker.instructions import InstructionSet, load_instructions
from xlreward.worker.jobs import RunSpec, cross_lingual_prompt
from xlreward.worker.settings import WorkerSettings
from xlreward.worker.store import ResultStore, open_store, unit_key

if TYPE_CHECKING:
    from xlreward.worker.follow import RunStatus, TrackedRun

RewardPrompt = Literal["prompt", "english"]
RequestedRewardPrompt = Literal["auto", "prompt", "english"]
SamplerRole = Literal["policy", "reference"]
AUTO_REWARD_PROMPT: dict[str, RewardPrompt] = {"classifier": "prompt", "implicit": "english"}
SAMPLED = "best-of-n-sampled"
SINGLE = "single"  # the folder of the best-of-1 baseline's outputs
OUTPUTS_FILE = "model_outputs.json"  # alpaca_eval's name, as ``xlreward eval`` writes it
MODELS_TIMEOUT_S = 10.0


class ModelProblem(ValueError):
    """A bad run: a reward model or sampler the service does not serve, a service that cannot say what it
    serves, an n the route refuses, or models named twice."""


def check_n(n: int) -> int:
    """``n`` as the /best-of-n route takes it (its own limits), checked before anything runs."""
    try:
        BestOfNRequest.model_validate({"n": n, "prompts": [{"prompt": "-"}]})
    except ValidationError as error:
        raise ModelProblem(f"--n {n}: {error.errors()[0]['msg']} (the /best-of-n limit)") from None
    return n


def scores_kind(position: int) -> str:
    """The store kind of the scores of the run's ``position``-th reward model."""
    return f"best-of-n-scores-{position}"


class BestOfNSpec(BaseModel):
    """Everything that decides a best-of-n run's results; its digest is the run id (as ``RunSpec``'s)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instructions_digest: str
    languages: list[str]
    n: int
    temperature: float
    top_p: float
    top_k: int | None
    max_tokens: int
    seed: int
    sampler: str | None
    sampler_role: SamplerRole
    models: list[str]  # the first samples (through /best-of-n); all score
    model_kinds: list[str]  # "implicit" or "classifier", as the service serves them
    reward_prompts: list[RewardPrompt]  # per model
    directive: str
    language_names: dict[str, str]

    @field_validator("n")
    @classmethod
    def _n_as_the_route_takes_it(cls, value: int) -> int:
        return check_n(value)

    @model_validator(mode="after")
    def _one_entry_per_model(self) -> BestOfNSpec:
        if not self.models or len(set(self.models)) != len(self.models):
            raise ValueError(f"name each reward model once, at least one: got {self.models}")
        if SINGLE in self.models:
            raise ValueError(f"a reward model named {SINGLE!r} would clash with the baseline's output folder")
        if not len(self.models) == len(self.model_kinds) == len(self.reward_prompts):
            raise ValueError("models, model_kinds and reward_prompts must have one entry per model")
        return self

    @property
    def run_id(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    def unit_seed(self, unit_id: str, language: str) -> int:
        """The annotation run's unit seed for the same run seed (``RunSpec.unit_seed``)."""
        return RunSpec.model_construct(seed=self.seed).unit_seed(unit_id, language)

    def reward_prompt(self, position: int, language: str, instructions: InstructionSet, unit_id: str) -> str:
        if self.reward_prompts[position] == "prompt":
            return instructions.instruction(unit_id, language)
        english = instructions.english(unit_id)
        return cross_lingual_prompt(english, language, self.language_names, self.directive)


class BestOfNJob(BaseModel):
    """One (id, language) unit: the task payload."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    store_id: str
    id: str
    language: str
    instruction: str  # target language: what is sampled from
    reward_prompts: list[str]  # per model, in the spec's order
    models: list[str]
    seed: int
    n: int
    temperature: float
    top_p: float
    top_k: int | None
    max_tokens: int
    sampler: str | None
    sampler_role: SamplerRole
    service_url: str
    store_url: str | None  # Redis URL; None for embedded runs

    @property
    def key(self) -> str:
        return unit_key(self.id, self.language)


@dataclass(frozen=True)
class BestOfNPlan:
    spec: BestOfNSpec
    jobs: list[BestOfNJob]
    out_dir: Path
    store: ResultStore

    def pending(self) -> list[BestOfNJob]:
        """The units some model has not scored yet."""
        done = set.intersection(*(self.store.keys(scores_kind(i)) for i in range(len(self.spec.models))))
        return [job for job in self.jobs if job.key not in done]


# --- planning -------------------------------------------------------------------------------------------


def served_models(settings: WorkerSettings) -> dict[str, str]:
    """The service's reward models and their kinds (``GET /v1/models``), first = its default."""
    import httpx

    headers = {"Authorization": f"Bearer {settings.service_api_key}"} if settings.service_api_key else {}
    url = f"{settings.service_url.rstrip('/')}/v1/models"
    try:
        response = httpx.get(url, headers=headers, timeout=MODELS_TIMEOUT_S)
    except httpx.TransportError as error:
        raise ModelProblem(f"cannot reach the reward service at {url}: {error}") from None
    if response.is_error:
        raise ModelProblem(f"GET {url} answered {response.status_code}: {response.text[:200]}")
    return {str(entry["id"]): str(entry["kind"]) for entry in response.json()["data"]}


def model_kinds(
    settings: WorkerSettings, models: Sequence[str], sampler: str | None, out_dir: Path
) -> dict[str, str]:
    """The kinds of ``models``, checked to be served (and ``sampler`` to be a served implicit model): from
    the service, else (service down) from the run already bound to ``out_dir`` if it has the same models,
    so a finished run's outputs can be rebuilt offline."""
    try:
        served = served_models(settings)
    except ModelProblem:
        recorded = _recorded_kinds(out_dir)
        if list(recorded) == list(models):
            return recorded
        raise
    unknown = [name for name in models if name not in served]
    if unknown:
        raise ModelProblem(
            f"unknown reward model(s) {', '.join(unknown)}: {settings.service_url} serves {', '.join(served)}"
        )
    if sampler is not None and served.get(sampler) != "implicit":
        implicit = ", ".join(name for name, kind in served.items() if kind == "implicit") or "none"
        raise ModelProblem(
            f"sampler {sampler!r} is not a served implicit model (implicit models: {implicit})"
        )
    return {name: served[name] for name in models}


def _recorded_kinds(out_dir: Path) -> dict[str, str]:
    marker = out_dir / "run.json"
    if not marker.exists():
        return {}
    spec = json.loads(marker.read_text())["spec"]
    return dict(zip(spec.get("models", []), spec.get("model_kinds", []), strict=False))


def plan_best_of_n(
    paths: Sequence[str | Path],
    *,
    languages: list[str],
    models: list[str],
    n: int,
    out_dir: Path,
    settings: WorkerSettings,
    reward_prompt: RequestedRewardPrompt = "auto",
    sampler: str | None = None,
    sampler_role: SamplerRole = "policy",
    reference_format: bool = False,
) -> BestOfNPlan:
    """Validates the inputs (``InstructionProblems``), the models (``ModelProblem``: asks the service) and
    ``n`` (``ModelProblem``), then binds the run to ``out_dir`` (``RunConflict``)."""
    instructions = load_instructions(
        paths, languages=languages, known_languages=settings.language_names, reference_format=reference_format
    )
    check_n(n)
    if len(set(models)) != len(models):
        raise ModelProblem(f"name each reward model once: got {' '.join(models)}")
    kinds = model_kinds(settings, models, sampler, out_dir)
    spec = BestOfNSpec(
        instructions_digest=instructions_digest(instructions, languages),
        languages=languages,
        n=n,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=settings.top_k,
        max_tokens=settings.max_tokens,
        seed=settings.seed,
        sampler=sampler,
        sampler_role=sampler_role,
        models=models,
        model_kinds=[kinds[name] for name in models],
        reward_prompts=[
            AUTO_REWARD_PROMPT[kinds[name]] if reward_prompt == "auto" else reward_prompt for name in models
        ],
        directive=settings.directive,
        language_names={code: settings.language_names[code] for code in languages},
    )
    store_id = bind_out_dir(out_dir, spec)  # type: ignore[arg-type]  # reads run_id and model_dump only
    units = instructions.units(languages)
    jobs = [_job(spec, instructions, unit_id, language, store_id, settings) for unit_id, language in units]
    store = open_store(broker_url=settings.broker_url, store_id=store_id, out_dir=out_dir)
    return BestOfNPlan(spec=spec, jobs=jobs, out_dir=out_dir, store=store)


def _job(
    spec: BestOfNSpec,
    instructions: InstructionSet,
    unit_id: str,
    language: str,
    store_id: str,
    settings: WorkerSettings,
) -> BestOfNJob:
    return BestOfNJob(
        run_id=spec.run_id,
        store_id=store_id,
        id=unit_id,
        language=language,
        instruction=instructions.instruction(unit_id, language),
        reward_prompts=[
            spec.reward_prompt(i, language, instructions, unit_id) for i in range(len(spec.models))
        ],
        models=spec.models,
        seed=spec.unit_seed(unit_id, language),
        n=spec.n,
        temperature=spec.temperature,
        top_p=spec.top_p,
        top_k=spec.top_k,
        max_tokens=spec.max_tokens,
        sampler=spec.sampler,
        sampler_role=spec.sampler_role,
        service_url=settings.service_url,
        store_url=settings.broker_url,
    )


# --- one unit, with or without Celery ------------------------------------------------------------------


def sample_unit(job: BestOfNJob, store: ResultStore, client: RewardClient) -> list[str]:
    """The unit's candidate texts in sample order: stored ones, else sampled through /best-of-n with the
    first model, whose scores are stored with them (when this call stored the samples)."""
    stored = store.get(SAMPLED, job.key)
    if stored is None:
        answer = client.best_of_n(
            [{"id": job.id, "prompt": job.instruction, "reward_prompt": job.reward_prompts[0]}],
            n=job.n,
            model=job.models[0],
            sampler=job.sampler,
            sampler_role=job.sampler_role,
            temperature=job.temperature,
            top_p=job.top_p,
            top_k=job.top_k,
            max_tokens=job.max_tokens,
            seed=job.seed,
            truncate=True,
        )
        candidates = sorted(answer.results[0].candidates, key=lambda c: c.index)
        sampled = {
            "candidates": [
                {"index": c.index, "text": c.text, "finish_reason": c.finish_reason} for c in candidates
            ]
        }
        if store.put_once(SAMPLED, job.key, sampled):
            scores = {
                "model": job.models[0],
                "scores": [c.score for c in candidates],
                "truncated": [c.truncated for c in candidates],
            }
            store.put_once(scores_kind(0), job.key, scores)
        stored = store.get(SAMPLED, job.key)
    assert stored is not None
    return [candidate["text"] for candidate in stored["candidates"]]


def score_unit(
    job: BestOfNJob, position: int, texts: list[str], store: ResultStore, client: RewardClient
) -> None:
    """The ``position``-th model's scores of the stored texts against its reward prompt, stored once."""
    if store.get(scores_kind(position), job.key) is not None:
        return
    group = client.rank(job.reward_prompts[position], texts, model=job.models[position], truncate=True)
    scores, truncated = [0.0] * len(texts), [False] * len(texts)
    for result in group.results:
        scores[result.index], truncated[result.index] = result.reward, result.truncated
    record = {"model": job.models[position], "scores": scores, "truncated": truncated}
    store.put_once(scores_kind(position), job.key, record)


def run_best_of_n_unit(job: BestOfNJob, store: ResultStore, client: RewardClient) -> None:
    """Sample once, then every model's scores of those samples; what is stored is not redone."""
    texts = sample_unit(job, store, client)
    for position in range(len(job.models)):
        score_unit(job, position, texts, store, client)


# --- driving a run --------------------------------------------------------------------------------------


def run_embedded(plan: BestOfNPlan, client: RewardClient, progress: Progress) -> None:
    with ThreadPoolExecutor(EMBEDDED_CONCURRENCY) as pool:
        for _ in pool.map(lambda job: run_best_of_n_unit(job, plan.store, client), plan.pending()):
            progress(1)


def tracked(plan: BestOfNPlan, celery_app: Any) -> TrackedRun:
    """The run as ``follow`` sees it: one task per unit, done when every model has scored it."""
    from xlreward.worker.celery_app import BEST_OF_N_TASK, GENERATION_QUEUE
    from xlreward.worker.follow import TrackedRun, tracked_store

    jobs = {job.key: job for job in plan.jobs}
    kinds = [scores_kind(i) for i in range(len(plan.spec.models))]

    def send(units: list[str]) -> None:
        for unit in units:
            celery_app.send_task(BEST_OF_N_TASK, args=[jobs[unit].model_dump()], queue=GENERATION_QUEUE)

    return TrackedRun(
        units=list(jobs),
        store=tracked_store(plan.store),
        kinds=(SAMPLED, *kinds),
        finished=lambda: set.intersection(*(plan.store.keys(kind) for kind in kinds)),
        send=send,
        out_dir=plan.out_dir,
    )


def dispatch(plan: BestOfNPlan, celery_app: Any) -> int:
    """Sends the unfinished units that are not queued or running already (``follow.dispatch_units``)."""
    from xlreward.worker.follow import dispatch_units

    return dispatch_units(tracked(plan, celery_app))


def wait_for_units(
    plan: BestOfNPlan,
    celery_app: Any,
    progress: Progress,
    timeout: float | None = None,
    report: Report | None = None,
    broker_wait_s: float = WorkerSettings.model_fields["broker_wait_s"].default,
) -> RunStatus:
    """Follows the run until every model has scored every unit, re-sending lost units (``follow``)."""
    from xlreward.worker.follow import follow

    return follow(tracked(plan, celery_app), progress, timeout, report, broker_wait_s)


def run_to_completion(
    plan: BestOfNPlan, settings: WorkerSettings, progress: Progress, timeout: float | None = None
) -> dict[str, Any]:
    """The whole run: embedded without a broker, else dispatched and waited for. Returns the summary."""
    if settings.broker_url:
        from xlreward.worker.celery_app import create_celery

        app = create_celery(settings)
        dispatch(plan, app)
        wait_for_units(plan, app, progress, timeout=timeout, broker_wait_s=settings.broker_wait_s)
    elif plan.pending():
        with embedded_client(settings) as client:
            run_embedded(plan, client, progress)
    return collect(plan)


# --- outputs, rebuilt from the store --------------------------------------------------------------------


@dataclass(frozen=True)
class UnitResult:
    job: BestOfNJob
    candidates: list[dict[str, Any]]  # in sample order: index, text, finish_reason
    scores: list[list[float]]  # per model, in sample order
    truncated: list[list[bool]]  # per model, in sample order

    def best(self, position: int) -> int:
        """The index of the model's highest-scored candidate (the first sampled on a tie)."""
        scores = self.scores[position]
        return max(range(len(scores)), key=scores.__getitem__)

    def to_record(self, models: Sequence[str]) -> dict[str, Any]:
        candidates = [
            {
                **candidate,
                "truncated": any(flags[i] for flags in self.truncated),
                "scores": {model: self.scores[m][i] for m, model in enumerate(models)},
            }
            for i, candidate in enumerate(self.candidates)
        ]
        return {
            "id": self.job.id,
            "language": self.job.language,
            "instruction": self.job.instruction,
            "reward_prompts": dict(zip(models, self.job.reward_prompts, strict=True)),
            "candidates": candidates,
        }


def load_results(plan: BestOfNPlan) -> list[UnitResult]:
    results = []
    for job in plan.jobs:
        sampled = plan.store.get(SAMPLED, job.key)
        scored = [plan.store.get(scores_kind(i), job.key) for i in range(len(plan.spec.models))]
        assert sampled is not None and all(scored), f"unit {job.key} is not finished yet"
        results.append(
            UnitResult(
                job=job,
                candidates=sampled["candidates"],
                scores=[record["scores"] for record in scored if record],
                truncated=[record["truncated"] for record in scored if record],
            )
        )
    return results


def collect(plan: BestOfNPlan) -> dict[str, Any]:
    """Writes every output from the stored results (atomically) and returns the summary."""
    spec, results = plan.spec, load_results(plan)
    lines = [json.dumps(result.to_record(spec.models), ensure_ascii=False) + "\n" for result in results]
    write_atomically(plan.out_dir / "candidates.jsonl", "".join(lines))
    for language in spec.languages:
        units = [result for result in results if result.job.language == language]
        for position, model in enumerate(spec.models):
            chosen = [unit.candidates[unit.best(position)]["text"] for unit in units]
            _write_outputs(plan.out_dir / model / language, units, chosen, f"best-of-{spec.n}:{model}")
        single = [unit.candidates[0]["text"] for unit in units]
        _write_outputs(plan.out_dir / SINGLE / language, units, single, f"{spec.sampler or 'policy'}:single")
    summary = summarise(spec, results)
    write_atomically(plan.out_dir / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


def _write_outputs(folder: Path, units: Sequence[UnitResult], outputs: Sequence[str], generator: str) -> None:
    """alpaca_eval's model_outputs.json, as ``xlreward eval`` writes it (its writer imports torch)."""
    records = [
        {
            "instruction": unit.job.instruction,
            "output": output,
            "generator": generator,
            "dataset": f"xlreward-{unit.job.language}",
            "id": unit.job.id,
        }
        for unit, output in zip(units, outputs, strict=True)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / OUTPUTS_FILE, json.dumps(records, indent=2, ensure_ascii=False))


def summarise(spec: BestOfNSpec, results: Sequence[UnitResult]) -> dict[str, Any]:
    """Per model and language: units, mean best / candidate / candidate-0 score; with several models, per
    language the share of units where each other model picks the first model's best candidate."""
    by_language = {
        language: [r for r in results if r.job.language == language] for language in spec.languages
    }
    scores = {
        model: {language: _score_stats(units, position) for language, units in by_language.items() if units}
        for position, model in enumerate(spec.models)
    }
    summary: dict[str, Any] = {
        "run_id": spec.run_id,
        "n": spec.n,
        "sampler": spec.sampler or "policy",
        "sampler_role": spec.sampler_role,
        "units": len(results),
        "models": [
            {"name": model, "kind": kind, "reward_prompt": mode}
            for model, kind, mode in zip(spec.models, spec.model_kinds, spec.reward_prompts, strict=True)
        ],
        "scores": scores,
    }
    if len(spec.models) > 1:
        summary["agreement_with_first"] = {
            language: {
                model: statistics.fmean(unit.best(position) == unit.best(0) for unit in units)
                for position, model in enumerate(spec.models)
                if position > 0
            }
            for language, units in by_language.items()
            if units
        }
    return summary


def _score_stats(units: Sequence[UnitResult], position: int) -> dict[str, float]:
    return {
        "units": len(units),
        "mean_best_score": statistics.fmean(max(unit.scores[position]) for unit in units),
        "mean_candidate_score": statistics.fmean(s for unit in units for s in unit.scores[position]),
        "mean_candidate0_score": statistics.fmean(unit.scores[position][0] for unit in units),
    }
