"""Starting real reward servers for tests: `xlreward serve` in a subprocess, uvicorn on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx

from xlreward.service.process import free_port, serve_process, wait_ready

XLREWARD = str(Path(sys.executable).with_name("xlreward"))


def running_server(
    pair, log_dir: Path, port: int | None = None, log_level: str = "warning", **settings: object
):  # type: ignore[no-untyped-def]
    """Runs `xlreward serve` for ``pair`` with extra XLREWARD_* settings; yields its base URL once /readyz
    answers 200, and stops it afterwards. Its output goes to ``log_dir / f"server-{port}.log"``."""
    env = {"XLREWARD_DEVICE": "cpu", "XLREWARD_DTYPE": "float32"}
    for name, value in settings.items():
        env[f"XLREWARD_{name.upper()}"] = json.dumps(value) if isinstance(value, dict) else str(value)
    port = port or free_port()
    return serve_process(
        pair.policy,
        pair.reference,
        log_path=log_dir / f"server-{port}.log",
        env=env,
        ready_timeout=120,
        port=port,
        log_level=log_level,
    )


def metric_samples(url: str, name: str, headers: dict[str, str] | None = None) -> dict[str, float]:
    """Samples of one metric family from /metrics, keyed by their label text (or "" without labels);
    ``headers``: the API key, when the server has keys."""
    samples: dict[str, float] = {}
    response = httpx.get(f"{url}/metrics", headers=headers, timeout=10)
    response.raise_for_status()
    for line in response.text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{.*\}})? (\S+)$", line)
        if match:
            samples[match.group(1) or ""] = float(match.group(2))
    return samples


def metric_total(url: str, name: str, headers: dict[str, str] | None = None) -> float:
    """A metric family's samples summed over their labels (every served model, say)."""
    return sum(metric_samples(url, name, headers).values())


def histogram_count_above(
    url: str, name: str, threshold: float, headers: dict[str, str] | None = None
) -> float:
    """How many observations of a histogram were above ``threshold`` (which must be a bucket bound),
    summed over its other labels."""
    buckets = metric_samples(url, f"{name}_bucket", headers)

    def count(bound: str) -> float:
        return sum(value for labels, value in buckets.items() if f'le="{bound}"' in labels)

    return count("+Inf") - count(str(float(threshold)))


@contextmanager
def running_models_server(models_file: Path, log_dir: Path, **settings: object):  # type: ignore[no-untyped-def]
    """`xlreward serve --models FILE` on a free loopback port, with extra XLREWARD_* settings."""
    env = {**os.environ, "XLREWARD_DEVICE": "cpu", "XLREWARD_DTYPE": "float32"}
    env.update({f"XLREWARD_{name.upper()}": str(value) for name, value in settings.items()})
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    log_dir.mkdir(parents=True, exist_ok=True)
    command = [XLREWARD, "serve", "--models", str(models_file), "--port", str(port), "--log-level", "warning"]
    with log_path.open("a") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, log_path, timeout=180)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
