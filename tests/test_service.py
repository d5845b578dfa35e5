"""The reward server end to end: `xlreward serve` in a subprocess, HTTP over a real socket on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from oracle import plain_logp
from serving import XLREWARD, histogram_count_above, metric_samples, metric_total, running_server
from xlreward.client import AsyncRewardClient, RewardClient
from xlreward.service.process import free_port
from xlreward.service.protocol import ChatMessage, RewardItem
from xlreward.service.scoring.loading import load_causal_lm, load_engine, load_tokenizer

ITEMS = [
    RewardItem(id="en", prompt="What is 2+2?", response="2+2 is 4."),
    RewardItem(id=7, prompt="Answer with one digit: 2+2?", response="4"),
    RewardItem(id="ru", prompt="Greet me.", response="Привет, мир! Как дела?"),
    RewardItem(id="zh", prompt="Greet me.", response="你好，世界！"),
    RewardItem(
        id="chat",
        prompt=[ChatMessage(role="system", content="Be brief."), ChatMessage(role="user", content="Hi")],
        response="Hello! 😀",
    ),
]


@pytest.fixture(scope="module")
def server(llama_pair, tmp_path_factory):  # type: ignore[no-untyped-def]
    with running_server(llama_pair, tmp_path_factory.mktemp("logs"), batch_wait_ms=30) as url:
        yield url


@pytest.fixture(scope="module")
def local_engine(llama_pair):  # type: ignore[no-untyped-def]
    return load_engine(llama_pair.policy, llama_pair.reference, device="cpu", dtype="float32")


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def post_reward(url: str, body: dict, timeout: float = 60, **kwargs) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(f"{url}/reward", json=body, timeout=timeout, **kwargs)


def dump(items: list[RewardItem]) -> list[dict]:  # type: ignore[type-arg]
    return [item.model_dump(exclude_none=True) for item in items]


def test_health_readiness_and_openapi(server) -> None:  # type: ignore[no-untyped-def]
    assert httpx.get(f"{server}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{server}/readyz").json()["status"] == "ready"
    spec = httpx.get(f"{server}/openapi.json").json()
    assert {"/reward", "/generate", "/v1/completions", "/v1/chat/completions"} <= set(spec["paths"])
    assert "413" in spec["paths"]["/reward"]["post"]["responses"]


def test_metrics_include_the_standard_process_and_python_families(server) -> None:  # type: ignore[no-untyped-def]
    """/metrics had only xlreward_* families: its own registry lacked the collectors the default one has."""
    assert metric_total(server, "process_resident_memory_bytes") > 0
    assert metric_total(server, "process_cpu_seconds_total") > 0
    assert list(metric_samples(server, "python_info").values()) == [1.0]
    assert metric_samples(server, "python_gc_collections_total")  # one sample per generation


def test_served_scores_equal_cli_and_plain_computation(server, llama_pair, tmp_path) -> None:  # type: ignore[no-untyped-def]
    response = post_reward(server, {"items": dump(ITEMS)})
    assert response.status_code == 200, response.text
    served = response.json()["results"]
    assert [r["id"] for r in served] == [item.id for item in ITEMS]

    source, out = tmp_path / "items.jsonl", tmp_path / "scored.jsonl"
    source.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in dump(ITEMS)))
    subprocess.run(
        [
            XLREWARD,
            "score",
            "--policy",
            str(llama_pair.policy),
            "--reference",
            str(llama_pair.reference),
            "--input",
            str(source),
            "--output",
            str(out),
            "--device",
            "cpu",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    offline = [json.loads(line) for line in out.read_text().splitlines()]

    cpu = torch.device("cpu")
    policy = load_causal_lm(llama_pair.policy, cpu, torch.float32)
    reference = load_causal_lm(llama_pair.reference, cpu, torch.float32)
    tokenizer = load_tokenizer(llama_pair.policy)
    for item, got, cli in zip(ITEMS, served, offline, strict=True):
        policy_logp, count = plain_logp(policy, tokenizer, item)
        reference_logp, _ = plain_logp(reference, tokenizer, item)
        assert got["num_response_tokens"] == cli["num_response_tokens"] == count
        assert got["policy_logp"] == pytest.approx(cli["policy_logp"], abs=1e-4)
        assert got["policy_logp"] == pytest.approx(policy_logp, abs=1e-4)
        assert got["reference_logp"] == pytest.approx(reference_logp, abs=1e-4)
        assert got["reward"] == pytest.approx(0.1 * (policy_logp - reference_logp), abs=2e-5)


def test_group_is_ranked_and_equals_items_scored_alone(server) -> None:  # type: ignore[no-untyped-def]
    responses = ["4", "Four.", "2+2 equals 4, of course!", "5", "четыре", "四"]
    body = {"groups": [{"id": "g1", "prompt": "What is 2+2?", "responses": responses}], "beta": 0.5}
    group = post_reward(server, body).json()["groups"][0]
    assert group["id"] == "g1"
    rewards = [r["reward"] for r in group["results"]]
    assert rewards == sorted(rewards, reverse=True)
    assert [r["rank"] for r in group["results"]] == list(range(len(responses)))
    alone = post_reward(
        server, {"items": [{"prompt": "What is 2+2?", "response": r} for r in responses], "beta": 0.5}
    ).json()["results"]
    for ranked in group["results"]:
        single = alone[ranked["index"]]
        assert ranked["policy_logp"] == pytest.approx(single["policy_logp"], abs=1e-4)
        assert ranked["reward"] == pytest.approx(single["reward"], abs=1e-4)


def test_many_concurrent_clients_are_batched_together(server, local_engine) -> None:  # type: ignore[no-untyped-def]
    """40 clients at once: every request answered, results equal sequential scoring, and forward batches
    larger than any single request (3 items) show up in /metrics."""
    requests = [
        [
            RewardItem(
                id=f"{c}-{k}", prompt=f"Client {c} asks question {k}.", response=f"Answer {k} for {c}."
            )
            for k in range(3)
        ]
        for c in range(40)
    ]
    before = histogram_count_above(server, "xlreward_batch_items", 4)
    busy_before = metric_total(server, "xlreward_batch_seconds_sum")
    barrier = threading.Barrier(len(requests))

    def call(items: list[RewardItem]) -> list[dict]:  # type: ignore[type-arg]
        barrier.wait()
        response = post_reward(server, {"items": dump(items)})
        assert response.status_code == 200, response.text
        return response.json()["results"]

    started = time.perf_counter()
    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(call, requests))
    busy = metric_total(server, "xlreward_batch_seconds_sum") - busy_before
    assert 0 < busy <= time.perf_counter() - started  # the models' time, within the requests' span
    for items, answer in zip(requests, answers, strict=True):
        expected = local_engine.score(items)
        assert [r["id"] for r in answer] == [item.id for item in items]
        for got, want in zip(answer, expected, strict=True):
            assert got["policy_logp"] == pytest.approx(want.policy_logp, abs=1e-4)
            assert got["reference_logp"] == pytest.approx(want.reference_logp, abs=1e-4)
    assert histogram_count_above(server, "xlreward_batch_items", 4) > before
    assert histogram_count_above(server, "xlreward_batch_requests", 1) > 0


def test_client_sync_and_async_against_the_server(server) -> None:  # type: ignore[no-untyped-def]
    with RewardClient(server, max_items_per_request=2) as client:
        assert client.health() and client.ready()
        results = client.reward(ITEMS)  # chunked into 3 requests
        assert [r.id for r in results] == [item.id for item in ITEMS]
        ranked = client.rank("What is 2+2?", ["4", "5", "four"])
        assert sorted(r.index for r in ranked.results) == [0, 1, 2]

    async def main() -> list[float]:
        async with AsyncRewardClient(server, max_items_per_request=2) as client:
            return [r.policy_logp for r in await client.reward(ITEMS)]

    assert asyncio.run(main()) == pytest.approx([r.policy_logp for r in results], abs=1e-4)


# --- bad input: a clear 4xx that names the item and what to fix -----------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        ({"items": []}, 422, "invalid_request", 'at least one entry in "items" or "groups"'),
        ({"items": [{"prompt": "hi"}]}, 422, "invalid_request", "items[0].response: Field required"),
        ({"items": [{"prompt": "hi", "response": 5}]}, 422, "invalid_request", "items[0].response"),
        ({"items": [{"prompt": "", "response": "x"}]}, 422, "invalid_request", "items[0].prompt"),
        (
            {"items": [{"prompt": "hi", "response": "x", "respnse": "y"}]},
            422,
            "invalid_request",
            "items[0].respnse: Extra inputs are not permitted",
        ),
        ({"items": [{"prompt": "hi", "response": "x"}], "beta": -1}, 422, "invalid_request", "beta"),
        ({"items": [{"prompt": "hi", "response": "x"}], "bta": 1}, 422, "invalid_request", "bta"),
        ({"groups": [{"prompt": "hi", "responses": []}]}, 422, "invalid_request", "groups[0].responses"),
        (
            {"items": [{"prompt": "hi", "response": "x"}, {"prompt": "hi", "response": "word " * 600}]},
            413,
            "too_long",
            "items[1]: the item is",
        ),
        (
            {"groups": [{"prompt": "hi", "responses": ["ok", "word " * 600]}]},
            413,
            "too_long",
            "groups[0].responses[1]",
        ),
        (
            {
                "items": [
                    {
                        "prompt": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                        "response": "x",
                    }
                ]
            },
            422,
            "bad_prompt",
            "items[0]: a prompt given as chat messages",
        ),
        ({"items": [{"prompt": "hi", "response": "x"}] * 257}, 413, "too_many_items", "the limit is 256"),
    ],
)
def test_bad_input_gets_a_clear_4xx(server, body, status: int, code: str, message: str) -> None:  # type: ignore[no-untyped-def]
    response = post_reward(server, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert message in error["message"]


def test_too_long_names_the_context_limit_and_truncation_is_on_request(server) -> None:  # type: ignore[no-untyped-def]
    long = {"prompt": "hi", "response": "word " * 600}
    refused = post_reward(server, {"items": [long]}).json()["error"]
    assert "context is 1024 tokens" in refused["message"] and refused["location"] == "items[0]"
    cut = post_reward(server, {"items": [long], "truncate": True}).json()["results"][0]
    assert cut["truncated"] is True and cut["num_response_tokens"] > 900


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b'{"items": [', 400, "malformed_json"),
        (b'{"items": [{"prompt": "\xff\xfe", "response": "x"}]}', 400, "malformed_body"),
        (b'{"items": [{"prompt": "hi", "response": "x"}], "beta": NaN}', 422, "invalid_request"),
    ],
)
def test_malformed_bodies(server, content: bytes, status: int, code: str) -> None:  # type: ignore[no-untyped-def]
    response = httpx.post(f"{server}/reward", content=content, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_unknown_route_uses_the_envelope(server) -> None:  # type: ignore[no-untyped-def]
    response = httpx.get(f"{server}/nope")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"


# --- generation ------------------------------------------------------------------------------------------


def test_generate_n_samples_seeded_and_stop_strings(server) -> None:  # type: ignore[no-untyped-def]
    body = {
        "prompts": ["Write a poem.", [{"role": "user", "content": "Привет"}]],
        "n": 3,
        "temperature": 1.0,
        "max_tokens": 12,
        "seed": 42,
    }
    first = httpx.post(f"{server}/generate", json=body, timeout=120).json()
    again = httpx.post(f"{server}/generate", json=body, timeout=120).json()
    other = httpx.post(f"{server}/generate", json={**body, "seed": 43}, timeout=120).json()
    assert [r["index"] for r in first["results"]] == [0, 1]
    assert all(len(r["completions"]) == 3 for r in first["results"])
    assert first == again
    assert first != other
    greedy = {"prompts": ["Count to ten."], "temperature": 0, "max_tokens": 16}
    text = httpx.post(f"{server}/generate", json=greedy, timeout=120).json()["results"][0]["completions"][0]
    stop = text["text"][3:5]
    stopped = httpx.post(f"{server}/generate", json={**greedy, "stop": [stop]}, timeout=120).json()
    completion = stopped["results"][0]["completions"][0]
    assert completion["finish_reason"] == "stop"
    assert completion["text"] == text["text"][: text["text"].index(stop)]


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        ({"prompts": ["word " * 1100]}, 413, "too_long", "prompts[0] is"),
        ({"prompts": [[{"role": "assistant", "content": "x"}]]}, 422, "bad_prompt", "prompts[0]"),
        ({"prompts": []}, 422, "invalid_request", "prompts"),
        ({"prompts": ["x"], "n": 0}, 422, "invalid_request", "n"),
        ({"prompts": ["x"], "top_p": 0}, 422, "invalid_request", "top_p"),
        ({"prompts": ["x"] * 9, "n": 30}, 413, "too_many_items", "limit is 256"),
    ],
)
def test_bad_generation_requests(server, body, status: int, code: str, message: str) -> None:  # type: ignore[no-untyped-def]
    response = httpx.post(f"{server}/generate", json=body, timeout=120)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert message in response.json()["error"]["message"]


def test_openai_compatible_endpoints(server) -> None:  # type: ignore[no-untyped-def]
    chat = httpx.post(
        f"{server}/v1/chat/completions",
        timeout=120,
        json={
            "model": "x",
            "messages": [{"role": "user", "content": "Hi"}],
            "n": 2,
            "max_tokens": 8,
            "seed": 1,
            "user": "ignored-by-us",
        },
    )
    assert chat.status_code == 200, chat.text
    assert chat.json()["object"] == "chat.completion"
    assert [c["index"] for c in chat.json()["choices"]] == [0, 1]
    text = httpx.post(
        f"{server}/v1/completions",
        timeout=120,
        json={"prompt": ["Once upon", "A time"], "n": 2, "max_tokens": 5, "seed": 3},
    )
    assert [c["index"] for c in text.json()["choices"]] == [0, 1, 2, 3]
    streaming = httpx.post(f"{server}/v1/completions", json={"prompt": "x", "stream": True})
    assert streaming.status_code == 400 and "streaming" in streaming.json()["error"]["message"]


def test_upstream_backend_against_a_second_server(server, llama_pair, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A second xlreward server samples through the first one's OpenAI-compatible API (as it would through
    vLLM): n samples per prompt, reproducible for a seed, while scoring stays local."""

    def upstream_calls() -> float:
        samples = metric_samples(server, "xlreward_requests_total")
        return sum(v for k, v in samples.items() if 'endpoint="/v1/chat/completions"' in k and "200" in k)

    with running_server(llama_pair, tmp_path, generation_backend="openai", upstream_url=server) as second:
        body = {"prompts": ["Write a poem.", "Tell a story."], "n": 2, "max_tokens": 10, "seed": 5}
        before = upstream_calls()
        first = httpx.post(f"{second}/generate", json=body, timeout=120)
        assert first.status_code == 200, first.text
        assert upstream_calls() == before + 2  # one upstream call per prompt
        assert [len(r["completions"]) for r in first.json()["results"]] == [2, 2]
        again = httpx.post(f"{second}/generate", json=body, timeout=120).json()
        assert again == first.json()
        other = httpx.post(f"{second}/generate", json={**body, "seed": 6}, timeout=120).json()
        assert other != first.json()
        scored = post_reward(second, {"items": dump(ITEMS[:2])}).json()["results"]
        local = post_reward(server, {"items": dump(ITEMS[:2])}).json()["results"]
        assert scored[0]["policy_logp"] == pytest.approx(local[0]["policy_logp"], abs=1e-4)


# --- sharing, overload, deadlines, disconnects -------------------------------------------------------------


def test_overload_answers_429_and_client_retries_get_everything_through(llama_pair, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with running_server(
        llama_pair,
        tmp_path,
        max_queue_items=8,
        max_items_per_request=8,
        batch_wait_ms=200,
        max_batch_tokens=256,
    ) as url:
        items = [{"prompt": f"Question {i}?", "response": f"Answer {i}."} for i in range(8)]
        with ThreadPoolExecutor(16) as pool:
            raw = list(pool.map(lambda _: post_reward(url, {"items": items}), range(16)))
        limited = [r for r in raw if r.status_code == 429]
        assert limited and all(r.status_code in (200, 429) for r in raw)
        assert int(limited[0].headers["Retry-After"]) >= 1
        assert limited[0].json()["error"]["code"] == "queue_full"

        def with_client(_: int) -> int:
            with RewardClient(url, max_retries=30) as client:
                return len(client.reward(items))

        with ThreadPoolExecutor(16) as pool:
            assert list(pool.map(with_client, range(16))) == [8] * 16


def test_tenant_flood_does_not_stall_another_tenant(llama_pair, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Tenant A queues a big batch job; tenant B's small requests keep completing, each at a yield point of
    A's running batch or ahead of A's next one: all of B's requests finish before A's job does."""
    keys = {"key-a": "team-a", "key-b": "team-b"}
    with running_server(
        llama_pair, tmp_path, api_keys=keys, max_batch_tokens=1024, batch_wait_ms=1, max_queue_items=10000
    ) as url:
        unauthorized = post_reward(url, {"items": dump(ITEMS[:1])})
        assert unauthorized.status_code == 401 and unauthorized.json()["error"]["code"] == "unauthorized"
        a_headers = {"Authorization": "Bearer key-a"}
        b_headers = {"Authorization": "Bearer key-b"}
        flood = [
            {"prompt": f"Summarise document {i}.", "response": "A long summary. " * 20} for i in range(250)
        ]
        finished: list[tuple[str, float]] = []

        def a_job(k: int) -> None:
            response = post_reward(url, {"items": flood}, headers=a_headers, timeout=600)
            assert response.status_code == 200, response.text
            finished.append(("a", time.monotonic()))

        with ThreadPoolExecutor(8) as pool:
            jobs = [pool.submit(a_job, k) for k in range(6)]
            wait_until(
                lambda: metric_samples(url, "xlreward_queue_items", a_headers)[""] >= 300,
                "A's flood is queued",
            )
            for _ in range(5):
                response = post_reward(url, {"items": dump(ITEMS[:1])}, headers=b_headers)
                assert response.status_code == 200, response.text
                finished.append(("b", time.monotonic()))
            assert metric_samples(url, "xlreward_queue_items", a_headers)[""] > 0  # A still has queued work
            for job in jobs:
                job.result()
        last_b = max(t for who, t in finished if who == "b")
        assert last_b < max(t for who, t in finished if who == "a")
        counts = metric_samples(url, "xlreward_scored_items_total", a_headers)
        assert counts['{model="default",tenant="team-a"}'] == 1500
        assert counts['{model="default",tenant="team-b"}'] == 5


def test_deadline_and_disconnect(llama_pair, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # ~250 tokens each: one or two per 512-token batch, so the whole request takes seconds to score.
    items = [{"prompt": f"Question {i}?", "response": "A rather long answer. " * 30} for i in range(256)]
    with running_server(
        llama_pair,
        tmp_path,
        request_timeout_s=0.3,
        batch_wait_ms=1,
        max_batch_tokens=512,
        max_queue_items=5000,
    ) as url:
        late = post_reward(url, {"items": items})
        assert late.status_code == 504
        assert late.json()["error"]["code"] == "timeout" and "deadline" in late.json()["error"]["message"]

    with running_server(llama_pair, tmp_path, batch_wait_ms=1, max_batch_tokens=512) as url:
        with contextlib.suppress(httpx.TimeoutException):  # the client gives up and closes its connection
            post_reward(url, {"items": items}, timeout=0.5)
        wait_until(
            lambda: metric_samples(url, "xlreward_rejected_total").get('{reason="disconnected"}', 0) >= 1,
            "the server noticed the disconnect",
        )
        wait_until(lambda: metric_samples(url, "xlreward_queue_items")[""] == 0, "the queue drained")
        time.sleep(0.5)
        scored = metric_total(url, "xlreward_batch_items_sum")
        assert scored < len(items)  # the rest of the abandoned request never reached the models


def test_packed_server_scores_as_the_padded_engine(llama_pair, local_engine, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """XLREWARD_PACKED=true: the server says it scores in packed rows, and every result of concurrent
    item and group requests equals the padded engine's."""
    responses = ["4", "Four.", "2+2 equals 4, of course!", "четыре"]
    group_body = {"groups": [{"prompt": "What is 2+2?", "responses": responses}]}
    port = free_port()
    with (
        running_server(llama_pair, tmp_path, port, "info", packed=True, batch_wait_ms=50) as url,
        ThreadPoolExecutor(2) as pool,
    ):
        items_reply, group_reply = pool.map(
            lambda body: post_reward(url, body), [{"items": dump(ITEMS)}, group_body]
        )
    assert (
        "scoring on cpu, float32, packed rows (per-sequence attention)"
        in (tmp_path / f"server-{port}.log").read_text()
    )
    assert items_reply.status_code == group_reply.status_code == 200, (items_reply.text, group_reply.text)
    expected_items = local_engine.score(ITEMS)
    expected_group = local_engine.score([RewardItem(prompt="What is 2+2?", response=r) for r in responses])
    ranked = sorted(group_reply.json()["groups"][0]["results"], key=lambda result: result["index"])
    served = items_reply.json()["results"] + ranked
    for got, want in zip(served, [*expected_items, *expected_group], strict=True):
        assert got["num_response_tokens"] == want.num_response_tokens
        assert got["policy_logp"] == pytest.approx(want.policy_logp, abs=1e-4)
        assert got["reference_logp"] == pytest.approx(want.reference_logp, abs=1e-4)
