"""``RewardClient``: the blocking client, on ``httpx.Client``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Literal

import httpx

from xlreward.client import _payloads as payloads
from xlreward.client._base import (
    DEFAULT_MAX_ITEMS_PER_REQUEST,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    PROBE_TIMEOUT,
    ClientSettings,
)
from xlreward.client._exceptions import connection_error, error_for_response
from xlreward.client._retry import retrying
from xlreward.service.protocol import (
    BestOfNRequest,
    BestOfNResponse,
    GenerateRequest,
    GenerateResponse,
    GroupResult,
    RewardRequest,
    RewardResponse,
    RewardResult,
)


class RewardClient(ClientSettings):
    """Scores (prompt, response) pairs on an xlreward server; see the package docstring for an example.

    ``transport`` replaces the network (``httpx.MockTransport`` in tests); ``sleep`` replaces
    ``time.sleep`` between retries. Lists longer than ``max_items_per_request`` are sent in several
    requests, one after another; 429, 503 and dropped connections are retried up to ``max_retries`` times.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_items_per_request: int = DEFAULT_MAX_ITEMS_PER_REQUEST,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(
            api_key=api_key, max_retries=max_retries, max_items_per_request=max_items_per_request
        )
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=base_url, headers=self._headers, timeout=timeout, transport=transport
        )

    def reward(
        self,
        items: Iterable[payloads.ItemLike],
        *,
        beta: float | None = None,
        truncate: bool = False,
        model: str | None = None,
    ) -> list[RewardResult]:
        """One result per item, in input order (ids kept). ``beta`` overrides the server's default scale;
        ``truncate`` cuts responses too long for the model's context instead of refusing them; ``model``
        names a served reward model (default: the server's first)."""
        requests = payloads.item_requests(
            items, beta=beta, truncate=truncate, limit=self.max_items_per_request, model=model
        )
        return [result for request in requests for result in self._score(request).results]

    def reward_groups(
        self,
        groups: Iterable[payloads.GroupLike],
        *,
        beta: float | None = None,
        truncate: bool = False,
        model: str | None = None,
    ) -> list[GroupResult]:
        """One GroupResult per group, in input order, each ranked highest reward first."""
        requests = payloads.group_requests(
            groups, beta=beta, truncate=truncate, limit=self.max_items_per_request, model=model
        )
        return [group for request in requests for group in self._score(request).groups]

    def rank(
        self,
        prompt: payloads.PromptLike,
        responses: Sequence[str],
        *,
        id: str | int | None = None,
        beta: float | None = None,
        truncate: bool = False,
        model: str | None = None,
    ) -> GroupResult:
        """Several responses to one prompt, ranked highest reward first (``index``: input position)."""
        group = {"id": id, "prompt": prompt, "responses": list(responses)}
        return self.reward_groups([group], beta=beta, truncate=truncate, model=model)[0]

    def generate(
        self,
        prompts: str | Sequence[payloads.PromptLike],
        *,
        n: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        seed: int | Sequence[int] | None = None,
        raw: bool = False,
    ) -> GenerateResponse:
        """``n`` completions per prompt from the server's policy model; ``max_tokens`` None leaves it to the
        server (its default, cut to the room the prompt leaves), and a set one must fit the context. ``seed``:
        one for all the prompts, or a list with each prompt's own (it samples as if sent alone with it)."""
        requests = payloads.generate_requests(
            prompts,
            limit=self.max_items_per_request,
            n=n,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_tokens=max_tokens,
            stop=list(stop or []),
            seed=seed,
            raw=raw,
        )
        answers = [self._generate(request) for request in requests]
        return payloads.merge_generated(answers, requests)

    def best_of_n(
        self,
        prompts: str | Sequence[payloads.BestOfNPromptLike],
        *,
        n: int = 16,
        model: str | None = None,
        sampler: str | None = None,
        sampler_role: Literal["policy", "reference"] = "policy",
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int | None = None,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        raw: bool = False,
        truncate: bool = True,
    ) -> BestOfNResponse:
        """``n`` samples per prompt, scored by reward model ``model`` and returned best first. A prompt is a
        string, or ``{"id"?, "prompt", "reward_prompt"?}`` to score against another prompt (the English
        instruction behind a target-language one). ``sampler``/``sampler_role``: which served model
        samples (see ``BestOfNRequest``)."""
        requests = payloads.best_of_n_requests(
            prompts,
            limit=self.max_items_per_request,
            n=n,
            model=model,
            sampler=sampler,
            sampler_role=sampler_role,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            max_tokens=max_tokens,
            stop=list(stop or []),
            seed=seed,
            raw=raw,
            truncate=truncate,
        )
        answers = [self._best_of_n(request) for request in requests]
        return payloads.merge_best_of_n(answers, requests)

    def health(self) -> bool:
        """Whether the server process answers (GET /healthz is 200)."""
        return self._probe("/healthz")

    def ready(self) -> bool:
        """Whether the server takes work now (GET /readyz is 200; 503 while loading or draining)."""
        return self._probe("/readyz")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _score(self, request: RewardRequest) -> RewardResponse:
        return payloads.parse_reward(self._post("/reward", payloads.body(request)), request)

    def _generate(self, request: GenerateRequest) -> GenerateResponse:
        return payloads.parse(self._post("/generate", payloads.body(request)), GenerateResponse)

    def _best_of_n(self, request: BestOfNRequest) -> BestOfNResponse:
        return payloads.parse(self._post("/best-of-n", payloads.body(request)), BestOfNResponse)

    def _post(self, path: str, json: dict[str, Any]) -> httpx.Response:
        request = self._http.build_request("POST", path, json=json)
        return retrying(self.max_retries, self._sleep)(self._send, request)

    def _send(self, request: httpx.Request) -> httpx.Response:
        try:
            response = self._http.send(request)
        except httpx.TransportError as exc:
            raise connection_error(exc, str(request.url)) from exc
        if response.is_error:
            raise error_for_response(response)
        return response

    def _probe(self, path: str) -> bool:
        try:
            return self._http.get(path, timeout=PROBE_TIMEOUT).status_code == 200
        except httpx.TransportError:
            return False
