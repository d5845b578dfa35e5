"""Server settings: environment variables, validation messages that say how to fix them, and the CLI."""

from __future__ import annotations

import subprocess

import pytest
from pydantic import ValidationError

from serving import XLREWARD
from xlreward.service.settings import ServiceSettings


def settings(pair, **overrides: object) -> ServiceSettings:  # type: ignore[no-untyped-def]
    return ServiceSettings(policy=pair.policy, reference=pair.reference, **overrides)  # type: ignore[arg-type]


def test_environment_variables_are_read(llama_pair, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("XLREWARD_POLICY", str(llama_pair.policy))
    monkeypatch.setenv("XLREWARD_REFERENCE", str(llama_pair.reference))
    monkeypatch.setenv("XLREWARD_MAX_BATCH_TOKENS", "4096")
    monkeypatch.setenv("XLREWARD_API_KEYS", '{"secret": "team-a"}')
    monkeypatch.setenv("XLREWARD_HOST", "0.0.0.0")
    monkeypatch.setenv("XLREWARD_PACKED", "true")
    loaded = ServiceSettings()  # type: ignore[call-arg]
    assert loaded.max_batch_tokens == 4096 and loaded.api_keys == {"secret": "team-a"} and loaded.packed
    assert ServiceSettings(max_batch_tokens=99).max_batch_tokens == 99  # type: ignore[call-arg]  # flags win


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"batch_wait_ms": 5000, "request_timeout_s": 1},
            "batch_wait_ms (5000.0) must be below request_timeout_s",
        ),
        ({"host": "0.0.0.0"}, "no API keys are set: set XLREWARD_API_KEYS"),
        ({"generation_backend": "openai"}, "set XLREWARD_UPSTREAM_URL"),
        ({"max_items_per_request": 100, "max_queue_items": 10}, "must not exceed max_queue_items"),
        ({"beta": float("nan")}, "finite number"),
        ({"max_batch_tokens": 0}, "greater than or equal to 1"),
        ({"batch_size": 3}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_settings_say_how_to_fix_them(llama_pair, overrides, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings(llama_pair, **overrides)


def test_loopback_hosts_need_no_keys(llama_pair) -> None:  # type: ignore[no-untyped-def]
    for host in ("127.0.0.1", "localhost", "::1"):
        assert settings(llama_pair, host=host).host == host


def test_serve_refuses_bad_settings_with_exit_2(tmp_path) -> None:  # type: ignore[no-untyped-def]
    done = subprocess.run(
        [XLREWARD, "serve", "--policy", str(tmp_path / "missing"), "--reference", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "policy [XLREWARD_POLICY]" in done.stderr and "no such folder" in done.stderr
    assert "Traceback" not in done.stderr
