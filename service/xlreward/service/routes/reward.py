"""POST /reward: score items and groups with a named reward model, through the cross-request scheduler."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from fastapi import APIRouter, Request

from xlreward.service.dependencies import RuntimeDep, TenantDep
from xlreward.service.errors import ERROR_RESPONSES, ServiceError, item_error
from xlreward.service.protocol import GroupResult, RankedResult, RewardRequest, RewardResponse, Usage
from xlreward.service.runtime import LoadedModel, Runtime
from xlreward.service.scheduler import Cancelled, Scheduler, Ticket, Unit, wait_for_ticket
from xlreward.service.scoring.errors import ItemError
from xlreward.service.scoring.reward_model import ItemReward, WorkUnit

router = APIRouter()

DISCONNECT_POLL_S = 0.1


@router.post("/reward", response_model=RewardResponse, responses=ERROR_RESPONSES)
async def reward(
    body: RewardRequest, request: Request, runtime: RuntimeDep, tenant: TenantDep
) -> RewardResponse:
    """Scores ``items`` (results in input order) and ``groups`` (one prompt, several responses; the prompt
    is computed once and the results come back ranked by reward) with the model ``model`` names."""
    return await score_request(body, request, runtime, tenant)


async def score_request(
    body: RewardRequest, request: Request, runtime: Runtime, tenant: str
) -> RewardResponse:
    """/reward's work, for any route that scores: through the scheduler, as ``tenant``."""
    loaded = runtime.require_model(body.model)
    if body.beta is not None and loaded.model.beta is None:
        raise ServiceError(
            422,
            "invalid_request",
            f"beta scales an implicit reward, but model {loaded.name!r} is a {loaded.model.kind}: drop beta",
        )
    check_size(body, runtime.settings.max_items_per_request)
    # Off the event loop: a large request tokenizes for seconds, while health checks and other tenants'
    # requests must still be answered (the tokenizer releases the GIL while it works).
    units = await asyncio.to_thread(tokenize, body, loaded)
    timeout = runtime.settings.request_timeout_s
    ticket = runtime.scheduler.submit(tenant, units, timeout)
    scores = await wait_while_connected(request, runtime.scheduler, ticket, timeout)
    runtime.metrics.scored_items.labels(tenant=tenant, model=loaded.name).inc(sum(u.size for u in units))
    beta = loaded.model.beta if body.beta is None else body.beta
    return build_response(body, scores, loaded, beta)


def check_size(body: RewardRequest, limit: int) -> None:
    count = len(body.items) + sum(len(group.responses) for group in body.groups)
    if count > limit:
        raise ServiceError(
            413,
            "too_many_items",
            f"the request holds {count} items (group responses included) but the limit is {limit} per "
            "request: split it (the Python client does this for you)",
        )


def tokenize(body: RewardRequest, loaded: LoadedModel) -> list[Unit]:
    """Items and groups to scheduler units; an unscorable item fails the request, naming it. Each unit
    carries the loaded model that tokenized it, so a request in flight during a model switch is scored by
    the model it was tokenized for."""
    model = loaded.model
    units = []
    for index, item in enumerate(body.items):
        try:
            tokenized = model.tokenize_pair(
                item.prompt, item.response, truncate=body.truncate, rendered=body.rendered
            )
        except ItemError as error:
            raise item_error(error, f"items[{index}]") from None
        units.append(Unit(WorkUnit((tokenized,)), (len(tokenized),), model=loaded))
    for index, group in enumerate(body.groups):
        members = []
        for position, response in enumerate(group.responses):
            try:
                members.append(
                    model.tokenize_pair(
                        group.prompt, response, truncate=body.truncate, rendered=body.rendered
                    )
                )
            except ItemError as error:
                raise item_error(error, f"groups[{index}].responses[{position}]") from None
        lengths = tuple(len(member) for member in members)
        units.append(Unit(WorkUnit(tuple(members), is_group=True), lengths, is_group=True, model=loaded))
    return units


async def wait_while_connected(
    request: Request, scheduler: Scheduler, ticket: Ticket[Any], timeout: float
) -> list[Any]:
    """Await the ticket; if the client goes away first, cancel it so its queued work is never run."""
    waiter = asyncio.ensure_future(wait_for_ticket(scheduler, ticket, timeout))
    while True:
        done, _ = await asyncio.wait({waiter}, timeout=DISCONNECT_POLL_S)
        if done:
            return waiter.result()
        if await request.is_disconnected():
            scheduler.cancel(ticket, Cancelled("the client disconnected"))
            waiter.cancel()
            request.app.state.runtime.metrics.rejected.labels(reason="disconnected").inc()
            raise Cancelled("the client disconnected before its results were ready")


def rescaled(score: ItemReward, beta: float | None) -> ItemReward:
    """An implicit score at the request's beta; a classifier's as it is."""
    return dataclasses.replace(score, beta=beta) if beta is not None else score  # type: ignore[type-var]


def build_response(
    body: RewardRequest, scores: list[Any], loaded: LoadedModel, beta: float | None
) -> RewardResponse:
    item_scores, group_scores = scores[: len(body.items)], scores[len(body.items) :]
    results = [
        rescaled(score, beta).to_result(item.id) for item, score in zip(body.items, item_scores, strict=True)
    ]
    groups = []
    for group, members in zip(body.groups, group_scores, strict=True):
        rescaled_members = [rescaled(score, beta) for score in members]
        order = sorted(range(len(members)), key=lambda i: rescaled_members[i].reward, reverse=True)
        ranked = [
            RankedResult(**rescaled_members[i].to_result(group.id).model_dump(), index=i, rank=rank)
            for rank, i in enumerate(order)
        ]
        groups.append(GroupResult(id=group.id, results=ranked))
    every = [*item_scores, *(score for members in group_scores for score in members)]
    usage = Usage(items=len(every), scored_tokens=sum(score.num_response_tokens for score in every))
    return RewardResponse(results=results, groups=groups, beta=beta, usage=usage, model=loaded.name)
