"""POST /best-of-n: sample n completions per prompt, score each with a served reward model, return them
best first ("Reuse Your Rewards" reranks with an English RM on the target-language prompt; cross-lingual
rewarding scores against the English instruction: ``reward_prompt``).

Sampling goes through the generation backend like /generate; scoring goes through the scheduler like any
/reward call (each prompt's samples one group, its prompt computed once), so a score here is the reward
/reward gives for the same (reward prompt, completion).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from xlreward.service.dependencies import RuntimeDep, TenantDep
from xlreward.service.errors import ERROR_RESPONSES
from xlreward.service.protocol import (
    BestOfNRequest,
    BestOfNResponse,
    BestOfNResult,
    Candidate,
    GenerateRequest,
    GenerateResult,
    GroupResult,
    RewardGroup,
    RewardRequest,
    SamplingParams,
)
from xlreward.service.routes.generate import run_generation
from xlreward.service.routes.reward import score_request

router = APIRouter()


@router.post("/best-of-n", response_model=BestOfNResponse, responses=ERROR_RESPONSES)
async def best_of_n(
    body: BestOfNRequest, request: Request, runtime: RuntimeDep, tenant: TenantDep
) -> BestOfNResponse:
    """``n`` samples per prompt, scored by ``model`` and returned highest score first."""
    scorer = runtime.require_model(body.model)  # an unknown or loading reward model fails before sampling
    generator, sampler = runtime.sampler(body.sampler, body.sampler_role)
    # What /generate takes; max_tokens only when the request sets it (a default is cut to fit, not refused).
    given = {name for name in SamplingParams.model_fields if name != "max_tokens" or body.max_tokens_asked()}
    sampling = GenerateRequest(
        prompts=[entry.prompt for entry in body.prompts],
        raw=body.raw,
        **{name: getattr(body, name) for name in given},
    )
    samples = await run_generation(sampling, runtime, request, tenant, generator)
    groups = [
        RewardGroup(
            prompt=entry.reward_prompt or entry.prompt, responses=[c.text for c in result.completions]
        )
        for entry, result in zip(body.prompts, samples.results, strict=True)
    ]
    scoring = RewardRequest(model=scorer.name, groups=groups, truncate=body.truncate)
    scored = await score_request(scoring, request, runtime, tenant)
    results = [
        ranked(entry.id, result, group)
        for entry, result, group in zip(body.prompts, samples.results, scored.groups, strict=True)
    ]
    return BestOfNResponse(results=results, model=scorer.name, sampler=sampler)


def ranked(prompt_id: str | int | None, samples: GenerateResult, scores: GroupResult) -> BestOfNResult:
    """One prompt's samples with their scores, in the group's order (highest first)."""
    candidates = [
        Candidate(
            index=score.index,
            text=samples.completions[score.index].text,
            score=score.reward,
            finish_reason=samples.completions[score.index].finish_reason,
            truncated=score.truncated,
        )
        for score in scores.results
    ]
    return BestOfNResult(id=prompt_id, best=candidates[0], candidates=candidates)
