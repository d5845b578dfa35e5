"""Starting real reward servers for tests: `xlreward serve` in a subprocess, uvicorn on 127.0.0.1."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import httpx

from xlreward.service.process import free_port, serve_process

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


def metric_samples(url: str, name: str) -> dict[str, float]:
    """Samples of one metric family from /metrics, keyed by their label text (or "" without labels)."""
    samples: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{.*\}})? (\S+)$", line)
        if match:
            samples[match.group(1) or ""] = float(match.group(2))
    return samples


def histogram_count_above(url: str, name: str, threshold: float) -> float:
    """How many observations of a histogram were above ``threshold`` (which must be a bucket bound)."""
    buckets = metric_samples(url, f"{name}_bucket")
    total = buckets['{le="+Inf"}']
    return total - buckets[f'{{le="{float(threshold)}"}}']
