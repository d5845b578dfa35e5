"""The work of one unit, callable with or without Celery: sample n responses through the reward service,
score them against the reward prompt as one group (its prompt computed once), store each step once. Embedded
runs do the same for several units per request (``generate_group``, ``score_group``): each unit keeps its
own seed and its own group, so its results are those it gets alone."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from xlreward.client import APIError, GroupResult, RewardClient
from xlreward.worker.jobs import UnitJob
from xlreward.worker.store import ResultStore

GENERATED = "generated"
SCORED = "scored"


def generate_samples(jobs: Sequence[UnitJob], client: RewardClient) -> list[list[str]]:
    """n samples per unit of the raw target-language instruction in the policy's chat template (no language
    hint), stripped (METHOD.md step 2), in one request. Each unit has its own seed (``seeds``), so it samples
    as it would alone; the units must share their sampling settings (those of one run do)."""
    first = jobs[0]
    settings = {(job.samples, job.temperature, job.top_p, job.top_k, job.max_tokens) for job in jobs}
    if len(settings) != 1:
        raise ValueError("units sampled in one request must share their sampling settings")
    response = client.generate(
        [job.instruction for job in jobs],
        n=first.samples,
        temperature=first.temperature,
        top_p=first.top_p,
        top_k=first.top_k,
        max_tokens=first.max_tokens,
        seed=[job.seed for job in jobs],
    )
    return [[completion.text.strip() for completion in result.completions] for result in response.results]


def generate_group(jobs: Sequence[UnitJob], store: ResultStore, client: RewardClient) -> None:
    """The samples of every unit in ``jobs`` that has none stored, in one request, while the server steps
    all its rows together."""
    missing = [job for job in jobs if store.get(GENERATED, job.key) is None]
    if not missing:
        return
    try:
        sampled = generate_samples(missing, client)
    except APIError as error:
        if error.code != "too_many_items" or len(missing) == 1:
            raise
        # The server takes fewer samples per request than the group holds: one unit per request instead,
        # with the same seeds, so the same samples.
        for job in missing:
            run_generation(job, store, client)
        return
    for job, samples in zip(missing, sampled, strict=True):
        store.put_once(GENERATED, job.key, {"samples": samples})


def score_samples(job: UnitJob, samples: list[str], client: RewardClient) -> list[float]:
    """Implicit rewards of the samples under the reward prompt, in sample order."""
    return in_sample_order(client.rank(job.reward_prompt, samples), len(samples))


def in_sample_order(group: GroupResult, count: int) -> list[float]:
    """A ranked group's rewards back in the order its responses were sent (``index``)."""
    rewards = [0.0] * count
    for result in group.results:
        rewards[result.index] = result.reward
    return rewards


def score_group(jobs: Sequence[UnitJob], store: ResultStore, client: RewardClient) -> None:
    """The scores of every unit in ``jobs`` that has none stored, in one request (a group per unit); the
    units' samples must be stored (``generate_group``)."""
    missing = [job for job in jobs if store.get(SCORED, job.key) is None]
    if not missing:
        return
    samples = [run_generation(job, store, client) for job in missing]
    groups = [
        {"prompt": job.reward_prompt, "responses": texts} for job, texts in zip(missing, samples, strict=True)
    ]
    try:
        ranked = client.reward_groups(groups)
    except APIError as error:
        if error.code != "too_many_items" or len(missing) == 1:
            raise
        for job in missing:  # the server takes fewer items per request than the group holds
            run_scoring(job, store, client)
        return
    for job, texts, group in zip(missing, samples, ranked, strict=True):
        store.put_once(SCORED, job.key, scored_record(job, texts, in_sample_order(group, len(texts))))


def run_generation(job: UnitJob, store: ResultStore, client: RewardClient) -> list[str]:
    """The unit's samples: stored ones if a previous delivery got that far, else freshly generated."""
    stored = store.get(GENERATED, job.key)
    if stored is None:
        store.put_once(GENERATED, job.key, {"samples": generate_samples([job], client)[0]})
        stored = store.get(GENERATED, job.key)
    assert stored is not None
    return list(stored["samples"])


def run_scoring(job: UnitJob, store: ResultStore, client: RewardClient) -> None:
    if store.get(SCORED, job.key) is not None:
        return
    samples = run_generation(job, store, client)
    store.put_once(SCORED, job.key, scored_record(job, samples, score_samples(job, samples, client)))


def scored_record(job: UnitJob, samples: list[str], rewards: list[float]) -> dict[str, Any]:
    return {
        "id": job.id,
        "language": job.language,
        "prompt": job.instruction,
        "samples": samples,
        "rewards": rewards,
    }
