"""A server started by ``serve_process`` stops by itself when the process that started it is SIGKILLed (a
killed loop must not leave a server holding its models)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from xlreward.service.parent_watch import watch_parent

PARENT = """
import sys, time
from pathlib import Path
from xlreward.service.process import serve_process

env = {"XLREWARD_DEVICE": "cpu", "XLREWARD_DTYPE": "float32"}
policy, reference, log = (Path(arg) for arg in sys.argv[1:4])
with serve_process(policy, reference, log_path=log, env=env, ready_timeout=120) as url:
    print(url, flush=True)
    time.sleep(600)
"""


def test_a_pid_that_is_not_the_parent_is_refused() -> None:
    with pytest.raises(ValueError, match="is not this server's parent"):
        watch_parent(os.getpid())


def test_the_server_stops_when_its_starter_is_killed(llama_pair, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    log = tmp_path / "server.log"
    starter = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(llama_pair.policy), str(llama_pair.reference), str(log)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert starter.stdout is not None
        url = starter.stdout.readline().strip()  # once the server is ready
        assert url.startswith("http://127.0.0.1:"), log.read_text()
        servers = psutil.Process(starter.pid).children()
        assert len(servers) == 1 and httpx.get(f"{url}/healthz").status_code == 200
        starter.send_signal(signal.SIGKILL)
        starter.wait()
        _, alive = psutil.wait_procs(servers, timeout=45)
        assert not alive, log.read_text()
        assert "is gone: stopping" in log.read_text()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/healthz", timeout=2)
    finally:
        if starter.poll() is None:
            starter.kill()
