"""Built-in sampling shares the model with scoring in turns, through the scheduler, at the default settings:
a small /reward is answered while a long /generate is still sampling, and a client that leaves stops its
generation. One real server over a socket."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from serving import metric_samples, running_server

LONG = {"prompts": ["Write a long story."], "n": 64, "max_tokens": 900, "temperature": 1.0, "seed": 3}


@pytest.fixture(scope="module")
def server(llama_pair, tmp_path_factory):  # type: ignore[no-untyped-def]
    with running_server(llama_pair, tmp_path_factory.mktemp("turns")) as url:
        yield url


def test_scoring_is_answered_while_a_generation_runs(server: str) -> None:
    finished: dict[str, float] = {}

    def generate() -> None:
        response = httpx.post(f"{server}/generate", json=LONG, timeout=300)
        assert response.status_code == 200, response.text
        finished["generate"] = time.monotonic()

    sampler = threading.Thread(target=generate)
    sampler.start()
    time.sleep(0.5)  # the generation is under way (the same request alone runs for seconds)
    assert "generate" not in finished
    scored = httpx.post(
        f"{server}/reward", json={"items": [{"prompt": "Hi", "response": "Hello!"}]}, timeout=300
    )
    finished["reward"] = time.monotonic()
    sampler.join()
    assert scored.status_code == 200, scored.text
    assert finished["reward"] < finished["generate"]


def test_a_client_that_leaves_stops_its_generation(server: str) -> None:
    before = metric_samples(server, "xlreward_rejected_total").get('{reason="disconnected"}', 0.0)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server}/generate", json=LONG, timeout=0.5)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        after = metric_samples(server, "xlreward_rejected_total").get('{reason="disconnected"}', 0.0)
        if after > before:
            break
        time.sleep(0.1)
    assert after == before + 1, (before, after)
