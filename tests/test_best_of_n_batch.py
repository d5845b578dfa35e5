"""`xlreward best-of-n` end to end: a real server serving an implicit pair ("icr") and a classifier RM ("rm"),
the command run as a user runs it. Every model scores the SAME candidates, each against its own reward
prompt; the outputs are alpaca_eval's files rebuilt from the store, offline on a re-run."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from serving import XLREWARD, free_port, running_models_server
from test_annotation import broker, workers  # noqa: F401  (the broker fixture: a Redis database of its own)

TEXTS = {
    "en": ["Name three colours.", "Say hello.", "Count to five."],
    "es": ["Nombra tres colores.", "Di hola.", "Cuenta hasta cinco."],
}
LANGUAGES = list(TEXTS)
MODELS = ["rm", "icr"]  # rm samples through /best-of-n; icr scores the same texts through /reward
N, SEED = 4, 7
FAST = ["--n", str(N), "--max-tokens", "8", "--temperature", "1.0", "--seed", str(SEED)]
OUTPUT_KEYS = {"instruction", "output", "generator", "dataset", "id"}


@pytest.fixture(scope="module")
def server(llama_pair, model_cache, tmp_path_factory):  # type: ignore[no-untyped-def]
    from xlreward.trainer.tiny_models import TinySpec, build_tiny_classifier

    classifier = build_tiny_classifier(model_cache, TinySpec(arch="llama", template="llama3"))
    folder = tmp_path_factory.mktemp("best-of-n-batch")
    (folder / "models.toml").write_text(
        f'[[models]]\nname = "icr"\npolicy = "{llama_pair.policy}"\nreference = "{llama_pair.reference}"\n\n'
        f'[[models]]\nname = "rm"\nkind = "classifier"\npath = "{classifier}"\n'
    )
    with running_models_server(folder / "models.toml", folder, batch_wait_ms=10) as url:
        yield url


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("instructions") / "instructions.jsonl"
    lines = [
        json.dumps({"id": str(i), "language": language, "instruction": texts[i]}, ensure_ascii=False)
        for language, texts in TEXTS.items()
        for i in range(len(texts))
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def best_of_n(service: str, source: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [XLREWARD, "best-of-n", "--instructions", str(source), "--languages", ",".join(LANGUAGES),
               "--model", *MODELS, "--service", service, "--out", str(out), *FAST, *extra]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "XLREWARD_BROKER_URL"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, check=False)


def read_units(out: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in (out / "candidates.jsonl").read_text(encoding="utf-8").splitlines()]


def outputs(out: Path) -> dict[str, str]:
    files = [*sorted(out.glob("*/*/model_outputs.json")), out / "candidates.jsonl", out / "summary.json"]
    return {str(path.relative_to(out)): path.read_text(encoding="utf-8") for path in files}


@pytest.fixture(scope="module")
def finished(server, source, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("run") / "out"
    done = best_of_n(server, source, out)
    assert done.returncode == 0, done.stderr
    return out


def test_outputs_are_alpaca_eval_files_of_each_models_argmax(finished: Path) -> None:
    units = read_units(finished)
    assert [(u["id"], u["language"]) for u in units] == [
        (str(i), lang) for i in range(3) for lang in LANGUAGES
    ]
    for language in LANGUAGES:
        mine = [u for u in units if u["language"] == language]
        for model in [*MODELS, "single"]:
            records = json.loads((finished / model / language / "model_outputs.json").read_text())
            assert all(set(record) == OUTPUT_KEYS for record in records)
            assert [r["instruction"] for r in records] == TEXTS[language]  # input order
            assert {r["dataset"] for r in records} == {f"xlreward-{language}"}
            generator = "policy:single" if model == "single" else f"best-of-{N}:{model}"
            assert {r["generator"] for r in records} == {generator}
            for record, unit in zip(records, mine, strict=True):
                candidates = unit["candidates"]
                assert [c["index"] for c in candidates] == list(range(N))
                if model == "single":
                    assert record["output"] == candidates[0]["text"]
                else:
                    best = max(candidates, key=lambda c: c["scores"][model])
                    assert record["output"] == best["text"]
    summary = json.loads((finished / "summary.json").read_text())
    assert summary["models"] == [
        {"name": "rm", "kind": "classifier", "reward_prompt": "prompt"},
        {"name": "icr", "kind": "implicit", "reward_prompt": "english"},
    ]
    assert summary["scores"]["icr"]["es"]["units"] == 3 and set(summary["agreement_with_first"]) == {
        "en",
        "es",
    }


def test_scores_are_rewards_of_the_same_candidates_against_each_models_prompt(server, finished: Path) -> None:  # type: ignore[no-untyped-def]
    from xlreward.worker.settings import DEFAULT_DIRECTIVE

    units = read_units(finished)
    for unit in units:
        english = TEXTS["en"][int(unit["id"])]
        directive = "" if unit["language"] == "en" else DEFAULT_DIRECTIVE.format(language="Spanish")
        assert unit["reward_prompts"] == {"rm": unit["instruction"], "icr": directive + english}
    for model in MODELS:
        items = [
            {"prompt": unit["reward_prompts"][model], "response": c["text"]}
            for unit in units
            for c in unit["candidates"]
        ]
        body = {"model": model, "items": items, "truncate": True}
        rewards = [
            r["reward"] for r in httpx.post(f"{server}/reward", json=body, timeout=120).json()["results"]
        ]
        stored = [c["scores"][model] for unit in units for c in unit["candidates"]]
        assert stored == pytest.approx(rewards, abs=1e-4)


def test_candidates_are_what_best_of_n_samples_for_the_units_seed(server, finished: Path) -> None:  # type: ignore[no-untyped-def]
    from xlreward.worker.best_of_n import BestOfNSpec

    spec = BestOfNSpec.model_validate(json.loads((finished / "run.json").read_text())["spec"])
    for unit in read_units(finished)[::2]:
        body = {"prompts": [{"prompt": unit["instruction"]}], "model": "icr", "n": N, "temperature": 1.0,
                "max_tokens": 8, "seed": spec.unit_seed(unit["id"], unit["language"])}  # fmt: skip
        answer = httpx.post(f"{server}/best-of-n", json=body, timeout=120).json()["results"][0]
        texts = {c["index"]: c["text"] for c in answer["candidates"]}
        assert [c["text"] for c in unit["candidates"]] == [texts[i] for i in range(N)]


def test_a_rerun_without_the_service_rebuilds_the_same_outputs(finished: Path, source: Path) -> None:
    before = outputs(finished)
    for path in before:
        (finished / path).unlink()
    again = best_of_n(f"http://127.0.0.1:{free_port()}", source, finished)  # nothing listens there
    assert again.returncode == 0, again.stderr
    assert outputs(finished) == before


def test_what_is_refused_before_any_unit_runs(server, finished: Path, source: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    other_n = best_of_n(server, source, finished, "--n", "3")
    assert other_n.returncode == 2 and "holds another run" in other_n.stderr
    unknown = best_of_n(server, source, tmp_path / "out", "--model", "nope")
    assert unknown.returncode == 2 and "nope" in unknown.stderr and "icr, rm" in unknown.stderr
    assert not (tmp_path / "out" / "run.json").exists()
    missing = best_of_n(server, tmp_path / "missing.jsonl", tmp_path / "out")
    assert missing.returncode == 2 and "file not found" in missing.stderr


def test_celery_workers_write_what_the_embedded_run_wrote(server, broker, finished, source, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    out = tmp_path / "out"
    with workers(1, tmp_path, broker):
        done = best_of_n(server, source, out, "--broker", broker, "--wait", "--timeout", "120")
    assert done.returncode == 0, done.stderr
    assert "6 of 6 units sent" in done.stderr
    embedded, celery = read_units(finished), read_units(out)
    assert [[c["text"] for c in u["candidates"]] for u in celery] == [
        [c["text"] for c in u["candidates"]] for u in embedded
    ]
    for mine, theirs in zip(celery, embedded, strict=True):
        for a, b in zip(mine["candidates"], theirs["candidates"], strict=True):
            assert a["scores"] == pytest.approx(b["scores"], abs=1e-4)
