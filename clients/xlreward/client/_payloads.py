"""Request bodies and answers, without I/O: user input to validated protocol requests, split to fit the
server's per-request item limit, and response bodies back to protocol models.

Everything is validated with the protocol's own models before anything is sent, so a bad item raises
``pydantic.ValidationError`` locally, naming the field, and no request is made.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from xlreward.client._exceptions import XLRewardError
from xlreward.service.protocol import (
    BestOfNPrompt,
    BestOfNRequest,
    BestOfNResponse,
    ChatMessage,
    GenerateRequest,
    GenerateResponse,
    GenerateResult,
    RewardGroup,
    RewardItem,
    RewardRequest,
    RewardResponse,
)

ItemLike = RewardItem | Mapping[str, Any]
GroupLike = RewardGroup | Mapping[str, Any]
PromptLike = str | Sequence[ChatMessage | Mapping[str, str]]
BestOfNPromptLike = str | BestOfNPrompt | Mapping[str, Any]

M = TypeVar("M", bound=BaseModel)


def _coerce(entries: Iterable[M | Mapping[str, Any]], model: type[M], what: str) -> list[M]:
    if isinstance(entries, BaseModel | Mapping | str):
        raise TypeError(f"{what} takes a list; for a single one pass [it]")
    return [entry if isinstance(entry, model) else model.model_validate(entry) for entry in entries]


def item_requests(
    items: Iterable[ItemLike], *, beta: float | None, truncate: bool, limit: int, model: str | None = None
) -> list[RewardRequest]:
    """One request per ``limit`` items, in order."""
    checked = _coerce(items, RewardItem, "reward()")
    return [
        RewardRequest(model=model, items=checked[start : start + limit], beta=beta, truncate=truncate)
        for start in range(0, len(checked), limit)
    ]


def group_requests(
    groups: Iterable[GroupLike], *, beta: float | None, truncate: bool, limit: int, model: str | None = None
) -> list[RewardRequest]:
    """Groups packed in order into requests of at most ``limit`` responses in all. A group is never split:
    one larger than ``limit`` goes alone, and the server says whether it takes it."""
    chunks: list[list[RewardGroup]] = []
    size = 0
    for group in _coerce(groups, RewardGroup, "reward_groups()"):
        if not chunks or size + len(group.responses) > limit:
            chunks.append([])
            size = 0
        chunks[-1].append(group)
        size += len(group.responses)
    return [RewardRequest(model=model, groups=chunk, beta=beta, truncate=truncate) for chunk in chunks]


def generate_requests(
    prompts: str | Sequence[PromptLike],
    *,
    limit: int,
    seed: int | Sequence[int] | None = None,
    **sampling: Any,
) -> list[GenerateRequest]:
    """Requests of at most ``limit`` completions (prompts x n) each, in order; a bare string is one prompt.
    ``n`` above ``limit`` still goes one prompt per request, and the server says whether it takes it.
    ``seed``: one for the request, or one per prompt (sent as ``seeds``, split with the prompts)."""
    listed = [prompts] if isinstance(prompts, str) else list(prompts)
    seeding = {} if seed is None else {"seed": seed} if isinstance(seed, int) else {"seeds": list(seed)}
    whole = GenerateRequest.model_validate({"prompts": listed, **given(sampling), **seeding})
    problem = whole.seeds_problem()
    if problem is not None:
        raise ValueError(problem)
    return split_prompts(whole, limit)


Sampled = TypeVar("Sampled", GenerateRequest, BestOfNRequest)


def split_prompts(whole: Sampled, limit: int) -> list[Sampled]:
    """``whole`` as requests of at most ``limit`` samples (prompts x n) each, in order; ``n`` above
    ``limit`` still goes one prompt per request."""
    step = max(1, limit // whole.n)
    seeds = getattr(whole, "seeds", None)  # a GenerateRequest's seeds, one per prompt, go with their prompts
    return [
        whole.model_copy(
            update={
                "prompts": whole.prompts[start : start + step],
                **({"seeds": seeds[start : start + step]} if seeds is not None else {}),
            }
        )
        for start in range(0, len(whole.prompts), step)
    ]


def merge_generated(
    answers: Sequence[GenerateResponse], requests: Sequence[GenerateRequest]
) -> GenerateResponse:
    """One answer for all the requests, each result's ``index`` its prompt's position in the whole list."""
    results: list[GenerateResult] = []
    offset = 0
    for answer, request in zip(answers, requests, strict=True):
        results.extend(r.model_copy(update={"index": r.index + offset}) for r in answer.results)
        offset += len(request.prompts)
    return GenerateResponse(results=results, model=answers[0].model)


def best_of_n_requests(
    prompts: str | Sequence[BestOfNPromptLike], *, limit: int, **options: Any
) -> list[BestOfNRequest]:
    """Requests of at most ``limit`` samples (prompts x n) each, in order, as ``/generate`` is split; a bare
    string is one prompt."""
    listed = [prompts] if isinstance(prompts, str) else list(prompts)
    entries = [{"prompt": entry} if isinstance(entry, str) else entry for entry in listed]
    return split_prompts(BestOfNRequest.model_validate({"prompts": entries, **given(options)}), limit)


def given(options: dict[str, Any]) -> dict[str, Any]:
    """The options the caller gave (not None): the others stay unset, and the server applies its defaults
    (a left-out ``max_tokens`` is cut to the room the prompt leaves; one that is set must fit)."""
    return {name: value for name, value in options.items() if value is not None}


def merge_best_of_n(
    answers: Sequence[BestOfNResponse], requests: Sequence[BestOfNRequest]
) -> BestOfNResponse:
    """One answer for all the requests, checked to hold one result per prompt."""
    for answer, request in zip(answers, requests, strict=True):
        if len(answer.results) != len(request.prompts):
            raise XLRewardError(
                f"/best-of-n answered {len(answer.results)} results for {len(request.prompts)} prompts"
            )
    results = [result for answer in answers for result in answer.results]
    return BestOfNResponse(results=results, model=answers[0].model, sampler=answers[0].sampler)


def body(request: BaseModel) -> dict[str, Any]:
    """The JSON body; unset fields are left out, so the server's defaults apply."""
    return request.model_dump(mode="json", exclude_none=True, exclude_unset=True)


def parse(response: httpx.Response, model: type[M]) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise XLRewardError(
            f"the answer from {response.request.method} {response.request.url} is not a valid "
            f"{model.__name__} ({exc.error_count()} problem(s); first, at {where}: {first['msg']})"
        ) from exc


def parse_reward(response: httpx.Response, request: RewardRequest) -> RewardResponse:
    """The answer to ``request``, checked to hold exactly one result per item and per group."""
    answer = parse(response, RewardResponse)
    if len(answer.results) != len(request.items) or len(answer.groups) != len(request.groups):
        raise XLRewardError(
            f"{response.request.url} answered {len(answer.results)} results and {len(answer.groups)} groups "
            f"for {len(request.items)} items and {len(request.groups)} groups"
        )
    return answer
