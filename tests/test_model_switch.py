"""Switching the served model pair without a restart, while requests are in flight."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from serving import running_server

ADMIN = {"Authorization": "Bearer admin-secret"}
ITEM = {"prompt": "What is 2+2?", "response": "2+2 is 4."}


def reward(url: str) -> float:
    response = httpx.post(f"{url}/reward", json={"items": [ITEM]}, timeout=120)
    assert response.status_code == 200, response.text
    return float(response.json()["results"][0]["reward"])


def test_hot_switch_serves_new_scores_and_in_flight_requests_complete(llama_pair, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with running_server(llama_pair, tmp_path, admin_key="admin-secret", batch_wait_ms=5) as url:
        before = reward(url)
        assert httpx.get(f"{url}/admin/models").status_code == 401
        served = httpx.get(f"{url}/admin/models", headers=ADMIN).json()["models"]
        assert [model["name"] for model in served] == ["default"]
        assert served[0]["policy"] == str(llama_pair.policy) and served[0]["state"] == "loaded"
        assert served[0]["scoring"] == "cpu, float32, padded rows"

        stop = threading.Event()
        statuses: list[int] = []

        def keep_scoring() -> None:
            with httpx.Client(timeout=120) as client:
                while not stop.is_set():
                    body = {"items": [ITEM] * 8}
                    statuses.append(client.post(f"{url}/reward", json=body).status_code)

        with ThreadPoolExecutor(8) as pool:
            loops = [pool.submit(keep_scoring) for _ in range(8)]
            # The switched pair swaps the roles, so every reward flips its sign.
            swapped = {"policy": str(llama_pair.reference), "reference": str(llama_pair.policy)}
            switched = httpx.post(f"{url}/admin/models", json=swapped, headers=ADMIN, timeout=300)
            stop.set()
            for loop in loops:
                loop.result()
        assert switched.status_code == 200, switched.text
        assert switched.json()["policy"] == str(llama_pair.reference)
        assert statuses and set(statuses) == {200}  # nothing in flight failed
        assert reward(url) == pytest.approx(-before, abs=1e-4)


def test_bad_switch_requests_keep_the_old_pair(llama_pair, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with running_server(llama_pair, tmp_path, admin_key="admin-secret") as url:
        before = reward(url)
        missing = {"policy": str(tmp_path / "nope"), "reference": str(llama_pair.reference)}
        refused = httpx.post(f"{url}/admin/models", json=missing, headers=ADMIN, timeout=60)
        empty = tmp_path / "empty"
        empty.mkdir()
        broken = httpx.post(
            f"{url}/admin/models",
            json={"policy": str(empty), "reference": str(empty)},
            headers=ADMIN,
            timeout=60,
        )
        # A missing folder and an empty one get the same answer, so the endpoint cannot probe the server's
        # disk; the reason is in the server's log.
        assert refused.status_code == broken.status_code == 422
        message = refused.json()["error"]["message"]
        assert "the old version still serves" in message and str(tmp_path) not in message
        assert broken.json()["error"]["message"] == message
        port = url.rsplit(":", 1)[1]
        assert "no such folder" in (tmp_path / f"server-{port}.log").read_text()
        wrong_key = httpx.post(f"{url}/admin/models", json=missing, headers={"Authorization": "Bearer x"})
        assert wrong_key.status_code == 401
        assert reward(url) == pytest.approx(before, abs=1e-6)

    with running_server(llama_pair, tmp_path) as url:  # no admin key: the endpoint is off
        off = httpx.get(f"{url}/admin/models", headers=ADMIN)
        assert off.status_code == 403 and "XLREWARD_ADMIN_KEY" in off.json()["error"]["message"]
