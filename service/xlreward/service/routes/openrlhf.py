"""OpenRLHF's remote reward model protocol: ``--remote_rm_url http://xlreward:8000/openrlhf/reward`` (add
``?model=<name>`` for a served model other than the first). OpenRLHF posts each sample's decoded sequence
(``query``: its chat-templated prompt, the response, padding) with the prompt alone, and reads ``rewards``.

The response is what follows the prompt in the query; it is scored after the prompt exactly as written
(``rendered``: no template applied again, trailing padding dropped), through the scheduler like any
/reward call, so OpenRLHF's rewards are /reward's for the same instruction and response. The route takes the
server's API keys like the others (OpenRLHF sends none: serve it on a loopback or keyless server).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from xlreward.service.dependencies import RuntimeDep, TenantDep
from xlreward.service.errors import ERROR_RESPONSES, ServiceError
from xlreward.service.protocol import OpenRLHFRewardRequest, OpenRLHFRewardResponse, RewardItem, RewardRequest
from xlreward.service.routes.reward import score_request

router = APIRouter()


@router.post("/openrlhf/reward", response_model=OpenRLHFRewardResponse, responses=ERROR_RESPONSES)
async def openrlhf_reward(
    body: OpenRLHFRewardRequest,
    request: Request,
    runtime: RuntimeDep,
    tenant: TenantDep,
    model: str | None = None,
) -> OpenRLHFRewardResponse:
    """One reward per query, in order."""
    mismatch = body.mismatch()
    if mismatch is not None:
        message, location = mismatch
        raise ServiceError(422, "query_mismatch", message, location=location)
    items = [
        RewardItem(prompt=prompt, response=query[len(prompt) :])
        for query, prompt in zip(body.query, body.prompts, strict=True)
    ]
    scoring = RewardRequest(model=model, items=items, rendered=True, truncate=True)
    scored = await score_request(scoring, request, runtime, tenant)
    rewards = [result.reward for result in scored.results]
    return OpenRLHFRewardResponse(rewards=rewards, scores=rewards)
