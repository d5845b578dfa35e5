"""Celery annotation runs at DEFAULT settings (the broker's hour-long visibility timeout, the product's
lease timings) through the faults a tester found: workers SIGKILLed mid-task, a Redis that restarts
empty, a waiting run killed and re-run. Real reward server, real `xlreward worker` processes, and a
redis-server of each test's own on a free port (so the shared one is never restarted or flushed)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from serving import XLREWARD, free_port, running_server
from test_annotation import (
    LANGUAGES,
    annotate,
    assert_one_outcome_per_unit,
    service_calls,
    start_worker,
    wait_for,
    workers,
    write_instructions,
)

SLOW = ("--max-tokens", "64")  # units long enough to catch one in flight


@pytest.fixture(scope="module")
def service(llama_pair, tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with running_server(llama_pair, tmp_path_factory.mktemp("service"), batch_wait_ms=10) as url:
        yield url


class RedisServer:
    """A redis-server of the test's own, without persistence: a restart comes back empty."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = self.start()

    def start(self) -> subprocess.Popen[bytes]:
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no"]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self._answers, "redis-server answers", timeout=30)
        return process

    def _answers(self) -> bool:
        try:
            return bool(redis.Redis(port=self.port).ping())
        except redis.ConnectionError:
            return False

    def shutdown(self) -> None:
        command = ["redis-cli", "-p", str(self.port), "shutdown", "nosave"]
        subprocess.run(command, check=False, capture_output=True)
        self.process.wait(timeout=30)

    def restart_empty(self) -> None:
        self.shutdown()
        self.process = self.start()


@pytest.fixture
def broker() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    if server.process.poll() is None:
        server.shutdown()


def waiting_run(
    service: str, source: Path, out: Path, broker_url: str, **settings: str
) -> subprocess.Popen[str]:
    """`xlreward annotate --wait` in the background, with extra XLREWARD_* ``settings``."""
    command = [XLREWARD, "annotate", "--instructions", str(source), "--languages", ",".join(LANGUAGES),
               "--service", service, "--out", str(out), "--samples", "4", *SLOW, "--broker", broker_url,
               "--wait"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "XLREWARD_BROKER_URL"}
    env.update({f"XLREWARD_{name.upper()}": value for name, value in settings.items()})
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(run: subprocess.Popen[str]) -> str:
    _, stderr = run.communicate(timeout=600)
    assert run.returncode == 0, stderr
    return stderr


def redispatched(stderr: str) -> int:
    match = re.search(r"all \d+ units done \((\d+) re-dispatched", stderr)
    assert match, stderr
    return int(match.group(1))


def holder(broker_url: str, alive: set[int], timeout: float = 120) -> int:
    """The pid of a live worker holding a unit: the unit's state says running (by host:pid), and its
    lease is alive."""
    client = redis.Redis.from_url(broker_url, decode_responses=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for states in client.scan_iter("xlreward:run:*:units"):
            for unit, raw in client.hgetall(states).items():
                state = json.loads(raw)
                pid = int(state.get("by", ":0").rsplit(":", 1)[1])
                lease = states.removesuffix(":units") + ":lease:" + unit
                if state["state"] == "running" and pid in alive and client.exists(lease):
                    return pid
        time.sleep(0.02)
    raise AssertionError("no worker took a unit")


def test_three_workers_sigkilled_mid_task_cost_a_lease_not_the_visibility_timeout(  # type: ignore[no-untyped-def]
    service, broker, tmp_path
) -> None:
    """Regression: a SIGKILLed worker's unit waited in Redis for the visibility timeout (3,600 s) before
    anyone ran it again. Now its lease lapses and the waiting run re-sends it."""
    broker_url = broker.url
    source, units = write_instructions(tmp_path, ids=4), 12
    env = {**os.environ, "XLREWARD_BROKER_URL": broker_url}
    with workers(2, tmp_path, broker_url) as procs:
        wait_for(lambda: ready_workers(tmp_path) == 2, "the workers are ready")  # start-up is not the run's
        started = time.monotonic()
        finish(waiting_run(service, source, tmp_path / "calm", broker_url))
        calm_s = time.monotonic() - started

        started = time.monotonic()
        run = waiting_run(service, source, tmp_path / "out", broker_url)
        for n in range(3):
            alive = {proc.pid: proc for proc in procs if proc.poll() is None}
            pid = holder(broker_url, set(alive))
            os.killpg(pid, signal.SIGKILL)  # mid-task: its message stays unacknowledged in Redis
            alive[pid].wait()
            procs.append(start_worker(tmp_path, env, 10 + n))
        stderr = finish(run)
        killed_s = time.monotonic() - started
    assert_one_outcome_per_unit(tmp_path / "out", units=units)
    assert redispatched(stderr) >= 3
    print(
        f"\n{units} units: undisturbed {calm_s:.1f} s, with 3 workers SIGKILLed (and replaced) "
        f"{killed_s:.1f} s, {redispatched(stderr)} re-dispatched"
    )


def ready_workers(log_dir: Path) -> int:
    return sum("ready." in log.read_text() for log in log_dir.glob("worker-*.log"))


def test_a_broker_restarted_empty_mid_run_loses_no_finished_unit(service, broker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Regression: Redis restarted empty made `annotate --wait` exit with a raw traceback, and a re-run
    redid every unit. Now the waiter mirrors finished results into the output folder, rides out the
    restart, writes them back and re-sends only the units that were not finished.

    The workers are frozen (SIGSTOP) while Redis goes down, so that "finished before the restart" is
    exactly what the waiter had mirrored by then; each worker may have one request in flight, whose
    result the frozen worker can no longer store in time: those units may be sampled twice, no others."""
    broker_url = broker.url
    source, units, out = write_instructions(tmp_path, ids=4), 12, tmp_path / "out"
    sampled_before = service_calls(service, "/generate")
    with workers(2, tmp_path, broker_url) as procs:
        run = waiting_run(service, source, out, broker_url)
        wait_for(lambda: mirrored(out, "scored") >= units // 2, "half the units are scored and mirrored")
        for proc in procs:
            os.killpg(proc.pid, signal.SIGSTOP)
        wait_for(lambda: mirror_caught_up(out, broker_url), "the mirror caught up with Redis")
        finished_before = mirrored(out, "scored")
        broker.restart_empty()
        for proc in procs:
            os.killpg(proc.pid, signal.SIGCONT)
        stderr = finish(run)
    # Whether the waiter had to say it re-sent lost units depends on timing (every unit may be done before
    # the workers are frozen); what must hold either way is below.
    assert "Traceback" not in stderr, stderr
    assert_one_outcome_per_unit(out, units=units)
    sampled = service_calls(service, "/generate") - sampled_before
    assert sampled <= units + len(procs), (sampled, finished_before)
    print(f"\n{finished_before} of {units} units scored before the restart; {sampled} /generate calls")


def mirrored(out: Path, kind: str) -> int:
    return len(list((out / "state" / kind).glob("*.json")))


def mirror_caught_up(out: Path, broker_url: str) -> bool:
    client = redis.Redis.from_url(broker_url)
    return all(
        sum(int(client.hlen(key)) for key in client.scan_iter(f"xlreward:run:*:{kind}"))
        == mirrored(out, kind)
        for kind in ("generated", "scored")
    )


def test_a_rerun_of_a_killed_waiting_run_does_not_queue_units_twice(service, broker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Regression: re-running a killed `annotate --wait` sent every unfinished unit again, queued or not."""
    broker_url = broker.url
    source, out, units = write_instructions(tmp_path, ids=4), tmp_path / "out", 12
    client = redis.Redis.from_url(broker_url)
    waiting = waiting_run(service, source, out, broker_url)  # no workers: everything stays queued
    wait_for(lambda: client.llen("generation") == units, "every unit is queued")
    waiting.kill()
    waiting.wait()
    again = annotate(service, source, out, "--broker", broker_url, *SLOW)
    assert again.returncode == 0, again.stderr
    assert f"0 of {units} units sent" in again.stderr
    assert client.llen("generation") == units


def test_a_broker_that_stays_away_ends_the_wait_with_the_command_that_resumes(  # type: ignore[no-untyped-def]
    service, broker, tmp_path
) -> None:
    """Regression: a lost Redis ended `annotate --wait` with a raw traceback. Now it retries for
    broker_wait_s, then exits 2 with the command to resume, which completes the run."""
    source, out, units = write_instructions(tmp_path, ids=2), tmp_path / "out", 6
    client = redis.Redis.from_url(broker.url)
    waiting = waiting_run(service, source, out, broker.url, broker_wait_s="2")  # no workers yet
    wait_for(lambda: client.llen("generation") == units, "every unit is queued")
    broker.shutdown()
    _, stderr = waiting.communicate(timeout=120)
    assert waiting.returncode == 2 and "Traceback" not in stderr, stderr
    resume = shlex.split(stderr.split("once Redis is back, resume with: ", 1)[1])
    assert resume[:2] == ["xlreward", "annotate"]
    broker.process = broker.start()  # empty: the queued units are forgotten
    with workers(1, tmp_path, broker.url):
        env = {k: v for k, v in os.environ.items() if k != "XLREWARD_BROKER_URL"}
        resumed = subprocess.run(
            [XLREWARD, *resume[1:]], capture_output=True, text=True, env=env, timeout=600
        )
    assert resumed.returncode == 0, resumed.stderr
    assert_one_outcome_per_unit(out, units=units)


def test_units_that_fail_on_the_workers_end_the_wait_saying_why(service, broker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A non-transient failure (here the service refuses the request) marks the unit failed, so the wait
    ends with the error instead of re-sending the unit every lease period forever."""
    source, out = write_instructions(tmp_path, ids=1), tmp_path / "out"
    with workers(1, tmp_path, broker.url):
        done = annotate(service, source, out, "--broker", broker.url, "--max-tokens", "1000000", "--wait")
    assert done.returncode == 2, done.stderr
    assert "3 units failed on the workers" in done.stderr and "BadRequestError" in done.stderr, done.stderr
