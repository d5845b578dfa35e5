"""The service-level row: throughput of POST /reward under many concurrent small requests, against the
offline engine scoring the SAME text items with the same model pair.

``xlreward serve`` runs as a child process on a free loopback port; the clients are threads of this
process (one ``httpx.Client`` each), all released together, each sending its requests one after another.
On a small machine the clients and the server share the cores, which is part of what is measured.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import harness


def run_offline_text(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker: ``load_engine`` with the server's default scoring settings, then ``engine.score`` over all
    items in one call (the engine's best case: it batches them all at once)."""
    from xlreward.service.protocol import RewardItem
    from xlreward.service.scoring.engine import EngineConfig
    from xlreward.service.scoring.loading import load_engine

    harness.set_threads(spec.get("threads"))
    policy_dir, reference_dir = spec["pair_dirs"]
    engine = load_engine(
        policy_dir,
        reference_dir,
        device=spec["device"],
        dtype=spec["dtype"],
        config=EngineConfig(beta=spec["beta"]),
    )
    items = [RewardItem(**item) for item in spec["items"]]
    engine.score(items[: spec["warmup_items"]])
    probe = harness.PeakMemory(spec["device"])
    probe.start()
    started = time.perf_counter()
    results = engine.score(items)
    harness.synchronize(spec["device"])
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        **probe.stop(),
        "rewards": [result.reward for result in results],
        "scored_tokens": sum(result.num_response_tokens for result in results),
        "sequence_tokens": sum(len(engine.tokenize(item)) for item in items),
    }


class Server:
    """``xlreward serve`` for a saved pair, started and stopped by this process (by its own pid)."""

    def __init__(self, pair: harness.PairDirs, spec: dict[str, Any], log_path: Path) -> None:
        from xlreward.service.process import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = {**os.environ, "XLREWARD_BETA": str(spec["beta"])}
        if spec.get("threads"):
            env["OMP_NUM_THREADS"] = str(spec["threads"])
        command = [
            *(sys.executable, "-m", "xlreward.cli.main", "serve"),
            *("--policy", str(pair.policy), "--reference", str(pair.reference)),
            *("--host", "127.0.0.1", "--port", str(self.port)),
            *("--device", spec["device"], "--dtype", spec["dtype"], "--log-level", "warning"),
        ]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("w") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 600) -> None:
        from xlreward.service.process import wait_ready

        wait_ready(self.url, self.process, self.log_path, timeout=timeout)

    def peak_rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            return None
        return None

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _client(
    url: str, requests: list[list[int]], items: list[dict[str, str]], barrier: threading.Barrier, out: Any
) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=3600) as client:
        barrier.wait()
        for indices in requests:
            started = time.perf_counter()
            response = client.post("/reward", json={"items": [items[i] for i in indices]})
            latency = time.perf_counter() - started
            if response.status_code != 200:
                out["errors"].append(f"{response.status_code}: {response.text[:200]}")
                continue
            for index, result in zip(indices, response.json()["results"], strict=True):
                out["rewards"][index] = result["reward"]
            out["latencies"].append(latency)


def measure_service(
    pair: harness.PairDirs,
    items: list[dict[str, str]],
    clients: int,
    per_request: int,
    spec: dict[str, Any],
    log_path: Path,
) -> dict[str, Any]:
    """Starts the server, warms it up, then releases ``clients`` threads that together send every item
    once, ``per_request`` items per request."""
    requests = [list(range(i, min(i + per_request, len(items)))) for i in range(0, len(items), per_request)]
    by_client = [requests[c::clients] for c in range(clients)]
    out: dict[str, Any] = {"rewards": [None] * len(items), "latencies": [], "errors": []}
    server = Server(pair, spec, log_path)
    try:
        started = time.perf_counter()
        server.wait_ready()
        ready_s = time.perf_counter() - started
        _warm_up(server.url, items[: spec["warmup_items"]])
        batches_before = batch_metrics(server.url)
        barrier = threading.Barrier(clients + 1)
        threads = [
            threading.Thread(target=_client, args=(server.url, mine, items, barrier, out), daemon=True)
            for mine in by_client
        ]
        for thread in threads:
            thread.start()
        barrier.wait()
        started = time.perf_counter()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - started
        peak = server.peak_rss_mb()
        batches = {k: v - batches_before.get(k, 0.0) for k, v in batch_metrics(server.url).items()}
    finally:
        server.stop()
    latencies = sorted(out["latencies"])
    return {
        "seconds": seconds,
        "ready_s": round(ready_s, 1),
        "requests": len(requests),
        "errors": out["errors"][:5],
        "error_count": len(out["errors"]),
        "rewards": out["rewards"],
        "latency_p50_s": latencies[len(latencies) // 2] if latencies else None,
        "latency_p95_s": latencies[int(len(latencies) * 0.95)] if latencies else None,
        "server_peak_rss_mb": peak,
        "scheduler_batches": batches,
    }


def batch_metrics(url: str) -> dict[str, float]:
    """The scheduler's batch histograms' counts and sums, from /metrics."""
    import httpx

    wanted = (
        "xlreward_batch_items_count",
        "xlreward_batch_items_sum",
        "xlreward_batch_padded_tokens_sum",
        "xlreward_batch_seconds_sum",
    )
    found: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        name, _, value = line.partition(" ")
        name = name.split("{", 1)[0]  # summed over the model label
        if name in wanted:
            found[name.removeprefix("xlreward_")] = found.get(name.removeprefix("xlreward_"), 0.0) + float(
                value
            )
    return found


def _warm_up(url: str, items: list[dict[str, str]]) -> None:
    import httpx

    try:
        response = httpx.post(f"{url}/reward", json={"items": items}, timeout=600)
    except httpx.HTTPError as error:  # the row fails with a reason; the rows after it still run
        raise RuntimeError(f"the warm-up request failed: {error!r}") from error
    if response.status_code != 200:
        raise RuntimeError(f"the warm-up request answered {response.status_code}: {response.text[:300]}")
