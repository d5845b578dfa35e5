"""The clients' best_of_n against a fake /best-of-n behind httpx.MockTransport: bodies validated with the
protocol's own request model, long prompt lists split to the server's sample limit, results in order."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from xlreward.client import AsyncRewardClient, RewardClient
from xlreward.service.protocol import BestOfNRequest, BestOfNResponse

BASE = "http://reward.test"


def fake_best_of_n(bodies: list[BestOfNRequest]) -> Any:
    """Answers each prompt with n candidates, candidate i scored i (so the best is the last sampled)."""

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/best-of-n"
        body = BestOfNRequest.model_validate(json.loads(request.content))
        bodies.append(body)
        results = []
        for entry in body.prompts:
            candidates = [
                {"index": i, "text": f"{entry.prompt}#{i}", "score": float(i), "finish_reason": "length"}
                for i in reversed(range(body.n))
            ]
            results.append({"id": entry.id, "best": candidates[0], "candidates": candidates})
        return httpx.Response(
            200, json={"results": results, "model": body.model or "rm", "sampler": "policy"}
        )

    return answer


def test_best_of_n_splits_to_the_sample_limit_and_keeps_order() -> None:
    bodies: list[BestOfNRequest] = []
    transport = httpx.MockTransport(fake_best_of_n(bodies))
    prompts = ["a", {"id": 2, "prompt": "b", "reward_prompt": "B"}, "c"]
    with RewardClient(BASE, transport=transport, max_items_per_request=8) as client:
        answer = client.best_of_n(prompts, n=4, model="icr", seed=3, max_tokens=8)
    assert isinstance(answer, BestOfNResponse) and answer.model == "icr"
    assert [len(body.prompts) for body in bodies] == [2, 1]  # 2 x 4 samples fit in 8, the third goes alone
    assert all(body.seed == 3 and body.n == 4 and body.truncate for body in bodies)
    assert bodies[0].prompts[1].reward_prompt == "B"
    assert [result.best.text for result in answer.results] == ["a#3", "b#3", "c#3"]
    assert answer.results[1].id == 2


def test_async_best_of_n_matches_the_sync_client() -> None:
    bodies: list[BestOfNRequest] = []

    async def run() -> BestOfNResponse:
        transport = httpx.MockTransport(fake_best_of_n(bodies))
        async with AsyncRewardClient(BASE, transport=transport, max_items_per_request=4) as client:
            return await client.best_of_n(["x", "y"], n=4)

    answer = asyncio.run(run())
    assert len(bodies) == 2 and [r.best.text for r in answer.results] == ["x#3", "y#3"]
