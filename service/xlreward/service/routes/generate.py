"""Sampling from the policy: POST /generate, and the OpenAI-compatible /v1/completions and
/v1/chat/completions on the same backend (built-in transformers sampling, or an upstream vLLM/SGLang)."""

from __future__ import annotations

import time
import uuid
from typing import Any

from fastapi import APIRouter

from xlreward.service.dependencies import RuntimeDep, TenantDep
from xlreward.service.errors import ERROR_RESPONSES, ServiceError
from xlreward.service.protocol import (
    ChatCompletionsRequest,
    CompletionsRequest,
    GenerateRequest,
    GenerateResponse,
)
from xlreward.service.runtime import Runtime

router = APIRouter()


@router.post("/generate", response_model=GenerateResponse, responses=ERROR_RESPONSES)
async def generate(body: GenerateRequest, runtime: RuntimeDep, tenant: TenantDep) -> GenerateResponse:
    """``n`` completions for each prompt; reproducible for a fixed ``seed``."""
    return await run_generation(body, runtime)


@router.post("/v1/completions", responses=ERROR_RESPONSES)
async def completions(body: CompletionsRequest, runtime: RuntimeDep, tenant: TenantDep) -> dict[str, Any]:
    """OpenAI-compatible text completions: prompts are continued as plain text (no chat template)."""
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    request = _native(body, runtime, prompts=prompts, raw=True)
    response = await run_generation(request, runtime)
    choices = [
        {"index": i * body.n + j, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
        for i, result in enumerate(response.results)
        for j, c in enumerate(result.completions)
    ]
    return _openai_envelope("text_completion", response.model, choices, response)


@router.post("/v1/chat/completions", responses=ERROR_RESPONSES)
async def chat_completions(
    body: ChatCompletionsRequest, runtime: RuntimeDep, tenant: TenantDep
) -> dict[str, Any]:
    """OpenAI-compatible chat completions (``n`` > 1 supported)."""
    request = _native(body, runtime, prompts=[body.messages], raw=False)
    response = await run_generation(request, runtime)
    choices = [
        {
            "index": j,
            "message": {"role": "assistant", "content": c.text},
            "finish_reason": c.finish_reason,
            "logprobs": None,
        }
        for j, c in enumerate(response.results[0].completions)
    ]
    return _openai_envelope("chat.completion", response.model, choices, response)


async def run_generation(
    request: GenerateRequest, runtime: Runtime, generator: Any | None = None
) -> GenerateResponse:
    """Samples with ``generator`` (default: the server's backend)."""
    runtime.require_ready()
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
    result: GenerateResponse = await generator.generate(request)
    return result


def _native(
    body: CompletionsRequest | ChatCompletionsRequest, runtime: Runtime, *, prompts: list[Any], raw: bool
) -> GenerateRequest:
    if body.stream:
        raise ServiceError(
            400, "unsupported", "streaming is not supported: send the request with stream=false"
        )
    sampling = body.sampling(runtime.settings.default_max_tokens)
    return GenerateRequest(prompts=prompts, raw=raw, **sampling)


def _openai_envelope(
    kind: str, model: str, choices: list[dict[str, Any]], response: GenerateResponse
) -> dict[str, Any]:
    completion_tokens = sum(c.num_tokens for result in response.results for c in result.completions)
    return {
        "id": f"xlr-{uuid.uuid4().hex}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "usage": {"completion_tokens": completion_tokens},
    }
