"""`xlreward iterate` killed with SIGKILL while it trains: the reward server it started goes with it, and
running the same command again finishes both iterations. Embedded annotation (no broker), tiny models."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from serving import XLREWARD

CONFIG = """
out = "loop"
iterations = 2
sft = "{sft}"
policy = "{policy}"
instructions = ["instructions.jsonl"]
languages = ["en", "es"]
device = "cpu"
dtype = "float32"

[annotate]
samples = 3
max_tokens = 8

[train]
max_steps = 8
batch_size = 2
grad_accum = 1
lr = 1e-4
max_length = 256
"""


def processes_watching(pid: int) -> list[int]:
    """Live processes started with ``--parent-pid pid`` (the loop's reward server)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if state != "Z" and b"--parent-pid" in arguments and str(pid).encode() in arguments:
            found.append(int(entry.name))
    return found


def wait_for(condition, what: str, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_a_killed_loop_leaves_nothing_running_and_its_rerun_finishes(llama_pair, tmp_path) -> None:  # type: ignore[no-untyped-def]
    lines = [
        json.dumps({"id": i, "language": language, "instruction": f"{text} {i}"})
        for i in range(4)
        for language, text in (("en", "Say something about"), ("es", "Di algo sobre"))
    ]
    (tmp_path / "instructions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = tmp_path / "loop.toml"
    config.write_text(CONFIG.format(sft=llama_pair.reference, policy=llama_pair.policy))
    command = [XLREWARD, "iterate", "--config", str(config)]

    log_path = tmp_path / "first.log"
    with log_path.open("w") as log:
        loop = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    try:
        wait_for(
            lambda: "iteration 1:" in log_path.read_text() and "training" in log_path.read_text(),
            "iteration 1's training",
            timeout=300,
        )
        wait_for(lambda: bool(processes_watching(loop.pid)), "the loop's server", timeout=30)
        assert not (tmp_path / "loop" / "iter-1" / "DONE.json").exists()  # killed mid-iteration
        os.kill(loop.pid, signal.SIGKILL)
        loop.wait(timeout=30)
        wait_for(lambda: not processes_watching(loop.pid), "the server to stop with its loop", timeout=60)
    finally:
        if loop.poll() is None:
            loop.kill()

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=900, check=False)
    assert rerun.returncode == 0, rerun.stderr
    summary = json.loads((tmp_path / "loop" / "summary.json").read_text())
    assert [it["iteration"] for it in summary["iterations"]] == [1, 2]
    for t in (1, 2):
        assert (tmp_path / "loop" / f"iter-{t}" / "DONE.json").exists()
