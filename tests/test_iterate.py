"""`xlreward iterate`: two iterations end to end on tiny models, with the real service it starts, real
Redis and a real `xlreward worker` process; then a re-run that resumes and redoes nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import redis

from serving import XLREWARD

BROKER = os.environ.get("XLREWARD_TEST_BROKER", "redis://127.0.0.1:6379/14")

CONFIG = """
out = "loop"
iterations = 2
sft = "{sft}"
policy = "{policy}"
reference = "sft"
instructions = ["instructions.jsonl"]
languages = ["en", "es"]
broker = "{broker}"
device = "cpu"
dtype = "float32"

[annotate]
samples = 3
max_tokens = 8

[train]
max_steps = 2
batch_size = 2
grad_accum = 1
lr = 1e-4
max_length = 256
"""


def test_two_iterations_end_to_end_and_resume(llama_pair, tmp_path) -> None:  # type: ignore[no-untyped-def]
    redis.Redis.from_url(BROKER).flushdb()
    lines = []
    for i, (en, es) in enumerate(
        [
            ("What is 2+2?", "¿Cuánto es 2+2?"),
            ("Name a city.", "Nombra una ciudad."),
            ("Say hello.", "Di hola."),
            ("Count to three.", "Cuenta hasta tres."),
        ]
    ):
        lines += [
            json.dumps({"id": i, "language": "en", "instruction": en}),
            json.dumps({"id": i, "language": "es", "instruction": es}),
        ]
    (tmp_path / "instructions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = tmp_path / "loop.toml"
    config.write_text(CONFIG.format(sft=llama_pair.reference, policy=llama_pair.policy, broker=BROKER))

    env = {**os.environ, "XLREWARD_BROKER_URL": BROKER}
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [XLREWARD, "worker", "--pool", "solo"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        done = subprocess.run(
            [XLREWARD, "iterate", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert done.returncode == 0, done.stderr + (tmp_path / "loop" / "service.log").read_text()
        summary = json.loads((tmp_path / "loop" / "summary.json").read_text())
        first, second = summary["iterations"]
        assert Path(first["served_policy"]) == llama_pair.policy
        assert second["served_policy"] == first["trained_model"]  # iteration 2 serves pi^1
        assert Path(second["served_reference"]) == llama_pair.reference  # reference = "sft"
        for iteration in (first, second):
            assert Path(iteration["trained_model"], "config.json").exists()
            assert iteration["annotation"]["pairs"] + sum(iteration["annotation"]["drops"].values()) == 8
        again = subprocess.run(
            [XLREWARD, "iterate", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert again.returncode == 0, again.stderr
        assert again.stderr.count("already done") == 2
        assert json.loads((tmp_path / "loop" / "summary.json").read_text()) == summary
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
        redis.Redis.from_url(BROKER).flushdb()


def test_which_models_sample_and_score_in_each_iteration(tmp_path: Path) -> None:
    import pytest
    from pydantic import ValidationError

    from xlreward.trainer.loop import IterateConfig

    base = {"out": tmp_path, "sft": Path("sft"), "policy": Path("pi0"), "instructions": [Path("i.jsonl")]}
    pi = [Path("pi0"), tmp_path / "iter-1" / "train" / "model", tmp_path / "iter-2" / "train" / "model"]
    current = IterateConfig(**base, languages=["es"])
    previous = IterateConfig(**base, languages=["es"], reference="previous")
    initial = IterateConfig(**base, languages=["es"], reward_policy="initial")
    for config in (current, previous, initial):
        assert [config.generator_for(t) for t in range(3)] == pi  # pi^t samples, pi^{t+1} trains from it
        assert config.pair_for(0) == (Path("pi0"), Path("sft"))
    assert current.pair_for(2) == (pi[2], Path("sft"))
    assert previous.pair_for(2) == (pi[2], pi[1])
    assert initial.pair_for(2) == (Path("pi0"), Path("sft"))  # pi^0's reward throughout
    with pytest.raises(ValidationError, match='set reference = "sft"'):
        IterateConfig(**base, languages=["es"], reward_policy="initial", reference="previous")
