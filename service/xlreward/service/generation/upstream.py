"""Sampling from an OpenAI-compatible server: vLLM, SGLang, or a second xlreward server.

Chat prompts go to ``POST {base_url}/v1/chat/completions`` (text as one user turn, messages as they are),
raw prompts to ``POST {base_url}/v1/completions``; one upstream request per prompt, at most
``max_concurrency`` in flight. With a seed (or seeds), prompt i is sent ``request_prompt_seed(request, i)``,
as the local backend seeds it. Torch-free.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from xlreward.service.generation.base import chat_messages, raw_text, request_prompt_seed
from xlreward.service.generation.errors import upstream_error
from xlreward.service.generation.turns import ModelTurns
from xlreward.service.protocol import (
    Completion,
    FinishReason,
    GenerateRequest,
    GenerateResponse,
    GenerateResult,
    Prompt,
)

EXCERPT = 300


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    content: str | None = None


class _Choice(BaseModel):
    model_config = ConfigDict(extra="ignore")

    index: int
    text: str | None = None  # /v1/completions
    message: _Message | None = None  # /v1/chat/completions
    finish_reason: str | None = None


class _Usage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Reply(BaseModel):
    model_config = ConfigDict(extra="ignore")

    choices: list[_Choice]
    usage: _Usage | None = None


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT else text[:EXCERPT] + "..."


class OpenAIUpstream:
    """Forwards generation to an OpenAI-compatible server.

    ``base_url`` is the server's root (a trailing ``/v1`` is accepted too); ``model`` is the name the
    upstream serves; ``tokenizer`` (the policy's), when given, counts completion tokens. ``transport`` is
    for tests (``httpx.MockTransport``).
    """

    name = "openai-upstream"
    supports_logprobs = False  # the upstream's log-probs are not passed through: such requests are refused

    def __init__(
        self,
        base_url: str,
        *,
        model: str,
        api_key: str | None = None,
        timeout: float = 600,
        tokenizer: Any = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_concurrency: int = 8,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        base = base_url.rstrip("/")
        self.base_url = base.removesuffix("/v1")
        self.model = model
        self.tokenizer = tokenizer
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )
        self._slots = asyncio.Semaphore(max_concurrency)

    async def generate(self, request: GenerateRequest, turns: ModelTurns | None = None) -> GenerateResponse:
        # Sampling happens on the upstream: nothing here takes a turn on (or the lock of) a local model.
        # Every prompt is checked before anything is sent.
        calls = [self._call(prompt, request, index) for index, prompt in enumerate(request.prompts)]
        tasks = [
            asyncio.ensure_future(self._complete(index, path, body, request.n))
            for index, (path, body) in enumerate(calls)
        ]
        try:
            results = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        return GenerateResponse(results=list(results), model=self.model)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _call(self, prompt: Prompt, request: GenerateRequest, index: int) -> tuple[str, dict[str, Any]]:
        """The upstream path and JSON body for one prompt."""
        body: dict[str, Any] = {
            "model": self.model,
            "n": request.n,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        seed = request_prompt_seed(request, index)
        if seed is not None:
            body["seed"] = seed
        if request.top_k:
            body["top_k"] = request.top_k  # vLLM's (and SGLang's) extension
        if request.raw:
            return "/v1/completions", {**body, "prompt": raw_text(prompt, index)}
        return "/v1/chat/completions", {**body, "messages": chat_messages(prompt, index)}

    async def _complete(self, index: int, path: str, body: dict[str, Any], n: int) -> GenerateResult:
        reply = await self._post(path, body)
        if len(reply.choices) != n:
            raise upstream_error(
                f"the upstream {self.base_url}{path} returned {len(reply.choices)} choices for n={n}: "
                "it does not support n, or failed part of the request"
            )
        usage = reply.usage or _Usage()
        choices = sorted(reply.choices, key=lambda c: c.index)
        completions = [self._completion(choice, n, usage.completion_tokens) for choice in choices]
        # One upstream request per prompt, so its prompt_tokens count the prompt once, as OpenAI counts it.
        return GenerateResult(index=index, completions=completions, prompt_tokens=usage.prompt_tokens)

    async def _post(self, path: str, body: dict[str, Any]) -> _Reply:
        url = f"{self.base_url}{path}"
        try:
            async with self._slots:
                response = await self._client.post(path, json=body)
        except httpx.HTTPError as error:
            raise upstream_error(
                f"the upstream {url} could not be reached ({type(error).__name__}: {error}): check that it "
                "is running and that the upstream URL is right"
            ) from error
        if not response.is_success:
            raise upstream_error(
                f"the upstream {url} answered {response.status_code}: {_excerpt(response.text)}"
            )
        try:
            return _Reply.model_validate(response.json())
        except (ValueError, ValidationError) as error:
            raise upstream_error(
                f"the upstream {url} sent a reply that is not an OpenAI completion "
                f"({type(error).__name__}): {_excerpt(response.text)}"
            ) from error

    def _completion(self, choice: _Choice, n: int, usage: int | None) -> Completion:
        text = choice.message.content if choice.message is not None else choice.text
        text = text or ""
        reason: FinishReason = "length" if choice.finish_reason == "length" else "stop"
        if self.tokenizer is not None:
            # The text's tokens, plus the end-of-turn token when a stop ended it (as the local backend does).
            # Approximate when a stop string ended it: the upstream does not return the stop string's tokens.
            counted = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            num_tokens = counted + (1 if reason == "stop" else 0)
        elif n == 1 and usage is not None:
            num_tokens = usage
        else:
            num_tokens = 0
        return Completion(text=text, finish_reason=reason, num_tokens=num_tokens)
