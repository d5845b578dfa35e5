"""One server, several named reward models (an implicit pair and a classifier) from a models file, over a
real socket; and models named by hub id, resolved from a cache the test populates (never a hub)."""

from __future__ import annotations

import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from hub_cache import populate_hub_cache
from serving import XLREWARD, metric_samples, running_models_server
from xlreward.service.protocol import RewardItem
from xlreward.service.scoring.loading import load_engine, load_sequence_classifier, load_tokenizer

PROMPT = "Name three colours."
RESPONSES = ["Red, green and blue.", "Rojo, verde y azul.", "Rot, grün und blau!", "Red."]


@pytest.fixture(scope="module")
def classifier_dir(model_cache):  # type: ignore[no-untyped-def]
    from xlreward.trainer.tiny_models import TinySpec, build_tiny_classifier

    return build_tiny_classifier(model_cache, TinySpec(arch="llama", template="llama3"))


@pytest.fixture(scope="module")
def server(llama_pair, classifier_dir, tmp_path_factory):  # type: ignore[no-untyped-def]
    folder = tmp_path_factory.mktemp("named")
    models = folder / "models.toml"
    models.write_text(
        f'[[models]]\nname = "icr-en"\nkind = "implicit"\npolicy = "{llama_pair.policy}"\n'
        f'reference = "{llama_pair.reference}"\n\n'
        f'[[models]]\nname = "rm-en"\nkind = "classifier"\npath = "{classifier_dir}"\n'
    )
    with running_models_server(models, folder, batch_wait_ms=20) as url:
        yield url


def plain_reward(model, tokenizer, prompt: str, response: str) -> float:  # type: ignore[no-untyped-def]
    conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    ids = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True)["input_ids"]
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([list(ids)])).logits[0, 0])


def test_a_classifier_served_with_32_clients_equals_a_plain_forward(server, classifier_dir) -> None:  # type: ignore[no-untyped-def]
    plain = load_sequence_classifier(classifier_dir, torch.device("cpu"), torch.float32)
    tokenizer = load_tokenizer(classifier_dir)

    def ask(i: int) -> dict:  # type: ignore[type-arg]
        body = {
            "model": "rm-en",
            "items": [{"id": i, "prompt": f"Question {i}?", "response": RESPONSES[i % 4] * (1 + i % 3)}],
            "groups": [{"prompt": PROMPT, "responses": RESPONSES}],
        }
        response = httpx.post(f"{server}/reward", json=body, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, range(32)))
    expected_group = [plain_reward(plain, tokenizer, PROMPT, r) for r in RESPONSES]
    for i, answer in enumerate(answers):
        assert answer["model"] == "rm-en" and answer["beta"] is None
        (item,) = answer["results"]
        expected = plain_reward(plain, tokenizer, f"Question {i}?", RESPONSES[i % 4] * (1 + i % 3))
        assert item["reward"] == pytest.approx(expected, abs=1e-4) and item["policy_logp"] is None
        ranked = answer["groups"][0]["results"]
        assert [r["reward"] for r in ranked] == sorted((r["reward"] for r in ranked), reverse=True)
        for r in ranked:
            assert r["reward"] == pytest.approx(expected_group[r["index"]], abs=1e-4)
    batches = metric_samples(server, "xlreward_batch_items_count")
    assert batches.get('{model="rm-en"}', 0) >= 1


def test_the_implicit_model_equals_the_pair_served_alone(server, llama_pair) -> None:  # type: ignore[no-untyped-def]
    items = [RewardItem(id=i, prompt=PROMPT, response=r) for i, r in enumerate(RESPONSES)]
    alone = load_engine(llama_pair.policy, llama_pair.reference, device="cpu", dtype="float32").score(items)
    for name in ("icr-en", None):  # named, and the default (the first model)
        body = {"items": [item.model_dump() for item in items], **({"model": name} if name else {})}
        served = httpx.post(f"{server}/reward", json=body, timeout=120).json()
        assert served["model"] == "icr-en"
        for ours, theirs in zip(served["results"], alone, strict=True):
            assert ours["reward"] == pytest.approx(theirs.reward, abs=1e-5)
            assert ours["policy_logp"] == pytest.approx(theirs.policy_logp, abs=1e-4)


def test_models_are_listed_and_unknown_names_are_a_404(server) -> None:  # type: ignore[no-untyped-def]
    from openai import OpenAI

    listed = OpenAI(base_url=f"{server}/v1", api_key="unused").models.list()
    assert [model.id for model in listed.data] == ["icr-en", "rm-en"]
    ready = httpx.get(f"{server}/readyz").json()
    assert ready["models"] == {"icr-en": "loaded", "rm-en": "loaded"}
    unknown = httpx.post(
        f"{server}/reward", json={"model": "nope", "items": [{"prompt": "a", "response": "b"}]}
    )
    assert unknown.status_code == 404
    assert "icr-en, rm-en" in unknown.json()["error"]["message"]
    scaled = httpx.post(
        f"{server}/reward", json={"model": "rm-en", "beta": 0.5, "items": [{"prompt": "a", "response": "b"}]}
    )
    assert scaled.status_code == 422 and "drop beta" in scaled.json()["error"]["message"]


def test_a_hub_id_resolves_from_the_cache_and_an_uncached_one_says_how_to_fetch_it(
    llama_pair, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    cache = tmp_path / "hub"
    populate_hub_cache(cache, "org/tiny-dpo", llama_pair.policy)
    populate_hub_cache(cache, "org/tiny-sft", llama_pair.reference)
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"prompt": PROMPT, "response": RESPONSES[0]}) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "XLREWARD_DEVICE": "cpu"}

    def score(policy: str, out: str) -> subprocess.CompletedProcess[str]:
        command = [XLREWARD, "score", "--policy", policy, "--reference", "org/tiny-sft", "--device", "cpu"]
        command += ["--input", str(items), "--output", str(tmp_path / out)]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)

    by_id = score("org/tiny-dpo", "by_id.jsonl")
    assert by_id.returncode == 0, by_id.stderr
    expected = load_engine(llama_pair.policy, llama_pair.reference, device="cpu", dtype="float32")
    reward = json.loads((tmp_path / "by_id.jsonl").read_text())["reward"]
    assert reward == pytest.approx(
        expected.score([RewardItem(prompt=PROMPT, response=RESPONSES[0])])[0].reward
    )

    missing = score("org/not-cached", "missing.jsonl")
    assert missing.returncode == 2
    assert "org/not-cached" in missing.stderr and "download" in missing.stderr
