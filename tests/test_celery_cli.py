"""Celery's own command line works on our app (``celery -A xlreward.worker.app ...``, the path the README
documents), and ``xlreward worker --events`` sends the task events Flower and ``celery events`` show.

Regression: ``celery -A xlreward.worker.celery_app inspect ping`` failed ("has no attribute 'celery'"),
since that module only has the ``create_celery`` factory; and task events could not be turned on.
A real worker process on real Redis, the real ``celery`` executable, a real event receiver."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from xlreward.worker.celery_app import BEST_OF_N_TASK, GENERATE_TASK, SCORE_TASK, create_celery
from xlreward.worker.settings import WorkerSettings

# A database no other test uses (they share 14), so no other test's worker answers here.
BROKER = "redis://127.0.0.1:6379/13"
APP = "xlreward.worker.app"
BIN = Path(sys.executable).parent
NODE = f"celery@{socket.gethostname()}"  # Celery's default node name, as `xlreward worker` leaves it
# Task events stop the capture early; heartbeats (every 2 s) bound it when task events never come.
MAX_HEARTBEATS = 15


def redis_answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except redis.RedisError:
        return False


pytestmark = pytest.mark.skipif(not redis_answers(BROKER), reason=f"no Redis at {BROKER}")


def celery_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLREWARD_")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``xlreward worker --events`` until the module's tests are done; yields its log."""
    redis.Redis.from_url(BROKER).flushdb()
    log_path = tmp_path_factory.mktemp("worker") / "worker.log"
    command = [str(BIN / "xlreward"), "worker", "--events", "--broker", BROKER, "--pool", "solo"]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command, env=celery_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while " ready." not in log_path.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        yield log_path
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        redis.Redis.from_url(BROKER).flushdb()


def inspect(command: str) -> Any:
    """``celery -A xlreward.worker.app inspect COMMAND --json`` aimed at the worker (so it returns as soon
    as the worker answers), with nothing but XLREWARD_BROKER_URL to find the broker."""
    argv = [
        str(BIN / "celery"),
        "-A",
        APP,
        "inspect",
        command,
        "--json",
        "--destination",
        NODE,
        "--timeout",
        "20",
    ]
    done = subprocess.run(argv, env=celery_env(XLREWARD_BROKER_URL=BROKER), capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_celery_inspect_ping_and_registered_reach_the_worker(worker: Path) -> None:
    assert inspect("ping") == {NODE: {"ok": "pong"}}, worker.read_text()
    registered = inspect("registered")[NODE]
    assert {GENERATE_TASK, SCORE_TASK, BEST_OF_N_TASK} <= set(registered)


def test_worker_with_events_sends_task_events(worker: Path) -> None:
    """A score task with a bogus payload fails fast in the worker; a monitor still sees it queued,
    received, started and failed. The task is sent once the receiver sees a worker heartbeat (it listens)."""
    app = create_celery(WorkerSettings(broker_url=BROKER, events=True))
    seen: list[dict[str, Any]] = []

    def on_event(event: dict[str, Any]) -> None:
        seen.append(event)
        kinds = [e["type"] for e in seen]
        if kinds.count("worker-heartbeat") == 1 and event["type"] == "worker-heartbeat":
            app.send_task(SCORE_TASK, args=[{"bogus": True}])
        done = {"task-sent", "task-failed"} <= set(kinds)  # sent comes from us, maybe after the others
        receiver.should_stop = done or kinds.count("worker-heartbeat") >= MAX_HEARTBEATS

    try:
        with app.connection_for_read() as connection:
            receiver = app.events.Receiver(connection, handlers={"*": on_event})
            receiver.capture(limit=None, timeout=30, wakeup=True)
    finally:
        app.close()
    task_events = [e for e in seen if e["type"].startswith("task-")]
    (sent,) = [e for e in task_events if e["type"] == "task-sent"]  # from us: task_send_sent_event
    assert sent["name"] == SCORE_TASK
    from_worker = [e["type"] for e in task_events if e["type"] != "task-sent"]
    assert from_worker == ["task-received", "task-started", "task-failed"], worker.read_text()
    assert {e["uuid"] for e in task_events} == {task_events[0]["uuid"]}
    (failed,) = [e for e in task_events if e["type"] == "task-failed"]
    assert "bogus" in failed["exception"]  # the payload's ValidationError, as Flower would show it


def test_celery_without_broker_url_says_what_to_set() -> None:
    """One line naming XLREWARD_BROKER_URL and exit 2, not the traceback Celery prints on a failed load."""
    argv = [str(BIN / "celery"), "-A", APP, "inspect", "ping"]
    done = subprocess.run(argv, env=celery_env(), capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"{APP}: error: no broker URL: set XLREWARD_BROKER_URL (or `xlreward worker --broker`), for example "
        "redis://host:6379/0"
    ]
