"""Driving an annotation run: validate the inputs, resume what is done, do or dispatch the rest, pair.

Embedded (no broker): the same unit code runs in this process, a few units at a time so that the reward
service batches them. With a broker: units go to Celery workers through Redis, and results come back
through the Redis store, mirrored into the output folder by the waiting run (``follow``), which also
re-sends the units of dead workers and those a restarted Redis forgot. Either way the run is keyed by its
spec, results are written once per unit, and the outputs are rebuilt from the store, so a re-run redoes
nothing and writes nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from xlreward.worker.instructions import InstructionSet, load_instructions
from xlreward.worker.jobs import RunSpec, UnitJob
from xlreward.worker.pair_format import DEFAULT_PAIR_FORMAT, PairFormat
from xlreward.worker.pairing import ScoredSample, ScoredUnit, pair_language, summarise
from xlreward.worker.pipeline import GENERATED, SCORED, generate_group, score_group
from xlreward.worker.settings import WorkerSettings
from xlreward.worker.store import ResultStore, open_store, unit_key

if TYPE_CHECKING:
    from xlreward.worker.follow import RunStatus, TrackedRun

EMBEDDED_CONCURRENCY = 4
# Samples (units x n) per /generate request of an embedded run: the server's decode job size
# (``MAX_JOB_ROWS``), where a small model's step costs little more than one unit's.
EMBEDDED_GROUP_SAMPLES = 64
Progress = Callable[[int], Any]
Report = Callable[["RunStatus"], Any]


class RunConflict(ValueError):
    """The output folder holds a different run."""


@dataclass(frozen=True)
class RunPlan:
    """``pair_format``: how pairs.jsonl holds the texts (``xlreward.worker.pair_format``). Not part of the
    spec: it only renders the stored results, so the same run collected in another format redoes nothing."""

    spec: RunSpec
    jobs: list[UnitJob]
    out_dir: Path
    store: ResultStore
    pair_format: PairFormat = DEFAULT_PAIR_FORMAT

    def pending(self, kind: str = SCORED) -> list[UnitJob]:
        done = self.store.keys(kind)
        return [job for job in self.jobs if job.key not in done]


def instructions_digest(instructions: InstructionSet, languages: Sequence[str]) -> str:
    wanted = set(languages) | {"en"}
    lines = sorted(
        json.dumps([i.id, i.language, i.instruction], ensure_ascii=False)
        for i in instructions.instructions.values()
        if i.language in wanted
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def plan_run(
    paths: Sequence[str | Path],
    *,
    languages: list[str],
    out_dir: Path,
    settings: WorkerSettings,
    reference_format: bool = False,
    pair_format: PairFormat = DEFAULT_PAIR_FORMAT,
) -> RunPlan:
    """Validates every input line (raising ``InstructionProblems`` with all of them) and binds the run to
    ``out_dir`` (raising ``RunConflict`` if that folder holds another run)."""
    instructions = load_instructions(
        paths, languages=languages, known_languages=settings.language_names, reference_format=reference_format
    )
    spec = RunSpec.build(
        settings, languages=languages, instructions_digest=instructions_digest(instructions, languages)
    )
    store_id = bind_out_dir(out_dir, spec)
    store_url = settings.broker_url
    jobs = [
        UnitJob(
            run_id=spec.run_id,
            store_id=store_id,
            id=unit_id,
            language=language,
            instruction=instructions.instructions[(unit_id, language)].instruction,
            reward_prompt=spec.reward_prompt(
                language,
                instructions.instructions[(unit_id, language)].instruction,
                instructions.english(unit_id),
            ),
            seed=spec.unit_seed(unit_id, language),
            samples=spec.samples,
            temperature=spec.temperature,
            top_p=spec.top_p,
            top_k=spec.top_k,
            max_tokens=spec.max_tokens,
            service_url=settings.service_url,
            store_url=store_url,
        )
        for unit_id, language in instructions.units(languages)
    ]
    store = open_store(broker_url=store_url, store_id=store_id, out_dir=out_dir)
    return RunPlan(spec=spec, jobs=jobs, out_dir=out_dir, store=store, pair_format=pair_format)


def bind_out_dir(out_dir: Path, spec: RunSpec) -> str:
    """Binds ``out_dir`` to the run and returns the id of its results in Redis: the spec's id and a nonce
    drawn when the folder is first bound, so that a resume finds its results and no other folder does
    (the served models are not in the spec, and the loop annotates the same spec once per iteration)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = out_dir / "run.json"
    if marker.exists():
        existing = json.loads(marker.read_text())
        if existing.get("run_id") != spec.run_id:
            raise RunConflict(
                f"{out_dir} holds another run ({existing.get('run_id')}, made with other instructions or "
                f"settings than this one, {spec.run_id}): give a new --out, or delete that folder to start "
                "over"
            )
        return str(existing.get("store_id", spec.run_id))  # folders bound before store ids: the run id
    store_id = f"{spec.run_id}-{secrets.token_hex(6)}"
    record = {"run_id": spec.run_id, "store_id": store_id, "spec": spec.model_dump()}
    write_atomically(marker, json.dumps(record, indent=2))
    return store_id


def run_embedded(plan: RunPlan, client: Any, progress: Progress, *, generate_only: bool = False) -> None:
    """Runs the pending units in this process: groups of units sampled in one request each (about
    ``EMBEDDED_GROUP_SAMPLES`` samples, which the server steps together) and scored in another, a few groups
    at a time (the service batches their scoring together). ``generate_only``: only the units without
    samples, sampled and left unscored."""
    pending = plan.pending(GENERATED if generate_only else SCORED)
    # Small runs are cut finer, so that every thread has a group (their scoring overlaps on the server).
    fits = max(1, EMBEDDED_GROUP_SAMPLES // max(1, plan.spec.samples))
    size = max(1, min(fits, -(-len(pending) // EMBEDDED_CONCURRENCY)))
    groups = [pending[start : start + size] for start in range(0, len(pending), size)]

    def run_group(group: list[UnitJob]) -> int:
        generate_group(group, plan.store, client)
        if not generate_only:
            score_group(group, plan.store, client)
        return len(group)

    with ThreadPoolExecutor(EMBEDDED_CONCURRENCY) as pool:
        for done in pool.map(run_group, groups):
            progress(done)


def tracked(plan: RunPlan, celery_app: Any, *, generate_only: bool = False) -> TrackedRun:
    """The run as ``follow`` sees it: done when scored (``generate_only``: when sampled); a unit goes to
    scoring if its samples are stored, else to generation."""
    from xlreward.worker.celery_app import ANNOTATION_QUEUE, GENERATE_TASK, GENERATION_QUEUE, SCORE_TASK
    from xlreward.worker.follow import TrackedRun, tracked_store

    jobs = {job.key: job for job in plan.jobs}
    kind = GENERATED if generate_only else SCORED

    def send(units: list[str]) -> None:
        generated = plan.store.keys(GENERATED)
        for unit in units:
            job = jobs[unit]
            payload = job.model_copy(update={"score_after_generation": not generate_only}).model_dump()
            if unit in generated:
                celery_app.send_task(SCORE_TASK, args=[payload], queue=ANNOTATION_QUEUE)
            else:
                celery_app.send_task(GENERATE_TASK, args=[payload], queue=GENERATION_QUEUE)

    return TrackedRun(
        units=list(jobs),
        store=tracked_store(plan.store),
        kinds=(GENERATED, SCORED),
        finished=lambda: plan.store.keys(kind),
        send=send,
        out_dir=plan.out_dir,
    )


def dispatch(plan: RunPlan, celery_app: Any, *, generate_only: bool = False) -> int:
    """Sends each unfinished unit that is not queued or running already to its next step (generation, or
    scoring if its samples are stored); returns how many. ``generate_only``: sample, leave unscored."""
    from xlreward.worker.follow import dispatch_units

    return dispatch_units(tracked(plan, celery_app, generate_only=generate_only))


def wait_for_units(
    plan: RunPlan,
    celery_app: Any,
    progress: Progress,
    timeout: float | None = None,
    *,
    generate_only: bool = False,
    report: Report | None = None,
    broker_wait_s: float = WorkerSettings.model_fields["broker_wait_s"].default,
) -> RunStatus:
    """Follows the dispatched run until every unit is scored (``generate_only``: has its samples),
    re-sending lost units (``follow.follow``); returns the final status."""
    from xlreward.worker.follow import follow

    run = tracked(plan, celery_app, generate_only=generate_only)
    return follow(run, progress, timeout, report, broker_wait_s)


def collect(plan: RunPlan) -> dict[str, Any]:
    """Pairs every language from the stored scores; writes pairs.jsonl (in ``plan.pair_format``) and
    summary.json atomically and returns the summary."""
    by_language: dict[str, list[ScoredUnit]] = {language: [] for language in plan.spec.languages}
    for job in plan.jobs:
        record = plan.store.get(SCORED, unit_key(job.id, job.language))
        assert record is not None, f"unit {job.key} is not scored yet"
        samples = tuple(
            ScoredSample(text, reward)
            for text, reward in zip(record["samples"], record["rewards"], strict=True)
        )
        by_language[job.language].append(ScoredUnit(job.id, job.language, job.instruction, samples))
    results = [pair_language(units) for units in by_language.values() if units]
    lines = [
        json.dumps(pair.to_record(plan.pair_format), ensure_ascii=False)
        for result in results
        for pair in result.pairs
    ]
    write_atomically(plan.out_dir / "pairs.jsonl", "".join(line + "\n" for line in lines))
    summary = {
        "run_id": plan.spec.run_id,
        "units": len(plan.jobs),
        "pair_format": plan.pair_format,
        **summarise(results),
    }
    write_atomically(plan.out_dir / "summary.json", json.dumps(summary, indent=2, ensure_ascii=False))
    return summary


def run_to_completion(
    plan: RunPlan, settings: WorkerSettings, progress: Progress, timeout: float | None = None
) -> dict[str, Any]:
    """The whole run, for callers that want the pairs now: embedded without a broker, else dispatched to
    the workers and waited for. Returns the summary (pairs are in ``plan.out_dir``)."""
    if settings.broker_url:
        from xlreward.worker.celery_app import create_celery

        app = create_celery(settings)
        dispatch(plan, app)
        wait_for_units(plan, app, progress, timeout=timeout, broker_wait_s=settings.broker_wait_s)
    else:
        with embedded_client(settings) as client:
            run_embedded(plan, client, progress)
    return collect(plan)


def generate_to_completion(
    plan: RunPlan, settings: WorkerSettings, progress: Progress, timeout: float | None = None
) -> None:
    """Only the sampling half of the run: every unit gets its samples stored, none is scored. A later
    ``run_to_completion`` of the same plan (with the service switched to another pair) scores them."""
    if settings.broker_url:
        from xlreward.worker.celery_app import create_celery

        app = create_celery(settings)
        dispatch(plan, app, generate_only=True)
        wait_for_units(
            plan, app, progress, timeout=timeout, generate_only=True, broker_wait_s=settings.broker_wait_s
        )
        return
    with embedded_client(settings) as client:
        run_embedded(plan, client, progress, generate_only=True)


def embedded_client(settings: WorkerSettings) -> Any:
    from xlreward.client import RewardClient
    from xlreward.worker.celery_app import CLIENT_TIMEOUT_S

    return RewardClient(
        settings.service_url,
        api_key=settings.service_api_key,
        max_retries=settings.service_retries,
        timeout=CLIENT_TIMEOUT_S,
    )


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)
