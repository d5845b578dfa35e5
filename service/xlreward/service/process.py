"""Running `xlreward serve` as a child process: a free loopback port, and waiting until it is ready.
Used by the iteration loop and ``xlreward rl`` (which start their own servers) and by the tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx

READY_POLL_S = 0.2
LOG_TAIL_CHARS = 4000
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, process: subprocess.Popen[bytes], log_path: Path, timeout: float) -> None:
    """Returns once GET /readyz answers 200; raises RuntimeError with the log's tail if the server exits
    or is not ready within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the reward service exited with {process.returncode}:\n{_tail(log_path)}")
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(READY_POLL_S)
    raise RuntimeError(f"the reward service was not ready after {timeout:.0f} s:\n{_tail(log_path)}")


def _tail(log_path: Path) -> str:
    text = log_path.read_text(errors="replace") if log_path.exists() else "(no log)"
    return text[-LOG_TAIL_CHARS:]


@contextmanager
def serve_process(
    policy: Path | None = None,
    reference: Path | None = None,
    *,
    serve_args: Sequence[str] = (),
    log_path: Path,
    env: Mapping[str, str],
    ready_timeout: float,
    port: int | None = None,
    log_level: str = "warning",
) -> Iterator[str]:
    """Runs `xlreward serve` on 127.0.0.1 (a free port unless one is given) with ``env`` added to this
    process's environment; yields its URL once /readyz answers 200, then stops it (SIGTERM, then SIGKILL).
    If this process dies first, even by SIGKILL, the server stops by itself (``--parent-pid``).
    What it serves: one pair (``policy``, ``reference``: ``--policy P --reference R``) and/or ``serve_args``
    (any other `xlreward serve` arguments, e.g. ``["--models", "models.toml"]``); one of them is needed.
    The server's output is appended to ``log_path``."""
    if (policy is None) != (reference is None):
        raise ValueError("serve_process: give both policy and reference, or neither")
    pair = [] if policy is None else ["--policy", str(policy), "--reference", str(reference)]
    if not pair and not serve_args:
        raise ValueError("serve_process: give a policy/reference pair or serve_args (e.g. --models FILE)")
    port = port or free_port()
    command = [
        sys.executable,
        "-m",
        "xlreward.cli.main",
        "serve",
        *pair,
        *serve_args,
        "--port",
        str(port),
        "--log-level",
        log_level,
        "--parent-pid",  # a killed caller takes its server with it
        str(os.getpid()),
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        process = subprocess.Popen(command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log_path, timeout=ready_timeout)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
