"""Benchmark of the real reward server under load and abuse. See bench/README.md ("Service under load").

    .venv/bin/python bench/service_load.py [--quick] [--sections load,fairness,generation,admission]
    .venv/bin/python bench/service_load.py --url http://host:8000 --api-key KEY [--second-key KEY_B]

Without ``--url`` each section starts its own ``xlreward serve`` (a fresh process, so one section's
leftovers do not weigh on the next) for a tiny offline Llama pair built into .cache/xlreward/bench-models/,
with two tenants' keys (key-a: team-a, key-b: team-b); any XLREWARD_* variable in this process's
environment (XLREWARD_DEVICE=cpu, say) reaches the server too. The clients are threads of this process.

Sections:
  load        --requests small /reward requests from --concurrency clients against a queue bound of
              --queue-items: every answer must be 200 or 429, every 429 must carry Retry-After
  fairness    tenant B's one-item latency alone, then while tenant A floods the queue with long items
  generation  a small /reward's latency alone, then while a long /generate (n=64) is always running
  admission   a 100 MB body's 413, and /healthz latency while clients send 10 MB bodies or trickle headers

Prints a table per section and writes bench/results/service-load-<name>.json (every number and setting).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tiny pair is built offline; nothing is downloaded
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse
import http.client
import itertools
import json
import math
import platform
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any
from urllib.parse import urlsplit

import harness
import httpx

SECTIONS = ("load", "fairness", "generation", "admission")
TENANT_KEYS = {"key-a": "team-a", "key-b": "team-b"}  # the keys of a server this bench starts
LOG_DIR = harness.CACHE / "service-load"
READY_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 600.0
RETRY_PAUSE_S = 0.05  # the retry probe's pause after a 429: the resolution of its time to a 200
SLOW_BYTE_INTERVAL_S = 0.1  # how often each slow client sends its next header byte
HEALTHZ_TARGET_S = 0.1
FAIRNESS_TARGET_RATIO = 2.0
SHORT_PROMPT = "Answer in one word: what colour is the sky?"
SHORT_RESPONSE = "Blue."
LONG_RESPONSE = "The sea is wide and the waves roll in, one after another, all day long. " * 60  # ~4k chars
GENERATE_PROMPT = "Write a very long story about the sea."


@dataclass(frozen=True)
class Sizes:
    """How much each section sends; ``--quick`` scales everything down (and --requests to 400)."""

    requests: int = 5000  # load: /reward requests in all
    concurrency: int = 64  # load: clients sending them
    items_per_request: int = 4  # load: small items per request
    queue_items: int = 16  # load: the server's queue bound (XLREWARD_MAX_QUEUE_ITEMS), when it starts one
    latency_requests: int = 300  # fairness, generation: sequential one-item requests, alone and under load
    flood_loops: int = 48  # fairness: tenant A's concurrent loops
    flood_items: int = 16  # fairness: long items per flood request (truncated to the model's context)
    flood_alone_s: float = 5.0  # fairness: the flood's scoring rate measured alone over this long
    generate_n: int = 64  # generation: completions per /generate
    generate_max_tokens: int = 960  # generation: the tiny model's 1024-token context less the prompt
    huge_body_mb: int = 100  # admission: the declared size of the body refused with 413
    big_body_clients: int = 4  # admission: clients each sending 10 MB bodies in a loop
    big_body_mb: int = 10
    slow_clients: int = 300  # admission: connections trickling header bytes
    healthz_probes: int = 200  # admission: sequential /healthz calls in each phase


QUICK = Sizes(
    requests=400,
    latency_requests=10,
    flood_loops=4,
    flood_items=2,
    flood_alone_s=1.0,
    generate_n=8,
    generate_max_tokens=64,
    big_body_clients=2,
    slow_clients=50,
    healthz_probes=40,
)


@dataclass(frozen=True)
class Target:
    """A server to measure: its URL and the keys of tenant A (every section) and tenant B (fairness)."""

    url: str
    key: str | None
    second_key: str | None

    def headers(self, key: str | None = None) -> dict[str, str]:
        key = key or self.key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(key), timeout=REQUEST_TIMEOUT_S)


# --- measuring helpers -----------------------------------------------------------------------------------


def percentiles(seconds: list[float]) -> dict[str, Any]:
    """Nearest-rank p50 and p99 (and the max) of latencies in seconds; None when there are none."""
    ordered = sorted(seconds)

    def rank(p: float) -> float | None:
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] if ordered else None

    return {"count": len(ordered), "p50_s": rank(50), "p99_s": rank(99), "max_s": rank(100)}


def metric_total(target: Target, name: str) -> float | None:
    """The sum of a metric's samples over all its labels, from /metrics (None: not served)."""
    try:
        response = httpx.get(f"{target.url}/metrics", headers=target.headers(), timeout=30)
    except httpx.HTTPError:
        return None
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in response.text.splitlines()
        if line.startswith((f"{name} ", f"{name}{{"))
    ]
    return sum(values) if values else None


def scoring_rate(target: Target, during: Callable[[], None], others: int = 0) -> float | None:
    """Items the server scored per second while ``during()`` ran, less ``others`` items that were not the
    load's (from ``xlreward_batch_items``; None without /metrics)."""
    before, started = metric_total(target, "xlreward_batch_items_sum"), time.perf_counter()
    during()
    after, seconds = metric_total(target, "xlreward_batch_items_sum"), time.perf_counter() - started
    scored = _difference(after, before)
    return None if scored is None else round((scored - others) / seconds, 2)


def resident_mb(target: Target) -> float | None:
    """The server's resident memory from /metrics (``process_resident_memory_bytes``), in MB."""
    rss = metric_total(target, "process_resident_memory_bytes")
    return None if rss is None else round(rss / 2**20, 1)


def small_items(count: int) -> list[dict[str, str]]:
    return [{"prompt": SHORT_PROMPT, "response": f"{SHORT_RESPONSE} ({i})"} for i in range(count)]


def sequential_latencies(target: Target, key: str | None, path: str, body: Any, count: int) -> dict[str, Any]:
    """``count`` requests one after another on one connection; the latencies of the 200s, the statuses."""
    latencies, statuses = [], Counter[str]()
    with target.client(key) as client:
        for _ in range(count):
            started = time.perf_counter()
            response = client.request("GET" if body is None else "POST", path, json=body)
            statuses[str(response.status_code)] += 1
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
    return {**percentiles(latencies), "statuses": dict(statuses)}


def healthz_latencies(target: Target, count: int) -> dict[str, Any]:
    """GET /healthz as a load balancer's probe sends it: a new connection each time, no key.

    The probe is a bare ``http.client`` connection: ``httpx.get`` builds a client, and with it an SSL
    context, on every call (about 28 ms of this process's CPU on these machines), which measured the
    benchmark's own client rather than the server."""
    address = urlsplit(target.url)
    latencies, statuses = [], Counter[str]()
    for _ in range(count):
        started = time.perf_counter()
        connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=30)
        try:
            connection.request("GET", f"{address.path.rstrip('/')}/healthz")
            response = connection.getresponse()
            response.read()
            status = str(response.status)
        except OSError as error:  # refused, reset or timed out: counted by name, with its time
            status = type(error).__name__
        finally:
            connection.close()
        statuses[status] += 1
        latencies.append(time.perf_counter() - started)  # a failed probe counts with its time too
    return {**percentiles(latencies), "statuses": dict(statuses)}


class Background:
    """``loops`` threads, each repeating ``send(client)`` until the block ends, as tenant ``key``; counts
    every answer they got (the first included). Entering returns once the first request has come back, so
    the block measures while the load is already running; leaving waits for each loop's request in flight."""

    def __init__(
        self, target: Target, loops: int, send: Callable[[httpx.Client], httpx.Response], key: str | None
    ) -> None:
        self.target, self.send, self.key = target, send, key
        self.statuses = Counter[str]()
        self.seconds: list[float] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.first = threading.Event()
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(loops)]

    def _loop(self) -> None:
        with self.target.client(self.key) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    status = str(self.send(client).status_code)
                except Exception as error:  # counted as an outcome, never lost in a thread
                    status = type(error).__name__
                with self.lock:
                    self.statuses[status] += 1
                    self.seconds.append(time.perf_counter() - started)
                self.first.set()

    def __enter__(self) -> Background:
        for thread in self.threads:
            thread.start()
        if not self.first.wait(timeout=REQUEST_TIMEOUT_S):
            self.__exit__()
            raise RuntimeError("the background load got no answer within its timeout")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()

    def summary(self) -> dict[str, Any]:
        return {"statuses": dict(self.statuses), "seconds": percentiles(self.seconds)}


# --- sections --------------------------------------------------------------------------------------------


class LoadTally:
    """What the load section's clients got back, every attempt counted (shared by their threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.statuses = Counter[str]()
        self.latencies: list[float] = []  # of the 200s
        self.refused_to_200: list[float] = []  # from a request's first 429 to its 200
        self.retry_after: list[float] = []
        self.missing_retry_after = 0
        self.errors: list[str] = []

    def failed(self, error: httpx.HTTPError) -> None:
        with self.lock:
            self.statuses[type(error).__name__] += 1

    def answered(self, response: httpx.Response, started: float, refused_at: float | None) -> None:
        ended = time.perf_counter()
        with self.lock:
            self.statuses[str(response.status_code)] += 1
            if response.status_code == 200:
                self.latencies.append(ended - started)
                if refused_at is not None:
                    self.refused_to_200.append(ended - refused_at)
            elif response.status_code == 429:
                value = response.headers.get("Retry-After")
                if value is None:
                    self.missing_retry_after += 1
                else:
                    self.retry_after.append(float(value))
            elif len(self.errors) < 5:
                self.errors.append(f"{response.status_code}: {response.text[:200]}")


def send_until_served(http: httpx.Client, body: Any, tally: LoadTally) -> None:
    """One /reward request, retried RETRY_PAUSE_S after each 429 until it gets another answer."""
    refused_at = None
    while True:
        started = time.perf_counter()
        try:
            response = http.post("/reward", json=body)
        except httpx.HTTPError as error:
            tally.failed(error)
            return
        tally.answered(response, started, refused_at)
        if response.status_code != 429:
            return
        refused_at = refused_at or started
        time.sleep(RETRY_PAUSE_S)


def run_load(target: Target, sizes: Sizes) -> dict[str, Any]:
    """``requests`` small /reward requests from ``concurrency`` clients, each sending its next as soon as
    its last is answered; a 429 is an answer (not retried), so the queue stays full. Beside them one
    retry probe retries each 429 it gets until a 200, timing that against the Retry-After it was given."""
    body = {"items": small_items(sizes.items_per_request)}
    tickets, tally, probe, done = itertools.count(), LoadTally(), LoadTally(), threading.Event()

    def client() -> None:
        with target.client() as http:
            while next(tickets) < sizes.requests:
                started = time.perf_counter()
                try:
                    tally.answered(http.post("/reward", json=body), started, None)
                except httpx.HTTPError as error:
                    tally.failed(error)

    def retry_probe() -> None:
        with target.client() as http:
            while not done.is_set():
                send_until_served(http, body, probe)

    rss_before = resident_mb(target)
    threads = [threading.Thread(target=client, daemon=True) for _ in range(sizes.concurrency)]
    prober = threading.Thread(target=retry_probe, daemon=True)
    started = time.perf_counter()
    for thread in [*threads, prober]:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    done.set()
    prober.join()
    statuses = tally.statuses + probe.statuses
    retry_after = tally.retry_after + probe.retry_after
    return {
        "requests": sizes.requests,
        "concurrency": sizes.concurrency,
        "items_per_request": sizes.items_per_request,
        "seconds": round(seconds, 2),
        "ok_per_s": round(tally.statuses["200"] / seconds, 1),
        "statuses": dict(tally.statuses),
        "only_200_or_429": set(statuses) <= {"200", "429"},  # the probe's answers too
        "missing_retry_after": tally.missing_retry_after + probe.missing_retry_after,
        "retry_after_s": _range(retry_after),
        "latency_200": percentiles(tally.latencies),
        "retry_probe": {
            "statuses": dict(probe.statuses),
            "retry_after_s": _range(probe.retry_after),
            "refused_to_200": percentiles(probe.refused_to_200),
        },
        "rss_mb": {"before": rss_before, "after": resident_mb(target)},
        "errors": tally.errors + probe.errors,
    }


def run_fairness(target: Target, sizes: Sizes) -> dict[str, Any]:
    """Tenant B's one-item /reward latency alone, then while tenant A's loops flood the queue."""
    if not target.second_key:
        return {"skipped": "needs a second tenant's key: give --second-key with --url"}
    one_item = {"items": small_items(1)}
    flood = {
        "items": [{"prompt": SHORT_PROMPT, "response": LONG_RESPONSE}] * sizes.flood_items,
        "truncate": True,
    }
    alone = sequential_latencies(target, target.second_key, "/reward", one_item, sizes.latency_requests)
    with Background(target, sizes.flood_loops, lambda c: c.post("/reward", json=flood), target.key) as load:
        # The flood's scoring rate alone, then while B measures (B's own one-item requests taken out):
        # the models' throughput on it, and what serving B first costs it, to compare between settings.
        alone_rate = scoring_rate(target, lambda: time.sleep(sizes.flood_alone_s))
        flooded: dict[str, Any] = {}

        def measure_b() -> None:
            flooded.update(
                sequential_latencies(target, target.second_key, "/reward", one_item, sizes.latency_requests)
            )

        beside_rate = scoring_rate(target, measure_b, others=sizes.latency_requests)
    return {
        "alone": alone,
        "under_flood": flooded,
        "flood": {
            "loops": sizes.flood_loops,
            "items_per_request": sizes.flood_items,
            **load.summary(),
            "items_per_s_alone": alone_rate,
            "items_per_s_beside_b": beside_rate,
        },
        "p99_ratio": _ratio(flooded["p99_s"], alone["p99_s"]),
        "target_ratio": FAIRNESS_TARGET_RATIO,
    }


def run_generation(target: Target, sizes: Sizes) -> dict[str, Any]:
    """A small /reward's latency alone, then while a long /generate is always running (one loop sends the
    next as soon as the last one returns)."""
    one_item = {"items": small_items(1)}
    request = {
        "prompts": [GENERATE_PROMPT],
        "n": sizes.generate_n,
        "max_tokens": sizes.generate_max_tokens,
        "seed": 0,
    }
    tokens: list[int] = []

    def generate(client: httpx.Client) -> httpx.Response:
        response = client.post("/generate", json=request)
        if response.status_code == 200:
            tokens.extend(c["num_tokens"] for r in response.json()["results"] for c in r["completions"])
        return response

    alone = sequential_latencies(target, target.key, "/reward", one_item, sizes.latency_requests)
    with Background(target, 1, generate, target.key) as load:
        beside = sequential_latencies(target, target.key, "/reward", one_item, sizes.latency_requests)
    return {
        "alone": alone,
        "beside_generate": beside,
        "generate": {
            "n": sizes.generate_n,
            "max_tokens": sizes.generate_max_tokens,
            "mean_completion_tokens": round(sum(tokens) / len(tokens), 1) if tokens else None,
            **load.summary(),
        },
        "p99_ratio": _ratio(beside["p99_s"], alone["p99_s"]),
    }


def run_admission(target: Target, sizes: Sizes) -> dict[str, Any]:
    """A huge declared body's 413; then /healthz alone, beside clients sending 10 MB bodies, and beside
    slow clients holding connections open."""
    rss_before = resident_mb(target)
    huge = refuse_huge_body(target, sizes.huge_body_mb * 2**20)
    huge["rss_growth_mb"] = _difference(resident_mb(target), rss_before)
    alone = healthz_latencies(target, sizes.healthz_probes)
    body = json.dumps({"items": [{"prompt": "Hi", "response": "x" * (sizes.big_body_mb * 2**20)}]}).encode()
    headers = {"Content-Type": "application/json"}
    with Background(
        target, sizes.big_body_clients, lambda c: c.post("/reward", content=body, headers=headers), target.key
    ) as big:
        beside_big = healthz_latencies(target, sizes.healthz_probes)
    with slow_clients(target, sizes.slow_clients) as slow:
        beside_slow = healthz_latencies(target, sizes.healthz_probes)
    big_statuses = big.summary()["statuses"]
    return {
        "huge_body": huge,
        "healthz_alone": alone,
        "healthz_beside_big_bodies": beside_big,
        "big_bodies": {"clients": sizes.big_body_clients, "mb": sizes.big_body_mb, **big.summary()},
        "big_bodies_never_5xx": all(s.isdigit() and int(s) < 500 for s in big_statuses),
        "healthz_beside_slow_clients": beside_slow,
        "slow_clients": slow,
        "healthz_target_s": HEALTHZ_TARGET_S,
        "rss_mb_after": resident_mb(target),
    }


def refuse_huge_body(target: Target, size: int) -> dict[str, Any]:
    """Sends only the headers of a /reward declaring ``size`` bytes, by hand (an HTTP library would send
    the body first), and times the answer."""
    host, port = target.url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    auth = "".join(f"{name}: {value}\r\n" for name, value in target.headers().items())
    head = f"POST /reward HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{auth}"
    head += f"Content-Length: {size}\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        started = time.perf_counter()
        sock.sendall(head.encode())
        first = sock.recv(65536)
        seconds = time.perf_counter() - started
    status = int(first.split(b" ", 2)[1]) if first.startswith(b"HTTP/") else None
    return {"declared_mb": size // 2**20, "status": status, "seconds_to_answer": round(seconds, 4)}


@contextmanager
def slow_clients(target: Target, count: int) -> Iterator[dict[str, Any]]:
    """``count`` connections sending a /reward's headers one byte every SLOW_BYTE_INTERVAL_S, never ending
    them. Yields once each has sent its first byte; the dict gets how many the server closed meanwhile."""
    host, port = target.url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    prefix = f"POST /reward HTTP/1.1\r\nHost: {host}\r\nX-Slow: ".encode()
    sockets = [socket.create_connection((host, int(port)), timeout=10) for _ in range(count)]
    stop, started = threading.Event(), threading.Event()
    result: dict[str, Any] = {
        "clients": count,
        "byte_interval_s": SLOW_BYTE_INTERVAL_S,
        "closed_by_server": 0,
    }
    open_ = set(range(count))

    def trickle() -> None:
        for position in itertools.count():
            byte = prefix[position : position + 1] or b"a"  # the header line never ends
            for index in list(open_):
                try:
                    sockets[index].send(byte)
                except OSError:
                    open_.discard(index)
            started.set()
            if stop.wait(SLOW_BYTE_INTERVAL_S):
                return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    started.wait()
    try:
        yield result
    finally:
        stop.set()
        thread.join()
        result["closed_by_server"] = count - len(open_)
        for sock in sockets:
            sock.close()


def _range(values: list[float]) -> dict[str, float | None]:
    return {"min": min(values, default=None), "max": max(values, default=None)}


def _span(values: dict[str, float | None]) -> str:
    return "-" if values["min"] is None else f"{values['min']:g}-{values['max']:g}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _difference(a: float | None, b: float | None) -> float | None:
    return round(a - b, 1) if a is not None and b is not None else None


RUNNERS: dict[str, Callable[[Target, Sizes], dict[str, Any]]] = {
    "load": run_load,
    "fairness": run_fairness,
    "generation": run_generation,
    "admission": run_admission,
}


# --- report ----------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}"


def table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


LATENCY_HEADER = ["phase", "requests", "p50 ms", "p99 ms", "statuses"]


def latency_row(label: str, latency: dict[str, Any]) -> list[Any]:
    return [label, latency["count"], _ms(latency["p50_s"]), _ms(latency["p99_s"]), latency["statuses"]]


def format_load(r: dict[str, Any]) -> str:
    retry, latency, rss, probe = r["retry_after_s"], r["latency_200"], r["rss_mb"], r["retry_probe"]
    wait = probe["refused_to_200"]
    header = ["statuses", "only 200/429", "429s w/o Retry-After", "Retry-After s", "200 p50 ms", "200 p99 ms"]
    header += ["200s/s", "RSS MB before→after"]
    row = [r["statuses"], r["only_200_or_429"], r["missing_retry_after"], _span(retry)]
    row += [_ms(latency["p50_s"]), _ms(latency["p99_s"]), r["ok_per_s"], f"{rss['before']}→{rss['after']}"]
    title = f"load: {r['requests']} requests x {r['items_per_request']} items from {r['concurrency']} clients"
    probe_line = (
        f"retry probe: {wait['count']} refused requests, retried every {RETRY_PAUSE_S * 1000:.0f} ms, got a "
        f"200 after p50 {_ms(wait['p50_s'])} ms, max {_ms(wait['max_s'])} ms; told Retry-After "
        f"{_span(probe['retry_after_s'])} s"
    )
    return "\n".join([title, table(header, [row]), probe_line])


def format_fairness(r: dict[str, Any]) -> str:
    flood = r["flood"]
    title = (
        f"fairness: tenant B's one-item /reward, alone and while tenant A floods ({flood['loops']} loops x "
        f"{flood['items_per_request']} long items; the flood's answers {flood['statuses']}; its items scored "
        f"per second: {_per_s(flood.get('items_per_s_alone'))} alone, "
        f"{_per_s(flood.get('items_per_s_beside_b'))} while B measures)"
    )
    rows = [latency_row("alone", r["alone"]), latency_row("A floods", r["under_flood"])]
    ratio = f"p99 ratio {r['p99_ratio']} (target <= {r['target_ratio']})"
    return "\n".join([title, table(LATENCY_HEADER, rows), ratio])


def _per_s(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.2f}"


def format_generation(r: dict[str, Any]) -> str:
    g = r["generate"]
    title = (
        f"generation: a one-item /reward, alone and beside /generate (n={g['n']}, max_tokens "
        f"{g['max_tokens']}, {g['mean_completion_tokens']} tokens per completion on average; answers "
        f"{g['statuses']})"
    )
    rows = [latency_row("alone", r["alone"]), latency_row("beside generate", r["beside_generate"])]
    return "\n".join([title, table(LATENCY_HEADER, rows), f"p99 ratio {r['p99_ratio']}"])


def format_admission(r: dict[str, Any]) -> str:
    huge, slow, big = r["huge_body"], r["slow_clients"], r["big_bodies"]
    title = (
        f"admission: a {huge['declared_mb']} MB declared body answered {huge['status']} in "
        f"{_ms(huge['seconds_to_answer'])} ms (RSS {huge['rss_growth_mb']:+} MB); {big['clients']} clients "
        f"sending {big['mb']} MB bodies got {big['statuses']}; {slow['closed_by_server']} of "
        f"{slow['clients']} slow clients closed by the server"
    )
    rows = [
        latency_row("alone", r["healthz_alone"]),
        latency_row("beside 10 MB bodies", r["healthz_beside_big_bodies"]),
        latency_row("beside slow clients", r["healthz_beside_slow_clients"]),
    ]
    target = f"/healthz target: p99 < {_ms(r['healthz_target_s'])} ms"
    return "\n".join([title, table(["/healthz", *LATENCY_HEADER[1:]], rows), target])


FORMATTERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "load": format_load,
    "fairness": format_fairness,
    "generation": format_generation,
    "admission": format_admission,
}


def format_section(name: str, result: dict[str, Any]) -> str:
    if "error" in result or "skipped" in result:
        return f"{name}: {result.get('skipped') or 'FAILED: ' + result['error']}"
    return FORMATTERS[name](result)


# --- servers and main -----------------------------------------------------------------------------------


def server_env(section: str, sizes: Sizes) -> dict[str, str]:
    """The settings a server this bench starts gets: two tenants, and the small queue for ``load``."""
    env = {"XLREWARD_API_KEYS": json.dumps(TENANT_KEYS)}
    if section == "load":
        env["XLREWARD_MAX_QUEUE_ITEMS"] = str(sizes.queue_items)
        # a request may not be larger than the queue can ever hold
        env["XLREWARD_MAX_ITEMS_PER_REQUEST"] = str(min(sizes.queue_items, 256))
    return env


@contextmanager
def target_for(section: str, args: argparse.Namespace, sizes: Sizes) -> Iterator[Target]:
    if args.url:
        yield Target(args.url.rstrip("/"), args.api_key, args.second_key)
        return
    from xlreward.service.process import serve_process
    from xlreward.trainer.tiny_models import TinySpec, build_tiny_pair

    pair = build_tiny_pair(harness.CACHE / "tiny", TinySpec(arch="llama", template="llama3"))
    log_path = LOG_DIR / f"server-{section}.log"
    log_path.unlink(missing_ok=True)
    env = server_env(section, sizes)
    with serve_process(
        pair.policy, pair.reference, log_path=log_path, env=env, ready_timeout=READY_TIMEOUT_S
    ) as url:
        first, second = list(TENANT_KEYS)
        yield Target(url, first, second)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="every section at tiny sizes (~1 min on a quiet machine)"
    )
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated (default: all)")
    parser.add_argument(
        "--name", help="results file: bench/results/service-load-NAME.json (default quick|full)"
    )
    parser.add_argument("--url", help="measure this running server instead of starting one per section")
    parser.add_argument("--api-key", help="with --url: tenant A's key (every section)")
    parser.add_argument("--second-key", help="with --url: tenant B's key (fairness; skipped without it)")
    parser.add_argument(
        "--requests",
        type=int,
        help=f"load: requests in all (default {Sizes.requests}; --quick {QUICK.requests})",
    )
    parser.add_argument("--concurrency", type=int, help=f"load: clients (default {Sizes.concurrency})")
    parser.add_argument(
        "--queue-items",
        type=int,
        help=f"load: the started server's queue bound (default {Sizes.queue_items}; not with --url)",
    )
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(SECTIONS))
    if unknown or not args.sections:
        parser.error(f"--sections: unknown {unknown}; choose from {','.join(SECTIONS)}")
    if args.url and not args.url.startswith("http://"):
        parser.error("--url: give an http:// URL (the admission section writes raw HTTP/1.1 to the socket)")
    if args.url and args.queue_items:
        parser.error("--queue-items sets the queue of a server this bench starts: drop it with --url")
    for option in ("requests", "concurrency", "queue_items"):
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    chosen = {"requests": args.requests, "concurrency": args.concurrency, "queue_items": args.queue_items}
    sizes = replace(sizes, **{k: v for k, v in chosen.items() if v is not None})
    name = args.name or ("quick" if args.quick else "full")
    report: dict[str, Any] = {
        "settings": {
            "sections": args.sections,
            "quick": args.quick,
            "url": args.url,
            "server": "given" if args.url else "started per section (tiny llama pair)",
            "server_env": {s: server_env(s, sizes) for s in args.sections} if not args.url else None,
            "sizes": asdict(sizes),
            "retry_pause_s": RETRY_PAUSE_S,
        },
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
    }
    started, failed = time.perf_counter(), False
    for section in args.sections:
        load_before, section_started = harness.load_average(), time.perf_counter()
        try:
            with target_for(section, args, sizes) as target:
                result = RUNNERS[section](target, sizes)
        except Exception as error:  # the section fails with a reason; the next still runs
            result, failed = {"error": f"{type(error).__name__}: {error}"}, True
        result["load_average"] = {"before": load_before, "after": harness.load_average()}
        result["section_seconds"] = round(time.perf_counter() - section_started, 1)  # server start included
        report[section] = result
        print(format_section(section, result) + "\n", flush=True)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    harness.RESULTS.mkdir(parents=True, exist_ok=True)
    path = harness.RESULTS / f"service-load-{name}.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path.relative_to(harness.REPO)} ({report['total_seconds']:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
