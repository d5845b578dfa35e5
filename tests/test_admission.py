"""Admission and auth at the settings a user deploys: a body over the default limit is refused before it is
held, keys guard what names tenants or lists the API, and a key map that would let anyone in is refused at
start. One real server with keys for the module, over a socket."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from serving import metric_total, running_server

KEY = "team-a-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MB = 1024 * 1024
DEFAULT_LIMIT = 16 * MB  # ServiceSettings.max_body_bytes' default, which the server below keeps


@pytest.fixture(scope="module")
def server(llama_pair, tmp_path_factory):  # type: ignore[no-untyped-def]
    with running_server(llama_pair, tmp_path_factory.mktemp("admission"), api_keys={KEY: "team-a"}) as url:
        yield url


def resident_bytes(url: str) -> float:
    return metric_total(url, "process_resident_memory_bytes", headers=AUTH)


def raw_post(url: str, head: str, body_parts: list[bytes]) -> tuple[int, str]:
    """Sends a request by hand, as a client streaming a huge body would, and reads the answer as soon as
    the server gives one (an HTTP library would insist on sending the whole body first)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            for part in body_parts:
                sock.sendall(part)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the body ended: the point of the limit
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.split(b"\r\n\r\n", 1)[1]:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status_line, _, rest = answer.decode(errors="replace").partition("\r\n")
    return int(status_line.split()[1]), rest


def test_a_100_mb_body_is_refused_before_it_is_read(server: str) -> None:
    before = resident_bytes(server)
    size = 100 * MB
    head = (
        f"POST /reward HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nAuthorization: Bearer {KEY}"
        f"\r\nContent-Length: {size}\r\n\r\n"
    )
    status, rest = raw_post(server, head, [b"x" * MB] * 4)  # the server answers without waiting for more
    assert status == 413
    assert "XLREWARD_MAX_BODY_BYTES" in rest and "split the request" in rest
    assert resident_bytes(server) - before < DEFAULT_LIMIT


def test_a_chunked_body_is_cut_off_at_the_limit(server: str) -> None:
    """No Content-Length: the server reads up to the limit, then answers 413 and stops reading."""
    before = resident_bytes(server)
    head = (
        "POST /reward HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (MB, b"y" * MB)
    status, _ = raw_post(server, head, [chunk] * 40)  # 40 MB offered, 16 MB allowed
    assert status == 413
    assert resident_bytes(server) - before < DEFAULT_LIMIT
    # The server is still fine, and a normal request still passes the limit.
    scored = httpx.post(
        f"{server}/reward", json={"items": [{"prompt": "hi", "response": "there"}]}, headers=AUTH, timeout=60
    )
    assert scored.status_code == 200, scored.text


@pytest.mark.parametrize("path", ["/metrics", "/openapi.json", "/docs", "/v1/models"])
def test_keys_guard_metrics_and_the_api_description(server: str, path: str) -> None:
    assert httpx.get(f"{server}{path}", timeout=30).status_code == 401
    assert httpx.get(f"{server}{path}", headers={"Authorization": "Bearer"}, timeout=30).status_code == 401
    assert httpx.get(f"{server}{path}", headers=AUTH, timeout=30).status_code == 200


def test_probes_need_no_key(server: str) -> None:
    assert httpx.get(f"{server}/healthz", timeout=30).status_code == 200
    assert httpx.get(f"{server}/readyz", timeout=30).status_code == 200


@pytest.mark.parametrize(
    ("keys", "complaint"),
    [('{"": "team"}', "empty or holds spaces"), ('{"k": " "}', "needs a tenant name"), ("not json", "JSON")],
)
def test_a_key_map_that_lets_anyone_in_is_refused_at_start(
    llama_pair, tmp_path: Path, keys: str, complaint: str
) -> None:  # type: ignore[no-untyped-def]
    command = [sys.executable, "-m", "xlreward.cli.main", "serve", "--policy", str(llama_pair.policy)]
    command += ["--reference", str(llama_pair.reference), "--host", "0.0.0.0"]
    env = {**os.environ, "XLREWARD_API_KEYS": keys}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert complaint in result.stderr and "Traceback" not in result.stderr
