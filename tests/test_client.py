"""xlreward.client against a fake server behind httpx.MockTransport: nothing listens, nothing sleeps.

The fake validates every body with the protocol's own request models (as the real server does) and answers
with canned scores: reward = len(response) * beta, so expected values are easy to write down.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from xlreward.client import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AsyncRewardClient,
    AuthenticationError,
    BadRequestError,
    GenerateResponse,
    GroupResult,
    RateLimitError,
    RewardClient,
    RewardItem,
    ServerError,
    ServiceUnavailableError,
    XLRewardError,
)
from xlreward.client._exceptions import parse_retry_after
from xlreward.client._retry import BACKOFF_INITIAL, BACKOFF_MAX
from xlreward.service.protocol import GenerateRequest, RewardRequest

BASE = "http://reward.test"
DEFAULT_BETA = 0.1
Step = httpx.Response | Exception


def error(
    status: int, code: str, message: str, location: str | None = None, **headers: str
) -> httpx.Response:
    detail: dict[str, Any] = {"code": code, "message": message}
    if location is not None:
        detail["location"] = location
    return httpx.Response(status, json={"error": detail}, headers=headers)


def scores(response: str, beta: float, item_id: Any = None) -> dict[str, Any]:
    n = len(response) + 1
    return {
        "id": item_id,
        "reward": beta * len(response),
        "policy_logp": -1.0 * n + len(response),
        "reference_logp": -1.0 * n,
        "num_response_tokens": n,
        "reward_mean": beta * len(response) / n,
        "policy_logp_mean": (-1.0 * n + len(response)) / n,
        "reference_logp_mean": -1.0,
    }


class FakeServer:
    """Answers like the reward server. ``script`` steps (responses, or exceptions to raise as transport
    failures) are played first, one per request; ``limit`` is the server's per-request item limit."""

    def __init__(self, script: list[Step] | None = None, limit: int = 256) -> None:
        self.script = list(script or [])
        self.limit = limit
        self.requests: list[httpx.Request] = []

    def bodies(self, path: str = "/reward") -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests if r.url.path == path]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, Exception):
                raise step
            return step
        routes: dict[str, Callable[[httpx.Request], httpx.Response]] = {
            "/reward": self.reward,
            "/generate": self.generate,
            "/healthz": lambda _: httpx.Response(200, json={"status": "ok"}),
            "/readyz": lambda _: httpx.Response(200, json={"status": "ready"}),
        }
        route = routes.get(request.url.path)
        return route(request) if route else error(404, "not_found", f"no route {request.url.path}")

    def reward(self, request: httpx.Request) -> httpx.Response:
        try:
            body = RewardRequest.model_validate_json(request.content)
        except ValidationError as exc:
            return error(422, "invalid_request", exc.errors()[0]["msg"], "body")
        size = len(body.items) + sum(len(g.responses) for g in body.groups)
        if size > self.limit:
            return error(413, "too_many_items", f"at most {self.limit} items per request, got {size}")
        beta = DEFAULT_BETA if body.beta is None else body.beta
        groups = []
        for group in body.groups:
            order = sorted(range(len(group.responses)), key=lambda i: -len(group.responses[i]))
            ranked = [
                {**scores(group.responses[i], beta), "index": i, "rank": rank} for rank, i in enumerate(order)
            ]
            groups.append({"id": group.id, "results": ranked})
        return httpx.Response(
            200,
            json={
                "results": [scores(item.response, beta, item.id) for item in body.items],
                "groups": groups,
                "beta": beta,
                "usage": {"items": size, "scored_tokens": 0},
            },
        )

    def generate(self, request: httpx.Request) -> httpx.Response:
        body = GenerateRequest.model_validate_json(request.content)
        if len(body.prompts) * body.n > self.limit:
            return error(413, "too_many_items", f"at most {self.limit} completions per request")
        results = [
            {
                "index": i,
                "completions": [
                    {
                        "text": f"re: {prompt if isinstance(prompt, str) else prompt[-1].content}",
                        "finish_reason": "stop",
                        "num_tokens": 3,
                    }
                ]
                * body.n,
            }
            for i, prompt in enumerate(body.prompts)
        ]
        return httpx.Response(200, json={"results": results, "model": "tiny-policy"})


def make_items(count: int) -> list[dict[str, Any]]:
    return [{"id": f"item-{i}", "prompt": "Say hi.", "response": "x" * (i % 7)} for i in range(count)]


@pytest.fixture
def sleeps() -> list[float]:
    return []


def sync_client(server: FakeServer, sleeps: list[float], **options: Any) -> RewardClient:
    return RewardClient(BASE, transport=httpx.MockTransport(server), sleep=sleeps.append, **options)


def async_client(server: Any, sleeps: list[float], **options: Any) -> AsyncRewardClient:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return AsyncRewardClient(BASE, transport=httpx.MockTransport(server), sleep=sleep, **options)


# --- scoring and chunking ---------------------------------------------------------------------------------


def test_reward_chunks_to_the_item_limit_and_keeps_order_and_ids(sleeps: list[float]) -> None:
    server = FakeServer()
    items = make_items(600)
    with sync_client(server, sleeps, max_items_per_request=256) as client:
        results = client.reward(items)

    assert [len(body["items"]) for body in server.bodies()] == [256, 256, 88]
    assert [r.id for r in results] == [item["id"] for item in items]
    assert [r.reward for r in results] == pytest.approx([DEFAULT_BETA * len(i["response"]) for i in items])


def test_reward_takes_models_and_dicts_and_sends_beta_only_when_given(sleeps: list[float]) -> None:
    server = FakeServer()
    with sync_client(server, sleeps) as client:
        mixed: list[RewardItem | dict[str, Any]] = [
            RewardItem(id=7, prompt="Q", response="abc"),
            {"prompt": [{"role": "user", "content": "Q"}], "response": "ab"},
        ]
        first = client.reward(mixed)
        second = client.reward(mixed, beta=2.0, truncate=True)
        assert client.reward([]) == []

    assert [r.id for r in first] == [7, None]
    assert [r.reward for r in second] == [6.0, 4.0]
    plain, tuned = server.bodies()
    assert "beta" not in plain and plain["truncate"] is False
    assert tuned["beta"] == 2.0 and tuned["truncate"] is True
    assert len(server.requests) == 2  # the empty list sent nothing


def test_bad_input_is_refused_before_anything_is_sent(sleeps: list[float]) -> None:
    server = FakeServer()
    with sync_client(server, sleeps) as client:
        with pytest.raises(ValidationError, match="response"):
            client.reward([{"prompt": "Q"}])
        with pytest.raises(TypeError, match="list"):
            client.reward({"prompt": "Q", "response": "A"})  # type: ignore[dict-item]
        with pytest.raises(ValidationError):
            client.reward([{"prompt": "Q", "response": "A"}], beta=-1.0)
    assert server.requests == []


def test_rank_returns_one_ranked_group(sleeps: list[float]) -> None:
    server = FakeServer()
    with sync_client(server, sleeps) as client:
        group = client.rank("Say hi.", ["Hallo!", "Hi", "Bonjour !"], id="q1", beta=1.0)

    assert isinstance(group, GroupResult)
    assert group.id == "q1"
    assert [r.index for r in group.results] == [2, 0, 1]
    assert [r.rank for r in group.results] == [0, 1, 2]
    assert group.results[0].reward == 9.0
    (body,) = server.bodies()
    assert body["groups"] == [{"id": "q1", "prompt": "Say hi.", "responses": ["Hallo!", "Hi", "Bonjour !"]}]


def test_reward_groups_chunk_by_total_responses_without_splitting_a_group(sleeps: list[float]) -> None:
    server = FakeServer()
    groups = [
        {"id": i, "prompt": "Q", "responses": ["r"] * size} for i, size in enumerate([100, 100, 100, 50, 10])
    ]
    with sync_client(server, sleeps, max_items_per_request=256) as client:
        results = client.reward_groups(groups)

    assert [[len(g["responses"]) for g in body["groups"]] for body in server.bodies()] == [
        [100, 100],
        [100, 50, 10],
    ]
    assert [g.id for g in results] == [0, 1, 2, 3, 4]
    assert [len(g.results) for g in results] == [100, 100, 100, 50, 10]


def test_generate_sends_sampling_settings_and_parses(sleeps: list[float]) -> None:
    server = FakeServer()
    with sync_client(server, sleeps) as client:
        answer = client.generate(
            ["Say hi.", [{"role": "user", "content": "Sag hallo."}]],
            n=2,
            temperature=0.7,
            stop=["\n"],
            seed=3,
        )
        single = client.generate("Just one prompt.")

    assert isinstance(answer, GenerateResponse)
    assert answer.model == "tiny-policy"
    assert [len(r.completions) for r in answer.results] == [2, 2]
    assert answer.results[1].completions[0].finish_reason == "stop"
    body = server.bodies("/generate")[0]
    assert body["n"] == 2 and body["temperature"] == 0.7 and body["stop"] == ["\n"] and body["seed"] == 3
    assert "top_k" not in body and body["raw"] is False
    assert len(single.results) == 1


def test_generate_splits_to_the_completion_limit_and_renumbers(sleeps: list[float]) -> None:
    server = FakeServer(limit=8)
    prompts = [f"prompt {i}" for i in range(5)]
    with sync_client(server, sleeps, max_items_per_request=8) as client:
        answer = client.generate(prompts, n=4)

    assert [len(body["prompts"]) for body in server.bodies("/generate")] == [2, 2, 1]
    assert [r.index for r in answer.results] == [0, 1, 2, 3, 4]
    assert [r.completions[0].text for r in answer.results] == [f"re: {p}" for p in prompts]


def test_a_seed_per_prompt_is_split_with_its_prompts_and_checked_before_sending(sleeps: list[float]) -> None:
    server = FakeServer(limit=8)
    prompts = [f"prompt {i}" for i in range(5)]
    with sync_client(server, sleeps, max_items_per_request=8) as client:
        client.generate(prompts, n=4, seed=[10, 11, 12, 13, 14])
        with pytest.raises(ValueError, match="one each"):
            client.generate(prompts, seed=[1, 2])
    bodies = server.bodies("/generate")
    assert [body["seeds"] for body in bodies] == [[10, 11], [12, 13], [14]]
    assert all("seed" not in body for body in bodies)


def test_wrong_answers_from_the_server_raise_xlreward_error(sleeps: list[float]) -> None:
    short = httpx.Response(
        200, json={"results": [], "groups": [], "beta": 0.1, "usage": {"items": 0, "scored_tokens": 0}}
    )
    server = FakeServer([short, httpx.Response(200, text="<html>proxy</html>")])
    with sync_client(server, sleeps) as client:
        with pytest.raises(XLRewardError, match="0 results and 0 groups for 2 items"):
            client.reward(make_items(2))
        with pytest.raises(XLRewardError, match="not a valid RewardResponse"):
            client.reward(make_items(2))


# --- retries ------------------------------------------------------------------------------------------------


def test_429_is_retried_after_the_servers_retry_after(sleeps: list[float]) -> None:
    server = FakeServer([error(429, "queue_full", "queue is full", **{"Retry-After": "7"})])
    with sync_client(server, sleeps) as client:
        results = client.reward(make_items(3))

    assert [r.id for r in results] == ["item-0", "item-1", "item-2"]
    assert len(server.requests) == 2
    assert sleeps == [7.0]


def test_503_is_retried_max_retries_times_then_raised(sleeps: list[float]) -> None:
    busy = error(503, "loading", "models are loading", **{"Retry-After": "2"})
    server = FakeServer([busy] * 10)
    with (
        sync_client(server, sleeps, max_retries=3) as client,
        pytest.raises(ServiceUnavailableError) as caught,
    ):
        client.reward(make_items(1))

    assert len(server.requests) == 4  # the first try and 3 retries
    assert sleeps == [2.0, 2.0, 2.0]
    assert caught.value.status_code == 503
    assert caught.value.retry_after == 2.0
    assert caught.value.code == "loading"


def test_without_retry_after_backoff_grows_with_jitter_and_is_capped(sleeps: list[float]) -> None:
    server = FakeServer([error(503, "draining", "shutting down")] * 20)
    with sync_client(server, sleeps, max_retries=12) as client, pytest.raises(ServiceUnavailableError):
        client.reward(make_items(1))

    assert len(sleeps) == 12
    for attempt, waited in enumerate(sleeps):
        assert 0 <= waited <= min(BACKOFF_MAX, BACKOFF_INITIAL * 2**attempt)
    assert len(set(sleeps)) > 1  # jittered, not one fixed wait


def test_connection_errors_are_retried(sleeps: list[float]) -> None:
    server = FakeServer([httpx.ConnectError("connection refused"), httpx.RemoteProtocolError("peer closed")])
    with sync_client(server, sleeps) as client:
        assert len(client.reward(make_items(2))) == 2
    assert len(server.requests) == 3
    assert len(sleeps) == 2


def test_connection_errors_raise_api_connection_error_once_retries_are_spent(sleeps: list[float]) -> None:
    server = FakeServer([httpx.ConnectError("connection refused")] * 3)
    with sync_client(server, sleeps, max_retries=2) as client, pytest.raises(APIConnectionError) as caught:
        client.reward(make_items(1))
    assert len(server.requests) == 3
    assert caught.value.url == f"{BASE}/reward"
    assert isinstance(caught.value.__cause__, httpx.ConnectError)
    assert "connection refused" in str(caught.value)


def test_a_read_timeout_is_not_retried(sleeps: list[float]) -> None:
    server = FakeServer([httpx.ReadTimeout("timed out")])
    with sync_client(server, sleeps) as client, pytest.raises(APIConnectionError, match="ReadTimeout"):
        client.reward(make_items(1))
    assert len(server.requests) == 1 and sleeps == []


def test_422_is_not_retried_and_says_what_and_where(sleeps: list[float]) -> None:
    server = FakeServer([error(422, "invalid_request", "must not be empty", "items[0].response")])
    with sync_client(server, sleeps) as client, pytest.raises(BadRequestError) as caught:
        client.reward(make_items(1))

    exc = caught.value
    assert (exc.status_code, exc.code, exc.message, exc.location) == (
        422,
        "invalid_request",
        "must not be empty",
        "items[0].response",
    )
    assert exc.url == f"{BASE}/reward"
    assert str(exc) == f"422 invalid_request at items[0].response: must not be empty ({BASE}/reward)"
    assert len(server.requests) == 1 and sleeps == []


def test_the_servers_item_limit_error_is_a_bad_request(sleeps: list[float]) -> None:
    server = FakeServer(limit=64)
    with (
        sync_client(server, sleeps) as client,
        pytest.raises(BadRequestError, match="at most 64 items") as caught,
    ):
        client.reward(make_items(100))
    assert caught.value.status_code == 413 and len(server.requests) == 1


def test_401_raises_authentication_error(sleeps: list[float]) -> None:
    server = FakeServer([error(401, "unauthorized", "missing or invalid API key")])
    with sync_client(server, sleeps) as client, pytest.raises(AuthenticationError) as caught:
        client.rank("Q", ["a", "b"])
    assert caught.value.status_code == 401 and caught.value.code == "unauthorized"
    assert len(server.requests) == 1 and sleeps == []


def test_the_api_key_goes_in_a_bearer_header(sleeps: list[float]) -> None:
    server = FakeServer()
    with sync_client(server, sleeps, api_key="s3cret") as client:
        client.reward(make_items(1))
    with sync_client(server, sleeps) as client:
        client.reward(make_items(1))
    with_key, without = server.requests
    assert with_key.headers["Authorization"] == "Bearer s3cret"
    assert "Authorization" not in without.headers
    assert with_key.headers["User-Agent"].startswith("xlreward-client")


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "invalid_request", BadRequestError),
        (413, "too_long", BadRequestError),
        (403, "forbidden", AuthenticationError),
        (408, "timeout", APITimeoutError),
        (504, "gateway_timeout", APITimeoutError),
        (500, "timeout", APITimeoutError),
        (500, "internal", ServerError),
        (502, "bad_gateway", ServerError),
        (404, "not_found", APIError),
    ],
)
def test_each_status_raises_its_exception_without_retrying(
    sleeps: list[float], status: int, code: str, expected: type[APIError]
) -> None:
    server = FakeServer([error(status, code, "no")])
    with sync_client(server, sleeps) as client, pytest.raises(APIError) as caught:
        client.reward(make_items(1))
    assert type(caught.value) is expected
    assert len(server.requests) == 1


def test_non_json_error_bodies_still_say_something(sleeps: list[float]) -> None:
    html = httpx.Response(502, text="<html>upstream connect error</html>")
    detail = httpx.Response(404, json={"detail": "Not Found"})
    empty = httpx.Response(500)
    server = FakeServer([html, detail, empty])
    with sync_client(server, sleeps) as client:
        for fragment, code in [
            ("upstream connect error", "http_502"),
            ("Not Found", "http_404"),
            ("empty", "http_500"),
        ]:
            with pytest.raises(APIError, match=fragment) as caught:
                client.reward(make_items(1))
            assert caught.value.code == code


def test_exceptions_pickle_with_their_fields() -> None:
    exc = RateLimitError(429, f"{BASE}/reward", "queue_full", "full", None, 3.0)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is RateLimitError and str(back) == str(exc) and back.retry_after == 3.0
    conn = pickle.loads(pickle.dumps(APIConnectionError("ConnectError: refused", f"{BASE}/reward")))
    assert conn.url == f"{BASE}/reward" and "refused" in str(conn)


def test_retry_after_reads_seconds_and_http_dates() -> None:
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-3") == 0.0
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= (parse_retry_after(later) or 0) <= 30


# --- probes -------------------------------------------------------------------------------------------------


def test_health_and_ready(sleeps: list[float]) -> None:
    with sync_client(FakeServer(), sleeps) as client:
        assert client.health() and client.ready()
    with sync_client(FakeServer([httpx.Response(503, json={"status": "loading"})]), sleeps) as client:
        assert not client.ready()
    with sync_client(FakeServer([httpx.ConnectError("refused")]), sleeps) as client:
        assert not client.health()


# --- async --------------------------------------------------------------------------------------------------


def test_async_chunks_run_concurrently_bounded_and_come_back_in_order(sleeps: list[float]) -> None:
    server = FakeServer(limit=10)
    in_flight = peak = 0

    async def slow_server(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        first_id = int(json.loads(request.content)["items"][0]["id"].split("-")[1])
        await asyncio.sleep(0.01 * (5 - first_id // 10 % 5))  # early chunks finish last
        in_flight -= 1
        return server(request)

    async def main() -> list[Any]:
        async with async_client(slow_server, sleeps, max_items_per_request=10) as client:
            return await client.reward(make_items(95))

    results = asyncio.run(main())
    assert [r.id for r in results] == [f"item-{i}" for i in range(95)]
    assert len(server.requests) == 10
    assert peak == 4


def test_async_retries_honour_retry_after_and_typed_errors(sleeps: list[float]) -> None:
    server = FakeServer(
        [error(429, "queue_full", "queue is full", **{"Retry-After": "4"}), httpx.ConnectError("no")]
    )

    async def main() -> None:
        async with async_client(server, sleeps) as client:
            assert [r.id for r in await client.reward(make_items(2))] == ["item-0", "item-1"]
            server.script = [error(422, "invalid_request", "bad", "items[0].prompt")]
            with pytest.raises(BadRequestError) as caught:
                await client.reward(make_items(2))
            assert caught.value.location == "items[0].prompt"
            assert caught.value.url == f"{BASE}/reward"

    asyncio.run(main())
    assert len(server.requests) == 4
    assert sleeps[0] == 4.0 and len(sleeps) == 2


def test_async_gives_up_with_the_typed_error_not_an_exception_group(sleeps: list[float]) -> None:
    server = FakeServer([error(401, "unauthorized", "no key")])

    async def main() -> None:
        async with async_client(server, sleeps, max_items_per_request=5, max_retries=2) as client:
            with pytest.raises(AuthenticationError):
                await client.reward(make_items(20))  # one of four chunks fails: the others are cancelled
            server.script = [error(503, "loading", "wait")] * 10
            with pytest.raises(ServiceUnavailableError):
                await client.reward(make_items(1))

    asyncio.run(main())
    assert len(sleeps) == 2


def test_async_rank_generate_and_probes(sleeps: list[float]) -> None:
    server = FakeServer()

    async def main() -> tuple[GroupResult, GenerateResponse, bool, bool]:
        async with async_client(server, sleeps, api_key="k", max_items_per_request=6) as client:
            group = await client.rank([{"role": "user", "content": "Q"}], ["aaa", "a"], id=5)
            answer = await client.generate([f"Q{i}" for i in range(5)], n=3, top_k=20, raw=True)
            return group, answer, await client.health(), await client.ready()

    group, answer, healthy, ready = asyncio.run(main())
    assert isinstance(group, GroupResult) and group.id == 5 and [r.index for r in group.results] == [0, 1]
    assert [len(r.completions) for r in answer.results] == [3] * 5
    assert [r.completions[0].text for r in answer.results] == [f"re: Q{i}" for i in range(5)]
    assert [r.index for r in answer.results] == [0, 1, 2, 3, 4]
    assert [len(body["prompts"]) for body in server.bodies("/generate")] == [2, 2, 1]
    assert server.bodies("/generate")[0]["top_k"] == 20
    assert healthy and ready
    assert all(r.headers["Authorization"] == "Bearer k" for r in server.requests)


# --- packaging ----------------------------------------------------------------------------------------------


def test_the_client_imports_without_torch() -> None:
    probe = "import sys, xlreward.client\nprint('torch' in sys.modules, 'transformers' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.split() == ["False", "False"]
