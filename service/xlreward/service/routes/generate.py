"""Sampling from the policy: POST /generate, and the OpenAI-compatible /v1/completions and
/v1/chat/completions on the same backend (built-in transformers sampling, or an upstream vLLM/SGLang).

The OpenAI routes refuse with a 400 naming the field anything they do not implement (tools, penalties,
response formats, non-text content parts, streaming...) and let pass what changes nothing (the protocol's
OPENAI_INERT_VALUES and OPENAI_HARMLESS_FIELDS). ``max_completion_tokens`` is ``max_tokens``' newer name;
both given with different values is a 400. ``logprobs`` come from the built-in backend only, and are of
the model's raw distribution (as vLLM's default), not of the temperature/top-p one sampled from.
"""

from __future__ import annotations

import itertools
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request

from xlreward.service.dependencies import RuntimeDep, TenantDep
from xlreward.service.errors import ERROR_RESPONSES, ServiceError
from xlreward.service.generation.turns import SchedulerTurns
from xlreward.service.protocol import (
    ChatCompletionsRequest,
    CompletionsRequest,
    GenerateRequest,
    GenerateResponse,
    TokenLogprob,
)
from xlreward.service.routes.reward import wait_while_connected
from xlreward.service.runtime import Runtime

router = APIRouter()


@router.post("/generate", response_model=GenerateResponse, responses=ERROR_RESPONSES)
async def generate(
    body: GenerateRequest, http: Request, runtime: RuntimeDep, tenant: TenantDep
) -> GenerateResponse:
    """``n`` completions for each prompt; reproducible for a fixed ``seed``."""
    return await run_generation(body, runtime, http, tenant)


@router.post("/v1/completions", responses=ERROR_RESPONSES)
async def completions(
    body: CompletionsRequest, http: Request, runtime: RuntimeDep, tenant: TenantDep
) -> dict[str, Any]:
    """OpenAI-compatible text completions: prompts are continued as plain text (no chat template)."""
    _refuse_unsupported(body)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    request = _native(body, runtime, prompts=prompts, raw=True)
    response = await run_generation(request, runtime, http, tenant)
    choices = [
        {
            "index": i * body.n + j,
            "text": c.text,
            "finish_reason": c.finish_reason,
            "logprobs": _text_logprobs(c.logprobs),
        }
        for i, result in enumerate(response.results)
        for j, c in enumerate(result.completions)
    ]
    return _openai_envelope("text_completion", response.model, choices, response)


@router.post("/v1/chat/completions", responses=ERROR_RESPONSES)
async def chat_completions(
    body: ChatCompletionsRequest, http: Request, runtime: RuntimeDep, tenant: TenantDep
) -> dict[str, Any]:
    """OpenAI-compatible chat completions (``n`` > 1 supported; text content parts only)."""
    _refuse_unsupported(body)
    request = _native(body, runtime, prompts=[body.conversation()], raw=False)
    response = await run_generation(request, runtime, http, tenant)
    choices = [
        {
            "index": j,
            "message": {"role": "assistant", "content": c.text},
            "finish_reason": c.finish_reason,
            "logprobs": None if c.logprobs is None else {"content": _dump(c.logprobs), "refusal": None},
        }
        for j, c in enumerate(response.results[0].completions)
    ]
    return _openai_envelope("chat.completion", response.model, choices, response)


async def run_generation(
    request: GenerateRequest, runtime: Runtime, http: Request, tenant: str, generator: Any | None = None
) -> GenerateResponse:
    """Samples with ``generator`` (default: the server's backend) as ``tenant``. Built-in sampling takes
    its turns on the model through the scheduler, beside scoring: admitted against the queue's bound,
    fair across tenants, within ``generation_timeout_s``, and stopped when the client goes away."""
    runtime.require_ready()
    problem = request.seeds_problem()
    if problem is not None:
        raise ServiceError(422, "seeds_mismatch", problem, location="seeds")
    count = len(request.prompts) * request.n
    limit = runtime.settings.max_items_per_request
    if count > limit:
        raise ServiceError(
            413,
            "too_many_items",
            f"the request asks for {count} completions (prompts x n) but the limit is {limit}: split it",
        )
    generator = generator or runtime.generator
    if generator is None:
        raise ServiceError(
            400,
            "no_generator",
            f"the first served model ({runtime.first_slot().spec.name!r}) is a classifier, which has no "
            "language model to sample from: list an implicit model first, or set XLREWARD_UPSTREAM_URL",
        )
    if request.logprobs is not None and not getattr(generator, "supports_logprobs", False):
        raise ServiceError(
            400,
            "unsupported",
            f"logprobs: the generation backend here ({generator.name}) does not return log-probs (an "
            "upstream server's are not passed through): drop logprobs and top_logprobs",
            location="logprobs",
        )

    async def client_gone() -> bool:
        if await http.is_disconnected():
            runtime.metrics.rejected.labels(reason="disconnected").inc()
            return True
        return False

    turns = SchedulerTurns(
        runtime.scheduler,
        tenant,
        runtime.settings.generation_timeout_s,
        lambda ticket, timeout: wait_while_connected(http, runtime.scheduler, ticket, timeout),
        client_gone,
    )
    result: GenerateResponse = await generator.generate(request, turns)
    return result


def _refuse_unsupported(body: CompletionsRequest | ChatCompletionsRequest) -> None:
    """A 400 naming every field the request sets that we do not implement (never silently ignored)."""
    problems = body.problems()
    if problems:
        message = "; ".join(problem.message for problem in problems)
        raise ServiceError(400, "unsupported", message, location=problems[0].location)


def _native(
    body: CompletionsRequest | ChatCompletionsRequest, runtime: Runtime, *, prompts: list[Any], raw: bool
) -> GenerateRequest:
    sampling = body.sampling(runtime.settings.default_max_tokens)
    request = GenerateRequest(prompts=prompts, raw=raw, **sampling)
    if body.token_limit() is None:
        # The server's default, not a limit the caller set: the backend cuts it to the room the prompt leaves
        # instead of refusing it.
        return GenerateRequest.model_construct(request.model_fields_set - {"max_tokens"}, **dict(request))
    return request


def _dump(logprobs: list[TokenLogprob]) -> list[dict[str, Any]]:
    return [entry.model_dump() for entry in logprobs]


def _text_logprobs(logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """The legacy completions shape: parallel lists, alternatives as {token text: log-prob} (the most likely
    kept when two tokens share a text), offsets into the completion's text as vLLM gives them."""
    if logprobs is None:
        return None
    top: list[dict[str, float]] = []
    for entry in logprobs:
        alternatives: dict[str, float] = {}
        for alternative in entry.top_logprobs:
            alternatives.setdefault(alternative.token, alternative.logprob)
        top.append(alternatives)
    return {
        "tokens": [entry.token for entry in logprobs],
        "token_logprobs": [entry.logprob for entry in logprobs],
        "top_logprobs": top,
        "text_offset": list(itertools.accumulate((len(entry.token) for entry in logprobs[:-1]), initial=0)),
    }


def _openai_envelope(
    kind: str, model: str, choices: list[dict[str, Any]], response: GenerateResponse
) -> dict[str, Any]:
    """The response around ``choices``. Usage counts each prompt's tokens once (not once per sample), as
    OpenAI and vLLM do; prompt and total tokens are left out when the backend cannot count the prompt."""
    completion_tokens = sum(c.num_tokens for result in response.results for c in result.completions)
    prompt_counts = [result.prompt_tokens for result in response.results]
    usage: dict[str, int] = {"completion_tokens": completion_tokens}
    if all(count is not None for count in prompt_counts):
        prompt_tokens = sum(count for count in prompt_counts if count is not None)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
    return {
        "id": f"xlr-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": usage,
    }
