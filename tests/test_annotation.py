"""Annotation end to end: a real reward server, real Redis on 127.0.0.1:6379, real `xlreward worker`
processes, the `xlreward annotate` command; and the faults it must survive with nothing lost or doubled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from serving import XLREWARD, free_port, metric_samples, running_server
from xlreward.worker.pair_format import read_texts

BROKER = os.environ.get("XLREWARD_TEST_BROKER", "redis://127.0.0.1:6379/14")
LANGUAGES = ["en", "es", "ru"]
TEXTS = {
    "en": ["What is 2+2?", "Name a city.", "Count to five.", "Say hello.", "Name a colour.", "Add 3 and 4."],
    "es": ["¿Cuánto es 2+2?", "Nombra una ciudad.", "Cuenta hasta cinco.", "Di hola.", "Nombra un color.",
           "Suma 3 y 4."],
    "ru": ["Сколько будет 2+2?", "Назови город.", "Посчитай до пяти.", "Скажи привет.", "Назови цвет.",
           "Сложи 3 и 4."],
}  # fmt: skip
FAST = ["--samples", "4", "--max-tokens", "12"]


def write_instructions(folder: Path, ids: int = 6) -> Path:
    path = folder / "instructions.jsonl"
    lines = [
        json.dumps({"id": i, "language": language, "instruction": TEXTS[language][i % 6] + f" (#{i})"})
        for i in range(ids)
        for language in LANGUAGES
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def annotate(
    service: str, source: Path, out: Path, *extra: str, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    command = [XLREWARD, "annotate", "--instructions", str(source), "--languages", ",".join(LANGUAGES),
               "--service", service, "--out", str(out), *FAST, *extra]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "XLREWARD_BROKER_URL"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)


def assert_one_outcome_per_unit(out: Path, units: int) -> list[dict]:  # type: ignore[type-arg]
    """Exactly one pair or one counted drop per (id, language), and no pair written twice."""
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    keys = Counter((pair["id"], pair["language"]) for pair in pairs)
    assert all(count == 1 for count in keys.values()), keys
    summary = json.loads((out / "summary.json").read_text())
    assert summary["units"] == units
    assert summary["totals"]["pairs"] == len(pairs)
    assert summary["totals"]["pairs"] + sum(summary["totals"]["drops"].values()) == units
    return pairs


@pytest.fixture(scope="module")
def service(llama_pair, tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    with running_server(llama_pair, tmp_path_factory.mktemp("service"), batch_wait_ms=10) as url:
        yield url


@pytest.fixture
def broker() -> Iterator[str]:
    client = redis.Redis.from_url(BROKER)
    client.flushdb()  # a database of its own: queues and stores from other tests never leak in
    yield BROKER
    client.flushdb()


@contextmanager
def workers(count: int, log_dir: Path, broker_url: str) -> Iterator[list[subprocess.Popen[bytes]]]:
    env = {**os.environ, "XLREWARD_BROKER_URL": broker_url}
    processes = [start_worker(log_dir, env, n) for n in range(count)]
    try:
        yield processes
    finally:
        for process in processes:
            stop(process)


def start_worker(log_dir: Path, env: dict[str, str], n: int) -> subprocess.Popen[bytes]:
    log = (log_dir / f"worker-{n}-{time.monotonic_ns()}.log").open("w")
    command = [XLREWARD, "worker", "--pool", "solo", "--loglevel", "INFO"]
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def scored_units(broker_url: str) -> int:
    client = redis.Redis.from_url(broker_url)
    return sum(int(client.hlen(key)) for key in client.scan_iter("xlreward:run:*:scored"))


def service_calls(url: str, endpoint: str) -> float:
    samples = metric_samples(url, "xlreward_requests_total")
    return sum(v for k, v in samples.items() if f'endpoint="{endpoint}"' in k and 'status="200"' in k)


def test_embedded_run_pairs_every_unit_and_rerun_does_no_work(service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    source, out = write_instructions(tmp_path), tmp_path / "out"
    done = annotate(service, source, out)
    assert done.returncode == 0, done.stderr
    assert "embedded mode" in done.stderr
    pairs = assert_one_outcome_per_unit(out, units=18)
    assert {pair["language"] for pair in pairs} <= set(LANGUAGES)
    # Conversational by default (TRL applies the chat template the pairs were sampled and scored under).
    assert all(pair["prompt"][0]["role"] == "user" and len(pair["prompt"]) == 1 for pair in pairs)
    assert all(pair["chosen"][0]["role"] == pair["rejected"][0]["role"] == "assistant" for pair in pairs)
    assert all(read_texts(pair).prompt.endswith(")") for pair in pairs)  # the target-language instruction
    first = (out / "pairs.jsonl").read_text()

    calls = service_calls(service, "/generate"), service_calls(service, "/reward")
    again = annotate(service, source, out)
    assert again.returncode == 0, again.stderr
    assert (service_calls(service, "/generate"), service_calls(service, "/reward")) == calls  # no new work
    assert (out / "pairs.jsonl").read_text() == first  # rebuilt identically, nothing appended

    # The format only renders the stored results: the same run in --format standard redoes nothing.
    standard = annotate(service, source, out, "--format", "standard")
    assert standard.returncode == 0, standard.stderr
    assert (service_calls(service, "/generate"), service_calls(service, "/reward")) == calls
    plain = assert_one_outcome_per_unit(out, units=18)
    assert all(isinstance(pair[name], str) for pair in plain for name in ("prompt", "chosen", "rejected"))
    assert [read_texts(pair) for pair in plain] == [read_texts(pair) for pair in pairs]


def test_interrupted_run_resumes_and_matches_an_uninterrupted_one(service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = write_instructions(tmp_path, ids=8)
    reference = tmp_path / "reference"
    assert annotate(service, source, reference).returncode == 0

    out = tmp_path / "out"
    command = [XLREWARD, "annotate", "--instructions", str(source), "--languages", ",".join(LANGUAGES),
               "--service", service, "--out", str(out), *FAST]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: len(list((out / "state" / "scored").glob("*.json"))) >= 3, "the run got going")
    assert process.poll() is None, "the run finished before it could be interrupted"
    process.kill()
    process.wait()
    assert not (out / "pairs.jsonl").exists()

    resumed = annotate(service, source, out)
    assert resumed.returncode == 0, resumed.stderr
    assert_one_outcome_per_unit(out, units=24)
    assert (out / "pairs.jsonl").read_text() == (reference / "pairs.jsonl").read_text()


def test_bad_instructions_are_all_reported_before_any_work(service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    source = tmp_path / "bad.jsonl"
    source.write_text(
        "\n".join([
            json.dumps({"id": 1, "language": "en", "instruction": "Hi"}),
            json.dumps({"id": 1, "language": "en", "instruction": "Hi again"}),
            json.dumps({"id": 2, "language": "es", "instruction": "Hola"}),
            json.dumps({"id": 3, "language": "xx", "instruction": "?"}),
            json.dumps({"id": 4, "language": "en", "instruction": "  "}),
        ]) + "\n",
        encoding="utf-8",
    )  # fmt: skip
    before = service_calls(service, "/generate")
    done = annotate(service, source, tmp_path / "out")
    assert done.returncode == 2
    for line in (2, 3, 4, 5):
        assert f"{source}:{line}:" in done.stderr, done.stderr
    assert service_calls(service, "/generate") == before
    assert not (tmp_path / "out" / "run.json").exists()


def test_a_different_run_in_the_same_folder_is_refused(service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    source, out = write_instructions(tmp_path, ids=1), tmp_path / "out"
    assert annotate(service, source, out).returncode == 0
    other = annotate(service, source, out, "--seed", "7")
    assert other.returncode == 2 and "holds another run" in other.stderr


def test_workers_survive_sigkill_mid_run_and_a_service_restart(llama_pair, broker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two workers; one is SIGKILLed mid-task and replaced; the reward service restarts mid-run. Every unit
    still ends as exactly one pair or one counted drop."""
    port = free_port()
    source, out = write_instructions(tmp_path, ids=14), tmp_path / "out"
    units, slow = 42, ("--max-tokens", "64")
    with workers(2, tmp_path, broker) as procs:
        with running_server(llama_pair, tmp_path / "s1", port=port, batch_wait_ms=10) as url:
            sent = annotate(url, source, out, "--broker", broker, *slow)
            assert sent.returncode == 0, sent.stderr
            assert f"{units} of {units} units sent" in sent.stderr
            wait_for(lambda: scored_units(broker) >= 3, "the first units are scored")
            os.killpg(procs[0].pid, signal.SIGKILL)  # mid-run: it holds an unacknowledged task
            procs[0].wait()
            env = {**os.environ, "XLREWARD_BROKER_URL": broker}
            procs.append(start_worker(tmp_path, env, 2))
        # The service is down now, with work left: the workers' clients retry until it is back.
        assert scored_units(broker) < units
        with running_server(llama_pair, tmp_path / "s2", port=port, batch_wait_ms=10):
            done = annotate(url, source, out, "--broker", broker, *slow, "--wait", "--timeout", "240",
                            timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert_one_outcome_per_unit(out, units=units)


def wait_for(condition, what: str, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.02)


def test_a_429_storm_is_ridden_out(llama_pair, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with running_server(
        llama_pair, tmp_path, max_queue_items=4, max_items_per_request=4, batch_wait_ms=50
    ) as url:
        source, out = write_instructions(tmp_path, ids=4), tmp_path / "out"
        done = annotate(url, source, out)
        assert done.returncode == 0, done.stderr
        assert metric_samples(url, "xlreward_rejected_total").get('{reason="queue_full"}', 0) > 0
        assert_one_outcome_per_unit(out, units=12)


def test_celery_app_is_configured_for_safe_redelivery() -> None:
    from xlreward.worker.celery_app import GENERATE_TASK, SCORE_TASK, create_celery
    from xlreward.worker.settings import WorkerSettings

    app = create_celery(WorkerSettings(broker_url=BROKER, visibility_timeout_s=77))
    conf = app.conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.broker_transport_options["visibility_timeout"] == 77
    assert conf.task_routes[GENERATE_TASK]["queue"] == "generation"
    assert conf.task_routes[SCORE_TASK]["queue"] == "annotation"
    assert app.tasks[GENERATE_TASK].acks_late and app.tasks[SCORE_TASK].max_retries == 20


def sample_then_score(service: str, source: Path, out: Path, broker_url: str | None) -> None:
    """The loop's two-phase annotation (reward_policy = "initial"): every unit sampled and none scored,
    then every unit scored from the stored samples without sampling again."""
    from xlreward.worker.annotate import generate_to_completion, plan_run, run_to_completion
    from xlreward.worker.pipeline import GENERATED
    from xlreward.worker.settings import WorkerSettings

    settings = WorkerSettings(service_url=service, broker_url=broker_url, samples=4, max_tokens=12)
    plan = plan_run([source], languages=LANGUAGES, out_dir=out, settings=settings)
    rewards = service_calls(service, "/reward")
    generate_to_completion(plan, settings, progress=lambda _: None, timeout=240)
    assert plan.pending(GENERATED) == [] and plan.pending() == plan.jobs
    time.sleep(1.0)  # a generation-only Celery unit that wrongly went on to scoring would show by now
    assert plan.pending() == plan.jobs and service_calls(service, "/reward") == rewards
    generations = service_calls(service, "/generate")
    run_to_completion(plan, settings, progress=lambda _: None, timeout=240)
    assert service_calls(service, "/generate") == generations  # the stored samples were scored
    assert_one_outcome_per_unit(out, units=len(plan.jobs))


def test_sampling_only_phase_then_scoring_embedded(service, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sample_then_score(service, write_instructions(tmp_path, ids=4), tmp_path / "out", None)


def test_sampling_only_phase_then_scoring_with_celery_workers(service, broker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with workers(2, tmp_path, broker):
        sample_then_score(service, write_instructions(tmp_path, ids=4), tmp_path / "out", broker)


def test_the_same_spec_in_another_folder_does_not_reuse_the_first_folders_results(  # type: ignore[no-untyped-def]
    service, broker, tmp_path
) -> None:
    """Regression: the Redis store was keyed by the spec alone, so `xlreward iterate` with a broker found
    iteration 1's scored samples in iteration 2 (same instructions and settings, another policy served)
    and paired them again without sampling."""
    from xlreward.worker.annotate import plan_run, run_to_completion
    from xlreward.worker.settings import WorkerSettings

    source = write_instructions(tmp_path, ids=3)
    settings = WorkerSettings(service_url=service, broker_url=broker, samples=4, max_tokens=12)
    with workers(1, tmp_path, broker):
        first = plan_run([source], languages=LANGUAGES, out_dir=tmp_path / "one", settings=settings)
        run_to_completion(first, settings, progress=lambda _: None, timeout=240)
        generations = service_calls(service, "/generate")
        second = plan_run([source], languages=LANGUAGES, out_dir=tmp_path / "two", settings=settings)
        assert second.spec.run_id == first.spec.run_id and len(second.pending()) == len(second.jobs)
        run_to_completion(second, settings, progress=lambda _: None, timeout=240)
        assert service_calls(service, "/generate") == generations + len(second.jobs)
        again = plan_run([source], languages=LANGUAGES, out_dir=tmp_path / "one", settings=settings)
        assert again.pending() == []  # a resume of the first folder still finds its results
